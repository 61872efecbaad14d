"""SFT and DPO training throughput of steelforge against TRL's SFTTrainer/DPOTrainer, in the same run.

Both sides train the same tiny Qwen2 model (fresh init, same seed), on the same synthetic bilingual chat data
(repeat/reverse digits), with the same micro-batch, max length, learning rate and step count; SFT packs
several conversations per row on both sides (TRL: `packing=True`, padding-free BFD with position ids;
steelforge: greedy packing with restarting position ids), loss on assistant tokens only. Each case runs in
its own subprocess so that its peak resident memory (ru_maxrss) is its own.

tokens/s counts real (non-padding) tokens: SFT conversation tokens, DPO chosen + rejected tokens, over the
timed steps (the first `--warmup` steps are left out).

    python bench/posttrain_step.py                 # CPU, about 2-3 minutes on 2 cores
    python bench/posttrain_step.py --steps 40 --hidden 256

TRL is a bench-only dependency: `pip install trl` (it is not a steelforge requirement).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
CHARS = sorted(set("0123456789 \n:abcdefghijklmnopqrstuvwxyz重复反转"))


def tokenizer_dir(folder: Path) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from steelforge.posttrain.templates import TULU_TEMPLATE

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS[3:])  # fmt: skip
    tok.chat_template = TULU_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(8, 40)))
        name = rng.choice(["repeat", "reverse", "重复", "反转"])
        out.append((f"{name} {digits}", digits[::-1] if name in ("reverse", "反转") else digits))
    return out


def write_data(folder: Path, n: int) -> tuple[Path, Path]:
    rng = random.Random(1)
    sft, dpo = folder / "sft.jsonl", folder / "dpo.jsonl"
    with sft.open("w", encoding="utf-8") as a, dpo.open("w", encoding="utf-8") as b:
        for prompt, answer in examples(n):
            a.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": answer}]}, ensure_ascii=False) + "\n")
            wrong = answer[:-1] + rng.choice([d for d in "0123456789" if d != answer[-1]])
            b.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                "chosen": [{"role": "assistant", "content": answer}],
                                "rejected": [{"role": "assistant", "content": wrong}]}, ensure_ascii=False) + "\n")
    return sft, dpo


def model_folder(folder: Path, args: argparse.Namespace) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(SPECIALS) + len(CHARS), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32, num_key_value_heads=2,
                         max_position_embeddings=args.max_len, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def mean_pair_tokens(work: Path) -> float:
    """Mean tokens of prompt+chosen plus prompt+rejected over the DPO file (rendered with the chat template)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "model")
    total, n = 0, 0
    for line in (work / "dpo.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        for side in ("chosen", "rejected"):
            total += len(tok.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=False))
        n += 1
    return total / max(n, 1)


# ---- cases (each in its own process) -----------------------------------------------------------------
def _timed_tokens(history: list[dict[str, float]], warmup: int) -> tuple[float, float]:
    rows = history[warmup:]
    return sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)


