"""Recipe section `grpo:` — GRPO with verifiable rewards; option names and defaults follow TRL 1.16 `GRPOConfig`.

A TRL user can carry a config over: `loss_type` (dapo), `scale_rewards` (group), `beta` (0: no reference
model), `epsilon`/`epsilon_high`, `num_iterations` (μ), `num_generations` (G), `temperature`, `top_p`, `top_k`,
`max_completion_length`, `mask_truncated_completions`, `use_bias_correction_kl`, `steps_per_generation`,
`learning_rate` (as `optim.lr`, default 1e-6 like TRL). The engine's nested sections (`optim`, `schedule`,
`parallel`, `speed`, `checkpoint`) are pretraining's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from steelforge.config_base import StrictModel
from steelforge.train.config import CheckpointConfig, OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig


def _grpo_optim() -> OptimConfig:
    # TRL: learning_rate 1e-6, AdamW betas (0.9, 0.999), weight decay 0
    return OptimConfig(lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)


def _grpo_schedule() -> ScheduleConfig:
    return ScheduleConfig(kind="constant")


class RewardSpec(StrictModel):
    """One reward function and its weight in the summed reward (TRL's `reward_funcs` + `reward_weights`)."""

    name: str = Field(description="'math_verify', 'choice', 'format', or 'module:function' for your own.")
    weight: float = Field(1.0, description="Multiplier of this reward in the total.")
    kwargs: dict[str, object] = Field(
        default_factory=dict, description="Keyword arguments bound to the function (e.g. format's `tags`)."
    )


class GRPOConfig(StrictModel):
    """GRPO: G rollouts per prompt, group-relative advantages, μ clipped passes per rollout batch."""

    # ---- where from
    model: str | None = Field(
        None,
        description="Policy to start from: a preset, an HF model folder, or a previous stage's name "
        "(pretrain, sft, dpo: its hf/ export). Default: the recipe's `model:` section.",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer (default: the model folder's, else the recipe's)."
    )
    prompts: Path = Field(
        description="JSONL prompt file: `prompt` (text) or `messages` (chat), and `answer`."
    )
    eval_prompts: Path | None = Field(
        None, description="Held-out prompts; mean reward logged every val_every steps."
    )
    output: Path | None = Field(None, description="Stage folder (default <out_dir>/grpo).")
    chat_template: bool = Field(
        True,
        description="Render prompts with the tokenizer's chat template (add_generation_prompt); off: raw text.",
    )
    system_prompt: str | None = Field(None, description="System message put before every chat prompt.")
    max_prompt_length: int | None = Field(
        512, ge=1, description="Prompts longer than this many tokens are dropped (counted). None: no limit."
    )
    # ---- rewards
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="math_verify")], description="Reward functions and weights."
    )
    reward_errors: Literal["zero", "skip"] = Field(
        "zero",
        description="A reward that raises or returns NaN: 'zero' counts it as 0, 'skip' drops the whole prompt "
        "group from the loss (advantage 0). Either way it is logged with the example and counted.",
    )
    # ---- TRL GRPOConfig options (same names, same defaults)
    num_generations: int = Field(8, ge=2, description="G: completions per prompt.")
    max_completion_length: int = Field(512, ge=1, description="Max new tokens per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the rollouts (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    top_k: int = Field(0, ge=0, description="Top-k sampling of the rollouts (0: off).")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="Loss aggregation (TRL's)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage scaling: group std, batch std, or none (Dr. GRPO)."
    )
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model.")
    epsilon: float = Field(0.2, ge=0, description="Lower clip range ε_low of the importance ratio.")
    epsilon_high: float | None = Field(
        None, ge=0, description="Upper clip range (default: epsilon; DAPO: 0.28)."
    )
    num_iterations: int = Field(1, ge=1, description="μ: optimisation passes over each rollout batch.")
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss (DAPO)."
    )
    use_bias_correction_kl: bool = Field(False, description="Multiply the k3 KL by the importance ratio.")
    # ---- batch shape
    per_device_batch_size: int = Field(8, ge=1, description="Completions per micro-batch (forward/backward).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    steps_per_generation: int | None = Field(
        None, ge=1, description="Micro-batches per rollout batch (default: grad_accum, one rollout per step)."
    )
    rollout_batch_size: int | None = Field(
        None, ge=1, description="Rows per generate() call (default: the whole rollout batch at once)."
    )
    stop_token_ids: list[int] = Field(
        default_factory=list,
        description="Extra stop tokens (EOS and the template's end-of-turn are always on).",
    )
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto",
        description="Rollout backend: auto = vLLM on GPU when installed, else steelforge's batched generate.",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vLLM colocated: its GPU memory share."
    )
    # ---- engine
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    clip_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (TRL: 1.0).")
    max_nonfinite_steps: int = Field(5, ge=1, description="Stop after this many non-finite steps in a row.")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    val_every: int | None = Field(None, ge=1, description="Greedy mean reward on eval_prompts every N steps.")
    val_prompts: int = Field(64, ge=1, description="How many eval prompts the held-out reward uses.")
    tensorboard: bool = Field(True, description="Also write TensorBoard events when it is installed.")
    optim: OptimConfig = Field(default_factory=_grpo_optim)
    schedule: ScheduleConfig = Field(default_factory=_grpo_schedule)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _shape(self) -> GRPOConfig:
        spg = self.generation_steps
        rows = self.per_device_batch_size * spg
        if rows % self.num_generations:
            raise ValueError(
                f"per_device_batch_size x steps_per_generation = {rows} completions is not a multiple of "
                f"num_generations {self.num_generations}; make it one (each prompt needs all G completions)"
            )
        if spg % self.grad_accum:
            raise ValueError(
                f"steps_per_generation {spg} is not a multiple of grad_accum {self.grad_accum}; a rollout batch "
                "must fill whole optimizer steps"
            )
        if self.val_every is not None and self.eval_prompts is None:
            raise ValueError(
                "val_every is set but eval_prompts is not; give held-out prompts or drop val_every"
            )
        if self.loss_type == "dr_grpo" and not self.max_completion_length:
            raise ValueError("loss_type dr_grpo needs max_completion_length")
        return self

    @property
    def generation_steps(self) -> int:
        """Micro-batches per rollout batch (TRL's steps_per_generation, defaulting to grad_accum)."""
        return self.steps_per_generation or self.grad_accum

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def needs_old_logps(self) -> bool:
        """TRL: old-policy log-probs only when a rollout batch outlives one optimizer step."""
        return self.grad_accum % (self.generation_steps * self.num_iterations) != 0
