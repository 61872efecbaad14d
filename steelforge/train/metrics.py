"""Training visibility: a live console line, JSONL + TensorBoard sinks, PNG curves, MFU and device peaks.

MFU = achieved matmul FLOP/s / device peak. Peaks come from vendor datasheets for known GPUs (dense,
no sparsity) and from a measured GEMM on CPU, where no datasheet figure means anything.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelforge.reporting import console

# (name fragment, bf16/fp16 dense, TF32 dense, plain FP32) in FLOP/s, from NVIDIA datasheets.
# Order matters: the first fragment found in the device name wins (so "H100 PCIe" before "H100").
GPU_PEAK_FLOPS: tuple[tuple[str, float, float | None, float], ...] = (
    ("GH200", 989e12, 494.7e12, 67e12),
    ("H200", 989e12, 494.7e12, 67e12),
    ("H100 PCIe", 756e12, 378e12, 51.2e12),
    ("H100 NVL", 835e12, 417.5e12, 60e12),
    ("H100", 989e12, 494.7e12, 67e12),  # SXM5
    ("H800", 989e12, 494.7e12, 67e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("A800", 312e12, 156e12, 19.5e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L40", 181e12, 90.5e12, 90.5e12),
    ("L4", 121e12, 60e12, 30.3e12),
    ("RTX 4090", 165.2e12, 82.6e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12, 35.6e12),
    ("V100", 125e12, None, 15.7e12),  # fp16 tensor cores; no bf16
)

_GEMM_CACHE: dict[tuple[str, torch.dtype, int, int], float] = {}


def measure_gemm_peak(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, n: int = 2048, reps: int = 10
) -> float:
    """Best FLOP/s of an n×n @ n×n matmul on ``device`` (cached per process, device, dtype, threads)."""
    device = torch.device(device)
    key = (str(device), dtype, n, torch.get_num_threads())
    if key in _GEMM_CACHE:
        return _GEMM_CACHE[key]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    _GEMM_CACHE[key] = 2.0 * n**3 / best
    return _GEMM_CACHE[key]


def measure_cpu_gemm_peak(n: int = 2048, reps: int = 10) -> float:
    """fp32 GEMM peak of this CPU at the current torch thread count (the CPU's MFU denominator)."""
    return measure_gemm_peak("cpu", torch.float32, n=n, reps=reps)


def table_peak_flops(device_name: str, dtype: torch.dtype, *, tf32: bool = False) -> float | None:
    """Datasheet dense peak for a GPU name such as ``"NVIDIA H100 80GB HBM3"``, or None when unknown."""
    for fragment, half, tf32_peak, fp32 in GPU_PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            if dtype in (torch.bfloat16, torch.float16):
                return half
            if tf32 and tf32_peak is not None:
                return tf32_peak
            return fp32
    return None


def resolve_peak_flops(
    device: torch.device | str, dtype: torch.dtype = torch.bfloat16, tflops: float | None = None
) -> tuple[float, str]:
    """One device's peak matmul FLOP/s for MFU and where it came from (printed with the run's summary).

    A given `tflops` (recipe `pretrain.peak_tflops`) wins; a known GPU uses its datasheet figure; otherwise
    a short GEMM probe measures it. On a CPU the probe takes the faster of fp32 and `dtype`: many CPUs run
    bf16 GEMMs far below their fp32 speed, and autocast keeps much of the step in fp32, so a bf16-only probe
    understated the peak and printed MFU above 100%.
    """
    if tflops:
        return float(tflops) * 1e12, "recipe value (pretrain.peak_tflops)"
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        peak = table_peak_flops(name, dtype, tf32=tf32)
        if peak is not None:
            return peak, f"datasheet, {name}, {str(dtype).removeprefix('torch.')}{' (TF32)' if tf32 else ''}"
        console.print(f"[yellow]no datasheet peak for {name}; measuring a {dtype} GEMM for MFU[/]")
    measured, kind = measure_gemm_peak(device, dtype), str(dtype).removeprefix("torch.")
    if device.type == "cpu" and dtype != torch.float32:
        fp32 = measure_gemm_peak(device, torch.float32)
        if fp32 > measured:
            measured, kind = fp32, "fp32"
    return measured, f"measured {kind} GEMM on {device.type} ({torch.get_num_threads()} threads)"


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> float:
    """Peak matmul FLOP/s of one device for ``dtype`` (see `resolve_peak_flops`)."""
    return resolve_peak_flops(device, dtype)[0]


def mfu(tokens_per_second: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: the fraction of the device peak the training step achieves."""
    return tokens_per_second * flops_per_token / peak if peak > 0 else 0.0


def count_training_flops(model: nn.Module, input_ids: torch.Tensor) -> float:
    """FLOPs of one forward + backward over ``input_ids`` counted by ``torch.utils.flop_counter``.

    Gradients are cleared afterwards; use it on a tiny batch to check or replace an analytic formula.
    SDPA runs its math backend here: the CPU flash kernel has no FLOP formula and would count as zero.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(input_ids=input_ids, labels=input_ids)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Peak allocated memory: the CUDA allocator's high-water mark, or this process's max RSS on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _fmt_count(value: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


# key -> console formatter; keys absent from a record are left out of the line.
_CONSOLE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("loss", lambda v: f"loss {v:.4f}"),
    ("val_loss", lambda v: f"val {v:.4f}"),
    ("val_ppl", lambda v: f"ppl {v:.2f}"),
    ("lr", lambda v: f"lr {v:.2e}"),
    ("grad_norm", lambda v: f"gnorm {v:.3f}"),
    ("tokens_per_s", lambda v: f"{_fmt_count(v)} tok/s/dev"),
    ("mfu", lambda v: f"MFU {100 * v:.1f}%"),
    ("tokens", lambda v: f"data {_fmt_count(v)} tok"),
    ("skipped", lambda v: f"skipped {int(v)}"),
)


# Bookkeeping keys: everything else an objective logs (reward, kl, rewards/accuracies...) is its own metric,
# shown on the console line (first few) and drawn in the PNG's second row.
_BOOKKEEPING = frozenset(
    {"step", "time", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens", "skipped", "step_time_s", "val_ppl",
     "generated_tokens_total"}
)
_CONSOLE_OBJECTIVE_FIELDS = 4
_PLOT_OBJECTIVE_FIELDS = 6


def objective_keys(records: list[dict[str, float]] | list[Mapping[str, float]]) -> list[str]:
    """The objective's own metric names in these records (not losses, not the engine's bookkeeping)."""
    keys = {k for r in records for k in r if k not in _BOOKKEEPING and not k.endswith("loss")}
    return sorted(keys)


class MetricsLogger:
    """Every training metric goes through here: console line, ``metrics.jsonl``, TensorBoard, curves.

    Only the main rank writes anything. ``log`` expects per-step scalars such as loss, lr, grad_norm,
    tokens_per_s (per device), mfu, tokens (data position); other keys are stored and plotted if named
    ``*loss``. The JSONL file is appended to, so a resumed run extends the curves of the first one.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        total_steps: int,
        is_main: bool,
        tensorboard: bool = True,
        jsonl_name: str = "metrics.jsonl",
        plot_name: str = "curves.png",
        wandb: Mapping[str, Any] | None = None,
        log_every: int = 1,
    ) -> None:
        self.out_dir = Path(out_dir)
        # Training lines are kept every `log_every` steps, plus the run's first step (so a person sees at once
        # that training started and how long the warm-up step took) and the last one.
        self.log_every = max(1, log_every)
        self.total_steps = total_steps
        self.is_main = is_main
        self.jsonl_path = self.out_dir / jsonl_name
        self.plot_path = self.out_dir / plot_name
        self._records: list[dict[str, float]] = []
        self._t0: float | None = None
        self._first_step: int | None = None
        self._jsonl = None
        self._tb = None
        self._wandb: Any = None
        if not is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            self._tb = self._open_tensorboard()
        if wandb is not None:
            self._wandb = self._open_wandb(dict(wandb))

    def _open_wandb(self, settings: dict[str, Any]) -> Any:
        """A Weights & Biases run (`project`, `name`, `mode`: online|offline|disabled, `config`) under
        `<out_dir>/wandb`; resumed runs continue the same run id, kept in `<out_dir>/wandb_run_id`."""
        try:
            import wandb
        except ImportError as exc:
            from steelforge.errors import RecipeError

            raise RecipeError(
                "metrics go to Weights & Biases but wandb is not installed; pip install 'steelforge[wandb]' "
                "or remove the wandb setting"
            ) from exc
        id_file = self.out_dir / "wandb_run_id"
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else secrets.token_hex(4)
        if not id_file.is_file():
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(run_id, encoding="utf-8")
            os.replace(tmp, id_file)
        return wandb.init(
            project=settings.get("project") or "steelforge",
            name=settings.get("name"),
            mode=settings.get("mode") or "offline",
            config=settings.get("config"),
            dir=str(self.out_dir),
            id=run_id,
            resume="allow",
        )

    @property
    def wandb_run(self) -> Any:
        return self._wandb

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.print("TensorBoard is not installed: metrics go to the console and metrics.jsonl only")
            return None
        return SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def eta_seconds(self, step: int) -> float:
        """Remaining wall time from the mean step time since this logger saw its first step."""
        if self._t0 is None or self._first_step is None or step <= self._first_step:
            return math.nan
        per_step = (time.monotonic() - self._t0) / (step - self._first_step)
        return per_step * max(self.total_steps - step, 0)

    def format_line(self, step: int, metrics: Mapping[str, float]) -> str:
        parts = [f"step {step:,}/{self.total_steps:,}"]
        parts += [fmt(metrics[key]) for key, fmt in _CONSOLE_FIELDS if key in metrics]
        parts += [f"{key} {metrics[key]:.4g}" for key in objective_keys([metrics])[:_CONSOLE_OBJECTIVE_FIELDS]]
        parts.append(f"ETA {_fmt_duration(self.eta_seconds(step))}")
        return " | ".join(parts)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record one step's scalars; prints the live line on the main rank."""
        if not self.is_main:
            return
        values = {key: _scalar(value) for key, value in metrics.items()}
        first = self._t0 is None
        if first:
            self._t0, self._first_step = time.monotonic(), step
        elif "loss" in values and step % self.log_every and step != self.total_steps:
            return
        record = {"step": step, "time": time.time(), **values}
        self._records.append(record)
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{key}": value for key, value in values.items()}, step=step)
        line = self.format_line(step, values)
        if first and "loss" in values:
            line += " (first step of this run: includes warm-up/compilation)"
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    def history(self) -> list[dict[str, float]]:
        """All records in ``metrics.jsonl`` (earlier runs included), the last one kept per step."""
        if not self.jsonl_path.is_file():
            return list(self._records)
        by_step: dict[int, dict[str, float]] = {}
        for line in self.jsonl_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
        return [by_step[s] for s in sorted(by_step)]

    def plot(self) -> Path | None:
        """Loss (train and validation) and learning-rate curves as a PNG; None when nothing was logged."""
        if not self.is_main:
            return None
        records = self.history()
        if not records:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        extra = objective_keys(records)[:_PLOT_OBJECTIVE_FIELDS]
        cols = max(2, len(extra))
        fig = Figure(figsize=(5 * cols, 4 * (2 if extra else 1)), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(2 if extra else 1, cols, squeeze=False)
        ax_loss, ax_lr = axes[0][0], axes[0][1]
        for ax in axes[0][2:]:
            ax.set_visible(False)
        for i, key in enumerate(extra):  # the objective's own curves (reward, kl, accuracies...)
            pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if pts:
                axes[1][i].plot(*zip(*pts, strict=True), marker="." if len(pts) < 50 else None)
            axes[1][i].set_xlabel("step")
            axes[1][i].set_ylabel(key)
        for ax in axes[1][len(extra) :] if extra else []:
            ax.set_visible(False)
        loss_keys = sorted({k for r in records for k in r if k.endswith("loss")})
        for key in loss_keys:
            pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if pts:
                ax_loss.plot(*zip(*pts, strict=True), label=key, marker="." if len(pts) < 50 else None)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        if loss_keys:
            ax_loss.legend()
        lr_pts = [(r["step"], r["lr"]) for r in records if "lr" in r]
        if lr_pts:
            ax_lr.plot(*zip(*lr_pts, strict=True), color="tab:orange")
        ax_lr.set_xlabel("step")
        ax_lr.set_ylabel("learning rate")
        fig.tight_layout()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.plot_path)
        return self.plot_path

    def summary_rows(self) -> list[tuple[str, Any]]:
        """End-of-run rows for the stage's summary table (this process's run, not earlier ones)."""
        recs = self._records
        if not recs:
            return [("steps logged", 0)]

        def col(key: str) -> list[float]:
            return [r[key] for r in recs if key in r and math.isfinite(r[key])]

        rows: list[tuple[str, Any]] = [
            ("steps logged", len(recs)),
            ("last step", int(recs[-1]["step"])),
        ]
        losses = col("loss")
        if losses:
            rows += [("first loss", losses[0]), ("last loss", losses[-1]), ("min loss", min(losses))]
        for key, label in (("val_loss", "last val loss"), ("val_ppl", "last val perplexity")):
            if col(key):
                rows.append((label, col(key)[-1]))
        for key, label in (("tokens_per_s", "mean tokens/s/device"), ("grad_norm", "mean grad norm")):
            if col(key):
                rows.append((label, sum(col(key)) / len(col(key))))
        if col("mfu"):
            rows.append(("mean MFU %", 100 * sum(col("mfu")) / len(col("mfu"))))
        if col("tokens"):
            rows.append(("tokens seen", int(col("tokens")[-1])))
        if col("skipped"):
            rows.append(("skipped steps", int(col("skipped")[-1])))
        return rows  # the stage's one wall-time figure is the report's own (`StageReport.seconds`)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
