"""Resume only what the recipe describes: a checkpoint made from another architecture, tokenizer, store or
result-changing setting is refused with the changed keys named; `max_steps` below the checkpoint is refused; a
finished run is not rewritten; `resume.from` continues deliberately; damaged checkpoints and stores are caught.

Tiny throughout: a word-level tokenizer, a hand-written store, a 2-block Mistral, 4 steps.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny_run import VOCAB, _fp, _store, _tokenizer_dir

from steelforge.errors import DataError
from steelforge.stage import ResumeMismatch

STEPS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("guard")
    tok = _tokenizer_dir(root / "tok")
    store = _store(root / "store", _fp(tok))
    raw = {
        "name": "guard",
        "out_dir": str(root / "base"),
        "seed": 3,
        "tokenizer": str(tok),
        "model": {
            "preset": "tiny-moxin",
            "overrides": {
                "vocab_size": VOCAB, "hidden_size": 32, "head_dim": 8, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 32,
            },
        },
        "pretrain": {
            "max_steps": STEPS, "seq_len": 16, "micro_batch_size": 2, "grad_accum": 1, "stores": [str(store)],
            "log_every": 1, "tensorboard": False, "optim": {"lr": 3e-3}, "schedule": {"warmup_steps": 1},
            "checkpoint": {"every": 2, "keep_last": 2, "export_final": True},
        },
    }
    _run(raw)
    return {"root": root, "raw": raw, "tok": tok, "store": store}


def _run(raw: dict[str, Any], **kwargs: Any) -> Any:
    from steelforge.recipe import recipe_from_dict
    from steelforge.train.pretrain import run_pretrain

    return run_pretrain(recipe_from_dict(copy.deepcopy(raw)), **kwargs)


def _copy(world: dict[str, Any], tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """The base run's recipe pointed at a copy of its outputs, with `changes` ('a.b': value) applied."""
    raw = copy.deepcopy(world["raw"])
    shutil.copytree(Path(raw["out_dir"]), tmp_path / "run")
    raw["out_dir"] = str(tmp_path / "run")
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def _ckpts(raw: dict[str, Any]) -> list[Path]:
    return sorted((Path(raw["out_dir"]) / "pretrain" / "checkpoints").glob("step_*"))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("model.overrides.num_hidden_layers", 1, "model.num_hidden_layers"),
        ("pretrain.seq_len", 8, "pretrain.seq_len"),
        ("pretrain.optim.lr", 1e-3, "pretrain.optim.lr"),
        ("pretrain.max_steps", 6, "pretrain.schedule.total_steps"),  # cosine length follows max_steps
    ],
)
def test_changed_setting_refuses_resume_naming_the_key(world, tmp_path, key, value, named) -> None:
    raw = _copy(world, tmp_path, **{key: value})
    with pytest.raises(ResumeMismatch, match=rf"{named} \(") as err:
        _run(raw)
    text = str(err.value)
    assert "--force-new-run" in text and "out_dir" in text and "resume: {from:" in text
    assert "\n" not in text


def test_other_tokenizer_and_store_refuse_resume(world, tmp_path) -> None:
    tok2 = _tokenizer_dir(tmp_path / "tok2", vocab=VOCAB - 4)
    store2 = _store(tmp_path / "store2", _fp(tok2), high=VOCAB - 4)
    raw = _copy(world, tmp_path, tokenizer=str(tok2), **{"pretrain.stores": [str(store2)]})
    with pytest.raises(ResumeMismatch, match=r"stores\.0\.fingerprint .*tokenizer \("):
        _run(raw)


def test_rewritten_store_refuses_resume(world, tmp_path) -> None:
    store2 = _store(tmp_path / "store2", _fp(world["tok"]), seed=9)
    raw = _copy(world, tmp_path, **{"pretrain.stores": [str(store2)]})
    with pytest.raises(ResumeMismatch, match=r"stores\.0\.fingerprint"):
        _run(raw)


def test_max_steps_below_checkpoint_is_refused(world, tmp_path) -> None:
    raw = _copy(world, tmp_path, **{"pretrain.max_steps": 2, "pretrain.schedule.total_steps": STEPS})
    with pytest.raises(ResumeMismatch, match=r"max_steps = 2 is below the step 4"):
        _run(raw)


