"""Recipe section `model:` — which model to build or load."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from steelforge.config_base import StrictModel


class ModelSpec(StrictModel):
    preset: str | None = Field(
        None, description="A preset name (steel-1b, moxin-7b, tiny-steel, tiny-moxin)."
    )
    path: str | None = Field(None, description="An HF model folder or an official Steel-LLM folder.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Config fields to change.")
    attn_implementation: str = Field(
        "sdpa", description="Attention kernel: sdpa (default), eager, flash_attention_2."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.preset is None) == (self.path is None):
            raise ValueError("set exactly one of model.preset or model.path")
        return self
