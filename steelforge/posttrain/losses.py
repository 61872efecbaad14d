"""DPO and GRPO losses as pure functions of log-probs, with TRL 1.16's formulas and metric names.

Trainers compute log-probs with `steelforge.posttrain.logprobs.token_logps` and pass them here; keeping the
losses free of models and trainers is what lets them be checked number by number against TRL's reference
values (tests/posttrain) and reused by every stage.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from steelforge.posttrain.errors import LossConfigError

DPO_LOSS_TYPES = ("sigmoid", "ipo", "sigmoid_norm", "hinge", "robust", "cdpo")
_LENGTH_NORMALISED = ("ipo", "sigmoid_norm")
_USES_SMOOTHING = ("robust", "cdpo")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
REWARD_SCALES = ("group", "batch", "none")

DpoLossType = Literal["sigmoid", "ipo", "sigmoid_norm", "hinge", "robust", "cdpo"]
GrpoLossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


# ---- DPO -----------------------------------------------------------------------------------------


def sequence_logps(token_logps: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of the completion tokens' log-probs [B], number of completion tokens [B], float).

    DPO scores whole sequences with the sum (TRL's convention); the lengths feed the length-normalised types.
    """
    mask = completion_mask.to(token_logps.dtype)
    return (token_logps * mask).sum(dim=-1), mask.sum(dim=-1)


def _check_dpo_options(loss_type: str, label_smoothing: float, lengths_given: bool) -> None:
    if loss_type not in DPO_LOSS_TYPES:
        raise LossConfigError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    if label_smoothing != 0.0 and loss_type not in _USES_SMOOTHING:
        raise LossConfigError(
            f"DPO loss_type {loss_type!r} ignores label_smoothing={label_smoothing} (TRL silently drops it); "
            "use loss_type 'cdpo' (conservative DPO) or 'robust' for noisy preference labels, or set it to 0"
        )
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise LossConfigError(f"label_smoothing must lie in [0, 0.5) for the 'robust' DPO loss, got {label_smoothing}")
    if loss_type == "cdpo" and not 0.0 <= label_smoothing <= 0.5:
        raise LossConfigError(f"label_smoothing must lie in [0, 0.5] for the 'cdpo' DPO loss, got {label_smoothing}")
    if loss_type in _LENGTH_NORMALISED and not lengths_given:
        raise LossConfigError(
            f"DPO loss_type {loss_type!r} is length-normalised: pass chosen_lengths and rejected_lengths "
            "(completion token counts, e.g. from sequence_logps)"
        )


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    loss_type: DpoLossType | str,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(per-pair losses [B], chosen rewards [B], rejected rewards [B]) from sequence log-probs [B].

    d = (π_c − ref_c) − (π_r − ref_r). `sigmoid`: −logσ(βd). `hinge`: relu(1 − βd). `ipo`:
    (Δ/len − 1/(2β))² on per-token means, as TRL 1.16 normalises it. `sigmoid_norm` (Tülu 3): −logσ(β·Δ/len).
    `cdpo`: −(1−ε)logσ(βd) − ε·logσ(−βd). `robust` (Chowdhury et al.): (−(1−ε)logσ(βd) + ε·logσ(−βd))/(1−2ε).
    Rewards are β·(policy − reference) sequence log-probs, unnormalised for every type (as TRL logs them), and
    detached. Types that would ignore a non-zero `label_smoothing` refuse it instead.
    """
    _check_dpo_options(loss_type, label_smoothing, chosen_lengths is not None and rejected_lengths is not None)
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    eps = label_smoothing
    if loss_type in _LENGTH_NORMALISED:
        lc = chosen_lengths.to(chosen_ratio.dtype).clamp(min=1.0)  # type: ignore[union-attr]
        lr = rejected_lengths.to(rejected_ratio.dtype).clamp(min=1.0)  # type: ignore[union-attr]
        delta = chosen_ratio / lc - rejected_ratio / lr
        if loss_type == "ipo":
            losses = (delta - 1.0 / (2.0 * beta)) ** 2
        else:
            losses = -F.logsigmoid(beta * delta)
    else:
        logits = beta * (chosen_ratio - rejected_ratio)
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(logits)
        elif loss_type == "hinge":
            losses = torch.relu(1.0 - logits)
        elif loss_type == "cdpo":
            losses = -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        else:  # robust
            losses = (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def dpo_metrics(
    losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor, chosen_logps: Tensor, rejected_logps: Tensor
) -> dict[str, float]:
    """Batch means under TRL's metric names (`rewards/chosen`, …, `logps/rejected`) plus `loss`."""
    with torch.no_grad():
        return {
            "loss": losses.float().mean().item(),
            "rewards/chosen": chosen_rewards.float().mean().item(),
            "rewards/rejected": rejected_rewards.float().mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).float().mean().item(),
            "logps/chosen": chosen_logps.float().mean().item(),
            "logps/rejected": rejected_logps.float().mean().item(),
        }


# ---- GRPO ----------------------------------------------------------------------------------------


