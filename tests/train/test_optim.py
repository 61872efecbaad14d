"""AdamW parameter groups and the learning-rate schedules of the reference recipes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _dist_helpers import tiny_qwen2
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.train.config import OptimConfig, ScheduleConfig
from steelforge.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def _names(model, group) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_norms_and_biases_never_decay_embeddings_optional() -> None:
    model = tiny_qwen2()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    nd = _names(model, no_decay)
    assert all("norm" in n or n.endswith(".bias") for n in nd)
    assert any("q_proj.bias" in n for n in nd) and any("layernorm" in n for n in nd)
    assert "model.embed_tokens.weight" in _names(model, decay)
    _, no_decay2 = param_groups(model, 0.05, decay_embeddings=False)
    assert "model.embed_tokens.weight" in _names(model, no_decay2)
    total = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == total


def test_optimizer_kernel_choice_on_cpu() -> None:
    model = tiny_qwen2()
    opt = build_optimizer(model, OptimConfig())
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")
    assert opt.defaults["betas"] == (0.9, 0.95)


def _lrs(cfg: ScheduleConfig, steps: int, peak: float) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=peak)
    sched = build_scheduler(opt, cfg, total_steps=steps, peak_lr=peak)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_steel_warmup_then_cosine_to_zero() -> None:
    lrs = _lrs(ScheduleConfig(warmup_steps=20, kind="cosine", min_lr=0.0), 200, 3e-4)
    assert lrs[0] == pytest.approx(3e-4 / 20)
    assert lrs[19] == pytest.approx(3e-4)
    assert max(lrs) == pytest.approx(3e-4)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[19:]))
    mid = 20 + (200 - 20) // 2 - 1  # halfway through the cosine
    assert lrs[mid] == pytest.approx(1.5e-4, rel=1e-6)


def test_moxin_cosine_to_ten_percent() -> None:
    lrs = _lrs(ScheduleConfig(warmup_steps=5, kind="cosine", min_lr_ratio=0.1), 50, 1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert min(lrs[5:]) == pytest.approx(1e-4)


def test_wsd_is_flat_then_decays() -> None:
    lrs = _lrs(ScheduleConfig(warmup_steps=10, kind="wsd", decay_fraction=0.2, min_lr_ratio=0.0), 100, 1.0)
    assert all(lr == pytest.approx(1.0) for lr in lrs[9:80])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[85] < lrs[80]


def test_scheduler_state_round_trip() -> None:
    cfg = ScheduleConfig(warmup_steps=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, cfg, total_steps=10, peak_lr=1.0)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, cfg, total_steps=10, peak_lr=1.0)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert sched2.get_last_lr() == sched.get_last_lr()


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["cosine", "wsd", "constant"]),
    warmup=st.integers(0, 50),
    total=st.integers(1, 500),
    ratio=st.floats(0.0, 1.0),
)
def test_lr_factor_stays_in_range(kind: str, warmup: int, total: int, ratio: float) -> None:
    cfg = ScheduleConfig(kind=kind, warmup_steps=warmup, min_lr_ratio=ratio)
    for step in range(0, total + 5):
        f = lr_factor(step, cfg, total, 1.0)
        assert math.isfinite(f) and -1e-12 <= f <= 1.0 + 1e-12
        if step >= max(warmup, 1) and kind != "constant":
            assert f >= ratio - 1e-9
