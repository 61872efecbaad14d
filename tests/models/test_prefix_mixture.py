"""Blockwise prefix mixtures of causal Soft-MoE equal the plain running sums, whatever the block split."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.models.steel.modeling_steel import CACHE_KW, _prefix_mixtures


def _running_sums(weights, x, prev):
    """Reference: cumulative sums over positions in float64, then the ratio (the definition)."""
    numer = torch.cumsum(weights.double().unsqueeze(-1) * x.double().unsqueeze(2), dim=1)  # [b, t, s, d]
    denom = torch.cumsum(weights.double(), dim=1)  # [b, t, s]
    if prev is not None:
        numer = numer + prev[0].double().unsqueeze(1)
        denom = denom + prev[1].double().unsqueeze(1)
    mixtures = numer / denom.clamp_min(1e-30).unsqueeze(-1)
    return mixtures.permute(2, 0, 1, 3), numer[:, -1], denom[:, -1]


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    seq=st.integers(1, 70),
    slots=st.integers(1, 3),
    dim=st.integers(1, 5),
    block=st.sampled_from([1, 3, 8, 64]),
    with_prev=st.booleans(),
    masked=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_blockwise_equals_running_sums(batch, seq, slots, dim, block, with_prev, masked, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch, seq, slots, generator=gen) + 0.05
    weights[:, :masked] = 0.0  # left padding: fully masked positions before the first token
    x = torch.randn(batch, seq, dim, generator=gen)
    prev = None
    if with_prev:
        prev = (torch.randn(batch, slots, dim, generator=gen), torch.rand(batch, slots, generator=gen) + 0.5)
    got, (numer, denom) = _prefix_mixtures(weights, x, prev, block=block)
    want, want_numer, want_denom = _running_sums(weights, x, prev)
    assert got.shape == (slots, batch, seq, dim)
    valid = (torch.cumsum(weights, 1) > 0) if prev is None else torch.ones_like(weights, dtype=torch.bool)
    mask = valid.permute(2, 0, 1).unsqueeze(-1).expand_as(got)
    torch.testing.assert_close(got[mask].double(), want[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(numer.double(), want_numer, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(denom.double(), want_denom, atol=1e-4, rtol=1e-5)


def test_no_position_reads_a_later_one() -> None:
    """Changing position j leaves every mixture at positions < j bit-identical, across block borders."""
    gen = torch.Generator().manual_seed(0)
    weights, x = torch.rand(1, 150, 2, generator=gen), torch.randn(1, 150, 4, generator=gen)
    before, _ = _prefix_mixtures(weights, x, None, block=64)
    for j in (5, 63, 64, 100, 149):
        w2, x2 = weights.clone(), x.clone()
        w2[:, j], x2[:, j] = 7.0, 100.0
        after, _ = _prefix_mixtures(w2, x2, None, block=64)
        assert torch.equal(after[:, :, :j], before[:, :, :j]), j
        assert not torch.equal(after[:, :, j], before[:, :, j])


def test_cached_decoding_across_block_borders_equals_full_forward(make_model) -> None:
    """A 140-token sequence (three blocks, the last one padded): prefill past a border, then one token per call."""
    model = make_model(softmoe_dispatch="causal", seed=4, initializer_range=0.1)
    ids = torch.randint(0, 512, (2, 140), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :66], use_cache=True)
        pieces = [out.logits]
        for t in range(66, 140, 37):  # chunks of 37 tokens: every chunk straddles a 64-position border
            out = model(ids[:, t : t + 37], use_cache=True, **{CACHE_KW: out[CACHE_KW]})
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
