"""Causal dispatch modes never let position i see token j > i; the released `sequence` mode does."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

SEQ = 12


@pytest.fixture(scope="module")
def models(make_model):
    return {mode: make_model(softmoe_dispatch=mode, seed=1) for mode in ("causal", "token", "sequence")}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    mode=st.sampled_from(["causal", "token"]),
    ids=st.lists(st.integers(0, 511), min_size=SEQ, max_size=SEQ),
    j=st.integers(1, SEQ - 1),
    new_token=st.integers(0, 511),
)
def test_changing_token_j_never_changes_earlier_logits(models, mode, ids, j, new_token):
    model = models[mode]
    before = torch.tensor([ids])
    after = before.clone()
    after[0, j] = new_token
    torch.testing.assert_close(_logits(model, before)[:, :j], _logits(model, after)[:, :j], atol=1e-6, rtol=0)


def test_sequence_mode_leaks_the_future(models):
    model = models["sequence"]
    gen = torch.Generator().manual_seed(0)
    before = torch.randint(0, 512, (1, SEQ), generator=gen)
    after = before.clone()
    after[0, -1] = (after[0, -1] + 1) % 512
    leak = (_logits(model, before)[:, :-1] - _logits(model, after)[:, :-1]).abs().max()
    assert leak > 1e-3


@pytest.mark.parametrize("mode", ["causal", "token"])
def test_left_padding_does_not_change_outputs(models, mode):
    """Masked (padding) positions are left out of the causal running sums."""
    model = models[mode]
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        plain = model(ids).logits
        padded_logits = model(padded, attention_mask=mask, position_ids=position_ids).logits[:, 3:]
    torch.testing.assert_close(padded_logits, plain, atol=1e-5, rtol=0)
