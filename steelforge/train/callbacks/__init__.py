"""Trainer callbacks: checkpointing, metrics, validation/probes, export (all optional, all replaceable)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from steelforge.train.callbacks.base import Callback
from steelforge.train.callbacks.checkpoint import CheckpointCallback
from steelforge.train.callbacks.evaluation import EvalCallback
from steelforge.train.callbacks.export import ExportCallback
from steelforge.train.callbacks.metrics import MetricsCallback

if TYPE_CHECKING:
    from steelforge.train.trainer import TrainerConfig

__all__ = ["Callback", "CheckpointCallback", "EvalCallback", "ExportCallback", "MetricsCallback", "standard_callbacks"]


def standard_callbacks(
    cfg: TrainerConfig,
    *,
    metrics: Any = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    export_fn: Callable[[int, bool], Any] | None = None,
) -> list[Callback]:
    """The callbacks `TrainerConfig` describes, in the order the loop always ran them:
    log the step, validate, checkpoint, export."""
    out: list[Callback] = []
    if metrics is not None:
        out.append(MetricsCallback(metrics, cfg.log_every, cfg.max_steps))
    if eval_fn is not None and cfg.val_every:
        out.append(EvalCallback(eval_fn, cfg.val_every))
    if cfg.checkpoint_every:
        out.append(CheckpointCallback(cfg.checkpoint_every))
    if export_fn is not None and (cfg.export_steps or cfg.export_final):
        out.append(ExportCallback(export_fn, list(cfg.export_steps), cfg.export_final))
    return out
