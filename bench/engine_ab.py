"""Per-step time of the Trainer against the pre-split engine (`steelforge/train/engine.py` at a git ref), interleaved.

Small models (2 blocks, hidden 64) so the engine's own Python work is a visible share of the step; the two
trainers run the same model, batches and optimizer, alternating step by step (A/B, B/A), so load from other
processes hits both alike. Prints min and median step times, their ratio, and both losses after the run
(equal when the refactor changed no arithmetic).

    python bench/engine_ab.py                       # against 99f423d (the last commit before the split)
    python bench/engine_ab.py --ref main --steps 80
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "train"))


def main() -> None:
    import torch
    from _dist_helpers import patterned_batches

    from steelforge.models.loading import load_model
    from steelforge.reporting import print_table
    from steelforge.train.config import OptimConfig, ScheduleConfig
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.pretrain import causal_lm_loss
    from steelforge.train.trainer import Trainer, TrainerConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="99f423d", help="git ref whose steelforge/train/engine.py is the baseline")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per trainer")
    parser.add_argument("--cases", nargs="+", default=["tiny-steel", "tiny-moxin"])
    args = parser.parse_args()
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{args.ref}:steelforge/train/engine.py"],
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline_engine.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("baseline_engine", path)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        sys.modules["baseline_engine"] = old
        spec.loader.exec_module(old)
    torch.set_num_threads(1)
    rows = []
    for case in args.cases:
        trainers = {}
        for kind, (trainer_cls, cfg_cls) in {"baseline": (old.Trainer, old.TrainerConfig),
                                             "trainer": (Trainer, TrainerConfig)}.items():
            torch.manual_seed(0)
            model = load_model({"preset": case, "overrides": {
                "vocab_size": 512, "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 4, "intermediate_size": 128}})
            opt = build_optimizer(model, OptimConfig(lr=1e-3))
            sched = build_scheduler(opt, ScheduleConfig(warmup_steps=1), total_steps=10_000, peak_lr=1e-3)
            t = trainer_cls(model, causal_lm_loss(), patterned_batches(vocab=512, seq=64, micro=2),
                            cfg_cls(max_steps=10_000, grad_accum=2), optimizer=opt, scheduler=sched)
            t.batches = iter(t.batch_source)
            for _ in range(3):
                t.train_step()
            trainers[kind] = t
        times: dict[str, list[float]] = {k: [] for k in trainers}
        losses: dict[str, float] = {}
        for r in range(args.steps):
            for kind in (("baseline", "trainer") if r % 2 == 0 else ("trainer", "baseline")):
                t0 = time.perf_counter()
                losses[kind] = trainers[kind].train_step()["loss"]
                times[kind].append(time.perf_counter() - t0)
        b, n = times["baseline"], times["trainer"]
        rows.append((case, f"{min(b) * 1e3:.2f} / {statistics.median(b) * 1e3:.2f}",
                     f"{min(n) * 1e3:.2f} / {statistics.median(n) * 1e3:.2f}",
                     f"{min(n) / min(b):.3f} / {statistics.median(n) / statistics.median(b):.3f}",
                     "yes" if losses["baseline"] == losses["trainer"] else f"{losses['baseline']} vs {losses['trainer']}"))
    print_table(f"Trainer vs engine.py@{args.ref} ({args.steps} interleaved steps each)",
                ["case", "baseline ms (min / median)", "trainer ms (min / median)", "ratio (min / median)",
                 "same loss"], rows)


if __name__ == "__main__":
    main()
