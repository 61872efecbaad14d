"""Step metrics to the run's sinks (console line, JSONL, TensorBoard, W&B; PNG curves at the end)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steelforge.train.callbacks.base import Callback

if TYPE_CHECKING:
    from steelforge.train.trainer import Trainer


class MetricsCallback(Callback):
    """Logs every `log_every` steps and the last step through a `MetricsLogger` (main rank writes)."""

    def __init__(self, logger: Any, log_every: int, max_steps: int) -> None:
        self.logger = logger
        self.log_every = max(1, log_every)
        self.max_steps = max_steps

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step % self.log_every == 0 or step == self.max_steps:
            self.logger.log(step, metrics)
