"""The cleaning pipeline: every row accounted for, rejections explained, errors located, resume and re-run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steelforge.clean.clean_config import CleanConfig
from steelforge.clean.io import iter_records, read_shards
from steelforge.clean.ops.base import Filter, Mapper, register_op
from steelforge.clean.pipeline import OperatorError, clean_complete, run_clean, run_pipeline
from steelforge.recipe import recipe_from_dict

CALLS: dict[str, int] = {"mapper": 0}
FAIL_ON: set[str] = set()


@register_op("test_pipeline_strip_digits_mapper")
class StripDigits(Mapper):
    def map_text(self, text: str) -> str:
        CALLS["mapper"] += 1
        if any(marker in text for marker in FAIL_ON):
            raise RuntimeError("simulated crash")
        return "".join(c for c in text if not c.isdigit())


@register_op("test_pipeline_min_length_filter")
class MinLength(Filter):
    def __init__(self, min_len: int = 5, semantics: str = "language_aware") -> None:
        super().__init__(semantics)  # type: ignore[arg-type]
        self.min_len = min_len

    def compute_stats(self, text: str) -> dict[str, Any]:
        return {"text_len": len(text)}

    def keep(self, stats: dict[str, Any]) -> bool:
        return stats["text_len"] >= self.min_len

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"stat": "text_len", "value": stats["text_len"], "min": self.min_len, "max": None}


PROCESS = [
    {"test_pipeline_strip_digits_mapper": {}},
    {"test_pipeline_min_length_filter": {"min_len": 5}},
    {"document_deduplicator": {}},
    {"test_pipeline_min_length_filter": {"min_len": 8}},
]


def write_jsonl(path: Path, lines: list[bytes | dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = b"".join(
        (json.dumps(x, ensure_ascii=False).encode() if isinstance(x, dict) else x) + b"\n" for x in lines
    )
    path.write_bytes(body)
    return path


def config_for(
    tmp_path: Path, process: list = PROCESS, id_field: str | None = "id", **kw: Any
) -> CleanConfig:
    return CleanConfig(
        inputs=[{"name": "web", "path": str(tmp_path / "in" / "*.jsonl"), "id_field": id_field}],
        process=process,
        batch_size=3,
        **kw,
    )


def sample_inputs(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [
            {"id": "a1", "text": "hello world 123"},
            {"id": "a2", "text": "tiny"},
            b'{"id": "a3", "text": broken',
            {"id": "a4", "text": "hello world 456"},
            {"id": "a5", "body": "no text field"},
        ],
    )
    write_jsonl(
        tmp_path / "in" / "b.jsonl",
        [
            {"id": "b1", "text": "  "},
            b'{"id": "b2", "text": "caf\xe9 au lait"}',
            {"id": "b3", "text": "seven7"},
            {"id": "b4", "text": "another good document"},
        ],
    )


def test_every_row_ends_in_one_place_with_its_reason(tmp_path: Path) -> None:
    sample_inputs(tmp_path)
    result = run_pipeline(config_for(tmp_path), tmp_path / "out")
    kept = list(read_shards(result.kept_paths))
    assert [d["id"] for d in kept] == ["a1", "b4"]
    assert kept[0] == {"id": "a1", "text": "hello world ", "source": "web"}
    rejected = {r["id"]: r for p in result.rejected_paths for r in iter_records(p)}
    assert rejected["a2"] == {
        "id": "a2", "source": "web", "op": "test_pipeline_min_length_filter", "op_index": 1,
        "stat": "text_len", "value": 4, "min": 5, "max": None, "text": "tiny",
    }  # fmt: skip
    assert rejected["a4"]["op"] == "document_deduplicator" and rejected["a4"]["duplicate_of"] == "a1"
    assert rejected["b3"]["min"] == 8 and rejected["b3"]["text"] == "seven"
    errors = [json.loads(line) for line in result.errors_path.read_text().splitlines()]
    where = {(Path(e["file"]).name, e["line"]): e["reason"] for e in errors}
    assert where[("a.jsonl", 3)].startswith("bad JSON")
    assert where[("a.jsonl", 5)] == "missing field 'text'"
    assert where[("b.jsonl", 1)] == "empty text"
    assert where[("b.jsonl", 2)].startswith("non-UTF-8")
    assert (result.docs_in, result.kept, result.rejected, result.errors) == (5, 2, 3, 4)
    by_op = [(s.op, s.docs_in, s.docs_out) for s in result.ops]
    assert by_op == [
        ("test_pipeline_strip_digits_mapper", 5, 5),
        ("test_pipeline_min_length_filter", 5, 4),
        ("document_deduplicator", 4, 3),
        ("test_pipeline_min_length_filter", 3, 2),
    ]
    assert result.ops[0].chars_out == result.ops[0].chars_in - 7
    stats = json.loads(result.stats_path.read_text())
    assert stats["kept"] == 2 and stats["ops"][2]["docs_out"] == 3


def test_failing_operator_raises_instead_of_returning_nothing(tmp_path: Path) -> None:
    sample_inputs(tmp_path)
    FAIL_ON.add("another")
    try:
        with pytest.raises(OperatorError, match="test_pipeline_strip_digits_mapper' failed on document 'b4'"):
            run_pipeline(config_for(tmp_path), tmp_path / "out")
    finally:
        FAIL_ON.clear()
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def _snapshot(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in (".zst", ".jsonl") and "work" not in p.parts
    }


def test_crash_between_files_resumes_without_duplicates(tmp_path: Path) -> None:
    sample_inputs(tmp_path)
    reference = run_pipeline(config_for(tmp_path), tmp_path / "ref")
    FAIL_ON.add("another")  # b.jsonl fails: a.jsonl is finished and marked
    try:
        with pytest.raises(OperatorError):
            run_pipeline(config_for(tmp_path), tmp_path / "out")
    finally:
        FAIL_ON.clear()
    assert (tmp_path / "out" / "work" / "piece0" / "00000-web.done").exists()
    assert not (tmp_path / "out" / "work" / "piece0" / "00001-web.done").exists()
    CALLS["mapper"] = 0
    resumed = run_pipeline(config_for(tmp_path), tmp_path / "out")
    assert CALLS["mapper"] == 2, "only b.jsonl's two valid documents are mapped again"
    assert _snapshot(tmp_path / "out") == _snapshot(tmp_path / "ref")
    assert [d["id"] for d in read_shards(resumed.kept_paths)] == [
        d["id"] for d in read_shards(reference.kept_paths)
    ]


def test_rerun_is_a_no_op_and_a_changed_recipe_is_not(tmp_path: Path) -> None:
    sample_inputs(tmp_path)
    first = run_pipeline(config_for(tmp_path), tmp_path / "out")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    CALLS["mapper"] = 0
    again = run_pipeline(config_for(tmp_path), tmp_path / "out")
    assert again.skipped and CALLS["mapper"] == 0 and again.kept == first.kept
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    changed = run_pipeline(config_for(tmp_path, process=PROCESS[:2]), tmp_path / "out")
    assert not changed.skipped and changed.kept == 4


def test_completion_marker_records_what_the_output_was_made_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `_SUCCESS` marker is a `stage.StageMarker`; a re-run after an edit names what changed."""
    sample_inputs(tmp_path)
    run_pipeline(config_for(tmp_path), tmp_path / "out")
    marker = json.loads((tmp_path / "out" / "_SUCCESS").read_text(encoding="utf-8"))
    assert marker["stage"] == "data" and marker["kept"] + marker["rejected"] + marker["errors"] == 9
    assert set(marker["made_from"]) == {"config", "files"}
    capsys.readouterr()
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b9", "text": "a brand new document"}])
    run_pipeline(config_for(tmp_path), tmp_path / "out")
    assert "cleaning runs again: files.read" in "".join(capsys.readouterr())
    run_pipeline(config_for(tmp_path, process=PROCESS[:2]), tmp_path / "out")
    assert "cleaning runs again: config.process" in "".join(capsys.readouterr())


