"""DPO and GRPO losses on hand-computed cases, their refusals, and properties (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.errors import SteelforgeError
from steelforge.posttrain.losses import dpo_loss, dpo_metrics, group_advantages, grpo_loss, sequence_logps


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# One pair: policy chosen/rejected -3/-5, reference -4/-4 -> d = (1) - (-1) = 2; beta 0.5 -> beta*d = 1.
PAIR = (_t(-3.0), _t(-5.0), _t(-4.0), _t(-4.0))


def test_dpo_sigmoid_hinge_by_hand() -> None:
    losses, chosen, rejected = dpo_loss(*PAIR, loss_type="sigmoid", beta=0.5)
    assert losses.item() == pytest.approx(-_logsig(1.0), rel=1e-12)
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    assert dpo_loss(*PAIR, loss_type="hinge", beta=0.5)[0].item() == pytest.approx(0.0)
    assert dpo_loss(*PAIR, loss_type="hinge", beta=0.1)[0].item() == pytest.approx(1.0 - 0.2)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_cdpo_and_robust_by_hand(eps: float) -> None:
    cdpo = dpo_loss(*PAIR, loss_type="cdpo", beta=0.5, label_smoothing=eps)[0].item()
    assert cdpo == pytest.approx(-(1 - eps) * _logsig(1.0) - eps * _logsig(-1.0), rel=1e-12)
    robust = dpo_loss(*PAIR, loss_type="robust", beta=0.5, label_smoothing=eps)[0].item()
    assert robust == pytest.approx((-(1 - eps) * _logsig(1.0) + eps * _logsig(-1.0)) / (1 - 2 * eps), rel=1e-12)
    if eps == 0.0:
        sigmoid = dpo_loss(*PAIR, loss_type="sigmoid", beta=0.5)[0].item()
        assert cdpo == pytest.approx(sigmoid) and robust == pytest.approx(sigmoid)


def test_dpo_length_normalised_by_hand() -> None:
    # chosen ratio 1 over 2 tokens, rejected ratio -1 over 4 tokens: per-token delta 0.5 + 0.25 = 0.75
    lengths = {"chosen_lengths": _t(2.0), "rejected_lengths": _t(4.0)}
    ipo = dpo_loss(*PAIR, loss_type="ipo", beta=0.5, **lengths)
    assert ipo[0].item() == pytest.approx((0.75 - 1.0) ** 2)
    norm = dpo_loss(*PAIR, loss_type="sigmoid_norm", beta=0.5, **lengths)
    assert norm[0].item() == pytest.approx(-_logsig(0.375))
    # rewards stay unnormalised, as TRL logs them
    assert norm[1].item() == pytest.approx(0.5) and ipo[2].item() == pytest.approx(-0.5)


def test_dpo_refusals_are_one_sentence_value_errors() -> None:
    with pytest.raises(ValueError, match=r"'cdpo'.*'robust'") as info:
        dpo_loss(*PAIR, loss_type="sigmoid", beta=0.1, label_smoothing=0.1)
    assert isinstance(info.value, SteelforgeError) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="sigmoid, ipo, sigmoid_norm, hinge, robust, cdpo"):
        dpo_loss(*PAIR, loss_type="kto", beta=0.1)
    with pytest.raises(ValueError, match="chosen_lengths and rejected_lengths"):
        dpo_loss(*PAIR, loss_type="ipo", beta=0.1)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo_loss(*PAIR, loss_type="robust", beta=0.1, label_smoothing=0.5)


def test_dpo_gradient_flows_to_policy_only() -> None:
    chosen, rejected = _t(-3.0).requires_grad_(), _t(-5.0).requires_grad_()
    losses, chosen_rewards, _ = dpo_loss(chosen, rejected, _t(-4.0), _t(-4.0), loss_type="sigmoid", beta=0.5)
    losses.sum().backward()
    # d/d chosen of -logsig(beta*d) = -beta * sigmoid(-beta*d)
    assert chosen.grad.item() == pytest.approx(-0.5 / (1 + math.e))
    assert rejected.grad.item() == pytest.approx(0.5 / (1 + math.e))
    assert not chosen_rewards.requires_grad


def test_sequence_logps_and_metrics() -> None:
    tok = torch.tensor([[0.0, -1.0, -2.0, 0.5], [0.0, -3.0, 7.0, 7.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    total, lengths = sequence_logps(tok, mask)
    assert total.tolist() == [-3.0, -3.0] and lengths.tolist() == [2.0, 1.0]
    metrics = dpo_metrics(_t(1.0, 3.0), _t(0.2, -0.1), _t(0.1, 0.3), _t(-5.0, -7.0), _t(-6.0, -8.0))
    assert metrics == pytest.approx({
        "loss": 2.0, "rewards/chosen": 0.05, "rewards/rejected": 0.2, "rewards/accuracies": 0.5,
        "rewards/margins": -0.15, "logps/chosen": -6.0, "logps/rejected": -7.0,
    })  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-50, 0, allow_nan=False), min_size=4, max_size=4),
    beta=st.floats(0.01, 2.0),
    eps=st.floats(0.0, 0.5),
)
def test_dpo_swap_properties(values: list[float], beta: float, eps: float) -> None:
    """Swapping chosen and rejected: sigmoid rises by exactly beta*d; cdpo(eps) becomes cdpo(1 - eps)."""
    c, r, rc, rr = (_t(v) for v in values)
    d = (values[0] - values[2]) - (values[1] - values[3])
    loss, chosen_rewards, rejected_rewards = dpo_loss(c, r, rc, rr, loss_type="sigmoid", beta=beta)
    swapped, swapped_chosen, swapped_rejected = dpo_loss(r, c, rr, rc, loss_type="sigmoid", beta=beta)
    torch.testing.assert_close(swapped - loss, _t(beta * d), rtol=1e-9, atol=1e-9)
    assert torch.equal(swapped_chosen, rejected_rewards) and torch.equal(swapped_rejected, chosen_rewards)
    logsig = torch.nn.functional.logsigmoid
    cdpo_swapped = dpo_loss(r, c, rr, rc, loss_type="cdpo", beta=beta, label_smoothing=eps)[0]
    torch.testing.assert_close(cdpo_swapped, -eps * logsig(_t(beta * d)) - (1 - eps) * logsig(_t(-beta * d)))


# ---- GRPO ----------------------------------------------------------------------------------------


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 2.0, 5.0, 5.0, 5.0])
    none = group_advantages(rewards, 3, "none")
    torch.testing.assert_close(none, torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0, 0.0]))
    group = group_advantages(rewards, 3, "group")  # group std (n-1) = 1; constant group -> 0 / 1e-4 = 0
    torch.testing.assert_close(group, torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0, 0.0]) / (1.0 + 1e-4))
    batch = group_advantages(rewards, 3, "batch")  # group-centred, divided by the std of all six rewards
    torch.testing.assert_close(batch, none / (rewards.std() + 1e-4))
    assert torch.equal(group_advantages(rewards, 3, True), group)
    assert torch.equal(group_advantages(rewards, 3, False), none)
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(rewards, 3, "rank")
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(rewards, 4)


def test_group_advantages_nan_rewards_are_left_out() -> None:
    rewards = torch.tensor([1.0, float("nan"), 3.0, 0.0])
    adv = group_advantages(rewards, 4, "none")
    torch.testing.assert_close(adv, torch.tensor([-1 / 3, 0.0, 5 / 3, -4 / 3]))


@settings(max_examples=40, deadline=None)
@given(
    rewards=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=24),
    group=st.sampled_from([1, 2, 3, 4]),
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_group_advantages_sum_to_zero_per_group(rewards: list[float], group: int, scale: str) -> None:
    rewards = rewards[: len(rewards) // group * group] or [0.0] * group
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), group, scale).view(-1, group)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(adv.shape[0], dtype=adv.dtype), rtol=0, atol=1e-3)


MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
ADV = torch.tensor([1.0, -2.0, 0.5])


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_on_policy_gradient_is_reinforce_with_group_baseline(loss_type: str) -> None:
    """mu = 1, beta 0: d loss / d logp_t = -A_i * w_i, the aggregation's token weight (no clipping possible)."""
    logps = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    loss, metrics = grpo_loss(
        logps, None, None, ADV, MASK, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, beta=0.0,
        max_completion_length=5, num_items_in_batch=12,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logps)
    m = MASK.to(torch.float64)
    weight = {
        "grpo": m / m.sum(1, keepdim=True) / 3,
        "bnpo": m / 6,
        "dr_grpo": m / (3 * 5),
        "dapo": m / 12,
    }[loss_type]
    torch.testing.assert_close(grad, -ADV[:, None].double() * weight)
    torch.testing.assert_close(loss, -(ADV[:, None].double() * weight).sum())
    assert metrics["clip_ratio/region_mean"] == 0.0 and "kl" not in metrics


