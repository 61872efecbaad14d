"""Periodic checkpoints (the `Checkpointer` writes DCP atomically; resume and the final save live in the loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from steelforge.train.callbacks.base import Callback

if TYPE_CHECKING:
    from steelforge.train.trainer import Trainer


class CheckpointCallback(Callback):
    """Saves every `every` steps, never in the middle of a non-finite streak (the last good state stays newest)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if trainer.checkpointer is not None and self.every and step % self.every == 0 and trainer.healthy():
            trainer.save()
