"""Consolidated model exports at chosen steps and at the end of a completed run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from steelforge.train.callbacks.base import Callback

if TYPE_CHECKING:
    from steelforge.train.trainer import Trainer


class ExportCallback(Callback):
    """`export_fn(step, final)` at each of `steps` and, with `final`, once a run reaches its last step
    (not after a stop signal: an interrupted run is resumed, not released). Every rank calls it (FSDP gathers)."""

    def __init__(self, export_fn: Callable[[int, bool], Any], steps: list[int], final: bool) -> None:
        self.export_fn = export_fn
        self.steps = set(steps)
        self.final = final

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step in self.steps:
            self.export_fn(step, False)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.final and summary["stopped_by"] == "max_steps":
            self.export_fn(trainer.step, True)
