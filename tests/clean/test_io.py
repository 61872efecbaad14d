"""Readers and the shard writer: every format, malformed rows with file:line, field mapping, atomic shards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from steelforge.clean.clean_config import SourceSpec
from steelforge.clean.io import BadRecord, ShardWriter, iter_documents, iter_records, iter_rows, read_shards
from steelforge.errors import DataError

ROWS = [{"id": f"d{i}", "text": f"文档 {i} text", "n": i} for i in range(5)]


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", "array.json", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix in (".jsonl", ".json"):
        path.write_bytes(_jsonl(ROWS))
    elif suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(_jsonl(ROWS)))
    elif suffix == ".jsonl.zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(ROWS)))
    elif suffix == "array.json":
        path.write_text(
            "  [\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in ROWS) + "\n]\n"
        )
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    assert list(iter_records(path)) == ROWS


def test_json_array_larger_than_the_read_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import steelforge.clean.io as dio

    monkeypatch.setattr(dio, "_READ_CHUNK", 7)  # objects straddle every buffer boundary
    rows = [{"text": "x" * (i * 3), "k": [1, {"a": "]"}]} for i in range(20)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, indent=2))
    assert list(iter_records(path)) == rows


def test_malformed_rows_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": oops}\n\n{"text": "caf\xff"}\n[1, 2]\n{"text": "fine"}\n')
    rows = list(iter_rows(path))
    bad = [(n, r.reason.split(":")[0]) for n, r in rows if isinstance(r, BadRecord)]
    assert bad == [
        (2, "bad JSON"),
        (4, "non-UTF-8 bytes at byte 13"),
        (5, "row is a JSON list, not an object"),
    ]
    assert [n for n, r in rows if not isinstance(r, BadRecord)] == [1, 6]
    with pytest.raises(DataError, match=r"bad\.jsonl:2: bad JSON"):
        list(iter_records(path))


def test_json_array_reports_a_non_utf8_element_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_bytes(b'[\n{"text": "a"},\n{"text": "caf\xe9"},\n{"text": "c"}\n]')
    rows = list(iter_rows(path))
    assert [r["text"] for _, r in rows if isinstance(r, dict)] == ["a", "c"]
    bad = [(n, r.reason) for n, r in rows if isinstance(r, BadRecord)]
    assert bad == [(3, "non-UTF-8 bytes")]


def test_documents_map_fields_and_report_missing_or_empty_text(tmp_path: Path) -> None:
    path = tmp_path / "src.jsonl.gz"
    rows = [{"content": "a b c", "lang": "en"}, {"other": 1}, {"content": "  "}, {"content": "d"}]
    path.write_bytes(gzip.compress(_jsonl(rows)))
    out = list(iter_documents(path, SourceSpec(name="code", path=str(path), text_field="content")))
    assert out[0] == {"id": "code:src:0", "text": "a b c", "source": "code", "meta": {"lang": "en"}}
    assert isinstance(out[1], BadRecord) and out[1].reason == "missing field 'content'" and out[1].line == 2
    assert isinstance(out[2], BadRecord) and out[2].reason == "empty text" and out[2].id == "code:src:2"
    assert out[3]["id"] == "code:src:3"


def test_baidu_baike_format_matches_the_reference_corpus(fixtures_dir: Path, steel_samples_dir: Path) -> None:
    corpus = fixtures_dir / "dj_reference" / "corpus_text.jsonl.gz"
    source = steel_samples_dir / "563w_baidubaike_sample.json"
    reference = {r["id"]: r["text"] for r in iter_records(corpus) if r["id"].startswith("baidu_baike:")}
    spec = SourceSpec(name="baidu_baike", path=str(source), format="baidu_baike")
    docs = list(iter_documents(source, spec))
    assert len(docs) == len(reference) == 1000
    for doc in docs:
        row = doc["id"].rsplit(":", 1)[1]
        assert doc["text"] == reference[f"baidu_baike:{row}"]
    assert set(docs[0]["meta"]) == {"tags", "url"}


def test_template_equals_the_named_format(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(
        json.dumps({"title": "T", "summary": None, "sections": [{"title": "s", "content": "c"}]}) + "\n"
    )
    explicit = SourceSpec(
        name="b",
        path=str(path),
        template="{title}：{summary}",
        list_field="sections",
        item_template="\n{title}：{content}",
    )
    named = SourceSpec(name="b", path=str(path), format="baidu_baike")
    assert [d["text"] for d in iter_documents(path, explicit)] == ["T：\ns：c"]
    assert list(iter_documents(path, explicit)) == list(iter_documents(path, named))


def test_shard_writer_splits_and_renames_atomically(tmp_path: Path) -> None:
    records = [{"id": str(i), "text": "t" * 10} for i in range(25)]
    with ShardWriter(tmp_path / "out", "kept", max_docs=10) as writer:
        for r in records[:15]:
            writer.write(r)
        assert [p.name for p in writer.paths] == ["kept-00000.jsonl.zst"]
        assert (tmp_path / "out" / ".kept-00001.jsonl.zst.tmp").exists()
        for r in records[15:]:
            writer.write(r)
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == [
        f"kept-0000{i}.jsonl.zst" for i in range(3)
    ]
    assert list(read_shards(tmp_path / "out")) == records
    with ShardWriter(tmp_path / "bytes", max_bytes=100) as writer:
        for r in records:
            writer.write(r)
    assert len(writer.paths) == 9  # 33-byte lines, a shard closes once it reaches 100 bytes


def test_aborted_shard_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "k", max_docs=2) as writer:
        for i in range(3):
            writer.write({"id": i})
        raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["k-00000.jsonl.zst"]
