"""Training-step throughput, MFU and loss memory of the steelforge engine, against a plain PyTorch loop.

For each case the same run measures
  * engine       -- steelforge's `Trainer` (chunked cross-entropy, global-token normalisation, clipping)
                    on the preset's own architecture (Steel Soft-MoE or Mistral) built by `load_model`;
  * engine/HF    -- the same engine on the Hugging Face reference class (Qwen2 or Mistral) of equal dims;
  * plain        -- a minimal loop over that HF class: `model(ids, labels=ids).loss.backward()`, clip,
                    AdamW step (the baseline; ratios are engine / plain tokens per second);
and, in subprocesses, the peak extra memory of one step with chunked vs full cross-entropy.
MFU = tokens/s x matmul FLOPs per token (`steelforge.models.flops`) / peak, the peak being a measured
fp32 GEMM on CPU and the datasheet figure on a GPU.

    python bench/train_step.py --quick            # CPU, tiny presets (about a minute on 2 cores)
    python bench/train_step.py                    # CPU, tiny and small presets
    python bench/train_step.py --gpu              # one CUDA GPU: steel-1b, seq 2048, bf16 (tokens/s/GPU, MFU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SMALL_STEEL = {
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "intermediate_size": 2048,
}
SMALL_MOXIN = {
    "hidden_size": 512,
    "head_dim": 64,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 1536,
}
# case name -> recipe `model:` block
CASES: dict[str, dict[str, Any]] = {
    "tiny-steel": {"preset": "tiny-steel"},
    "tiny-moxin": {"preset": "tiny-moxin"},
    "small-steel": {"preset": "tiny-steel", "overrides": SMALL_STEEL},
    "small-moxin": {"preset": "tiny-moxin", "overrides": SMALL_MOXIN},
    "steel-1b": {"preset": "steel-1b"},
}


def reference_config(model_config: Any) -> Any:
    """The HF reference class's config with the same dimensions (Steel -> dense Qwen2 SwiGLU)."""
    from transformers import MistralConfig, Qwen2Config

    if isinstance(model_config, MistralConfig):
        return MistralConfig(**model_config.to_dict())
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
    )
    fields = {k: getattr(model_config, k) for k in keys}
    return Qwen2Config(**fields, rope_theta=getattr(model_config, "rope_theta", 1e6))


def random_batches(vocab: int, batch: int, seq: int, n: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq + 1), generator=g).to(device) for _ in range(n)]


