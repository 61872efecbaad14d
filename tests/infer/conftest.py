"""Tiny exported models (Steel with Qwen1.5's ChatML template, Moxin with mistral-v1 and no template)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_STEEL = {"preset": "tiny-steel", "overrides": {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
                                                    "num_attention_heads": 2, "num_key_value_heads": 1, "n_experts": 2}}
TINY_MOXIN = {"preset": "tiny-moxin", "overrides": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128}}


def _exported(root: Path, spec: dict, tokenizer: str) -> Path:
    from steelforge.export.hf import export_checkpoint
    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer

    torch.manual_seed(0)
    model = load_model(spec, dtype=torch.float32)
    with torch.no_grad():  # sharper distributions than the init, so greedy text varies with the prompt
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(root / "src")
    load_tokenizer(tokenizer).save_pretrained(root / "src")
    export_checkpoint(root / "src", root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def steel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _exported(tmp_path_factory.mktemp("steel"), TINY_STEEL, "qwen1.5")


@pytest.fixture(scope="session")
def moxin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _exported(tmp_path_factory.mktemp("moxin"), TINY_MOXIN, "mistral-v1")
