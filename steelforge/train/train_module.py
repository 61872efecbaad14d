"""Train modules: what a stage brings to the shared loop (OLMo-core's split of Trainer and TrainModule).

A `TrainModule` owns the model(s), the optimizer and the scheduler. The `Trainer` calls, per optimizer step:

    pre_step(step)           work between optimizer steps (rollouts into a buffer, reference scoring...)
    train_batch(batch)       forward + backward of one micro-batch (called `grad_accum` times)
    optim_step()             normalise, clip, step, zero the gradients, advance the schedule

and never looks inside a batch. `LossFnTrainModule` is the generic one: a `loss_fn(model, batch) ->
LossOutput` objective (pretraining's causal LM, SFT, DPO) with global-token normalisation; RL modules
subclass it and add `pre_step`. `FrozenModel` wraps an auxiliary model that never trains (a reference
policy) so it is sharded like the policy and cannot receive gradients by accident.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from steelforge.reporting import console
from steelforge.train.distributed import autocast_context


class LossOutput(NamedTuple):
    """What an objective returns for one micro-batch: the summed loss and the number of tokens in it.

    `metrics` are the objective's own per-micro-batch numbers (e.g. DPO's `rewards/accuracies`): the engine
    averages them over the step's micro-batches and the ranks and logs them with its own.
    """

    loss_sum: Tensor
    num_tokens: Tensor
    metrics: dict[str, Tensor | float] | None = None


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


REDUCTIONS = ("mean", "sum", "max")


def reduce_metrics(values: Mapping[str, float], reductions: Mapping[str, str] | None = None) -> dict[str, float]:
    """Reduce per-rank metrics over the ranks: `mean` (default), `sum` or `max` per key.

    Every rank must report the same keys (in any order): the values travel in one float64 tensor per kind.
    """
    values = {k: float(v) for k, v in values.items()}
    if not values or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    reductions = reductions or {}
    kinds = {k: reductions.get(k, "mean") for k in values}
    unknown = sorted({kind for kind in kinds.values() if kind not in REDUCTIONS})
    if unknown:
        raise ValueError(f"metric reductions must be one of {', '.join(REDUCTIONS)}, got {', '.join(unknown)}")
    out: dict[str, float] = {}
    for op, members in ((dist.ReduceOp.SUM, ("mean", "sum")), (dist.ReduceOp.MAX, ("max",))):
        keys = sorted(k for k in values if kinds[k] in members)
        if not keys:
            continue
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=op)
        for k, v in zip(keys, t.tolist(), strict=True):
            out[k] = float(v) / dist.get_world_size() if kinds[k] == "mean" else float(v)
    return {k: out[k] for k in values}


def accumulate_metrics(
    into: dict[str, float], values: Mapping[str, float | Tensor], reductions: Mapping[str, str], n: int
) -> None:
    """Fold one micro-batch's metrics into the step's: mean (over `n` micro-batches), sum or max per key."""
    for key, value in values.items():
        kind = reductions.get(key, "mean")
        v = float(value)
        if kind == "sum":
            into[key] = into.get(key, 0.0) + v
        elif kind == "max":
            into[key] = max(into.get(key, -math.inf), v)
        else:
            into[key] = into.get(key, 0.0) + v / n


def _full(t: Tensor) -> Tensor:
    """A DTensor (FSDP2) as a plain tensor with the global value."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _grads_averaged(model: nn.Module, world_size: int) -> bool:
    from steelforge.train.distributed import uses_fsdp

    return world_size > 1 and uses_fsdp(model)


