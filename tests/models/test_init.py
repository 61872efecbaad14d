"""Meta-device builds materialise and initialise (the training engine's path), for every preset family."""

from __future__ import annotations

import pytest
import torch

from steelforge.models.loading import load_model


@pytest.mark.parametrize("preset", ["tiny-steel", "tiny-moxin"])
def test_meta_build_then_to_empty_and_init_weights(preset):
    model = load_model(preset, on_meta=True)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    # to_empty leaves garbage: fill with a sentinel so that anything init_weights skips is caught
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    model.init_weights()
    std = model.config.initializer_range
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if name.endswith("norm.weight") or name.endswith("mlp.scale"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif name.endswith("mlp.phi"):
            assert abs(p.std().item() - p.shape[0] ** -0.5) < 0.3 * p.shape[0] ** -0.5, name
        else:
            assert abs(p.std().item() - std) < 0.2 * std, name
    ids = torch.randint(0, 512, (1, 8))
    assert torch.isfinite(model(ids).logits).all()
    # the rotary inverse frequencies are buffers: recomputed, not left as garbage
    inv_freq = model.model.rotary_emb.inv_freq
    assert torch.isfinite(inv_freq).all() and inv_freq[0] == 1.0


def test_layout_used_by_the_training_engine():
    model = load_model("tiny-steel")
    out = model.model(input_ids=torch.randint(0, 512, (1, 6)), position_ids=torch.arange(6)[None])
    assert out.last_hidden_state.shape == (1, 6, model.config.hidden_size)
    assert model.lm_head.weight.shape == (model.config.vocab_size, model.config.hidden_size)
    assert len(model.model.layers) == model.config.num_hidden_layers
    assert set(model._no_split_modules) == {"SteelDecoderLayer"}
