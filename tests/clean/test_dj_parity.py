"""Per-document parity with Data-Juicer 1.6.1 in `data_juicer` semantics.

Every operator of Steel-LLM's text and code recipes is run alone on the reference corpora with the
parameters recorded in `ops_index.json`; mapper outputs and filter decisions must agree with Data-Juicer's
on at least 99.9% of the documents, and filter statistics within 1e-9. Disagreements are printed per op.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED, shared_path

from steelforge.clean.ops import Filter, Mapper, build_op, registered_ops

REFERENCE = ("fixtures", "dj_reference")
MIN_AGREEMENT = 0.999
STAT_TOLERANCE = 1e-9

# Operators of the recipes that other modules own or that need a model download.
NOT_COVERED_HERE = {
    "document_simhash_deduplicator",
    "document_minhash_deduplicator",
    "document_deduplicator",
    "perplexity_filter",
    "language_id_filter",
    "fasttext_quality_filter",
    "slimpajama_short_doc_filter",
}


def _read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@cache
def _corpus(corpus: str) -> dict[str, str]:
    rows = _read_jsonl_gz(shared_path(*REFERENCE, f"corpus_{corpus}.jsonl.gz"))
    return {row["id"]: row["text"] for row in rows}


def _entries() -> list[tuple[str, dict[str, Any]]]:
    """(corpus, ops_index entry) for every reference output; empty when the reference data is absent."""
    index = SHARED.joinpath(*REFERENCE, "ops_index.json")
    if not index.exists():
        return []
    entries = []
    for corpus, ops in json.loads(index.read_text()).items():
        for entry in ops:
            if (
                entry["op"] not in NOT_COVERED_HERE
                and index.parent.joinpath(corpus, f"op_{entry['file']}.jsonl.gz").exists()
            ):
                entries.append((corpus, entry))
    return entries


def compare_with_reference(corpus: str, entry: dict[str, Any]) -> tuple[int, list[str]]:
    """Run one operator on one corpus; return (documents compared, descriptions of disagreements)."""
    texts = _corpus(corpus)
    reference = _read_jsonl_gz(shared_path(*REFERENCE, corpus, f"op_{entry['file']}.jsonl.gz"))
    op = build_op({entry["op"]: entry["params"]}, semantics="data_juicer")
    problems: list[str] = []
    for row in reference:
        text = texts[row["id"]]
        if isinstance(op, Mapper):
            out = op.map_text(text)
            expected = text if row["text"] is None else row["text"]
            if out != expected:
                at = next(
                    (i for i, (a, b) in enumerate(zip(out, expected, strict=False)) if a != b),
                    min(len(out), len(expected)),
                )
                problems.append(
                    f"{row['id']}: output differs at char {at}: ours {out[max(0, at - 20) : at + 30]!r} "
                    f"vs DJ {expected[max(0, at - 20) : at + 30]!r}"
                )
        else:
            assert isinstance(op, Filter)
            stats = op.compute_stats(text)
            keep = op.keep(stats)
            bad_stats = [
                f"{key}={stats.get(key)!r} vs {value!r}"
                for key, value in row["stats"].items()
                if key not in stats or abs(stats[key] - value) > STAT_TOLERANCE
            ]
            if keep != row["keep"] or bad_stats:
                problems.append(f"{row['id']}: keep {keep} vs DJ {row['keep']}; {'; '.join(bad_stats)}")
    return len(reference), problems


@pytest.mark.parametrize(
    ("corpus", "entry"),
    _entries() or [pytest.param("text", {}, id="reference-data")],
    ids=lambda v: v if isinstance(v, str) else v.get("file"),
)
def test_matches_data_juicer(corpus: str, entry: dict[str, Any]) -> None:
    shared_path(*REFERENCE, "ops_index.json")
    assert entry["op"] in registered_ops(), f"{entry['op']} is not registered"
    total, problems = compare_with_reference(corpus, entry)
    agreement = 1 - len(problems) / total
    if problems:
        print(f"\n{corpus}/{entry['file']}: {len(problems)} of {total} documents disagree with Data-Juicer")
        for line in problems[:10]:
            print("  ", line)
    assert agreement >= MIN_AGREEMENT, (
        f"{corpus}/{entry['file']}: agreement {agreement:.4%}; first: {problems[:3]}"
    )