def case_steelforge(stage: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from steelforge.cli import run_stage
    from steelforge.recipe import recipe_from_dict

    section = {
        "model": {"path": str(work / "model")}, "chat_template": "auto", "cutoff_len": args.max_len,
        "datasets": [{"path": str(work / f"{stage}.jsonl")}], "micro_batch_size": args.batch, "max_steps": args.steps,
        "optim": {"lr": 1e-4, "weight_decay": 0.0}, "schedule": {"kind": "constant"}, "log_every": 1,
        "tensorboard": False, "checkpoint": {"every": None, "export_final": False, "resume": "none"},
        "clip_grad_norm": 1.0,
    }  # fmt: skip
    if stage == "dpo":
        section.update({"beta": 0.1, "loss_type": "sigmoid"})
    out = work / f"sf-{stage}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: never resume from or read an earlier case's files
    recipe = recipe_from_dict({"name": "bench", "out_dir": str(out), "seed": 0, "tokenizer": str(work / "model"),
                               stage: section})  # fmt: skip
    torch.set_num_threads(args.threads)
    run_stage(stage, recipe, force=True)
    rows = [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "tokens_per_s" in r]
    if stage == "sft":
        history = [{"tokens": r["tokens_per_s"] * r["step_time_s"], "seconds": r["step_time_s"]} for r in rows]
    else:  # pairs are drawn uniformly on both sides: count pairs x the mean pair length, as for TRL
        history = [{"tokens": args.batch * mean_pair_tokens(work), "seconds": r["step_time_s"]} for r in rows]
    return {"history": history}


class _StepClock:
    """A transformers TrainerCallback that times every optimizer step and counts its real tokens."""

    def __init__(self, count_tokens) -> None:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                outer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                outer.history.append({"seconds": time.perf_counter() - outer.t0, "tokens": 0.0})

        self.callback = Callback()
        self.history: list[dict[str, float]] = []
        self.t0 = 0.0
        self.count_tokens = count_tokens


def case_trl(stage: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed: pip install trl  (bench-only dependency)") from None
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    common = dict(output_dir=str(work / f"trl-{stage}"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                  learning_rate=1e-4, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                  logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                  seed=0)  # fmt: skip
    ds = load_dataset("json", data_files=str(work / f"{stage}.jsonl"), split="train")
    clock = _StepClock(None)
    # SFT batches pass through the collator: count their real tokens there
    seen: list[int] = []
    if stage == "sft":
        ds = ds.map(lambda r: {"prompt": r["messages"][:1], "completion": r["messages"][1:]},
                    remove_columns=["messages"])  # fmt: skip
        cfg = trl.SFTConfig(packing=True, max_length=args.max_len, completion_only_loss=True, **common)
        trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                                 callbacks=[clock.callback])  # fmt: skip
    else:
        cfg = trl.DPOConfig(beta=0.1, loss_type=["sigmoid"], max_length=args.max_len, **common)
        trainer = trl.DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                                 callbacks=[clock.callback])  # fmt: skip
    collator = trainer.data_collator

    if stage == "sft":
        def counting(features):  # type: ignore[no-untyped-def]
            batch = collator(features)
            mask = batch.get("attention_mask")
            seen.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
            return batch

        trainer.data_collator = counting
    trainer.train()
    if stage == "sft":
        for row, tokens in zip(clock.history, seen, strict=False):
            row["tokens"] = float(tokens)
    else:
        for row in clock.history:
            row["tokens"] = args.batch * mean_pair_tokens(work)
    return {"history": clock.history, "trl": trl.__version__}


def run_case(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    framework, stage = name.split("-")
    result = (case_steelforge if framework == "steelforge" else case_trl)(stage, work, args)
    tokens, seconds = _timed_tokens(result["history"], args.warmup)
    result.update(case=name, tokens_per_s=tokens / seconds if seconds else 0.0,
                  peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
    result.pop("history")
    return result


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per case")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--batch", type=int, default=8, help="micro-batch (rows for SFT, pairs for DPO)")
    p.add_argument("--max-len", type=int, default=512, help="max tokens per row / sequence")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, Path(args.work), args)))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: pip install trl  (bench-only dependency, not in pyproject)") from None
    work = Path(tempfile.mkdtemp(prefix="steelforge-posttrain-bench-"))
    tokenizer_dir(work / "model")
    model_folder(work / "model", args)
    write_data(work, args.records)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
               STEELFORGE_QUIET="1", OMP_NUM_THREADS=str(args.threads))  # fmt: skip
    forwarded = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-len",
                 str(args.max_len), "--hidden", str(args.hidden), "--layers", str(args.layers), "--threads",
                 str(args.threads)]  # fmt: skip
    results = {}
    for name in ("steelforge-sft", "trl-sft", "steelforge-dpo", "trl-dpo"):
        proc = subprocess.run([sys.executable, __file__, "--case", name, "--work", str(work), *forwarded], env=env,
                              capture_output=True, text=True)  # fmt: skip
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(line[len("RESULT ") :])
        print(f"{name:16s} {results[name]['tokens_per_s']:10,.0f} tok/s   peak RSS {results[name]['peak_rss_mib']:7,.0f} MiB",
              flush=True)  # fmt: skip
    for stage in ("sft", "dpo"):
        ours, theirs = results.get(f"steelforge-{stage}"), results.get(f"trl-{stage}")
        if ours and theirs and theirs["tokens_per_s"]:
            print(f"{stage}: steelforge / TRL = {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tokens/s, "
                  f"peak RSS {ours['peak_rss_mib']:.0f} vs {theirs['peak_rss_mib']:.0f} MiB")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
