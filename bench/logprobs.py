"""Memory and time of `token_logps` (chunked head) against plain `log_softmax(logits).gather`.

The head projection is what matters at Qwen's vocabulary (151,936): a [1, 1024, V] fp32 logits tensor is
622 MB, and `log_softmax` plus its backward hold several of them. The "decoder" here is a fixed hidden-state
tensor [1, T, d] (d = 256) and the head a bias-free `nn.Linear(d, V)`, so both paths differ only in the head.
Every position but the first is scored (the worst case for the chunked path).

Two modes: `forward` (no grad, as the reference and old-policy log-probs are computed) and `train` (forward and
backward of the summed log-probs, gradients for the hidden states and the head weight). Memory: each (path, mode)
in its own process, one warm-up step, then one step whose peak extra RSS is read (VmHWM reset through
/proc/self/clear_refs, as bench/train_step.py does; on CUDA `max_memory_allocated`). Time: both paths in one
process, alternating step by step for `--rounds` rounds; the ratio is the median of the per-round ratios.
Goals: peak extra memory of `token_logps` <= 1/4 of one full fp32 logits tensor, time <= 1.2x the plain path.

    python bench/logprobs.py                     # CPU, V 151,936, seq 1024, batch 1, d 256 (1-2 min on 2 cores)
    python bench/logprobs.py --rounds 5 --chunk 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from steelforge.posttrain.logprobs import DEFAULT_CHUNK, token_logps  # noqa: E402


class HeadOnly(nn.Module):
    """A causal LM whose decoder output is a fixed tensor: only `lm_head` and the scoring differ between paths."""

    def __init__(self, hidden: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.hidden = nn.Parameter(hidden)
        self.lm_head = nn.Linear(hidden.shape[-1], vocab, bias=False)

    def forward_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden * 1.0  # a fresh activation, as a decoder's output would be


def _rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process, from /proc (Linux)."""
    status = Path("/proc/self/status").read_text()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")}
    return kib["VmRSS"] * 1024, kib["VmHWM"] * 1024


def plain_logps(model: HeadOnly, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The usual path: full [B, T, V] logits upcast to fp32, log_softmax, gather, mask."""
    logits = model.lm_head(model.forward_hidden(ids)).float()
    picked = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked * mask[:, 1:]], dim=1)


def setup(args: argparse.Namespace) -> tuple[HeadOnly, torch.Tensor, torch.Tensor, torch.device]:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    gen = torch.Generator().manual_seed(0)
    model = HeadOnly(torch.randn(args.batch, args.seq, args.hidden, generator=gen), args.vocab).to(device)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    return model, ids, torch.ones_like(ids), device


def make_step(path: str, mode: str, model: HeadOnly, ids: torch.Tensor, mask: torch.Tensor, chunk: int):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(mode == "train"):
            out = token_logps(model, ids, None, mask, chunk_size=chunk) if path == "chunked" else plain_logps(
                model, ids, mask
            )
            if mode == "train":
                out.sum().backward()
        if ids.is_cuda:
            torch.cuda.synchronize()

    return step


def memory_probe(path: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak extra memory of one step after a warm-up step (whose head gradient is still held: both paths)."""
    model, ids, mask, device = setup(args)
    step = make_step(path, mode, model, ids, mask, args.chunk)
    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated(device) - base}
    base, _ = _rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    step()
    return {"peak_extra_bytes": _rss_bytes()[1] - base}


def timings(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both paths in one process, alternating round by round (the shared machine's speed drifts)."""
    model, ids, mask, _ = setup(args)
    steps = {path: make_step(path, mode, model, ids, mask, args.chunk) for path in ("chunked", "plain")}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {"chunked": [], "plain": []}
    for _ in range(args.rounds):
        for path, step in steps.items():
            start = time.perf_counter()
            step()
            times[path].append(time.perf_counter() - start)
    ratios = [c / p for c, p in zip(times["chunked"], times["plain"], strict=True)]
    return {"times_s": times, "round_ratios": ratios}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="rows per head chunk of token_logps")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (one step of each path), median reported")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    p.add_argument("--gpu", action="store_true", help="run on one CUDA GPU (memory from the CUDA allocator)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--probe", nargs=2, default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.probe:
        print(json.dumps(memory_probe(*args.probe, args)))
        return
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("vocab", "seq", "batch", "hidden", "chunk", "threads")]
    passthrough += ["--gpu"] if args.gpu else []
    logits_bytes = args.batch * args.seq * args.vocab * 4
    print(f"V={args.vocab} seq={args.seq} batch={args.batch} d={args.hidden} chunk={args.chunk} "
          f"threads={args.threads}; one fp32 logits tensor = {logits_bytes / 2**20:.0f} MiB")  # fmt: skip
    rows = []
    for mode in args.modes:
        peak = {}
        for path in ("chunked", "plain"):
            cmd = [sys.executable, __file__, "--probe", path, mode, *passthrough]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peak[path] = json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_bytes"]
        timed = timings(mode, args)
        row = {
            "mode": mode,
            "chunked_peak_mib": peak["chunked"] / 2**20,
            "plain_peak_mib": peak["plain"] / 2**20,
            "chunked_peak_over_logits": peak["chunked"] / logits_bytes,
            "chunked_s": statistics.median(timed["times_s"]["chunked"]),
            "plain_s": statistics.median(timed["times_s"]["plain"]),
            "time_ratio": statistics.median(timed["round_ratios"]),
            **timed,
        }
        rows.append(row)
        mem_ok = "ok" if row["chunked_peak_over_logits"] <= 0.25 else "MISSED"
        time_ok = "ok" if row["time_ratio"] <= 1.2 else "MISSED"
        ratios = ", ".join(f"{r:.2f}" for r in row["round_ratios"])
        print(
            f"{mode:8s} peak extra: token_logps {row['chunked_peak_mib']:.0f} MiB, plain {row['plain_peak_mib']:.0f} "
            f"MiB; token_logps / one logits tensor = {row['chunked_peak_over_logits']:.3f} (goal <= 0.25: {mem_ok})\n"
            f"{'':8s} median time: token_logps {row['chunked_s']:.3f} s, plain {row['plain_s']:.3f} s; per-round "
            f"ratios [{ratios}], median {row['time_ratio']:.2f} (goal <= 1.2: {time_ok})"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
