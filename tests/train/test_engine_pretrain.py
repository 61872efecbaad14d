"""The pretrain stage end to end on one process: store -> train -> checkpoints, metrics, HF export, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steelforge.errors import DataError
from steelforge.recipe import recipe_from_dict

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fingerprint() -> str:
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint

    return tokenizer_fingerprint(load_tokenizer())


def _store(path: Path, fingerprint: str, n_docs: int, seed: int) -> Path:
    from steelforge.tokens.pack import write_token_store

    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, stride = rng.integers(0, 500), rng.integers(1, 4)
        docs.append(("web", (start + stride * np.arange(rng.integers(20, 80))) % 500))
    write_token_store(path, docs, tokenizer_name="qwen1.5", tokenizer_fingerprint=fingerprint)
    return path


def _recipe(tmp_path: Path, fingerprint: str, max_steps: int, schedule_steps: int | None = None):
    train = _store(tmp_path / "train", fingerprint, 120, 0) if not (tmp_path / "train").exists() else tmp_path / "train"
    val = _store(tmp_path / "val", fingerprint, 20, 1) if not (tmp_path / "val").exists() else tmp_path / "val"
    return recipe_from_dict({
        "name": "tiny",
        "out_dir": str(tmp_path / "run"),
        "model": {"preset": "tiny-moxin", "overrides": {"vocab_size": 512, "num_hidden_layers": 2}},
        "pretrain": {
            "max_steps": max_steps, "seq_len": 32, "micro_batch_size": 2, "global_batch_size": 4,
            "stores": [str(train)], "val_store": str(val), "val_every": 2, "val_batches": 1,
            "optim": {"lr": 3e-3}, "checkpoint": {"every": 2}, "tensorboard": False,
            "schedule": {"total_steps": schedule_steps},
        },
    })


def test_pretrain_stage_writes_outputs_and_resumes(tmp_path: Path, fingerprint: str) -> None:
    from steelforge.train.pretrain import pretrain_complete, run_pretrain

    recipe = _recipe(tmp_path, fingerprint, 2)
    assert not pretrain_complete(recipe)
    report = run_pretrain(recipe)
    out = recipe.stage_dir("pretrain")
    assert pretrain_complete(recipe)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000002"]
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "model.safetensors").is_file()
    assert (out / "hf" / "tokenizer.json").is_file() and (out / "curves.png").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2] and train[-1]["tokens"] == 2 * 4 * 32
    assert all(k in train[-1] for k in ("lr", "grad_norm", "tokens_per_s", "mfu"))
    assert any("val_ppl" in r for r in records)
    assert dict(report.rows)["grad accumulation"] == 2

    # another recipe hash: not complete, resumes at step 2 (the cosine keeps its length: an explicit total_steps)
    longer = _recipe(tmp_path, fingerprint, 3, schedule_steps=2)
    assert not pretrain_complete(longer)
    report = run_pretrain(longer)
    assert dict(report.rows)["resumed from"].endswith("step_000000002")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and pretrain_complete(longer)


def test_store_packed_with_another_tokenizer_is_refused(tmp_path: Path, fingerprint: str) -> None:
    from steelforge.train.config import PretrainConfig
    from steelforge.train.distributed import DistEnv
    from steelforge.train.pretrain import build_loader

    store = _store(tmp_path / "other", "0" * 64, 5, 0)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=__import__("torch").device("cpu"), mesh=None)
    with pytest.raises(DataError, match="re-pack the data with the same tokenizer"):
        build_loader([store], PretrainConfig(seq_len=16, micro_batch_size=1), env, 0, 1, fingerprint)
