"""Analytic FLOPs equal what torch's FlopCounterMode measures; presets match the papers; `model info`."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from steelforge.errors import RecipeError
from steelforge.models.flops import flops_per_token
from steelforge.models.loading import build_config, load_model
from steelforge.models.presets import PRESETS, preset_names

FLOP_CASES = [
    ("tiny-steel", {"softmoe_dispatch": "causal", "slots_per_expert": 2}),
    ("tiny-steel", {"softmoe_dispatch": "token", "slots_per_expert": 2}),
    ("tiny-steel", {"softmoe_dispatch": "sequence"}),
    ("tiny-steel", {"FFN_type": "raw", "mlp_type": "raw"}),
    ("tiny-moxin", {}),
]


@pytest.mark.parametrize(("preset", "overrides"), FLOP_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_flops_per_token_matches_flop_counter(make_model, preset, overrides, training):
    # eager attention: torch's counter does not see the CPU flash-attention kernel behind SDPA
    model = make_model(preset, attn="eager", **overrides)
    batch, seq = 2, 24
    ids = torch.randint(0, 512, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        if training:
            model(ids).logits.sum().backward()
        else:
            with torch.no_grad():
                model(ids)
    measured = counter.get_total_flops() / (batch * seq)
    assert flops_per_token(model.config, seq, training=training) == pytest.approx(measured, rel=1e-9)


def test_steel_1b_matches_the_paper():
    config = build_config("steel-1b")
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (18, 1792, 32)
    assert (config.num_key_value_heads, config.n_experts, config.slots_per_expert) == (32, 6, 1)
    assert (config.intermediate_size, config.expert_intermediate_size, config.vocab_size) == (
        1792,
        448,
        151_936,
    )
    assert config.rope_parameters["rope_theta"] == 1e6 and config.softmoe_dispatch == "causal"
    model = load_model("steel-1b", on_meta=True)
    assert 1.10e9 < sum(p.numel() for p in model.parameters()) < 1.15e9


def test_moxin_7b_is_a_native_mistral():
    config = build_config("moxin-7b")
    assert type(config).__name__ == "MistralConfig"
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim, config.intermediate_size) == (
        36,
        4096,
        128,
        14336,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.sliding_window) == (32, 8, 4096)
    assert (config.vocab_size, config.rms_norm_eps, config.rope_parameters["rope_theta"]) == (
        32000,
        1e-5,
        1e4,
    )
    assert config.tie_word_embeddings is False
    model = load_model("moxin-7b", on_meta=True)
    assert type(model).__name__ == "MistralForCausalLM"


def test_tiny_steel_fits_the_qwen_tokenizer():
    assert build_config("tiny-steel").vocab_size >= 151_646
    assert set(preset_names()) == set(PRESETS) >= {"steel-1b", "moxin-7b", "tiny-steel", "tiny-moxin"}


def test_model_info_cli(official_dir):
    from steelforge.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["model", "info", "tiny-steel", "--seq-len", "256"])
    assert result.exit_code == 0, result.output
    assert "SteelForCausalLM" in result.output and "FLOPs/token" in result.output
    assert "embedding" in result.output
    result = runner.invoke(app, ["model", "info", str(official_dir)])
    assert result.exit_code == 0, result.output
    assert "sequence" in result.output
    result = runner.invoke(app, ["model", "info", "nope"])
    assert isinstance(result.exception, RecipeError) and "neither a preset" in str(result.exception)
    assert "Examples" in runner.invoke(app, ["model", "info", "--help"]).output
