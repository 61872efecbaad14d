"""The one training loop every stage shares: step and token counters, signals, resume, callbacks.

It knows nothing about data formats or objectives. Per optimizer step it calls the train module's
`pre_step(step)` (rollouts...), `train_batch(batch)` for `grad_accum` micro-batches and `optim_step()`, reduces
the module's metrics over micro-batches and ranks (mean, sum or max per key), and hands the step's metrics
to the callbacks (console/JSONL/TensorBoard/W&B, validation, checkpoints, exports, probes).

The historical construction `Trainer(model, loss_fn, batches, cfg, optimizer=..., scheduler=...,
checkpointer=..., metrics=..., eval_fn=..., export_fn=...)` builds a `LossFnTrainModule` and the standard
callbacks, so stage code written against it is unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelforge.errors import SteelforgeError
from steelforge.reporting import console
from steelforge.train.callbacks.base import Callback
from steelforge.train.train_module import (
    LossFnTrainModule,
    LossOutput,
    TrainModule,
    accumulate_metrics,
    log_nonfinite,
    reduce_metrics,
    world,
)

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
    grad_sync_last_micro_batch: bool = False  # FSDP2: gradient reduce-scatter after the last micro-batch only
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class Trainer:
    """Runs `cfg.max_steps` optimizer steps of a train module; `fit()` returns a summary dict.

    `model` is either a `TrainModule` (then `loss_fn`, `optimizer`, `scheduler` are not given) or an
    `nn.Module` trained by `loss_fn(model, batch) -> LossOutput`. `state_objects` (data loader, ...) are
    checkpointed with the module's state and the trainer's counters. `metrics` (a MetricsLogger),
    `eval_fn(model) -> metrics` (every `cfg.val_every` steps) and `export_fn(step, final)` become the
    standard callbacks; `callbacks` run after them, in order.
    """

    def __init__(
        self,
        model: nn.Module | TrainModule,
        loss_fn: Callable[[nn.Module, Any], LossOutput] | None = None,
        batches: Iterable[Any] | None = None,
        cfg: TrainerConfig | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        checkpointer: Any = None,
        metrics: Any = None,
        state_objects: Mapping[str, Any] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        export_fn: Callable[[int, bool], Any] | None = None,
        stop_signal: Any = None,
        tokens_per_step: Callable[[], int] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        if batches is None or cfg is None:
            raise TypeError("Trainer needs `batches` and `cfg`")
        if isinstance(model, TrainModule):
            if loss_fn is not None or optimizer is not None or scheduler is not None:
                raise TypeError("give loss_fn/optimizer/scheduler to the TrainModule, not to the Trainer")
            self.module = model
        else:
            if loss_fn is None or optimizer is None:
                raise TypeError("Trainer(model, loss_fn, ...) needs a loss_fn and an optimizer")
            self.module = LossFnTrainModule(
                model,
                loss_fn,
                optimizer,
                scheduler,
                precision=cfg.precision,
                device=cfg.device,
                clip_grad_norm=cfg.clip_grad_norm,
                grad_accum=cfg.grad_accum,
                sync_last_micro_batch=cfg.grad_sync_last_micro_batch,
            )
        self.batch_source = batches
        self.batches: Iterator[Any] | None = None
        self.cfg = cfg
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.state_objects = dict(state_objects or {})
        self.stop_signal = stop_signal
        # Multi-phase runs change the sequence length: ask the data side each step when it can tell.
        self.tokens_per_step = tokens_per_step or (lambda: cfg.tokens_per_step)
        self._last_step_tokens = 0
        self._last_saved_step: int | None = None
        self._warned_mfu = False
        self.rank, self.world_size = world()
        self.counters: dict[str, Any] = {"step": 0, "tokens": 0, "skipped": 0, "nonfinite_in_row": 0}
        self.resumed_from: Path | None = None
        from steelforge.train.callbacks import standard_callbacks

        self.callbacks: list[Callback] = [
            *standard_callbacks(cfg, metrics=metrics, eval_fn=eval_fn, export_fn=export_fn),
            *callbacks,
        ]

    # ------------------------------------------------------------------ the module's parts (old attribute names)
    @property
    def model(self) -> nn.Module:
        return self.module.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.module.optimizer

    @property
    def scheduler(self) -> Any:
        return self.module.scheduler

    @property
    def loss_fn(self) -> Callable[[nn.Module, Any], LossOutput] | None:
        return getattr(self.module, "loss_fn", None)

    @property
    def step(self) -> int:
        return int(self.counters["step"])

    # ------------------------------------------------------------------ state
    def app_state(self) -> dict[str, Any]:
        return {**self.module.state_objects(), **self.state_objects, "trainer": self.counters}

    def maybe_resume(self) -> Path | None:
        """Load the checkpoint `cfg.resume` names ('auto': newest complete one), if any."""
        if self.checkpointer is None or self.cfg.resume == "none":
            return None
        path = self.checkpointer.latest() if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return None
        self.checkpointer.load(path, self.app_state())
        self.resumed_from = path
        self._last_saved_step = self.step
        if self.rank == 0:
            console.print(f"resumed from {path} at step {self.counters['step']:,}")
        return path

    def save(self) -> Path | None:
        """Checkpoint now (every rank calls it); callbacks hear `on_checkpoint`."""
        if self.checkpointer is None:
            return None
        path = self.checkpointer.save(self.step, self.app_state())
        self._last_saved_step = self.step
        for cb in self.callbacks:
            cb.on_checkpoint(self, self.step, path)
        return path

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Send extra metrics (validation, probes) to the run's metrics sinks, if any."""
        if self.metrics is not None:
            self.metrics.log(step, metrics)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step: pre_step, `grad_accum` micro-batches, optim_step; returns reduced metrics."""
        module = self.module
        module.train()
        if self.batches is None:
            self.batches = iter(self.batch_source)
        step = self.step + 1
        for cb in self.callbacks:
            cb.on_step_start(self, step)
        step_tokens = int(self.tokens_per_step())
        reductions = module.metric_reductions
        extra: dict[str, float] = dict(module.pre_step(step) or {})
        batch_metrics: dict[str, float] = {}
        for _ in range(self.cfg.grad_accum):
            batch = next(self.batches)
            for cb in self.callbacks:
                cb.on_batch(self, batch)
            accumulate_metrics(batch_metrics, module.train_batch(batch), reductions, self.cfg.grad_accum)
        extra.update(batch_metrics)
        extra = reduce_metrics(extra, reductions)
        out = module.optim_step()
        if out["finite"]:
            self.counters["nonfinite_in_row"] = 0
        else:
            self.counters["skipped"] += 1
            self.counters["nonfinite_in_row"] += 1
            if self.rank == 0:
                log_nonfinite(step, out["loss"], out["grad_norm"], self.counters["nonfinite_in_row"])
        self.counters["step"] += 1
        self.counters["tokens"] += step_tokens
        if "generated_tokens" in extra:
            self.counters["generated_tokens"] = self.counters.get("generated_tokens", 0) + int(extra["generated_tokens"])
        self._last_step_tokens = step_tokens
        return {**out, **extra}

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train to `cfg.max_steps` (resuming first); stops cleanly on SIGTERM/SIGINT after a checkpoint."""
        cfg = self.cfg
        self.maybe_resume()
        # The iterator starts after resuming, so a restored loader continues from its saved cursor.
        self.batches = iter(self.batch_source)
        start_step = self.step
        stopped_by = "max_steps"
        t_run = time.perf_counter()
        losses: list[float] = []
        while self.counters["step"] < cfg.max_steps:
            t0 = time.perf_counter()
            last = self.train_step()
            dt = time.perf_counter() - t0
            step = self.step
            if math.isfinite(last["loss"]):
                losses.append(last["loss"])
            if self.counters["nonfinite_in_row"] >= cfg.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"{self.counters['nonfinite_in_row']} non-finite steps in a row at step {step}; stopped with the "
                    f"last good checkpoint intact (lower pretrain.optim.lr or raise pretrain.max_nonfinite_steps)"
                )
            step_metrics = self._step_metrics(last, dt)
            for cb in self.callbacks:
                cb.on_step_end(self, step, step_metrics)
            if self.stop_signal is not None and self.stop_signal.should_stop():
                stopped_by = "signal"
                if self._last_saved_step != step:
                    self.save()
                break
        step = self.step
        if stopped_by == "max_steps" and self._last_saved_step != step and step > start_step:
            self.save()
        summary = {
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
        if "generated_tokens" in self.counters:
            summary["generated_tokens"] = int(self.counters["generated_tokens"])
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        return summary

    def healthy(self) -> bool:
        """False in the middle of a non-finite streak (no periodic checkpoint then)."""
        return self.counters["nonfinite_in_row"] == 0

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
        if "generated_tokens" in self.counters:
            metrics["generated_tokens_total"] = float(self.counters["generated_tokens"])
        if self.cfg.flops_per_token and self.cfg.peak_flops:
            metrics["mfu"] = tps_device * self.cfg.flops_per_token / self.cfg.peak_flops
            if metrics["mfu"] > 1.0 and not self._warned_mfu and self.rank == 0:
                self._warned_mfu = True
                console.print(
                    f"[yellow]MFU {metrics['mfu']:.0%} is above 100%: the peak ({self.cfg.peak_flops / 1e12:.3g} "
                    "TFLOP/s) is too low for this device; set pretrain.peak_tflops to its real peak[/]"
                )
        return metrics


def fit_until_stopped(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Any],
    batches: Iterable[Any],
    cfg: TrainerConfig,
    *,
    metrics: Any,
    **kwargs: Any,
) -> dict[str, Any]:
    """What every stage does with its objective: a `Trainer` that stops cleanly on SIGTERM/SIGINT (after a
    checkpoint), `fit()`, the PNG curves, and the metrics files closed whatever happens."""
    from steelforge.train.checkpoint import StopSignal

    try:
        with StopSignal() as stop:
            summary = Trainer(model, loss_fn, batches, cfg, metrics=metrics, stop_signal=stop, **kwargs).fit()
        metrics.plot()
    finally:
        metrics.close()
    return summary
