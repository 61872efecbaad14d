"""Recipe section `pretrain:` — the training engine's settings for causal-LM pretraining.

Nested sections group the engine's switches (`optim`, `schedule`, `parallel`, `speed`, `checkpoint`) so
that SFT/DPO/GRPO sections can reuse them. Everything that depends on the world size (gradient
accumulation, divisibility of the global batch) is checked again at run time by `resolve_batch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from steelforge.config_base import StrictModel
from steelforge.errors import RecipeError


class OptimConfig(StrictModel):
    """AdamW with parameter groups (norms and biases never decay)."""

    lr: float = Field(3e-4, gt=0, description="Peak learning rate (reached at the end of warmup).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay of matrices (norms/biases: 0).")
    decay_embeddings: bool = Field(True, description="Apply weight decay to the embedding matrix too.")
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="AdamW kernel: auto = fused on CUDA, foreach on CPU."
    )


class ScheduleConfig(StrictModel):
    """Learning-rate schedule: linear warmup, then cosine (or WSD: constant, then a final decay)."""

    kind: Literal["cosine", "wsd", "constant"] = Field("cosine", description="Shape after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to the peak lr.")
    min_lr: float | None = Field(None, ge=0, description="Final lr (absolute); overrides min_lr_ratio.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak (Moxin: 0.1).")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="WSD only: the share of all steps spent in the final linear decay."
    )
    total_steps: int | None = Field(None, ge=1, description="Schedule length (default: pretrain.max_steps).")


class PhaseConfig(StrictModel):
    """One data phase (Moxin: 2k ctx -> 4k ctx -> capability data), handed to the token loader's sampler."""

    until_tokens: int | None = Field(None, ge=1, description="Phase ends after this many consumed tokens (None: last).")
    seq_len: int = Field(2048, ge=1, description="Sequence length in this phase.")
    mixture: dict[str, float] | None = Field(None, description="Sampling weight per store name in this phase.")


class ParallelConfig(StrictModel):
    """How the model is spread over processes (torchrun sets the world size)."""

    data_parallel: Literal["auto", "fsdp", "hsdp", "none"] = Field(
        "auto", description="auto = FSDP2 when world size > 1, plain (replicate-only) on one process."
    )
    hsdp_replicas: int | None = Field(
        None, ge=1, description="HSDP: number of replica groups (default: the number of nodes)."
    )
    reshard_after_forward: bool = Field(True, description="FSDP2: free unsharded blocks after forward (ZeRO-3).")
    meta_init: bool = Field(
        False, description="Build the model on the meta device and materialise shard by shard (large models)."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="Process-group backend (auto: nccl on GPU).")
    grad_sync_last_micro_batch: bool = Field(
        False,
        description="FSDP2: reduce-scatter gradients only after the last micro-batch of a step (fewer collectives; "
        "costs one unsharded fp32 gradient copy of the model per rank between micro-batches).",
    )


class SpeedConfig(StrictModel):
    """Precision and speed switches; each one has an equivalence test against the plain path."""

    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 = bf16 compute with fp32 master weights and fp32 gradient reduction."
    )
    attention: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None,
        description="Attention kernel for training; None: the model's `model.attn_implementation` (set one of them; "
        "both set and different is refused). flash_attention_2 needs CUDA and flash-attn.",
    )
    activation_checkpointing: Literal["none", "full", "every_k"] = Field(
        "none", description="Recompute activations in backward: none, every block, or every k-th block."
    )
    ac_every: int = Field(2, ge=1, description="activation_checkpointing=every_k: checkpoint every k-th block.")
    compile: bool = Field(False, description="torch.compile each decoder block (also works on CPU).")
    tf32: bool = Field(True, description="TF32 tensor-core matmuls for fp32 on Ampere+ GPUs (no effect on CPU).")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor, aot_eager, ...).")
    liger: Literal["auto", "on", "off"] = Field(
        "auto", description="Liger kernels (RMSNorm, RoPE, SwiGLU, fused linear CE): auto = on CUDA when installed."
    )
    loss: Literal["chunked", "full"] = Field(
        "chunked", description="Cross-entropy: chunked never materialises fp32 logits of the whole batch."
    )
    loss_chunk_tokens: int = Field(4096, ge=1, description="Tokens per chunk of the chunked cross-entropy.")


class CheckpointConfig(StrictModel):
    """Crash-safe checkpoints and Hugging Face exports."""

    every: int | None = Field(500, ge=1, description="Save every N steps (None: only at the end and on signals).")
    keep_last: int = Field(2, ge=1, description="Keep the newest N checkpoints.")
    keep_every: int | None = Field(None, ge=1, description="Also keep every K-th step's checkpoint forever.")
    resume: str = Field("auto", description="'auto' (newest complete checkpoint), 'none', or a checkpoint folder.")
    export_steps: list[int] = Field(default_factory=list, description="Also export an HF folder at these steps.")
    export_final: bool = Field(True, description="Export a consolidated HF folder (hf/) at the end.")


class WandbConfig(StrictModel):
    """Weights & Biases logging (the `wandb` extra); offline by default: `wandb sync` uploads later."""

    project: str = Field("steelforge", description="W&B project name.")
    name: str | None = Field(None, description="Run name (default: W&B's generated one).")
    mode: Literal["online", "offline", "disabled"] = Field("offline", description="online needs a login/API key.")