class TrainModule:
    """Base class: owns `model`, `optimizer`, `scheduler`; subclasses implement `train_batch`/`optim_step`.

    `metric_reductions` names how each metric key is reduced over micro-batches and ranks (`mean` when
    absent, `sum` for counts such as generated tokens, `max` for worst cases). A metric named
    `generated_tokens` is also added to the trainer's running count of generated (not trained) tokens.
    """

    metric_reductions: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.rank, self.world_size = world()

    # ---- state the trainer checkpoints (names stay "model"/"optimizer"/"scheduler": the DCP layout)
    def state_objects(self) -> dict[str, Any]:
        """Everything to checkpoint; subclasses add their own holders (dicts or state_dict() objects)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    # ---- hooks
    def pre_step(self, step: int) -> Mapping[str, float] | None:
        """Runs before the micro-batches of optimizer step `step` (0-based); e.g. rollouts. Returns metrics."""
        return None

    def train_batch(self, batch: Any) -> Mapping[str, float | Tensor]:
        raise NotImplementedError

    def optim_step(self) -> dict[str, float]:
        """Finish the step; must return at least `loss`, `lr`, `grad_norm`, `finite` (global values)."""
        raise NotImplementedError

    def train(self) -> None:
        self.model.train()


class LossFnTrainModule(TrainModule):
    """The generic objective module: sums `loss_fn`'s losses and token counts over micro-batches, then
    divides gradients by the global valid-token count over every micro-batch and rank (torchtitan's
    `global_valid_tokens`), clips, and steps (or skips a non-finite step).

    Normalisation and clipping fold into one multiply: the norm of the unscaled gradients times the
    scale is the norm of the scaled ones.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], LossOutput],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        precision: str = "fp32",
        device: torch.device | None = None,
        clip_grad_norm: float | None = 1.0,
        grad_accum: int = 1,
        sync_last_micro_batch: bool = False,
    ) -> None:
        """`sync_last_micro_batch` (FSDP2 only): skip the gradient reduce-scatter on all but the step's last
        micro-batch. Gradients then accumulate unsharded, so each rank holds a full fp32 gradient copy of
        the model (4 bytes per parameter) between micro-batches instead of its 1/world shard: fewer and
        larger collectives for more memory; gradients and results are the same."""
        super().__init__(model, optimizer, scheduler)
        self.loss_fn = loss_fn
        self.precision = precision
        self.device = device or torch.device("cpu")
        self.clip_grad_norm = clip_grad_norm
        self.grad_accum = grad_accum
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sync_last_micro_batch = sync_last_micro_batch and hasattr(model, "set_requires_gradient_sync")
        self._reset()

    def _reset(self) -> None:
        self._loss_total = torch.zeros((), dtype=torch.float64, device=self.device)
        self._tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        self._micro = 0

    def compute_loss(self, batch: Any) -> LossOutput:
        """One micro-batch through the objective under the configured autocast (override to change both)."""
        with autocast_context(self.model, self.precision, self.device):
            return self.loss_fn(self.model, batch)

    def train_batch(self, batch: Any) -> Mapping[str, float | Tensor]:
        if self.sync_last_micro_batch:
            self.model.set_requires_gradient_sync(self._micro == self.grad_accum - 1)  # type: ignore[operator]
        self._micro += 1
        out = self.compute_loss(batch)
        out.loss_sum.backward()
        self._loss_total += out.loss_sum.detach().double()
        self._tokens += out.num_tokens.detach().double()
        return out.metrics or {}

    def optim_step(self) -> dict[str, float]:
        stats = all_reduce_sum(torch.stack([self._loss_total, self._tokens]))
        self._reset()
        global_tokens = max(float(stats[1]), 1.0)
        # FSDP averages gradients over ranks; plain single-process gradients are a plain sum.
        scale = (self.world_size if _grads_averaged(self.model, self.world_size) else 1) / global_tokens
        grad_norm = self.scale_and_clip(scale)
        loss = float(stats[0]) / global_tokens
        lr = self.optimizer.param_groups[0]["lr"]
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "finite": float(finite), "valid_tokens": global_tokens}

    def scale_and_clip(self, scale: float) -> float:
        """Multiply the gradients by `scale` and clip them in the same pass; returns the scaled global norm."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        grad_norm = float(_full(torch.nn.utils.get_total_norm(grads, foreach=None))) * scale
        factor = scale
        if self.clip_grad_norm is not None and math.isfinite(grad_norm):
            factor *= min(1.0, self.clip_grad_norm / (grad_norm + 1e-6))
        torch._foreach_mul_(grads, factor)
        return grad_norm


class FrozenModel(nn.Module):
    """An auxiliary model that never trains (DPO/GRPO reference policy, reward model).

    Sharded like the policy by passing the same `parallelize` (so a 7B reference fits where the policy
    does), kept in eval mode (no dropout) with `requires_grad=False`; `offload=True` keeps it on the CPU
    between calls and moves it to `device` only inside `__call__`/`forward` (saves its memory during the
    policy's forward/backward at the price of a copy per call; not combinable with FSDP sharding).
    It is not checkpointed: it is rebuilt from its source at resume.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        parallelize: Callable[[nn.Module], Any] | None = None,
        offload: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if parallelize is not None:
            if offload:
                raise ValueError("FrozenModel: offload=True and a parallelize function cannot be combined; pick one")
            parallelize(model)  # first: fully_shard replaces the parameters (as trainable DTensors)
        for p in model.parameters():
            p.requires_grad_(False)
        self.module = model
        self.train(False)
        self.offload = offload
        self.device = torch.device(device) if device is not None else None
        if offload:
            self.module.to("cpu")

    def train(self, mode: bool = True) -> FrozenModel:
        """Stays in eval mode whatever the caller asks (a parent's `.train()` must not enable dropout)."""
        self.training = False
        self.module.eval()
        return self

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.offload or self.device is None:
            return self.module(*args, **kwargs)
        self.module.to(self.device)
        try:
            return self.module(*args, **kwargs)
        finally:
            self.module.to("cpu")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def log_nonfinite(step: int, loss: float, grad_norm: float, in_row: int) -> None:
    console.print(
        f"[yellow]step {step}: non-finite loss {loss} or grad norm {grad_norm}; update skipped ({in_row} in a row)[/]"
    )