def _unbiased_std(x: Tensor, dim: int | None = None) -> Tensor:
    """NaN-ignoring (n−1) standard deviation, 0 where fewer than two values (TRL's `nanstd` guards)."""
    keep = ~torch.isnan(x)
    count = keep.sum(dim=dim) if dim is not None else keep.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    sq = torch.where(keep, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum(dim=dim) if dim is not None else sq.sum()
    var = total / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))


def group_advantages(rewards: Tensor, group_size: int, scale: str | bool = "group") -> Tensor:
    """A = r − mean of its group (consecutive `group_size` rows share a prompt), scaled as TRL 1.16 does.

    `group`: ÷ (unbiased std of the group + 1e-4); `batch`: ÷ (unbiased std of all rewards + 1e-4), still
    centred on the group mean; `none`: no scaling (Dr. GRPO). `True`/`False` are TRL's older spellings of
    `group`/`none`. NaN rewards (unscorable completions) are left out of the statistics and get advantage 0.
    """
    scale = {True: "group", False: "none"}.get(scale, scale)  # type: ignore[arg-type]
    if scale not in REWARD_SCALES:
        raise LossConfigError(f"unknown reward scale {scale!r}; choose one of {', '.join(REWARD_SCALES)}")
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise LossConfigError(
            f"rewards must be a flat tensor whose length is a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    groups = r.view(-1, group_size)
    advantages = (groups - torch.nanmean(groups, dim=1, keepdim=True)).view(-1)
    if scale == "group":
        advantages = advantages / (_unbiased_std(groups, dim=1).repeat_interleave(group_size) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (_unbiased_std(r) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()


def grpo_loss(
    token_logps: Tensor,
    old_token_logps: Tensor | None,
    ref_token_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    loss_type: GrpoLossType | str,
    epsilon_low: float,
    epsilon_high: float,
    beta: float,
    bias_corrected_kl: bool = True,
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """(scalar loss, metrics) of the clipped GRPO objective over [B, T] per-token log-probs.

    Per token: ratio = exp(logp − old), loss = −min(ratio·A, clip(ratio, 1−ε_low, 1+ε_high)·A), plus
    β·KL with the k3 estimator exp(ref − logp) − (ref − logp) − 1; with `bias_corrected_kl` the KL is multiplied
    by the (non-detached) ratio, TRL's `use_bias_correction_kl` (whose default is False there).
    `old_token_logps=None` is on-policy (one update per generation): the ratio is exp(logp − logp.detach()).

    Aggregation over completion tokens m: `grpo` mean over sequences of Σl·m/Σm; `bnpo` Σl·m/Σm over the batch;
    `dr_grpo` Σl·m/(B·max_completion_length); `dapo` Σl·m/num_items_in_batch, the completion-token count of the
    whole generation batch (default: this batch's). TRL passes that count divided by the number of processes,
    because DDP then averages the gradients; gradient-accumulation scaling is left to the caller.
    Metrics: `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`, `clip_ratio/low_min`,
    `clip_ratio/high_max` and, when beta > 0, `kl` (TRL's names and definitions).
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise LossConfigError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(GRPO_LOSS_TYPES)}")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise LossConfigError("GRPO loss_type 'dr_grpo' divides by B * max_completion_length: pass max_completion_length")
    if beta != 0.0 and ref_token_logps is None:
        raise LossConfigError(f"GRPO with beta={beta} needs ref_token_logps for its KL term (or set beta to 0)")
    dtype = torch.promote_types(token_logps.dtype, torch.float32)  # fp32 at least (bf16 inputs), fp64 kept
    mask = completion_mask.to(dtype)
    logp = token_logps.to(dtype)
    old = logp.detach() if old_token_logps is None else old_token_logps.to(dtype)
    adv = advantages.to(dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)

    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    per_token_kl = None
    if beta != 0.0:
        diff = ref_token_logps.to(dtype) - logp  # type: ignore[union-attr]
        per_token_kl = torch.exp(diff) - diff - 1.0
        if bias_corrected_kl:
            per_token_kl = per_token_kl * ratio
        per_token = per_token + beta * per_token_kl

    summed = per_token * mask
    if loss_type == "grpo":
        loss = (summed.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = summed.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = summed.sum() / (per_token.shape[0] * max_completion_length)  # type: ignore[operator]
    else:
        n = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=dtype, device=mask.device)
        loss = summed.sum() / n.clamp(min=1.0)

    with torch.no_grad():
        low = ((ratio < 1.0 - epsilon_low) & (adv < 0)).float()
        high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).float()
        lengths = mask.sum(-1)
        has_tokens = lengths > 0
        metrics = {
            "clip_ratio/low_mean": _masked_mean(low, mask),
            "clip_ratio/high_mean": _masked_mean(high, mask),
            "clip_ratio/region_mean": _masked_mean(torch.maximum(low, high), mask),
            "clip_ratio/low_min": ((low * mask).sum(-1)[has_tokens] / lengths[has_tokens]).min().item()
            if bool(has_tokens.any())
            else float("nan"),
            "clip_ratio/high_max": ((high * mask).sum(-1)[has_tokens] / lengths[has_tokens]).max().item()
            if bool(has_tokens.any())
            else float("nan"),
        }
        if per_token_kl is not None:
            metrics["kl"] = _masked_mean(per_token_kl, mask)
    return loss, metrics
