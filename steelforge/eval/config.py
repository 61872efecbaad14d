"""The recipe's `eval:` section (pydantic only, so loading a recipe stays light)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from steelforge.config_base import StrictModel


class EvalConfig(StrictModel):
    """Evaluate one or more models side by side on local benchmark files."""

    models: dict[str, str] = Field(
        default_factory=dict,
        description="Name -> exported model folder. Empty: the recipe's own pretrain export (<out>/pretrain/hf).",
    )
    tasks: list[str] = Field(["cmmlu"], min_length=1, description="Tasks: cmmlu, ceval, mmlu, arc_easy, arc_challenge, "
                             "hellaswag, piqa, winogrande, gsm8k, math500.")  # fmt: skip
    data_dir: Path = Field(
        ..., description="Benchmark files: <data_dir>/<task>/... in the published layouts."
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="Shots (default: 5 for cmmlu/ceval/mmlu/gsm8k, else 0)."
    )
    limit: int | None = Field(None, gt=0, description="At most this many items per subject (quick looks).")
    batch_size: int = Field(16, gt=0, description="Prompts per forward pass.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights' dtype; logits are fp32 always."
    )
    chat: bool = Field(False, description="Wrap prompts in the tokenizer's chat template (chat models).")
    on_error: Literal["skip", "stop"] = Field(
        "skip", description="Bad task data: skip the task with a warning, or stop."
    )
    log_samples: bool = Field(False, description="Write samples/<task>.jsonl per model.")
    output: Path | None = Field(None, description="Output folder (default <out_dir>/eval).")