class ResumeConfig(StrictModel):
    """Deliberate continued training from another run's checkpoint (Steel-LLM's appended-data phase).

    Used only when this run's own `checkpoints/` holds none yet; afterwards this run resumes itself.
    """

    from_: Path = Field(alias="from", description="A complete checkpoint folder (.../checkpoints/step_000001000).")
    reset_optimizer: bool = Field(True, description="Start AdamW moments afresh (new data, new schedule).")
    reset_data: bool = Field(True, description="Start the data loader afresh (other stores or mixture).")

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), validate_by_name=True, serialize_by_alias=True
    )


class PretrainConfig(StrictModel):
    """Causal-LM pretraining on token stores."""

    max_steps: int = Field(100, ge=1, description="Optimizer steps of the whole run.")
    output: Path | None = Field(None, description="Stage folder (default <out_dir>/pretrain).")
    stores: list[Path] | None = Field(None, description="Token stores to train on (default: the pack stage's output).")
    val_store: Path | None = Field(None, description="Held-out token store for validation loss/perplexity.")
    val_every: int | None = Field(None, ge=1, description="Validate every N steps (needs val_store).")
    val_batches: int = Field(4, ge=1, description="Micro-batches per rank in one validation pass.")
    seq_len: int = Field(2048, ge=8, description="Tokens per sample (the first phase's length when phases are set).")
    micro_batch_size: int = Field(8, ge=1, description="Samples per process per forward/backward.")
    grad_accum: int | None = Field(
        None, ge=1, description="Micro-batches per optimizer step per process (default: from the global batch, else 1)."
    )
    global_batch_size: int | None = Field(None, ge=1, description="Samples per optimizer step over all processes.")
    global_batch_tokens: int | None = Field(None, ge=1, description="Tokens per optimizer step over all processes.")
    mixture: dict[str, float] | None = Field(None, description="Sampling weight per store name.")
    phases: list[PhaseConfig] | None = Field(None, description="Multi-phase data schedule (seq length, mixture).")
    return_position_ids: bool = Field(
        False,
        description="Isolate packed documents: position ids restart at each document, so attention (and Steel's "
        "causal Soft-MoE) stay inside it and the cross-document target is not trained (default: one stream).",
    )
    loss_masks: bool = Field(True, description="Use the token stores' loss masks (labels -100 where masked).")
    ignore_index: int = Field(
        -100, description="Label excluded from the loss (Steel-LLM: the <|endoftext|> id 151643, i.e. padding)."
    )
    clip_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (None: no clipping).")
    max_nonfinite_steps: int = Field(
        5, ge=1, description="Stop the run after this many non-finite (skipped) steps in a row."
    )
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard events when it is installed.")
    peak_tflops: float | None = Field(
        None, gt=0, description="One device's peak TFLOP/s for MFU (default: GPU datasheet, else a GEMM probe)."
    )
    wandb: WandbConfig | None = Field(None, description="Also log to Weights & Biases (needs the wandb extra).")
    num_workers: int = Field(0, ge=0, description="Data-loader worker processes.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    verify_store: Literal["full", "quick", "off"] = Field(
        "quick",
        description="Check token stores at start: quick = sizes, manifest and the id range of each shard as it is "
        "first read; full = also every shard's md5; off = nothing.",
    )
    resume: ResumeConfig | None = Field(
        None, description="Continue from another run's checkpoint: {from: <path>, reset_optimizer, reset_data}."
    )

    @model_validator(mode="after")
    def _batch_settings(self) -> PretrainConfig:
        given = [k for k in ("grad_accum", "global_batch_size", "global_batch_tokens") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"set only one of {', '.join(given)} (they all fix the global batch); drop the others"
            )
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}; make it micro_batch_size x grad_accum x world size"
            )
        if self.global_batch_tokens is not None and self.global_batch_tokens % (self.micro_batch_size * self.seq_len):
            raise ValueError(
                f"global_batch_tokens {self.global_batch_tokens} is not a multiple of micro_batch_size x seq_len "
                f"= {self.micro_batch_size * self.seq_len}; round it to a multiple"
            )
        if self.val_every is not None and self.val_store is None:
            raise ValueError("val_every is set but val_store is not; give a held-out store or drop val_every")
        if self.phases and self.phases[0].seq_len != self.seq_len:
            raise ValueError(
                f"seq_len {self.seq_len} differs from the first phase's seq_len {self.phases[0].seq_len}; make them equal"
            )
        return self

    def resolve_batch(self, world_size: int) -> tuple[int, int]:
        """(grad_accum, global_batch_size in samples) at this world size; a RecipeError when they don't divide."""
        per_micro_step = self.micro_batch_size * world_size
        if self.global_batch_tokens is not None:
            key, value = "pretrain.global_batch_tokens", self.global_batch_tokens
            samples = self.global_batch_tokens // self.seq_len
        elif self.global_batch_size is not None:
            key, value = "pretrain.global_batch_size", self.global_batch_size
            samples = self.global_batch_size
        else:
            accum = self.grad_accum or 1
            return accum, accum * per_micro_step
        if samples % per_micro_step:
            raise RecipeError(
                f"'{key}' = {value} is not divisible by micro_batch_size x world size = "
                f"{self.micro_batch_size} x {world_size}; set it to a multiple of {per_micro_step} samples "
                f"or change pretrain.micro_batch_size"
            )
        return samples // per_micro_step, samples
