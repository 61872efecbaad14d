"""Token-by-token cached decoding equals one full forward; the sliding-window cache stays bounded."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from steelforge.models.steel.modeling_steel import CACHE_KW  # the installed transformers' name for the cache

SEQ = 20


def _incremental_logits(model, ids: torch.Tensor, prefill: int, cache) -> tuple[torch.Tensor, list[int]]:
    """Prefill `prefill` tokens, then feed one token per call; returns logits and the max cached length seen."""
    pieces, cached = [], []
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True, **{CACHE_KW: cache})
        pieces.append(out.logits)
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], use_cache=True, **{CACHE_KW: out[CACHE_KW]})
            pieces.append(out.logits)
            cached.append(max(layer.keys.shape[-2] for layer in out[CACHE_KW].layers))
    return torch.cat(pieces, dim=1), cached


@pytest.mark.parametrize("mode", ["causal", "token"])
@pytest.mark.parametrize("prefill", [1, 7])
def test_steel_cached_decoding_equals_full_forward(make_model, mode, prefill):
    model = make_model(softmoe_dispatch=mode, seed=2, initializer_range=0.1)
    ids = torch.randint(0, 512, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
    from steelforge.models.steel import SteelCache

    # SteelCache is what forward/generate create; a plain DynamicCache passed by a caller works as well
    for cache in (SteelCache(config=model.config), DynamicCache(config=model.config)):
        incremental, _ = _incremental_logits(model, ids, prefill, cache)
        torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)


def test_steel_generate_with_cache_equals_without(make_model):
    model = make_model(softmoe_dispatch="causal", seed=4)
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(1))
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 10, "do_sample": False}
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_steel_beam_search_reorders_soft_moe_sums(make_model):
    model = make_model(softmoe_dispatch="causal", seed=4)
    prompt = torch.randint(0, 512, (1, 4), generator=torch.Generator().manual_seed(2))
    kwargs = {
        "attention_mask": torch.ones_like(prompt),
        "max_new_tokens": 6,
        "do_sample": False,
        "num_beams": 3,
    }
    assert torch.equal(
        model.generate(prompt, use_cache=True, **kwargs), model.generate(prompt, use_cache=False, **kwargs)
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_moxin_sliding_window_cache_is_bounded_and_exact(make_model, attn):
    window = 6
    model = make_model("tiny-moxin", attn=attn, sliding_window=window, seed=3, initializer_range=0.1)
    ids = torch.randint(0, 512, (2, SEQ), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids).logits
        no_window = make_model("tiny-moxin", attn=attn, sliding_window=None, seed=3)(ids).logits
    assert (full - no_window)[:, window:].abs().max() > 1e-3, (
        "the window must matter for this test to mean anything"
    )
    cache = DynamicCache(config=model.config)
    incremental, cached = _incremental_logits(model, ids, prefill=3, cache=cache)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)
    assert max(cached) <= window
    assert all(type(layer).__name__ == "DynamicSlidingWindowLayer" for layer in cache.layers)
