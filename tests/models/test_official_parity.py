"""The released Steel-LLM format loads without running its code and reproduces the reference outputs."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from steelforge.models.loading import load_model


@pytest.fixture
def expected(official_dir):
    return load_file(official_dir / "expected_outputs.safetensors")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_reference(official_dir, expected, attn, caplog):
    with caplog.at_level(logging.WARNING, logger="steelforge.models"):
        model = load_model({"path": str(official_dir), "attn_implementation": attn}).eval()
    assert type(model).__name__ == "SteelForCausalLM"
    assert model.config.softmoe_dispatch == "sequence"
    warnings = [r.getMessage() for r in caplog.records if "NOT causal" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)


def test_greedy_cached_generation_matches_reference(official_dir, expected):
    model = load_model(official_dir).eval()
    prompt = expected["generate_prompt"]
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, use_cache=True
    )
    assert torch.equal(out, expected["generate_greedy_cached"])


def test_official_folder_code_is_never_imported(official_dir, tmp_path):
    """A copy whose auto_map points at a module that would fail on import still loads."""
    import shutil

    folder = tmp_path / "official"
    shutil.copytree(official_dir, folder)
    (folder / "modeling_steel.py").write_text("raise RuntimeError('remote code executed')\n")
    (folder / "configuration_steel.py").write_text("raise RuntimeError('remote code executed')\n")
    model = load_model(folder)
    assert model.config.FFN_type == "softmoe_v3"
