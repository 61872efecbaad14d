"""DPO and GRPO against TRL 1.16's own numbers on its tiny Qwen2 models (../shared/fixtures/trl_reference).

Log-probs come from `token_logps` on the fixture models and inputs, so these tests check the whole path:
hidden states, chunked head, sequence sums, the loss formulas, their gradients and the metrics.
"""

from __future__ import annotations

import math

import pytest
import torch

from steelforge.posttrain.logprobs import token_logps
from steelforge.posttrain.losses import dpo_loss, dpo_metrics, group_advantages, grpo_loss, sequence_logps

from .conftest import load_tiny

RTOL = 1e-5


def _close(actual, expected, rtol: float = RTOL, atol: float = 1e-6) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol
    )


def _grad_norm(model) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def _dpo_batch(inputs: dict):
    return (
        torch.tensor(inputs["input_ids"]),
        torch.tensor(inputs["attention_mask"]),
        torch.tensor(inputs["completion_mask"]),
    )


@pytest.fixture(scope="module")
def dpo_ref_logps(trl_dir, dpo_data):
    """Reference sequence log-probs (no grad) from tiny_reference, split chosen / rejected."""
    inputs, _ = dpo_data
    ids, am, cm = _dpo_batch(inputs)
    with torch.no_grad():
        seq, lengths = sequence_logps(token_logps(load_tiny(trl_dir / "tiny_reference"), ids, am, cm), cm)
    return seq.chunk(2), lengths.chunk(2)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid_norm"])
def test_dpo_matches_trl(trl_dir, dpo_data, dpo_ref_logps, loss_type: str) -> None:
    inputs, reference = dpo_data
    expected = reference["results"][loss_type]
    beta = reference["beta"]
    ids, am, cm = _dpo_batch(inputs)
    policy = load_tiny(trl_dir / "tiny_policy")
    tok = token_logps(policy, ids, am, cm, chunk_size=5)  # several chunks and a ragged last one
    seq, lengths = sequence_logps(tok, cm)
    chosen, rejected = seq.chunk(2)
    chosen_len, rejected_len = lengths.chunk(2)
    (ref_chosen, ref_rejected), _ = dpo_ref_logps

    _close(chosen, expected["policy_chosen_logps__trl"])
    _close(rejected, expected["policy_rejected_logps__trl"])
    _close(ref_chosen, expected["ref_chosen_logps__trl"])
    _close(ref_rejected, expected["ref_rejected_logps__trl"])
    _close(chosen_len, expected["chosen_completion_lengths"], rtol=0, atol=0)
    _close(rejected_len, expected["rejected_completion_lengths"], rtol=0, atol=0)
    per_token_chosen = [tok[i][cm[i].bool()] for i in range(4)]
    for got, want in zip(per_token_chosen, expected["policy_per_token_logps_chosen__trl"], strict=True):
        _close(got, want)

    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, loss_type=loss_type, beta=beta,
        chosen_lengths=chosen_len, rejected_lengths=rejected_len,
    )  # fmt: skip
    _close(losses, expected["losses_per_example__trl_single_pair_batches"])
    _close(chosen_rewards, expected["rewards_chosen_per_example"])
    _close(rejected_rewards, expected["rewards_rejected_per_example"])
    _close(chosen_rewards - rejected_rewards, expected["rewards_margin_per_example"], atol=2e-6)
    loss = losses.mean()
    _close(loss, expected["loss_mean__trl"])

    loss.backward()
    _close(_grad_norm(policy), expected["grad_norm_policy__trl"])
    for name, param in policy.named_parameters():
        _close(param.grad.norm(), expected["grad_norm_per_param__trl"][name], atol=1e-6)

    metrics = dpo_metrics(losses, chosen_rewards, rejected_rewards, chosen, rejected)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):  # fmt: skip
        _close(metrics[key], expected["metrics__trl"][key])
    _close(metrics["loss"], expected["loss_mean__trl"])


def _grpo_batch(inputs: dict):
    prompt_ids = torch.tensor(inputs["prompt_ids_padded_left"])
    completion_ids = torch.tensor(inputs["completion_ids_padded_right"])
    prompt_mask = torch.tensor(inputs["prompt_mask"])
    completion_mask = torch.tensor(inputs["completion_mask"])
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    scored = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
    return ids, attention, scored, prompt_ids.shape[1]


def _ragged(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])


