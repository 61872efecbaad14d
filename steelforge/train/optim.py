"""AdamW with parameter groups and the learning-rate schedules of the reference runs.

Steel-LLM: warmup 2000 steps then cosine from 3e-4 to 0. Moxin-7B: cosine to 10% of the peak. WSD
(warmup-stable-decay) keeps the peak until a final linear decay, which lets a run be extended.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from steelforge.train.config import OptimConfig, ScheduleConfig


def _no_decay(name: str, param: nn.Parameter, embedding_ids: set[int], decay_embeddings: bool) -> bool:
    if param.ndim < 2 or name.endswith(".bias"):
        return True  # norms' gains and biases
    return not decay_embeddings and id(param) in embedding_ids


def param_groups(model: nn.Module, weight_decay: float, *, decay_embeddings: bool = True) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed matrices, and norms/biases (plus embeddings when asked) without decay."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if _no_decay(name, param, embedding_ids, decay_embeddings) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; fused kernels on CUDA, foreach elsewhere (or as configured)."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    impl = cfg.implementation
    if impl == "auto":
        impl = "fused" if on_cuda else "foreach"
    kwargs: dict[str, Any] = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    groups = param_groups(model, cfg.weight_decay, decay_embeddings=cfg.decay_embeddings)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)


def lr_factor(step: int, cfg: ScheduleConfig, total_steps: int, peak_lr: float) -> float:
    """Multiplier of the peak lr after `step` completed optimizer steps (step 0 = the first update)."""
    floor = (cfg.min_lr / peak_lr) if cfg.min_lr is not None else cfg.min_lr_ratio
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 - (1.0 - floor) * progress
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps + 1) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, total_steps: int, peak_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` (state_dict/load_state_dict for checkpoints) following `lr_factor`."""
    steps = cfg.total_steps or total_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, steps, peak_lr))
