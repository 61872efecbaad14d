"""The one training loop every stage shares: accumulation, global-token loss normalisation, clipping,
schedule, non-finite skipping, checkpoint/resume, signals, validation and metrics.

It knows nothing about data formats or objectives: it takes a model, an iterator of micro-batches and a
`loss_fn(model, batch) -> LossOutput`. The loss is a *sum* over valid tokens plus their count; after all
micro-batches of a step the gradients are divided by the global count of valid tokens over every
micro-batch and rank (torchtitan's `global_valid_tokens`), so the step equals one big batch's mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from steelforge.errors import SteelforgeError
from steelforge.reporting import console
from steelforge.train.distributed import autocast_context


class LossOutput(NamedTuple):
    """What an objective returns for one micro-batch: the summed loss and the number of tokens in it.

    `metrics` are the objective's own per-micro-batch numbers (e.g. DPO's `rewards/accuracies`): the engine
    averages them over the step's micro-batches and the ranks and logs them with its own.
    """

    loss_sum: Tensor
    num_tokens: Tensor
    metrics: dict[str, Tensor | float] | None = None


_ENGINE_KEYS = frozenset({"loss", "lr", "grad_norm", "finite", "valid_tokens"})


class TrainingDiverged(SteelforgeError):
    """Too many non-finite steps in a row; the last good checkpoint is left as it was."""


@dataclass
class TrainerConfig:
    """The engine's own settings (each stage fills them from its recipe section)."""

    max_steps: int
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    max_nonfinite_steps: int = 5
    log_every: int = 1
    checkpoint_every: int | None = None
    export_steps: list[int] = field(default_factory=list)
    export_final: bool = False
    val_every: int | None = None
    precision: str = "fp32"
    tokens_per_step: int = 0  # global input tokens per optimizer step (for tokens/s and data position)
    flops_per_token: float = 0.0  # training FLOPs per token (for MFU)
    peak_flops: float = 0.0  # one device's peak FLOP/s (for MFU)
    resume: str = "auto"  # "auto" | "none" | a checkpoint folder
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average per-rank metrics over the ranks (every rank must report the same keys, in any order)."""
    if not values or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def _full(t: Tensor) -> Tensor:
    """A DTensor (FSDP2) as a plain tensor with the global value."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class Trainer:
    """Runs `cfg.max_steps` optimizer steps; `fit()` returns a summary dict.

    `state_objects` (data loader, ...) are checkpointed with the model, optimizer, scheduler and the
    trainer's counters. `eval_fn(model) -> metrics` runs every `cfg.val_every` steps; `export_fn(step,
    final)` writes a consolidated model (every rank calls it, FSDP gathers).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], LossOutput],
        batches: Iterable[Any],
        cfg: TrainerConfig,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        checkpointer: Any = None,
        metrics: Any = None,
        state_objects: Mapping[str, Any] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        export_fn: Callable[[int, bool], Any] | None = None,
        stop_signal: Any = None,
        tokens_per_step: Callable[[], int] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.batch_source = batches
        self.batches: Iterator[Any] | None = None
        self.cfg = cfg
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.state_objects = dict(state_objects or {})
        self.eval_fn = eval_fn
        self.export_fn = export_fn
        self.stop_signal = stop_signal
        # Multi-phase runs change the sequence length: ask the data side each step when it can tell.
        self.tokens_per_step = tokens_per_step or (lambda: cfg.tokens_per_step)
        self._last_step_tokens = 0
        self.rank, self.world_size = _world()
        self.counters: dict[str, Any] = {"step": 0, "tokens": 0, "skipped": 0, "nonfinite_in_row": 0}
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.resumed_from: Path | None = None

    # ------------------------------------------------------------------ state
    def app_state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            **self.state_objects,
            "trainer": self.counters,
        }

    def maybe_resume(self) -> Path | None:
        """Load the checkpoint `cfg.resume` names ('auto': newest complete one), if any."""
        if self.checkpointer is None or self.cfg.resume == "none":
            return None
        path = self.checkpointer.latest() if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return None
        self.checkpointer.load(path, self.app_state())
        self.resumed_from = path
        if self.rank == 0:
            console.print(f"resumed from {path} at step {self.counters['step']:,}")
        return path

    def save(self) -> Path | None:
        if self.checkpointer is None:
            return None
        return self.checkpointer.save(int(self.counters["step"]), self.app_state())

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """Accumulate `grad_accum` micro-batches, normalise by global tokens, clip, step (or skip)."""
        self.model.train()
        loss_total = torch.zeros((), dtype=torch.float64, device=self.cfg.device)
        tokens = torch.zeros((), dtype=torch.float64, device=self.cfg.device)
        if self.batches is None:
            self.batches = iter(self.batch_source)
        step_tokens = int(self.tokens_per_step())
        extra: dict[str, float] = {}
        for _ in range(self.cfg.grad_accum):
            batch = next(self.batches)
            with autocast_context(self.model, self.cfg.precision, self.cfg.device):
                out = self.loss_fn(self.model, batch)
            out.loss_sum.backward()
            loss_total += out.loss_sum.detach().double()
            tokens += out.num_tokens.detach().double()
            for key, value in (out.metrics or {}).items():
                extra[key] = extra.get(key, 0.0) + float(value) / self.cfg.grad_accum
        extra = _all_reduce_mean(extra)
        stats = _all_reduce_sum(torch.stack([loss_total, tokens]))
        global_tokens = max(float(stats[1]), 1.0)
        # FSDP averages gradients over ranks; plain single-process gradients are a plain sum.
        scale = (self.world_size if self._grads_averaged() else 1) / global_tokens
        grad_norm = self._scale_and_clip(scale)
        loss = float(stats[0]) / global_tokens
        lr = self.optimizer.param_groups[0]["lr"]
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.counters["nonfinite_in_row"] = 0
        else:
            self.counters["skipped"] += 1
            self.counters["nonfinite_in_row"] += 1
            if self.rank == 0:
                console.print(
                    f"[yellow]step {self.counters['step'] + 1}: non-finite loss {loss} or grad norm {grad_norm}; "
                    f"update skipped ({self.counters['nonfinite_in_row']} in a row)[/]"
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.counters["step"] += 1
        self.counters["tokens"] += step_tokens
        self._last_step_tokens = step_tokens
        return {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "finite": float(finite),
            "valid_tokens": global_tokens,
            **extra,
        }

    def _scale_and_clip(self, scale: float) -> float:
        """Normalise the summed gradients by `scale` and clip them in one pass; returns the scaled global norm.

        The norm of the unscaled gradients times `scale` is the norm of the scaled ones, so the token
        normalisation and the clipping coefficient fold into a single multiply over all gradients.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        grad_norm = float(_full(torch.nn.utils.get_total_norm(grads, foreach=None))) * scale
        factor = scale
        if self.cfg.clip_grad_norm is not None and math.isfinite(grad_norm):
            factor *= min(1.0, self.cfg.clip_grad_norm / (grad_norm + 1e-6))
        torch._foreach_mul_(grads, factor)
        return grad_norm

    def _grads_averaged(self) -> bool:
        from steelforge.train.distributed import uses_fsdp

        return self.world_size > 1 and uses_fsdp(self.model)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train to `cfg.max_steps` (resuming first); stops cleanly on SIGTERM/SIGINT after a checkpoint."""
        cfg = self.cfg
        self.maybe_resume()
        # The iterator starts after resuming, so a restored loader continues from its saved cursor.
        self.batches = iter(self.batch_source)
        start_step = int(self.counters["step"])
        stopped_by = "max_steps"
        last: dict[str, float] = {}
        t_run = time.perf_counter()
        losses: list[float] = []
        while self.counters["step"] < cfg.max_steps:
            t0 = time.perf_counter()
            last = self.train_step()
            dt = time.perf_counter() - t0
            step = int(self.counters["step"])
            if math.isfinite(last["loss"]):
                losses.append(last["loss"])
            if self.counters["nonfinite_in_row"] >= cfg.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"{self.counters['nonfinite_in_row']} non-finite steps in a row at step {step}; stopped with the "
                    f"last good checkpoint intact (lower pretrain.optim.lr or raise pretrain.max_nonfinite_steps)"
                )
            if self.metrics is not None and (step % cfg.log_every == 0 or step == cfg.max_steps):
                self.metrics.log(step, self._step_metrics(last, dt))
            if self.eval_fn is not None and cfg.val_every and step % cfg.val_every == 0:
                val = self.eval_fn(self.model)
                if self.metrics is not None:
                    self.metrics.log(step, val)
            healthy = self.counters["nonfinite_in_row"] == 0  # never checkpoint in the middle of a bad streak
            if self.checkpointer is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and healthy:
                self.save()
            if self.export_fn is not None and step in cfg.export_steps:
                self.export_fn(step, False)
            if self.stop_signal is not None and self.stop_signal.should_stop():
                stopped_by = "signal"
                if self.checkpointer is not None and not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    self.save()
                break
        step = int(self.counters["step"])
        if stopped_by == "max_steps":
            saved_now = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
            if self.checkpointer is not None and not saved_now and step > start_step:
                self.save()
            if self.export_fn is not None and cfg.export_final:
                self.export_fn(step, True)
        return {
            "steps": step,
            "steps_this_run": step - start_step,
            "tokens": int(self.counters["tokens"]),
            "skipped": int(self.counters["skipped"]),
            "first_loss": losses[0] if losses else math.nan,
            "last_loss": losses[-1] if losses else math.nan,
            "stopped_by": stopped_by,
            "resumed_from": str(self.resumed_from) if self.resumed_from else "",
            "seconds": time.perf_counter() - t_run,
        }

    def _step_metrics(self, last: dict[str, float], dt: float) -> dict[str, float]:
        tps_device = self._last_step_tokens / self.world_size / dt if dt > 0 else 0.0
        metrics = {
            "loss": last["loss"],
            "lr": last["lr"],
            "grad_norm": last["grad_norm"],
            "tokens_per_s": tps_device,
            "tokens": float(self.counters["tokens"]),
            "skipped": float(self.counters["skipped"]),
            "step_time_s": dt,
        }
        metrics.update({k: v for k, v in last.items() if k not in _ENGINE_KEYS})
        if self.cfg.flops_per_token and self.cfg.peak_flops:
            metrics["mfu"] = tps_device * self.cfg.flops_per_token / self.cfg.peak_flops
        return metrics
