"""Recipe section `pretrain:` — the training engine's settings for causal-LM pretraining."""

from __future__ import annotations

from pathlib import Path

from steelforge.config_base import StrictModel


class PretrainConfig(StrictModel):
    max_steps: int = 100
    output: Path | None = None