def test_finished_run_is_not_rewritten(world, tmp_path) -> None:
    raw = _copy(world, tmp_path, **{"pretrain.log_every": 2})  # recipe hash differs, result does not
    weights = Path(raw["out_dir"]) / "pretrain" / "hf" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    report = _run(raw)
    assert report.skipped and weights.stat().st_mtime_ns == before


def test_force_new_run_moves_the_old_run_aside(world, tmp_path) -> None:
    raw = _copy(world, tmp_path, **{"model.overrides.num_hidden_layers": 1, "pretrain.max_steps": 2})
    _run(raw, force_new_run=True)
    out = Path(raw["out_dir"]) / "pretrain"
    assert [p.name for p in _ckpts(raw)] == ["step_000000002"]
    assert len(list(out.glob("superseded-*/checkpoints/step_000000004"))) == 1
    assert json.loads((out / "hf" / "config.json").read_text())["num_hidden_layers"] == 1


def test_continued_training_from_another_run(world, tmp_path) -> None:
    """Steel-LLM's appended-data phase: new store, fresh optimizer and data position, the old weights."""
    from safetensors.torch import load_file

    store2 = _store(tmp_path / "store2", _fp(world["tok"]), seed=5)
    source = _ckpts(world["raw"])[-1]
    raw = copy.deepcopy(world["raw"])
    raw["out_dir"] = str(tmp_path / "phase2")
    raw["pretrain"].update(
        {"stores": [str(store2)], "max_steps": 2, "optim": {"lr": 1e-9, "weight_decay": 0.0},
         "resume": {"from": str(source), "reset_optimizer": True, "reset_data": True}}
    )
    _run(raw)
    got = load_file(Path(raw["out_dir"]) / "pretrain" / "hf" / "model.safetensors")
    ref = load_file(Path(world["raw"]["out_dir"]) / "pretrain" / "hf" / "model.safetensors")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=0)
    # afterwards the continued run resumes itself, not `resume.from` again
    raw["pretrain"]["max_steps"] = 3
    raw["pretrain"]["schedule"] = {"warmup_steps": 1, "total_steps": 2}
    report = _run(raw)
    assert dict(report.rows)["resumed from"] == str(Path(raw["out_dir"]) / "pretrain" / "checkpoints" / "step_000000002")


def test_damaged_checkpoint_falls_back_to_the_previous_one(world, tmp_path, capsys) -> None:
    raw = _copy(world, tmp_path, **{"pretrain.max_steps": 6, "pretrain.schedule.total_steps": STEPS})
    newest = _ckpts(raw)[-1]
    shard = next(newest.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    report = _run(raw)
    assert "step_000000004 is damaged" in capsys.readouterr().err.replace("\n", "")
    assert dict(report.rows)["resumed from"].endswith("step_000000002")


def test_store_with_flipped_byte_fails_full_verification(world, tmp_path) -> None:
    store2 = tmp_path / "store2"
    shutil.copytree(world["store"], store2)
    shard = store2 / "tiny-00000.u32"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x01
    shard.write_bytes(bytes(data))
    raw = copy.deepcopy(world["raw"])
    raw["out_dir"] = str(tmp_path / "fresh")
    raw["pretrain"].update({"stores": [str(store2)], "verify_store": "full"})
    with pytest.raises(DataError, match=r"tiny-00000\.u32' md5 differs"):
        _run(raw)


def test_ids_beyond_the_vocabulary_name_the_shard(world, tmp_path) -> None:
    store2 = _store(tmp_path / "store2", _fp(world["tok"]), high=VOCAB + 40)
    raw = copy.deepcopy(world["raw"])
    raw["out_dir"] = str(tmp_path / "fresh")
    raw["pretrain"]["stores"] = [str(store2)]
    with pytest.raises(DataError, match=r"tiny-00000\.u32' holds token id \d+ .* vocabulary of 64"):
        _run(raw)


def test_all_checkpoints_damaged_is_refused_not_restarted(world, tmp_path) -> None:
    raw = _copy(world, tmp_path, **{"pretrain.max_steps": 6, "pretrain.schedule.total_steps": STEPS})
    for ckpt in _ckpts(raw):
        shard = next(ckpt.glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(ResumeMismatch, match=r"every checkpoint in .* is damaged"):
        _run(raw)
