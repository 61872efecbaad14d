"""Token store format (write -> read), verification, appends and the `steelforge store` tools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from steelforge.errors import DataError
from steelforge.tokens.pack import write_token_store
from steelforge.tokens.store import MANIFEST, TokenStore, append_shards, check_tokenizer
from steelforge.tokens.store_cli import store_app

SEP = 99


def _docs(seed: int, n: int = 40, sources: tuple[str, ...] = ("zh", "en")) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (sources[i % len(sources)], np.append(rng.integers(100, 5000, int(rng.integers(1, 30))), SEP))
        for i in range(n)
    ]


def _store(path: Path, seed: int = 0, fingerprint: str = "tok-a", shard_tokens: int = 50, **kw) -> Path:
    write_token_store(
        path,
        _docs(seed, **kw),
        tokenizer_name="tiny",
        tokenizer_fingerprint=fingerprint,
        separator_token="<sep>",
        separator_id=SEP,
        shard_tokens=shard_tokens,
    )
    return path


@pytest.mark.parametrize("shard_tokens", [7, 37])  # 7: documents span several shards
def test_write_then_read_gives_back_every_document(tmp_path: Path, shard_tokens: int) -> None:
    docs = _docs(1)
    write_token_store(
        tmp_path / "s",
        docs,
        tokenizer_name="tiny",
        tokenizer_fingerprint="fp",
        separator_token="<sep>",
        separator_id=SEP,
        shard_tokens=shard_tokens,
    )
    store = TokenStore(tmp_path / "s")
    raw = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert raw["format"] == "steelforge-token-store" and raw["version"] == 2 and raw["dtype"] == "uint32"
    assert raw["tokenizer"] == {"name": "tiny", "fingerprint": "fp"}
    for source, shards in store.sources().items():
        # every shard but the last is exactly shard_tokens long; the raw file is little-endian uint32
        assert all(s.tokens == shard_tokens for s in shards[:-1])
        first = np.fromfile(tmp_path / "s" / shards[0].file, dtype="<u4")
        assert first.tolist() == store.tokens(shards[0]).tolist()
        stream = np.concatenate([np.asarray(store.tokens(s)) for s in shards])
        starts = np.concatenate(
            [
                store.doc_starts(s).astype(np.int64) + sum(x.tokens for x in shards[:i])
                for i, s in enumerate(shards)
            ]
        )
        expected = [d for src, d in docs if src == source]
        assert stream.tolist() == np.concatenate(expected).tolist()
        assert starts.tolist() == np.cumsum([0] + [len(d) for d in expected[:-1]]).tolist()
        assert sum(s.documents for s in shards) == len(expected)


def test_missing_and_truncated_shards_are_named_on_open(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    shard = TokenStore(store).shards[1]
    data = (store / shard.file).read_bytes()
    (store / shard.file).write_bytes(data[:-4])
    with pytest.raises(DataError, match=f"shard '.*{shard.file}' has {len(data) - 4} bytes"):
        TokenStore(store)
    (store / shard.file).rename(store / "renamed.u32")
    with pytest.raises(DataError, match=f"shard '{shard.file}' listed in .* is missing"):
        TokenStore(store)


def test_verify_names_a_changed_shard_and_exits_non_zero(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    runner = CliRunner()
    ok = runner.invoke(store_app, ["verify", str(store)])
    assert ok.exit_code == 0, ok.output
    shard = TokenStore(store).shards[2]
    data = bytearray((store / shard.file).read_bytes())
    data[5] ^= 0xFF  # same size, different bytes: only the md5 catches it
    (store / shard.file).write_bytes(bytes(data))
    assert TokenStore(store).verify() == [
        f"shard '{shard.file}' md5 differs from the manifest (changed on disk)"
    ]
    bad = runner.invoke(store_app, ["verify", str(store)])
    assert bad.exit_code == 1
    assert shard.file in bad.output


def test_append_adds_new_shards_and_refuses_duplicates_and_other_tokenizers(tmp_path: Path) -> None:
    main = _store(tmp_path / "main", seed=0)
    extra = _store(tmp_path / "extra", seed=1, sources=("zh", "code"))
    before = TokenStore(main)
    added = append_shards(main, [extra])
    after = TokenStore(main)
    assert len(after.shards) == len(before.shards) + len(added)
    assert after.fingerprint(len(before.shards)) == before.fingerprint()  # old shards stay a prefix
    assert set(after.sources()) == {"zh", "en", "code"}
    assert after.verify() == []
    with pytest.raises(DataError, match="already in the store"):
        append_shards(main, [extra / TokenStore(extra).shards[0].file])
    other = _store(tmp_path / "other", seed=2, fingerprint="tok-b")
    with pytest.raises(DataError, match="packed with tokenizer"):
        append_shards(main, [other])
    framed = tmp_path / "framed"
    write_token_store(
        framed, _docs(3), tokenizer_name="tiny", tokenizer_fingerprint="tok-a",
        separator_token="<other>", separator_id=SEP + 1, shard_tokens=50,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"packed with \(BOS, separator\)"):
        append_shards(main, [framed])
    assert len(TokenStore(main).shards) == len(after.shards)  # nothing half-appended


def test_tokenizer_fingerprint_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    store = TokenStore(_store(tmp_path / "s"))
    check_tokenizer(store, "tok-a")
    with pytest.raises(DataError, match="re-pack the data with the same tokenizer"):
        check_tokenizer(store, "tok-b")


def test_info_prints_sources_and_draws_a_png(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", sources=("zh", "en", "code"))
    result = CliRunner().invoke(store_app, ["info", str(store), "--plot", str(tmp_path / "mix.png")])
    assert result.exit_code == 0, result.output
    png = (tmp_path / "mix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_every_store_command_has_help_with_examples() -> None:
    for command in ("info", "verify", "append", "inspect"):
        result = CliRunner().invoke(store_app, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


def test_append_refuses_the_same_documents_packed_with_another_shard_size(tmp_path: Path) -> None:
    """Per-shard md5s differ when the shard size differs; the documents' own hashes do not."""
    main = _store(tmp_path / "main", seed=0, shard_tokens=50)
    repacked = _store(tmp_path / "repacked", seed=0, shard_tokens=80)
    assert {s.md5 for s in TokenStore(main).shards}.isdisjoint(s.md5 for s in TokenStore(repacked).shards)
    with pytest.raises(DataError, match=r"documents being appended are already in .*another shard size"):
        append_shards(main, [repacked])
    assert len(TokenStore(main).shards) == len(TokenStore(_store(tmp_path / "fresh", seed=0)).shards)
    append_shards(main, [_store(tmp_path / "new", seed=7, shard_tokens=80)])  # new documents still append