def test_clipping_by_hand() -> None:
    """Ratios 1.5 and 0.5 with A = +1 and A = -1: clipped terms are constant (no gradient), others are not."""
    logps = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    old = -torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]], dtype=torch.float64))  # ratio = exp(0 - old)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2)
    loss, metrics = grpo_loss(logps, old, None, adv, mask, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.2, beta=0.0)
    # A=+1: ratio 1.5 -> min(1.5, 1.2) = 1.2 (clipped, no grad); ratio 0.5 -> min(0.5, 0.8) = 0.5 (grad 0.5)
    # A=-1: ratio 1.5 -> min(-1.5, -1.2) = -1.5 (grad -1.5); ratio 0.5 -> min(-0.5, -0.8) = -0.8 (clipped)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.5 - 0.8) / 4)
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.5], [1.5, 0.0]], dtype=torch.float64) / 4)
    assert metrics["clip_ratio/high_mean"] == 0.25 and metrics["clip_ratio/low_mean"] == 0.25
    assert metrics["clip_ratio/region_mean"] == 0.5
    assert metrics["clip_ratio/low_min"] == 0.0 and metrics["clip_ratio/high_max"] == 0.5


@pytest.mark.parametrize("bias_corrected", [True, False])
def test_kl_term_by_hand(bias_corrected: bool) -> None:
    logps = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.1, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1]])
    loss, metrics = grpo_loss(logps, old, ref, torch.zeros(1), mask, loss_type="grpo", epsilon_low=0.2,
                              epsilon_high=0.2, beta=0.1, bias_corrected_kl=bias_corrected)  # fmt: skip
    diff = torch.tensor([-0.5, 1.0], dtype=torch.float64)
    kl = torch.exp(diff) - diff - 1
    if bias_corrected:
        kl = kl * torch.exp(torch.tensor([0.1, 0.0], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.1 * kl.mean().item(), rel=1e-12)
    assert metrics["kl"] == pytest.approx(kl.mean().item(), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logps)
    # d k3 / d logp = 1 - exp(ref - logp); bias correction adds k3 * ratio (d ratio / d logp = ratio)
    expected = 1 - torch.exp(diff)
    if bias_corrected:
        ratio = torch.exp(torch.tensor([0.1, 0.0], dtype=torch.float64))
        expected = expected * ratio + (torch.exp(diff) - diff - 1) * ratio
    torch.testing.assert_close(grad, 0.1 * expected[None] / 2)


def test_grpo_refusals() -> None:
    logps = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logps, None, None, torch.ones(1), torch.ones(1, 2), loss_type="dr_grpo", epsilon_low=0.2,
                  epsilon_high=0.2, beta=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="ref_token_logps"):
        grpo_loss(logps, None, None, torch.ones(1), torch.ones(1, 2), loss_type="grpo", epsilon_low=0.2,
                  epsilon_high=0.2, beta=0.04)  # fmt: skip
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo"):
        grpo_loss(logps, None, None, torch.ones(1), torch.ones(1, 2), loss_type="ppo", epsilon_low=0.2,
                  epsilon_high=0.2, beta=0.0)  # fmt: skip


def test_dapo_defaults_to_local_token_count() -> None:
    logps = torch.zeros(3, 4, requires_grad=True)
    kwargs = {"epsilon_low": 0.2, "epsilon_high": 0.28, "beta": 0.0}
    dapo, _ = grpo_loss(logps, logps.detach() + 0.1, None, ADV, MASK, loss_type="dapo", **kwargs)
    bnpo, _ = grpo_loss(logps, logps.detach() + 0.1, None, ADV, MASK, loss_type="bnpo", **kwargs)
    torch.testing.assert_close(dapo, bnpo)
    assert dapo.item() != 0.0
