"""Every mistake that can be found before a stage starts fails `validate`, `run` and the single-stage commands
at once: exit code 2, one sentence, nothing written."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

BASE: dict[str, Any] = {
    "name": "v",
    "tokenizer": "qwen1.5",
    "data": {
        "inputs": [{"name": "docs", "path": "PLACEHOLDER"}],
        "process": [{"text_length_filter": {"min_len": 5}}, {"document_deduplicator": None}],
    },
    "pack": {"shard_tokens": 1024},
    "model": {"preset": "tiny-steel"},
    "pretrain": {"max_steps": 2, "seq_len": 16, "micro_batch_size": 1},
}

MISTAKES = {
    "unknown operator": (
        ("data", "process", 0),
        {"text_lenght_filter": {"min_len": 5}},
        "unknown operator 'text_lenght_filter' in data.process.0; did you mean 'text_length_filter'?",
    ),
    "unknown parameter": (
        ("data", "process", 0),
        {"text_length_filter": {"min_length": 5}},
        "operator 'text_length_filter' (data.process.0) has no parameter 'min_length'; did you mean 'min_len'?",
    ),
    "glob matches nothing": (("data", "inputs", 0, "path"), "nowhere/*.jsonl", "matches no file"),
    "unknown tokenizer": (("tokenizer",), "qwen-1.5", "did you mean 'qwen1.5'?"),
    "unknown preset": (("model", "preset"), "tiny-steal", "did you mean 'tiny-steel'?"),
    "pretrain without pack or store": (("pack",), None, "the pretrain stage has no token store"),
}


def _recipe(tmp_path: Path, where: tuple[Any, ...] | None = None, value: Any = None) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "hello world, a document"}\n')
    raw = copy.deepcopy(BASE)
    raw["out_dir"] = str(tmp_path / "out")
    raw["data"]["inputs"][0]["path"] = str(docs)
    if where is not None:
        node = raw
        for key in where[:-1]:
            node = node[key]
        if value is None:
            del node[where[-1]]
            raw.pop("data")  # nothing upstream either
        else:
            node[where[-1]] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from steelforge.cli import main

    monkeypatch.setattr(sys, "argv", ["steelforge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), " ".join((captured.err + captured.out).split())


@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("command", ["validate", "run", "pretrain"])
def test_mistake_fails_before_any_stage(tmp_path, monkeypatch, capsys, mistake: str, command: str) -> None:
    where, value, expected = MISTAKES[mistake]
    recipe = _recipe(tmp_path, where, value)
    code, text = _cli(monkeypatch, capsys, command, str(recipe))
    if command == "pretrain" and mistake in ("unknown operator", "unknown parameter", "glob matches nothing"):
        expected = "the pretrain stage has no token store"  # pretrain alone does not read data.*, but needs a store
    assert code == 2, text
    assert expected in text
    assert text.count("error:") == 1 and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_valid_recipe_passes_validate(tmp_path, monkeypatch, capsys) -> None:
    code, text = _cli(monkeypatch, capsys, "validate", str(_recipe(tmp_path)))
    assert code == 0 and "recipe is valid" in text


def test_non_utf8_recipe_is_one_sentence(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    code, text = _cli(monkeypatch, capsys, "validate", str(path))
    assert code == 2 and "is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8" in text


def test_negative_model_dimension_is_one_sentence(tmp_path, monkeypatch, capsys) -> None:
    recipe = _recipe(tmp_path)
    code, text = _cli(monkeypatch, capsys, "validate", str(recipe), "--set", "model.overrides.hidden_size=-3")
    assert code == 2 and "model.overrides.hidden_size = -3 must be a positive size" in text
