"""Bad input: a damaged compressed file is reported by name with the lines read before the damage and the run
goes on; a document holding a lone surrogate goes to `errors` like any undecodable text."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from steelforge.clean.clean_config import CleanConfig
from steelforge.clean.io import BadRecord, iter_rows, read_shards
from steelforge.clean.pipeline import run_pipeline

DOCS = [{"id": f"d{i}", "text": f"document number {i} " + "filler words here " * 40} for i in range(400)]
BODY = b"".join(json.dumps(d).encode() + b"\n" for d in DOCS)


def _truncated(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _rows(path: Path) -> tuple[list[dict], list[BadRecord]]:
    rows = [row for _, row in iter_rows(path)]
    return [r for r in rows if isinstance(r, dict)], [r for r in rows if isinstance(r, BadRecord)]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_file_reads_its_prefix_and_names_the_damage(tmp_path: Path, suffix: str) -> None:
    if suffix == ".jsonl.gz":
        data = gzip.compress(BODY)
    else:  # a streamed zstd frame (no content size in the header), as `zstd` writes from a pipe
        obj = zstandard.ZstdCompressor().compressobj()
        data = obj.compress(BODY) + obj.flush()
    good, bad = _rows(_truncated(tmp_path / f"t{suffix}", data))
    assert 0 < len(good) < len(DOCS)
    assert good == DOCS[: len(good)]  # nothing invented, nothing skipped before the damage
    assert len(bad) == 1 and "truncated" in bad[0].reason and f"{len(good)} lines read" in bad[0].reason
    assert bad[0].file.endswith(f"t{suffix}") and bad[0].line == len(good) + 1


def test_whole_and_multi_frame_files_read_completely(tmp_path: Path) -> None:
    whole = tmp_path / "w.jsonl.zst"
    whole.write_bytes(
        zstandard.ZstdCompressor().compress(BODY[:5000]) + zstandard.ZstdCompressor().compress(BODY[5000:])
    )
    members = tmp_path / "m.jsonl.gz"
    members.write_bytes(gzip.compress(BODY[:7000]) + gzip.compress(BODY[7000:]))
    for path in (whole, members):
        assert _rows(path) == (DOCS, [])


def test_corrupt_gzip_is_reported_not_aborted(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(BODY))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(bytes(data))
    good, bad = _rows(path)
    assert good == DOCS[: len(good)]
    assert len(bad) == 1 and "corrupt gz data" in bad[0].reason and bad[0].file == str(path)


def test_damaged_file_goes_to_errors_and_the_run_goes_on(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _truncated(inputs / "a.jsonl.gz", gzip.compress(BODY))
    (inputs / "b.jsonl").write_bytes(
        json.dumps(
            {
                "id": "b0",
                "text": "a perfectly fine document with more than ten words in it, as the filter wants",
            }
        ).encode()
        + b"\n"
        + b'{"id": "b1", "text": "lone \\ud800 surrogate"}\n'
        + b'{"id": "b2", "text": "a real surrogate pair \\ud83d\\ude00 is fine and this document has more than ten words"}\n'
    )
    config = CleanConfig(
        inputs=[{"name": "web", "path": str(inputs / "*.jsonl*"), "id_field": "id"}],
        process=[
            {"character_repetition_filter": {"rep_len": 10, "max_ratio": 1.0}},
            {"words_num_filter": {}},
        ],
    )
    result = run_pipeline(config, tmp_path / "out")
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = {Path(e["file"]).name + ":" + str(e["line"]): e["reason"] for e in errors}
    assert any(k.startswith("a.jsonl.gz") and "truncated" in v for k, v in reasons.items())
    assert "surrogate" in reasons["b.jsonl:2"]
    kept = {doc["id"] for doc in read_shards(tmp_path / "out" / "kept")}
    assert {"b0", "b2"} <= kept
    good = len(_rows(inputs / "a.jsonl.gz")[0])
    assert {f"d{i}" for i in range(good)} <= kept
    assert result.errors == 2 and result.kept + result.rejected == good + 2


def test_read_position_counts_on_disk_bytes(tmp_path: Path) -> None:
    from steelforge.clean.io import ReadPosition

    plain = tmp_path / "p.jsonl"
    plain.write_bytes(BODY)
    packed = tmp_path / "z.jsonl.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(BODY))
    for path in (plain, packed):
        position = ReadPosition()
        seen = []
        for _ in iter_rows(path, position):
            seen.append(position.bytes)
        assert seen == sorted(seen) and position.bytes == path.stat().st_size


def test_progress_bar_counts_input_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.progress import Progress

    import steelforge.clean.pipeline as pipeline

    updates: list[tuple[float, float | None]] = []
    progress = Progress(disable=True)
    original = progress.update

    def update(task_id, **kw):
        original(task_id, **kw)
        task = progress.tasks[0]
        updates.append((task.completed, task.total))

    monkeypatch.setattr(progress, "update", update)
    monkeypatch.setattr(pipeline, "make_progress", lambda *columns: progress)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        (inputs / f"f{i}.jsonl").write_bytes(BODY)
    config = CleanConfig(
        inputs=[{"name": "web", "path": str(inputs / "*.jsonl"), "id_field": "id"}],
        process=[{"words_num_filter": {}}],
        batch_size=50,
    )
    run_pipeline(config, tmp_path / "out")
    total = 2 * len(BODY)
    assert progress.tasks[0].total == total and progress.tasks[0].completed == total
    partial = [done for done, _ in updates if 0 < done < total]
    assert len(partial) >= 4  # moves while documents are processed, not once per file
