"""`steelforge pack`: tokenized documents land in the store exactly, whatever the worker count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steelforge.errors import DataError
from steelforge.recipe import recipe_from_dict
from steelforge.tokens import pack as pack_module
from steelforge.tokens.pack import pack_complete, pack_documents, run_pack
from steelforge.tokens.store import MANIFEST, TokenStore

TEXTS = [
    "Steel-LLM was trained on Chinese and English text.",
    "钢铁是怎样炼成的？一步一步来。",
    "def add(a, b):\n    return a + b\n",
    "Moxin-7B is fully open: data, code and checkpoints.",
    "",  # empty documents are skipped
    "全角字符：ＡＢＣ，还有 emoji 🚀 and tabs\tand  spaces.",
] * 7


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE tokenizer with `<|endoftext|>` and `<|im_end|>`, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    wrapped.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    folder = tmp_path_factory.mktemp("tiny_tok")
    wrapped.save_pretrained(folder)
    return folder


def _pack(tokenizer, out: Path, workers: int, texts: list[str] = TEXTS, shard_tokens: int = 64):
    docs = [(("en" if i % 2 else "zh"), t) for i, t in enumerate(texts)]
    return pack_documents(
        docs,
        tokenizer,
        out,
        tokenizer_name="tiny",
        tokenizer_fingerprint="fp",
        separator="<|im_end|>",
        shard_tokens=shard_tokens,
        num_workers=workers,
        batch_docs=5,
    )


def test_packed_documents_decode_back_to_their_text(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from steelforge.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    manifest = _pack(tokenizer, tmp_path / "s", workers=1)
    store = TokenStore(tmp_path / "s")
    sep = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert manifest.separator_id == sep
    for source, shards in store.sources().items():
        stream = np.concatenate([np.asarray(store.tokens(s)) for s in shards]).tolist()
        expected = [t for i, t in enumerate(TEXTS) if ("en" if i % 2 else "zh") == source and t]
        assert stream.count(sep) == len(expected) == sum(s.documents for s in shards)
        pieces = tokenizer.decode(stream, skip_special_tokens=False).split("<|im_end|>")
        assert pieces[:-1] == expected and pieces[-1] == ""


def test_store_bytes_are_identical_with_one_and_two_workers(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from steelforge.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    _pack(tokenizer, tmp_path / "one", workers=1)
    _pack(tokenizer, tmp_path / "two", workers=2)
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_qwen_ids_match_the_reference_tokenizer(
    fixtures_dir: Path, steel_samples_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from steelforge.clean.io import iter_records

    tokenizer = AutoTokenizer.from_pretrained(str(fixtures_dir / "qwen1.5-tokenizer"), local_files_only=True)
    texts = []
    for record in iter_records(steel_samples_dir / "2021-31_zh_head_0000_sample.jsonl"):
        texts.append(record["text"])
        if len(texts) == 12:
            break
    pack_documents(
        [("zh", t) for t in texts],
        tokenizer,
        tmp_path / "s",
        tokenizer_name="qwen1.5",
        tokenizer_fingerprint="fp",
        shard_tokens=1 << 20,
    )
    store = TokenStore(tmp_path / "s")
    got = np.asarray(store.tokens(store.shards[0])).tolist()
    expected = [i for t in texts for i in [*tokenizer(t, add_special_tokens=False)["input_ids"], 151645]]
    assert got == expected


def test_unknown_separator_is_a_clear_error(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from steelforge.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    with pytest.raises(DataError, match=r"pack\.separator '<nope>' is not a token"):
        pack_documents(
            [("a", "x")],
            tokenizer,
            tmp_path / "s",
            tokenizer_name="t",
            tokenizer_fingerprint="f",
            separator="<nope>",
        )


def _recipe(tmp_path: Path, tokenizer_dir: Path):
    inputs = tmp_path / "clean"
    inputs.mkdir(exist_ok=True)
    for name in ("a", "b"):
        with open(inputs / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for i, text in enumerate(TEXTS):
                record = {"id": f"{name}{i}", "text": text}
                if i % 3 == 0:
                    record["source"] = "web"
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return recipe_from_dict(
        {
            "name": "t",
            "out_dir": str(tmp_path / "run"),
            "tokenizer": str(tokenizer_dir),
            "pack": {"inputs": [str(inputs / "*.jsonl")], "shard_tokens": 32},
        }
    )


def test_run_pack_then_rerun_is_a_no_op_and_a_crash_leaves_no_store(
    tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, tiny_tokenizer_dir)
    out = recipe.stage_dir("pack")
    assert not pack_complete(recipe)

    calls = {"n": 0}
    real_write = pack_module.StoreWriter._flush

    def crash_after_two(self, source, final):  # a crash in the middle of packing
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real_write(self, source, final)

    monkeypatch.setattr(pack_module.StoreWriter, "_flush", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_pack(recipe)
    monkeypatch.undo()
    assert not (out / MANIFEST).exists() and not pack_complete(recipe)

    report = run_pack(recipe)
    assert pack_complete(recipe)
    store = TokenStore(out)
    assert set(store.sources()) == {"a", "b", "web"}
    assert dict(report.rows)["documents"] == 2 * sum(1 for t in TEXTS if t)
    assert store.verify() == []
    assert store.manifest.tokenizer_fingerprint and len(store.manifest.tokenizer_fingerprint) == 64
    assert not out.with_name(out.name + ".partial").exists()

    (tmp_path / "clean" / "a.jsonl").write_text(
        json.dumps({"text": "changed input"}) + "\n", encoding="utf-8"
    )
    assert not pack_complete(recipe)  # inputs changed: the stage must run again


def test_missing_inputs_are_a_clear_error(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict(
        {"out_dir": str(tmp_path / "run"), "pack": {"inputs": [str(tmp_path / "nope/*.jsonl")]}}
    )
    with pytest.raises(DataError, match="matches no file"):
        run_pack(recipe)
    recipe = recipe_from_dict({"out_dir": str(tmp_path / "run"), "pack": {}})
    with pytest.raises(DataError, match="no finished data stage output"):
        run_pack(recipe)


def test_default_inputs_are_the_data_stage_kept_shards_and_inspect_decodes_them(
    tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    import zstandard
    from typer.testing import CliRunner

    from steelforge.tokens.store_cli import store_app

    recipe = recipe_from_dict(
        {"out_dir": str(tmp_path / "run"), "tokenizer": str(tiny_tokenizer_dir), "pack": {}}
    )
    kept = recipe.stage_dir("data") / "kept"
    kept.mkdir(parents=True)
    lines = [
        json.dumps({"id": str(i), "text": t, "source": "web"}, ensure_ascii=False)
        for i, t in enumerate(TEXTS)
        if t
    ]
    (kept / "part-00000.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("\n".join(lines).encode())
    )
    with pytest.raises(DataError, match="run `steelforge clean` first"):
        run_pack(recipe)
    (recipe.stage_dir("data") / "_SUCCESS").write_text("done")
    run_pack(recipe)
    store = TokenStore(recipe.stage_dir("pack"))
    assert list(store.sources()) == ["web"]
    result = CliRunner().invoke(store_app, ["inspect", str(store.path), "--samples", "1", "--seq-len", "12"])
    assert result.exit_code == 0, result.output
    assert TEXTS[0][:20] in result.output


def test_auto_framing_follows_the_tokenizer(tiny_tokenizer_dir: Path) -> None:
    from steelforge.tokenizers import load_tokenizer
    from steelforge.tokens.pack import resolve_bos, resolve_separator

    qwen, mistral = load_tokenizer("qwen1.5"), load_tokenizer("mistral-v1")
    assert (resolve_bos(qwen, "auto"), resolve_separator(qwen, "auto")) == (None, "<|im_end|>")  # Steel-LLM
    assert (resolve_bos(mistral, "auto"), resolve_separator(mistral, "auto")) == ("<s>", "</s>")  # Moxin
    tiny = load_tokenizer(str(tiny_tokenizer_dir))
    assert (resolve_bos(tiny, "auto"), resolve_separator(tiny, "auto")) == (None, "<|im_end|>")
    assert resolve_bos(mistral, False) is None and resolve_separator(mistral, None) is None
    with pytest.raises(DataError, match=r"pack\.bos is true but the tokenizer has no BOS"):
        resolve_bos(qwen, True)


def test_mistral_store_frames_every_document_with_bos_and_eos(tmp_path: Path) -> None:
    from steelforge.tokenizers import load_tokenizer

    texts = [t for t in TEXTS[:6] if t]
    inputs = tmp_path / "docs.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), "utf-8")
    recipe = recipe_from_dict(
        {
            "out_dir": str(tmp_path / "run"),
            "tokenizer": "mistral-v1",
            "pack": {"inputs": [str(inputs)], "shard_tokens": 1 << 16},
        }
    )
    run_pack(recipe)
    store = TokenStore(recipe.stage_dir("pack"))
    tokenizer = load_tokenizer("mistral-v1")
    assert (store.manifest.bos_token, store.manifest.bos_id) == ("<s>", 1)
    assert (store.manifest.separator_token, store.manifest.separator_id) == ("</s>", 2)
    got = np.asarray(store.tokens(store.shards[0])).tolist()
    # what the tokenizer gives each document on its own (it adds <s>), then </s>
    assert got == [i for t in texts for i in [*tokenizer(t)["input_ids"], 2]]
    starts = np.asarray(store.doc_starts(store.shards[0])).tolist()
    assert len(starts) == len(texts) and all(got[s] == 1 for s in starts)  # every document starts at its <s>
    reread = json.loads((store.path / MANIFEST).read_text())
    assert reread["bos"] == {"token": "<s>", "id": 1}


def test_stores_without_a_bos_entry_still_open(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from steelforge.tokenizers import load_tokenizer

    _pack(load_tokenizer(str(tiny_tokenizer_dir)), tmp_path / "s", workers=1)
    path = tmp_path / "s" / MANIFEST
    raw = json.loads(path.read_text())
    del raw["bos"]  # a manifest written before BOS support
    path.write_text(json.dumps(raw))
    manifest = TokenStore(tmp_path / "s").manifest
    assert manifest.bos_token is None and manifest.bos_id is None


def test_pack_marker_names_what_changed_settings_and_tokenizer(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store records what it was made from; a changed setting or tokenizer is named, then packed again."""
    import shutil

    recipe = _recipe(tmp_path, tiny_tokenizer_dir)
    run_pack(recipe)
    assert pack_complete(recipe)
    smaller = recipe.model_copy(update={"pack": recipe.pack.model_copy(update={"shard_tokens": 16})})
    assert not pack_complete(smaller)
    assert "pack.shard_tokens (32 -> 16)" in " ".join(capsys.readouterr().err.split())
    # same folder name, other content (an added token): the tokenizer fingerprint differs
    other = tmp_path / "tok2"
    shutil.copytree(tiny_tokenizer_dir, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzz-new-token"])
    tok.save_pretrained(other)
    moved = recipe.model_copy(update={"tokenizer": str(other)})
    assert not pack_complete(moved)
    assert "tokenizer.fingerprint" in " ".join(capsys.readouterr().err.split())
