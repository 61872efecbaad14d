"""Compatibility module: the engine now lives in `trainer.py` (the loop), `train_module.py` (objectives,
optimizer steps, frozen models) and `callbacks/`; existing `from steelforge.train.engine import ...` keep working."""

from __future__ import annotations

from steelforge.train.train_module import (
    FrozenModel,
    LossFnTrainModule,
    LossOutput,
    TrainModule,
    reduce_metrics,
)
from steelforge.train.trainer import Trainer, TrainerConfig, TrainingDiverged

__all__ = [
    "FrozenModel",
    "LossFnTrainModule",
    "LossOutput",
    "TrainModule",
    "Trainer",
    "TrainerConfig",
    "TrainingDiverged",
    "reduce_metrics",
]
