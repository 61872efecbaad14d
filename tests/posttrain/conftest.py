"""TRL 1.16 reference data (../shared/fixtures/trl_reference) and the two tiny Qwen2 models it was computed with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_path


@pytest.fixture(scope="module")
def trl_dir() -> Path:
    return shared_path("fixtures", "trl_reference")


def load_tiny(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def dpo_data(trl_dir: Path) -> tuple[dict, dict]:
    return json.loads((trl_dir / "dpo_inputs.json").read_text()), json.loads((trl_dir / "dpo_reference.json").read_text())


@pytest.fixture(scope="module")
def grpo_data(trl_dir: Path) -> tuple[dict, dict]:
    return (
        json.loads((trl_dir / "grpo_inputs.json").read_text()),
        json.loads((trl_dir / "grpo_reference.json").read_text()),
    )
