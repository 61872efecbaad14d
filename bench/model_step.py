"""Training-step speed of steelforge's models against transformers' reference classes, on CPU.

Forward + backward + AdamW step tokens/s for Steel (dense and Soft-MoE) and Moxin-style models, the same
dimensions on HF's Qwen2/Mistral classes in the same run (ratio), and achieved FLOP/s (analytic matmul FLOPs,
`steelforge.models.flops`) as a fraction of a 2048^3 fp32 GEMM measured in the same run. The models of a
row step in turn with the order flipped every round; the `control-qwen2` row times two identical Qwen2 models,
so its ratio spread shows how much of any other row's difference is the machine's noise.

    python bench/model_step.py            # full: seq 512, batch 4
    python bench/model_step.py --quick    # a smoke run in well under a minute
    python bench/model_step.py --threads 1 --cases control-qwen2 steel-dense-40M moxin-style --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from steelforge.models.flops import flops_per_token
from steelforge.models.loading import load_model
from steelforge.reporting import print_table

SMALL = {
    "vocab_size": 8192,
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# dense Steel (FFN_type raw, no width division) is Qwen2 exactly: ~40M non-embedding parameters
DENSE = {**SMALL, "intermediate_size": 2560}
# Soft-MoE Steel: 6 dual-SwiGLU experts of 2048 // 4 wide, against a Qwen2 with a dense 2048-wide SwiGLU
SOFTMOE = {**SMALL, "intermediate_size": 2048, "n_experts": 6, "slots_per_expert": 1, "mlp_div_ratio": 4}
MOXIN = {**SMALL, "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 1792, "sliding_window": 4096}


def gemm_flops_per_second(size: int = 2048, reps: int = 10) -> float:
    """fp32 GEMM throughput: the machine's practical matmul peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - start)


def make_step(model: torch.nn.Module, batch: int, seq: int):
    """One training step (forward, next-token cross-entropy, backward, AdamW) as a closure; warmed up once."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(
        0, model.config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0)
    )

    def step() -> None:
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    return step


def interleaved_rates(
    models: list[torch.nn.Module], batch: int, seq: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Each model's best tokens/s and the per-round ratios of the first model to the second.

    The models step in turn, round by round, with the order flipped every round, so a load change on a
    shared machine or the cost of going first hits both alike; the median of the per-round ratios is the
    robust comparison, the best step of each the one least disturbed by neighbours.
    """
    steps = [make_step(model, batch, seq) for model in models]
    best = [float("inf")] * len(models)
    ratios = []
    for r in range(rounds):
        seconds = [0.0] * len(models)
        order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
        for i in order:
            start = time.perf_counter()
            steps[i]()
            seconds[i] = time.perf_counter() - start
            best[i] = min(best[i], seconds[i])
        ratios.append(seconds[1] / seconds[0])
    return [batch * seq / s for s in best], ratios


CASES = ("control-qwen2", "steel-dense-40M", "moxin-style", "steel-moe-causal", "steel-moe-token", "steel-moe-sequence")


def cases(quick: bool, names: list[str]) -> list[tuple[str, object, object]]:
    """(name, our model, HF reference model) for the chosen case names."""
    torch.manual_seed(0)
    rows = [
        (
            "steel-dense-40M",
            load_model(
                {
                    "preset": "tiny-steel",
                    "overrides": {**DENSE, "FFN_type": "raw", "mlp_type": "raw", "mlp_div_ratio": 1},
                }
            ),
            Qwen2ForCausalLM(Qwen2Config(**DENSE, attn_implementation="sdpa")),
        ),
        (
            "moxin-style",
            load_model({"preset": "tiny-moxin", "overrides": MOXIN}),
            MistralForCausalLM(MistralConfig(**MOXIN, attn_implementation="sdpa")),
        ),
    ]
    if "control-qwen2" in names:
        # A/A control: two identical HF models. Its ratio spread is the noise band of this run, the yardstick
        # for the other rows (dense Steel reuses Qwen2's modules and the Moxin preset *is* MistralForCausalLM).
        twin = Qwen2ForCausalLM(Qwen2Config(**DENSE, attn_implementation="sdpa"))
        rows.insert(0, ("control-qwen2", twin, Qwen2ForCausalLM(Qwen2Config(**DENSE, attn_implementation="sdpa"))))
    rows = [row for row in rows if row[0] in names]
    modes = [name.removeprefix("steel-moe-") for name in names if name.startswith("steel-moe-")]
    reference = Qwen2ForCausalLM(
        Qwen2Config(**{**SOFTMOE, "intermediate_size": 2048}, attn_implementation="sdpa")
    )
    for mode in modes:
        steel = load_model({"preset": "tiny-steel", "overrides": {**SOFTMOE, "softmoe_dispatch": mode}})
        rows.append((f"steel-moe-{mode}", steel, reference))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seq 128, batch 1, 2 rounds, two models")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 512)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed steps per model, interleaved (default 5)"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None, help="subset of the cases (default all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seq = args.seq or (128 if args.quick else 512)
    batch = args.batch or (1 if args.quick else 4)
    rounds = args.rounds or (2 if args.quick else 5)
    names = args.cases or (["steel-dense-40M", "steel-moe-causal"] if args.quick else list(CASES))

    peak_before = gemm_flops_per_second()
    measured = []
    for name, ours, reference in cases(args.quick, names):
        flops = flops_per_token(ours.config, seq)
        (ours_tps, ref_tps), ratios = interleaved_rates([ours, reference], batch, seq, rounds)
        ref_name = type(reference).__name__.removesuffix("ForCausalLM")
        spread = f"{statistics.median(ratios):.3f} [{min(ratios):.2f}-{max(ratios):.2f}]"
        measured.append((name, ours_tps, ref_name, ref_tps, ours_tps / ref_tps, spread, ours_tps * flops))
    peak_after = gemm_flops_per_second()
    # the best GEMM figure of the run: on a shared machine the lower one only measures the neighbours' load
    peak = max(peak_before, peak_after)
    rows = [(*row[:-1], row[-1] / peak) for row in measured]
    print_table(
        f"train step seq {seq} batch {batch}, {args.threads} threads; "
        f"GEMM {peak_before / 1e9:.0f} GFLOP/s before, {peak_after / 1e9:.0f} after",
        ["model", "tok/s", "HF ref", "tok/s", "ratio (best)", "ratio per round: median [range]", "of GEMM peak"],
        rows,
    )


if __name__ == "__main__":
    main()