def engine_stepper(
    model: Any,
    batches: list[torch.Tensor],
    *,
    loss: str,
    chunk: int,
    precision: str,
    compile_blocks: bool = False,
) -> Any:
    """One steelforge `Trainer.train_step` per call over `batches` (inputs/labels shifted like the loader's)."""
    from steelforge.train.config import OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig
    from steelforge.train.distributed import parallelize
    from steelforge.train.engine import Trainer, TrainerConfig
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.pretrain import causal_lm_loss

    device = batches[0].device
    speed = SpeedConfig(precision=precision, loss=loss, loss_chunk_tokens=chunk, compile=compile_blocks)
    parallelize(model, None, speed, ParallelConfig())
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    scheduler = build_scheduler(optimizer, ScheduleConfig(), total_steps=len(batches), peak_lr=1e-4)
    micro = ({"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in batches)
    cfg = TrainerConfig(
        max_steps=len(batches),
        checkpoint_every=None,
        precision=precision,
        device=device,
        tokens_per_step=batches[0][:, :-1].numel(),
        resume="none",
    )
    loss_fn = causal_lm_loss(mode=loss, chunk_tokens=chunk)
    trainer = Trainer(model, loss_fn, micro, cfg, optimizer=optimizer, scheduler=scheduler)
    return trainer.train_step


def plain_stepper(model: Any, batches: list[torch.Tensor], *, precision: str) -> Any:
    """The textbook loop over an HF causal LM (HF computes full fp32 logits + cross-entropy)."""
    device = batches[0].device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    it = iter(batches)

    def step() -> None:
        ids = next(it)[:, :-1]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step: Any, device: torch.device) -> float:
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def build(case: str, *, reference: bool, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    from steelforge.models.loading import build_config, load_model

    torch.manual_seed(0)
    if not reference:
        return load_model(CASES[case], dtype=torch.float32, device=device)
    config = reference_config(build_config(CASES[case]))
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).to(
        device
    )


def measure_case(
    case: str, args: argparse.Namespace, device: torch.device, peak: float
) -> list[dict[str, Any]]:
    """The three runs step by step in turn (round-robin), so load changes on a shared machine hit all alike."""
    from steelforge.models.flops import flops_per_token

    n = args.warmup + args.steps
    runs: dict[str, dict[str, Any]] = {}
    for label in ("plain", "engine/HF", "engine"):
        model = build(case, reference=label != "engine", device=device)
        batches = random_batches(model.config.vocab_size, args.batch, args.seq, n, device)
        if label == "plain":
            step = plain_stepper(model, batches, precision=args.precision)
        else:
            step = engine_stepper(
                model,
                batches,
                loss="chunked",
                chunk=args.chunk,
                precision=args.precision,
                compile_blocks=args.compile,
            )
        runs[label] = {"step": step, "times": [], "model": model}
    for _ in range(n):
        for run in runs.values():
            run["times"].append(timed(run["step"], device))
    rows = []
    for label, run in runs.items():
        step_s = statistics.median(run["times"][args.warmup :])
        tps = args.batch * args.seq / step_s
        fpt = flops_per_token(run["model"].config, args.seq, training=True)
        params = sum(p.numel() for p in run["model"].parameters())
        rows.append(
            {
                "case": case,
                "run": label,
                "params_M": params / 1e6,
                "step_s": step_s,
                "tokens_per_s": tps,
                "mfu": tps * fpt / peak,
                "flops_per_token": fpt,
            }
        )
    plain = rows[0]["tokens_per_s"]
    for row in rows:
        row["ratio_vs_plain"] = row["tokens_per_s"] / plain
    return rows


# ---------------------------------------------------------------------------------------- memory probe
def _rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process, from /proc (Linux)."""
    status = Path("/proc/self/status").read_text()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")}
    return kib["VmRSS"] * 1024, kib["VmHWM"] * 1024


def memory_probe(case: str, loss: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak extra memory of one training step after a warm-up step (optimizer state already allocated)."""
    device = torch.device("cuda" if args.gpu else "cpu")
    model = build(case, reference=False, device=device)
    batches = random_batches(model.config.vocab_size, args.batch, args.seq, 2, device)
    step = engine_stepper(model, batches, loss=loss, chunk=args.chunk, precision=args.precision)
    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        return {"loss": loss, "peak_extra_bytes": torch.cuda.max_memory_allocated(device) - base}
    base, _ = _rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    step()
    _, peak = _rss_bytes()
    return {"loss": loss, "peak_extra_bytes": peak - base}


def run_memory_probes(case: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each loss mode in a fresh process, so one mode's freed pages never hide the other's peak."""
    out = []
    for loss in ("chunked", "full"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-probe",
            loss,
            "--cases",
            case,
            "--seq",
            str(args.seq),
            "--batch",
            str(args.batch),
            "--chunk",
            str(args.memory_chunk),
            "--precision",
            args.precision,
            "--threads",
            str(args.threads),
        ] + (["--gpu"] if args.gpu else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append({"case": case, **json.loads(done.stdout.strip().splitlines()[-1])})
    return out


# ---------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny presets only, few steps")
    p.add_argument("--gpu", action="store_true", help="CUDA path: steel-1b, seq 2048, bf16")
    p.add_argument("--cases", nargs="+", default=None, help=f"subset of {', '.join(CASES)}")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (median reported)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--chunk", type=int, default=None, help="tokens per cross-entropy chunk in the speed runs")
    p.add_argument("--memory-chunk", type=int, default=None, help="tokens per chunk in the memory probe")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile each block in the engine runs")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--memory-cases", nargs="*", default=None, help="cases for the chunked/full memory probe")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu_defaults = {
        "cases": ["steel-1b"],
        "seq": 2048,
        "batch": 4,
        "steps": 10,
        "warmup": 3,
        "chunk": 4096,
        "memory_chunk": 4096,
        "precision": "bf16",
        "memory_cases": ["steel-1b"],
    }
    cpu_defaults = {
        "cases": ["tiny-steel", "tiny-moxin", "small-steel", "small-moxin"],
        "seq": 256,
        "batch": 4,
        "steps": 5,
        "warmup": 2,
        "chunk": 4096,
        "memory_chunk": 256,
        "precision": "fp32",
        "memory_cases": ["tiny-steel"],
    }
    if args.quick:
        cpu_defaults.update(cases=["tiny-steel", "tiny-moxin"], steps=3, warmup=1, batch=2)
    for key, value in (gpu_defaults if args.gpu else cpu_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("STEELFORGE_QUIET", "1")
    if args.memory_probe:
        print(json.dumps(memory_probe(args.cases[0], args.memory_probe, args)))
        return
    from steelforge.reporting import print_table
    from steelforge.train.metrics import peak_flops

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; none is visible")
    device = torch.device("cuda" if args.gpu else "cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = peak_flops(device, dtype)
    where = torch.cuda.get_device_name(device) if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {where}; peak {peak / 1e12:.3f} TFLOP/s ({'datasheet' if args.gpu else 'measured fp32 GEMM'}); "
        f"seq {args.seq}, micro-batch {args.batch}, {args.precision}",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    for case in args.cases:
        rows += measure_case(case, args, device, peak)
    print_table(
        "training step: engine vs plain HF loop (same dims, same run)",
        ["case", "run", "params M", "step s", "tokens/s" + ("/GPU" if args.gpu else ""), "MFU %", "x plain"],
        [
            (
                r["case"],
                r["run"],
                r["params_M"],
                r["step_s"],
                r["tokens_per_s"],
                100 * r["mfu"],
                r["ratio_vs_plain"],
            )
            for r in rows
        ],
    )
    memory: list[dict[str, Any]] = []
    for case in args.memory_cases:
        memory += run_memory_probes(case, args)
    if memory:
        print_table(
            "peak extra memory of one step: chunked vs full cross-entropy",
            ["case", "loss", "MiB"],
            [(m["case"], m["loss"], m["peak_extra_bytes"] / 2**20) for m in memory],
        )
    if args.json:
        args.json.write_text(json.dumps({"speed": rows, "memory": memory, "peak_flops": peak}, indent=2))


if __name__ == "__main__":
    main()
