"""`steelforge data compare`: run one cleaning recipe in both semantics and show where they disagree.

Both runs use the ordinary pipeline (`run_pipeline`) on the same inputs, into `<out>/data_juicer` and
`<out>/language_aware`. Each document's fate in a run is "kept" or "rejected by operator #i" (read
back from the kept and rejected outputs). Documents whose fate differs are counted per operator:

- `only_dj`: rejected here by `data_juicer`, kept by `language_aware`;
- `only_la`: rejected here by `language_aware`, kept by `data_juicer`;
- `dj_here_la_elsewhere` / `la_here_dj_elsewhere`: both reject, at different operators.

For a few example documents per operator and kind, the raw input text is traced through both
operator chains (mappers applied, every filter's statistics computed, whatever earlier filters
decided), so the report shows the statistic each semantics measured at that operator.
The per-operator table and the kept counts per source are printed, and the whole report is written
as JSON (`compare.json`).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steelforge.clean.clean_config import CleanConfig
from steelforge.clean.io import BadRecord, iter_documents, read_shards
from steelforge.clean.ops.base import SEMANTICS, Filter, Mapper, Op, build_op
from steelforge.clean.pipeline import CleanResult, resolve_inputs, run_pipeline
from steelforge.reporting import console, print_table

DJ, LA = SEMANTICS  # ("data_juicer", "language_aware")
KINDS = ("only_dj", "only_la", "dj_here_la_elsewhere", "la_here_dj_elsewhere")
KEPT = -1  # the fate of a kept document

Fate = int  # KEPT, or the index of the operator that rejected the document


@dataclass
class OpDiff:
    """One operator's row: rejections in each semantics and the documents whose fate differs."""

    index: int
    op: str
    rejected_dj: int = 0
    rejected_la: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})

    @property
    def differing(self) -> int:
        return sum(self.counts.values())


@dataclass
class CompareReport:
    """Everything `compare_semantics` found; `to_json()` is what `compare.json` holds."""

    docs_in: int
    errors: int
    kept: dict[str, int]
    rejected: dict[str, int]
    agree: int
    differ: int
    ops: list[OpDiff]
    out_dirs: dict[str, str]
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, op in zip(data["ops"], self.ops, strict=True):
            row["differing"] = op.differing
        return data


def _op_names(config: CleanConfig) -> list[str]:
    return [name if isinstance(entry, dict) else str(entry) for entry in config.process for name in entry]


def read_fates(
    result: CleanResult, op_names: list[str]
) -> tuple[dict[str, Fate], dict[str, dict[str, Any]], dict[str, str]]:
    """Each document's fate in one run, the rejected records (without text) and the sources, by id.

    The fate is the record's `op_index` (the operator's position in `process`); records written
    without one fall back to the first operator of that name.
    """
    first_index: dict[str, int] = {}
    for index, name in enumerate(op_names):
        first_index.setdefault(name, index)
    fates: dict[str, Fate] = {}
    records: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for doc in read_shards(result.kept_paths):
        fates[doc["id"]] = KEPT
        sources[doc["id"]] = str(doc.get("source"))
    for record in read_shards(result.rejected_paths):
        record.pop("text", None)
        index = record.get("op_index")
        fates[record["id"]] = int(index) if index is not None else first_index[record["op"]]
        records[record["id"]] = record
        sources[record["id"]] = str(record.get("source"))
    return fates, records, sources


def trace_stats(text: str, ops: list[Op]) -> dict[int, dict[str, Any]]:
    """Statistics every filter computes on `text` as the mappers before it leave it (decisions ignored)."""
    out: dict[int, dict[str, Any]] = {}
    for index, op in enumerate(ops):
        if isinstance(op, Mapper):
            text = op.map_text(text)
        elif isinstance(op, Filter):
            stats = op.compute_stats(text)
            out[index] = {"stats": stats, "keep": bool(op.keep(stats))}
    return out


def _fate_text(fate: Fate, record: dict[str, Any] | None, op_names: list[str]) -> str:
    if fate == KEPT:
        return "kept"
    text = f"rejected by #{fate + 1} {op_names[fate]}"
    if record is not None and record.get("duplicate_of"):
        text += f" (duplicate of {record['duplicate_of']})"
    return text


