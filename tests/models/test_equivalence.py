"""Fast paths equal plain paths: SDPA vs eager attention, gradient checkpointing vs stored activations."""

from __future__ import annotations

import pytest
import torch

CASES = [
    ("tiny-steel", {"softmoe_dispatch": "causal"}),
    ("tiny-steel", {"softmoe_dispatch": "sequence", "mlp_type": "raw"}),
    ("tiny-steel", {"FFN_type": "raw"}),
    ("tiny-moxin", {"sliding_window": 5}),
]


@pytest.mark.parametrize(("preset", "overrides"), CASES)
def test_sdpa_equals_eager(make_model, preset, overrides):
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sdpa = make_model(preset, attn="sdpa", **overrides)(ids).logits
        eager = make_model(preset, attn="eager", **overrides)(ids).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=1e-5)


def _grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(ids).logits.float().logsumexp(-1).mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(("preset", "overrides"), [CASES[0], CASES[3]])
def test_gradient_checkpointing_gives_the_same_gradients(make_model, preset, overrides):
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(1))
    model = make_model(preset, **overrides)
    plain = _grads(model, ids)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed = _grads(model, ids)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert (
        plain["model.layers.0.mlp.phi" if preset == "tiny-steel" else "model.layers.0.mlp.up_proj.weight"]
        .abs()
        .sum()
        > 0
    )
