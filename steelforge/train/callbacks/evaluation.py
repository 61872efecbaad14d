"""Validation and in-training probes: a function of the model, run every N steps, its numbers logged."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from steelforge.train.callbacks.base import Callback

if TYPE_CHECKING:
    from steelforge.train.trainer import Trainer


class EvalCallback(Callback):
    """Calls `fn(model) -> metrics` every `every` steps (every rank: it may run collectives) and logs them.

    Validation loss (`pretrain.make_validation`) and probes such as a few greedy generations or a small
    benchmark slice are the same thing here; `at_end` also runs it after the last step when that step
    was not already evaluated.
    """

    def __init__(self, fn: Callable[[nn.Module], dict[str, float]], every: int, *, at_end: bool = False) -> None:
        self.fn = fn
        self.every = every
        self.at_end = at_end
        self._last_step = -1

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0:
            self._run(trainer, step)

    def on_train_end(self, trainer: Trainer, summary: dict) -> None:
        if self.at_end and self._last_step != trainer.step:
            self._run(trainer, trainer.step)

    def _run(self, trainer: Trainer, step: int) -> None:
        values = self.fn(trainer.model)
        self._last_step = step
        trainer.log(step, values)
