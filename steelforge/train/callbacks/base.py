"""The callback interface: everything the loop does besides training (logging, checkpoints, evals, exports)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steelforge.train.trainer import Trainer


class Callback:
    """Hooks the `Trainer` calls in list order; every rank calls them (gate writes on `trainer.rank`).

    `step` is the 1-based number of the optimizer step that is about to run (`on_step_start`) or just ran.
    """

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Before the step's `pre_step` and micro-batches."""

    def on_batch(self, trainer: Trainer, batch: Any) -> None:
        """Before each micro-batch goes to `train_batch`."""

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After the optimizer step; `metrics` are the step's reduced metrics (loss, lr, tokens/s, the module's own)."""

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None:
        """After a checkpoint of `step` was written to `path` (complete, renamed into place)."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the loop ended (max steps or a stop signal) and the final checkpoint was written."""
