"""Eval test helpers: the reference tiny Qwen2 (built by its own script), tiny benchmark folders, a stub LM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path


@pytest.fixture(scope="session")
def qwen_tok():
    from steelforge.tokenizers import load_tokenizer

    return load_tokenizer("qwen1.5")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return shared_path("fixtures", "eval_reference")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, reference_dir) -> Path:
    """The model the official CMMLU code scored, built with the fixture's own script (a few seconds)."""
    out = tmp_path_factory.mktemp("tiny_qwen2") / "model"
    subprocess.run([sys.executable, str(reference_dir / "build_tiny_qwen2.py"), str(out)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
