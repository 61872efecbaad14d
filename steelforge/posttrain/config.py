"""Recipe sections `sft:` and `dpo:` — chat data, model source, LoRA and the DPO loss on top of the engine.

The engine switches (`optim`, `schedule`, `parallel`, `speed`, `checkpoint`) are the pretrain section's own
classes, so a user who knows one stage knows them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from steelforge.config_base import StrictModel
from steelforge.errors import RecipeError
from steelforge.models.config import ModelSpec
from steelforge.train.config import CheckpointConfig, OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig

ChatFormat = Literal["auto", "messages", "sharegpt", "alpaca", "preference"]


class ChatDataset(StrictModel):
    """One conversation (or preference-pair) file: JSONL, one record per line."""

    path: Path = Field(..., description="A .jsonl file (OpenAI messages, ShareGPT, Alpaca or preference pairs).")
    name: str | None = Field(None, description="Name in reports and mixtures (default: the file's stem).")
    format: ChatFormat = Field("auto", description="Record layout; auto recognises it per record from its keys.")
    weight: float | None = Field(
        None,
        gt=0,
        description="Share of each epoch (Steel-LLM: 0.8 Chinese, 0.2 English); the dataset that runs out first "
        "sets the epoch size, the others are subsampled without repeats. None on every dataset: all of them.",
    )
    max_samples: int | None = Field(None, ge=1, description="Cap: use at most this many records of the file.")

    @property
    def label(self) -> str:
        return self.name or self.path.stem


class LoraSettings(StrictModel):
    """Low-rank adapters through `peft` (merged into the weights on export)."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator (effective scale alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers that get adapters (peft names; 'all-linear' works too).",
    )


class PosttrainBase(StrictModel):
    """Settings that SFT and DPO share: model source, data, batch, length, engine switches."""

    output: Path | None = Field(None, description="Stage folder (default <out_dir>/<stage>).")
    model: ModelSpec | None = Field(
        None, description="Starting weights: a preset, an HF/Steel-LLM folder or an engine export (default: the "
        "previous stage's hf/ export)."
    )
    chat_template: str = Field(
        "auto",
        description="'auto' (the tokenizer's own, else 'tulu'), 'chatml', 'tulu', or a path to a .jinja file.",
    )
    datasets: list[ChatDataset] = Field(default_factory=list, description="Training files.")
    cutoff_len: int = Field(2048, ge=8, description="Maximum tokens per conversation (and per packed row).")
    overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="Conversations over cutoff_len: truncate (keep the start) or drop; both counted."
    )
    epochs: float | None = Field(1.0, gt=0, description="Passes over the data (sets max_steps unless given).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (overrides epochs).")
    micro_batch_size: int = Field(4, ge=1, description="Rows per process per forward/backward.")
    grad_accum: int | None = Field(None, ge=1, description="Micro-batches per step per process (default 1).")
    global_batch_size: int | None = Field(None, ge=1, description="Rows per optimizer step over all processes.")
    warmup_ratio: float | None = Field(
        None, ge=0, lt=1, description="Warmup as a share of all steps (overrides schedule.warmup_steps)."
    )
    clip_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (None: never).")
    max_nonfinite_steps: int = Field(5, ge=1, description="Stop after this many non-finite steps in a row.")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard events when it is installed.")
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters instead of every weight.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=0.0))
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _batch(self) -> PosttrainBase:
        if self.grad_accum is not None and self.global_batch_size is not None:
            raise ValueError("set only one of grad_accum and global_batch_size (both fix the global batch)")
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}; make it micro_batch_size x grad_accum x world size"
            )
        return self

    def resolve_batch(self, world_size: int, stage: str) -> tuple[int, int]:
        """(grad_accum, global rows per step) at this world size; a RecipeError when they do not divide."""
        per_micro = self.micro_batch_size * world_size
        if self.global_batch_size is None:
            accum = self.grad_accum or 1
            return accum, accum * per_micro
        if self.global_batch_size % per_micro:
            raise RecipeError(
                f"'{stage}.global_batch_size' = {self.global_batch_size} is not divisible by micro_batch_size x "
                f"world size = {self.micro_batch_size} x {world_size}; use a multiple of {per_micro}"
            )
        return self.global_batch_size // per_micro, self.global_batch_size


class SFTConfig(PosttrainBase):
    """Supervised fine-tuning on conversations: loss on assistant tokens only, packed rows."""

    packing: bool = Field(True, description="Pack several conversations per row (positions restart per one).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    val_datasets: list[ChatDataset] = Field(default_factory=list, description="Held-out conversations (val loss).")
    val_every: int | None = Field(None, ge=1, description="Validate every N steps (needs val_datasets).")

    @model_validator(mode="after")
    def _val(self) -> SFTConfig:
        if self.val_every is not None and not self.val_datasets:
            raise ValueError("val_every is set but val_datasets is empty; add held-out files or drop val_every")
        return self


class DPOConfig(PosttrainBase):
    """Direct preference optimisation against a frozen reference copy of the starting policy."""

    loss_type: Literal["sigmoid", "ipo", "sigmoid_norm", "hinge", "robust", "cdpo"] = Field(
        "sigmoid", description="TRL 1.16 names; sigmoid_norm is Tülu 3's length-normalised DPO; cdpo conservative."
    )
    beta: float = Field(0.1, gt=0, description="Strength of the KL anchor to the reference.")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="Noise rate ε (cdpo and robust only).")
    max_prompt_len: int | None = Field(
        None, ge=1, description="Keep the last N prompt tokens (default: whatever fits in cutoff_len)."
    )
    precompute_ref_logps: bool = Field(
        False, description="Score every pair with the reference once before training and free it (less memory)."
    )

    @model_validator(mode="after")
    def _smoothing(self) -> DPOConfig:
        from steelforge.posttrain.errors import LossConfigError
        from steelforge.posttrain.losses import _check_dpo_options

        try:
            _check_dpo_options(self.loss_type, self.label_smoothing, True)
        except LossConfigError as exc:
            raise ValueError(str(exc)) from None
        return self
