"""GRPO speed: rollout tokens/s against plain `model.generate`, and a whole GRPO step against TRL, in one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/grpo_step.py [--prompts 2] [--G 8] [--new 16] [--steps 3]

Needs `trl` in the environment (bench only, not a dependency: `pip install trl==1.16.0 torch==2.13.0`).
Same model (tiny-steel: Steel's causal Soft-MoE, the full 151,936-token Qwen vocabulary), same prompts
(Qwen1.5 tokenizer, raw text), same G and lengths on both sides. EOS is never produced in practice by the
random-init model, so every completion runs to `--new` tokens on both sides (equal work).

1. Rollouts: `steelforge.models.generate` on prompts x G rows at once (one left-padded batch, one KV cache)
   against plain per-prompt `model.generate` (one call per prompt, `num_return_sequences=G`, which already
   batches the G copies), best of 3 interleaved rounds. Goal >= 1.5x.
2. A whole GRPO step (rollouts + rewards + advantages + forward/backward + AdamW) through steelforge's
   `Trainer` + `RolloutBatches` against TRL 1.16's `GRPOTrainer` with the same settings (dapo, beta 0, μ 1,
   lr 1e-6, G completions per prompt, `--prompts` prompts per step). Goal >= 1.3x. Step times are the median
   of the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "小明有3个苹果，又买了5个，他现在有几个苹果？",
    "The city of Paris is the capital of",
    "问：地球绕太阳一周需要多长时间？答：",
    "def fibonacci(n):",
    "Compute 12 * 7 and explain the steps.",
    "北京是中国的首都，它有很多著名的景点，比如",
    "Once upon a time, in a small village,",
    "Question: what is the boiling point of water? Answer:",
]


def build(seed: int = 0):
    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer

    torch.manual_seed(seed)
    model = load_model("tiny-steel", dtype=torch.float32)
    tok = load_tokenizer("qwen1.5")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def bench_rollouts(model, tok, prompts: list[str], G: int, new: int, rounds: int = 3) -> dict[str, float]:
    """Completion tokens/s of each method, best of `rounds` interleaved rounds (the machine is shared)."""
    from steelforge.models.generate import generate

    model.eval()
    ids = [tok(p)["input_ids"] for p in prompts]
    rows = [p for p in ids for _ in range(G)]

    def ours() -> int:
        res = generate(model, rows, max_new_tokens=new, temperature=1.0, stop_token_ids=[],
                       pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))  # fmt: skip
        return res.completion_tokens

    def hf(x: list[int], n: int) -> int:
        t = torch.tensor([x])
        o = model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=new, min_new_tokens=new,
                           do_sample=True, temperature=1.0, top_p=None, top_k=None, num_return_sequences=n,
                           pad_token_id=tok.pad_token_id, eos_token_id=None)  # fmt: skip
        return int((o.shape[1] - t.shape[1]) * o.shape[0])

    methods = {
        "steelforge_batched": ours,
        "hf_generate_per_prompt": lambda: sum(hf(x, G) for x in ids),
    }
    best = dict.fromkeys(methods, 0.0)
    with torch.no_grad():
        generate(
            model,
            rows[:2],
            max_new_tokens=4,
            temperature=1.0,
            stop_token_ids=[],
            pad_token_id=tok.pad_token_id,
        )
        hf(ids[0], 2)
        for _ in range(rounds):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                tokens = fn()
                best[name] = max(best[name], tokens / (time.perf_counter() - t0))
    return best


def constant_reward(prompts, completions, **kw):  # TRL reward signature
    return [float(len(c) % 3) for c in completions]


def steelforge_reward(prompt, completion, example):  # steelforge reward signature, same values
    return float(len(completion) % 3)


def bench_steelforge_step(
    model, tok, prompts: list[str], G: int, new: int, steps: int, tmp: Path
) -> list[float]:
    import json

    from steelforge.posttrain.grpo import RewardScorer, RolloutBatches, grpo_objective
    from steelforge.posttrain.grpo_config import GRPOConfig, RewardSpec
    from steelforge.posttrain.prompts import load_prompts
    from steelforge.posttrain.rollout import HFRollout
    from steelforge.train.engine import Trainer, TrainerConfig

    path = tmp / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p, "answer": "1"}, ensure_ascii=False) + "\n" for p in PROMPTS)
    )
    rows = len(prompts) * G
    cfg = GRPOConfig(prompts=path, chat_template=False, num_generations=G, per_device_batch_size=rows,
                     max_completion_length=new, rewards=[RewardSpec(name=f"{__name__}:steelforge_reward")],
                     clip_grad_norm=1.0)  # fmt: skip
    ps = load_prompts(path, tok, reward_names=[], chat_template=False)
    batches = RolloutBatches(model, HFRollout(model), ps, tok, RewardScorer(cfg.rewards), cfg, seed=0,
                             device=torch.device("cpu"), stop_token_ids=[tok.eos_token_id],
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = Trainer(model, grpo_objective(cfg), batches, TrainerConfig(max_steps=steps), optimizer=opt,
                      scheduler=sched)  # fmt: skip
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return times


def bench_trl_step(model, tok, prompts: list[str], G: int, new: int, steps: int, tmp: Path) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    rows = len(prompts) * G
    args = GRPOConfig(
        output_dir=str(tmp / "trl"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=new, max_steps=steps, learning_rate=1e-6, beta=0.0, loss_type="dapo",
        temperature=1.0, logging_steps=1000, seed=0, max_grad_norm=1.0, lr_scheduler_type="constant",
        weight_decay=0.0, disable_tqdm=True,
    )  # fmt: skip
    data = Dataset.from_dict({"prompt": PROMPTS})
    trainer = GRPOTrainer(model=model, reward_funcs=constant_reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Timer()])  # fmt: skip
    trainer.train()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per rollout batch / GRPO step")
    ap.add_argument("--G", type=int, default=8, help="completions per prompt")
    ap.add_argument("--new", type=int, default=16, help="new tokens per completion")
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps per side (the first is warm-up)")
    a = ap.parse_args()
    import tempfile

    from steelforge.reporting import print_table

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model, tok = build()
    prompts = PROMPTS[: a.prompts]
    print(f"torch threads {torch.get_num_threads()}, prompts {a.prompts} x G {a.G}, {a.new} new tokens")
    roll = bench_rollouts(model, tok, PROMPTS[:4], a.G, a.new)
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_steelforge_step(copy.deepcopy(model), tok, prompts, a.G, a.new, a.steps, Path(tmp))
        trl = bench_trl_step(copy.deepcopy(model), tok, prompts, a.G, a.new, a.steps, Path(tmp))
    ours_s, trl_s = statistics.median(ours[1:]), statistics.median(trl[1:])
    rows = [(k, f"{v:,.0f}") for k, v in roll.items()]
    rows += [
        (
            "batched / per-prompt generate",
            f"{roll['steelforge_batched'] / roll['hf_generate_per_prompt']:.2f}x",
        ),
        ("steelforge GRPO step s (median)", f"{ours_s:.2f}  all: {', '.join(f'{t:.2f}' for t in ours)}"),
        ("TRL GRPOTrainer step s (median)", f"{trl_s:.2f}  all: {', '.join(f'{t:.2f}' for t in trl)}"),
        ("GRPO step speed-up vs TRL", f"{trl_s / ours_s:.2f}x"),
    ]
    print_table("GRPO bench (rollout tokens/s; step seconds)", ["measure", "value"], rows, text_columns=True)


if __name__ == "__main__":
    main()