def test_grpo_token_logps_and_entropy_match_trl(trl_dir, grpo_data) -> None:
    """Left-padded prompts, right-padded completions; TRL called the model without position_ids."""
    inputs, reference = grpo_data
    ids, attention, scored, p = _grpo_batch(inputs)
    with torch.no_grad():
        logps, entropy = token_logps(load_tiny(trl_dir / "tiny_policy"), ids, attention, scored, return_entropy=True)
        ref = token_logps(load_tiny(trl_dir / "tiny_reference"), ids, attention, scored)
        # TRL's own numbering (no position_ids: 0..T-1 on left-padded rows too) reproduces it to the last bit
        trl_numbered = token_logps(load_tiny(trl_dir / "tiny_policy"), ids, attention, scored,
                                   torch.arange(ids.shape[1]).expand_as(ids))  # fmt: skip
    width = ids.shape[1] - p
    _close(logps[:, p:], _ragged(inputs["policy_per_token_logps__trl"], width))
    _close(trl_numbered[:, p:], _ragged(inputs["policy_per_token_logps__trl"], width), rtol=0, atol=0)
    _close(entropy[:, p:], _ragged(inputs["policy_per_token_entropy__trl"], width))
    _close(ref[:, p:], _ragged(inputs["ref_per_token_logps__trl"], width))
    assert not logps[:, :p].any() and not entropy[:, :p].any()
    mean_entropy = (entropy * scored).sum() / scored.sum()
    _close(mean_entropy, reference["cases"]["grpo|scale_rewards=group|beta=0.0|old=onpolicy"]["metrics__trl"]["entropy"])


@pytest.mark.parametrize("scale", ["group", "none"])
def test_grpo_advantages_match_trl(grpo_data, scale: str) -> None:
    inputs, reference = grpo_data
    case = reference["cases"][f"grpo|scale_rewards={scale}|beta=0.0|old=onpolicy"]
    advantages = group_advantages(torch.tensor(inputs["rewards"]), inputs["num_generations"], scale)
    _close(advantages, case["advantages__trl"])


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("scale", ["group", "none"])
def test_grpo_loss_matches_trl(trl_dir, grpo_data, loss_type: str, scale: str) -> None:
    inputs, reference = grpo_data
    case = reference["cases"][f"{loss_type}|scale_rewards={scale}|beta=0.0|old=onpolicy"]
    config = case["config"]
    ids, attention, scored, p = _grpo_batch(inputs)
    policy = load_tiny(trl_dir / "tiny_policy")
    logps = token_logps(policy, ids, attention, scored)[:, p:]
    completion_mask = scored[:, p:]
    advantages = group_advantages(torch.tensor(inputs["rewards"]), inputs["num_generations"], scale)
    loss, metrics = grpo_loss(
        logps, None, None, advantages, completion_mask,
        loss_type=loss_type, epsilon_low=config["epsilon_low"], epsilon_high=config["epsilon_high"],
        beta=config["beta"], max_completion_length=config["max_completion_length"],
        num_items_in_batch=case["num_items_in_batch__trl"],
    )  # fmt: skip
    # On-policy: the loss is a sum of ±A terms that cancel to ~0, hence the absolute tolerance.
    _close(loss, case["loss__trl"], rtol=0, atol=1e-6)
    loss.backward()
    _close(_grad_norm(policy), case["grad_norm_policy__trl"])
    for key, value in case["metrics__trl"].items():
        if key != "entropy":
            assert metrics[key] == value, key
    assert "kl" not in metrics


def test_grpo_rederived_intermediates(grpo_data) -> None:
    """Per-token loss and per-sequence loss equal the fixture's rederived TRL intermediates."""
    inputs, reference = grpo_data
    case = reference["cases"]["grpo|scale_rewards=group|beta=0.0|old=onpolicy"]
    width = 6
    logps = _ragged(inputs["policy_per_token_logps__trl"], width).requires_grad_()
    mask = torch.tensor(inputs["completion_mask"])
    advantages = torch.tensor(case["advantages__trl"])
    per_token = _ragged(case["rederived"]["per_token_loss_total"], width)
    _close(per_token, -advantages[:, None] * mask)
    loss, _ = grpo_loss(logps, None, None, advantages, mask, loss_type="grpo", epsilon_low=0.2, epsilon_high=0.2, beta=0.0)
    _close(loss, case["rederived"]["loss"], rtol=0, atol=1e-6)
    _close((per_token * mask).sum(-1) / mask.sum(-1), case["rederived"]["per_sequence_loss"])
    (grad,) = torch.autograd.grad(loss, logps)
    # d loss / d logp_t = -A_i / (len_i * B) on completion tokens: the REINFORCE gradient, per-sequence mean.
    _close(grad, -advantages[:, None] * mask / mask.sum(-1, keepdim=True) / len(mask))
