"""Small model builders shared by the model tests (CPU-sized: vocab 512, hidden 64, 2 layers)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

SMALL = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
    # large weights so that every sub-layer (the Soft-MoE included) moves the logits visibly
    "initializer_range": 0.3,
}


def small_model(preset: str = "tiny-steel", attn: str = "sdpa", seed: int = 0, **overrides: Any):
    """A seeded fp32 model from a preset with the small shape above (and the given overrides)."""
    from steelforge.models.loading import load_model

    torch.manual_seed(seed)
    fields = {**SMALL, **({"head_dim": 16} if preset == "tiny-moxin" else {}), **overrides}
    model = load_model({"preset": preset, "overrides": fields, "attn_implementation": attn})
    _perturb_soft_moe(model)
    return model.eval()


def _perturb_soft_moe(model) -> None:
    """Random Soft-MoE `scale` (so it and its stabiliser matter) and experts big enough to move the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.scale"):
                param.fill_(float(torch.empty(1).uniform_(0.5, 4.0)))
            elif ".mlp.experts." in name:
                param.normal_(0.0, 0.5)


@pytest.fixture(scope="session")
def make_model():
    """Factory fixture: `make_model(preset="tiny-steel", attn="sdpa", seed=0, **config_overrides)`."""
    return small_model


@pytest.fixture
def official_dir(fixtures_dir):
    path = fixtures_dir / "steel_official_tiny"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
