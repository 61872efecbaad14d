"""Per-step losses of a 20-step tiny-steel pretraining run (CPU), to check engine refactors change nothing.

    python bench/pretrain_losses.py --out /tmp/losses.json     # prints and writes {step: loss}

The store is synthetic (arithmetic token runs), the tokenizer the packaged Qwen1.5 one; the run goes
through `run_pretrain`, so checkpointing, metrics and the loader are all on the path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import numpy as np
    import torch

    from steelforge.recipe import recipe_from_dict
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint
    from steelforge.tokens.pack import write_token_store
    from steelforge.train.pretrain import run_pretrain

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fingerprint = tokenizer_fingerprint(load_tokenizer())
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        docs = []
        for _ in range(200):
            start, stride = rng.integers(0, 500), rng.integers(1, 4)
            docs.append(("web", (start + stride * np.arange(rng.integers(20, 80))) % 500))
        store = Path(tmp) / "store"
        write_token_store(store, docs, tokenizer_name="qwen1.5", tokenizer_fingerprint=fingerprint)
        recipe = recipe_from_dict({
            "name": "bitcheck",
            "out_dir": str(Path(tmp) / "run"),
            "model": {"preset": "tiny-steel", "overrides": {"vocab_size": 512, "num_hidden_layers": 2}},
            "pretrain": {
                "max_steps": args.steps, "seq_len": 32, "micro_batch_size": 2, "global_batch_size": 4,
                "stores": [str(store)], "optim": {"lr": 3e-3}, "checkpoint": {"every": 10}, "tensorboard": False,
            },
        })
        run_pretrain(recipe)
        records = [json.loads(line) for line in (recipe.stage_dir("pretrain") / "metrics.jsonl").read_text().splitlines()]
    losses = {int(r["step"]): r["loss"] for r in records if "loss" in r}
    text = json.dumps(losses, indent=0)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