def compare_semantics(
    config: CleanConfig,
    out_dir: Path,
    *,
    num_workers: int | None = None,
    executor: str | None = None,
    examples: int = 3,
    raw_dir: Path | None = None,
    force: bool = False,
) -> CompareReport:
    """Run `config` in both semantics under `out_dir` and collect, per operator, the documents that differ."""
    out_dir = Path(out_dir)
    raw_dir = raw_dir if raw_dir is not None else out_dir / "raw"
    op_names = _op_names(config)
    results: dict[str, CleanResult] = {}
    for semantics in (DJ, LA):
        console.print(f"[bold]cleaning with semantics: {semantics}[/]")
        results[semantics] = run_pipeline(
            config.model_copy(update={"semantics": semantics}),
            out_dir / semantics,
            num_workers=num_workers,
            executor=executor,
            raw_dir=raw_dir,
            force=force,
        )
    fates_dj, records_dj, sources = read_fates(results[DJ], op_names)
    fates_la, records_la, _ = read_fates(results[LA], op_names)
    by_source: dict[str, dict[str, int]] = {}
    for doc_id, source in sources.items():
        row = by_source.setdefault(source, {"docs": 0, f"kept_{DJ}": 0, f"kept_{LA}": 0})
        row["docs"] += 1
        row[f"kept_{DJ}"] += fates_dj[doc_id] == KEPT
        row[f"kept_{LA}"] += fates_la.get(doc_id, KEPT) == KEPT

    rows = [OpDiff(i, name) for i, name in enumerate(op_names)]
    for fate in fates_dj.values():
        if fate != KEPT:
            rows[fate].rejected_dj += 1
    for fate in fates_la.values():
        if fate != KEPT:
            rows[fate].rejected_la += 1
    wanted: dict[str, list[tuple[OpDiff, str]]] = defaultdict(list)
    planned: Counter[tuple[int, str]] = Counter()
    agree = differ = 0
    for doc_id, dj in fates_dj.items():
        la = fates_la.get(doc_id, KEPT)
        if dj == la:
            agree += 1
            continue
        differ += 1
        places = []
        if la == KEPT:
            places.append((rows[dj], "only_dj"))
        elif dj == KEPT:
            places.append((rows[la], "only_la"))
        else:
            places += [(rows[dj], "dj_here_la_elsewhere"), (rows[la], "la_here_dj_elsewhere")]
        for row, kind in places:
            row.counts[kind] += 1
            if planned[row.index, kind] < examples:
                planned[row.index, kind] += 1
                wanted[doc_id].append((row, kind))
    _fill_examples(config, raw_dir, wanted, fates_dj, fates_la, records_dj, records_la, op_names)
    totals = {s: results[s] for s in (DJ, LA)}
    return CompareReport(
        docs_in=totals[DJ].docs_in,
        errors=totals[DJ].errors,
        kept={s: r.kept for s, r in totals.items()},
        rejected={s: r.rejected for s, r in totals.items()},
        agree=agree,
        differ=differ,
        ops=rows,
        out_dirs={s: str(r.out_dir) for s, r in totals.items()},
        by_source=by_source,
    )


def _fill_examples(
    config: CleanConfig,
    raw_dir: Path,
    wanted: dict[str, list[tuple[OpDiff, str]]],
    fates_dj: dict[str, Fate],
    fates_la: dict[str, Fate],
    records_dj: dict[str, dict[str, Any]],
    records_la: dict[str, dict[str, Any]],
    op_names: list[str],
) -> None:
    """Trace the raw text of each example document through both operator chains."""
    if not wanted:
        return
    chains = {s: [build_op(entry, s) for entry in config.process] for s in (DJ, LA)}  # type: ignore[arg-type]
    remaining = dict(wanted)
    for f in resolve_inputs(config, raw_dir):
        for doc in iter_documents(f.path, f.spec, meta=False):
            if isinstance(doc, BadRecord) or doc["id"] not in remaining:
                continue
            doc_id = doc["id"]
            traced = {s: trace_stats(doc["text"], chains[s]) for s in (DJ, LA)}
            for row, kind in remaining.pop(doc_id):
                example: dict[str, Any] = {
                    "id": doc_id,
                    DJ: _fate_text(fates_dj[doc_id], records_dj.get(doc_id), op_names),
                    LA: _fate_text(fates_la.get(doc_id, KEPT), records_la.get(doc_id), op_names),
                }
                for s in (DJ, LA):
                    at_op = traced[s].get(row.index)
                    example[f"stats_{s}"] = at_op["stats"] if at_op is not None else None
                example["text"] = doc["text"][:200]
                row.examples[kind].append(example)
            if not remaining:
                return


# ---- output ----------------------------------------------------------------------------------------
def _short(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    parts = []
    for key, value in stats.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({part / whole:.0%})" if whole else "0"


def print_compare(report: CompareReport, examples: int = 3) -> None:
    """The per-operator table, then a few example documents for each operator that differs."""
    rows = [
        (
            f"{op.index + 1}. {op.op}",
            op.rejected_dj,
            op.rejected_la,
            op.counts["only_dj"],
            op.counts["only_la"],
            op.counts["dj_here_la_elsewhere"],
            op.counts["la_here_dj_elsewhere"],
        )
        for op in report.ops
    ]
    rows.append(("total", report.rejected[DJ], report.rejected[LA], "", "", "", ""))
    print_table(
        "data_juicer vs language_aware: rejections per operator and documents whose fate differs",
        [
            "operator",
            "rej. dj",
            "rej. la",
            "only dj",
            "only la",
            "dj here, la elsewhere",
            "la here, dj elsewhere",
        ],
        rows,
    )
    print_table(
        "kept per source",
        ["source", "docs", "kept data_juicer", "kept language_aware"],
        [
            (
                name,
                row["docs"],
                _share(row[f"kept_{DJ}"], row["docs"]),
                _share(row[f"kept_{LA}"], row["docs"]),
            )
            for name, row in report.by_source.items()
        ],
    )
    console.print(
        f"{report.docs_in:,} documents: kept {report.kept[DJ]:,} (data_juicer) vs {report.kept[LA]:,} "
        f"(language_aware); same fate {report.agree:,}, different {report.differ:,}; malformed {report.errors:,}"
    )
    titles = {
        "only_dj": "rejected only by data_juicer",
        "only_la": "rejected only by language_aware",
        "dj_here_la_elsewhere": "data_juicer rejects here, language_aware at another operator",
        "la_here_dj_elsewhere": "language_aware rejects here, data_juicer at another operator",
    }
    for op in report.ops:
        for kind in KINDS:
            shown = op.examples[kind][:examples]
            if not shown:
                continue
            console.rule(f"#{op.index + 1} {op.op}: {titles[kind]} ({op.counts[kind]:,})")
            for ex in shown:
                console.print(f"[bold]{ex['id']}[/]  dj: {ex[DJ]} | la: {ex[LA]}")
                console.print(f"  dj stats: {_short(ex['stats_data_juicer'])}")
                console.print(f"  la stats: {_short(ex['stats_language_aware'])}")
                console.print(f"  text: {ex['text'][:120]!r}")


def write_report(report: CompareReport, path: Path) -> Path:
    """Write the JSON report atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path