def test_stage_api_runs_a_recipe_and_reports_completion(tmp_path: Path) -> None:
    sample_inputs(tmp_path)
    recipe = recipe_from_dict(
        {
            "name": "t",
            "out_dir": str(tmp_path / "run"),
            "data": {
                "inputs": [{"name": "web", "path": str(tmp_path / "in" / "*.jsonl")}],
                "process": PROCESS,
                "trace": 1,
            },
        }
    )
    assert not clean_complete(recipe)
    report = run_clean(recipe)
    assert dict(report.rows)["kept"] == 2 and clean_complete(recipe)
    assert report.outputs["kept"] == tmp_path / "run" / "clean" / "kept"
    stats = json.loads((tmp_path / "run" / "clean" / "stats.json").read_text())
    assert stats["traces"]["0:test_pipeline_strip_digits_mapper"][0]["after"] == "hello world "
    from steelforge.cli import run_stage

    assert run_stage("data", recipe).skipped  # the CLI skips a complete stage
    assert not run_stage("data", recipe, force=True).skipped  # and --force runs it again


_LINE = st.one_of(
    st.builds(lambda t: {"text": t}, st.text(alphabet="ab1 ", max_size=12)),
    st.just(b'{"text": '),
    st.just(b'{"text": "\xff\xfe"}'),
    st.just({"other": 1}),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.lists(_LINE, max_size=12), min_size=1, max_size=3))
def test_property_kept_rejected_and_errors_partition_the_input(
    tmp_path_factory: Any, files: list[list]
) -> None:
    tmp_path = tmp_path_factory.mktemp("prop")
    for i, lines in enumerate(files):
        write_jsonl(tmp_path / "in" / f"f{i}.jsonl", lines)
    result = run_pipeline(config_for(tmp_path, id_field=None), tmp_path / "out")
    input_ids = {f"web:f{i}:{row}" for i, lines in enumerate(files) for row in range(len(lines))}
    kept = [d["id"] for d in read_shards(result.kept_paths)]
    rejected = [r["id"] for p in result.rejected_paths for r in iter_records(p)]
    errors = [json.loads(line)["id"] for line in result.errors_path.read_text().splitlines()]
    everything = kept + rejected + errors
    assert len(everything) == len(set(everything)), "no document in two places"
    assert set(everything) == input_ids


def test_synthetic_source_is_materialised_then_cleaned(tmp_path: Path) -> None:
    config = CleanConfig(
        inputs=[{"name": "demo", "synthetic": {"num_docs": 60, "seed": 1}}],
        process=[{"document_deduplicator": {}}, {"document_simhash_deduplicator": {}}],
    )
    result = run_pipeline(config, tmp_path / "clean", raw_dir=tmp_path / "raw")
    raw = list((tmp_path / "raw").glob("*.jsonl"))
    assert len(raw) == 1
    raw_ids = [r["id"] for r in iter_records(raw[0])]
    kept = list(read_shards(result.kept_paths))
    rejected = [r for p in result.rejected_paths for r in iter_records(p)]
    assert sorted([d["id"] for d in kept] + [r["id"] for r in rejected]) == sorted(raw_ids)
    assert {d["source"] for d in kept} <= {r["source"] for r in iter_records(raw[0])}
    assert all(r["duplicate_of"] in raw_ids for r in rejected)
