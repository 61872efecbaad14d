"""The cleaning pipeline: a `process:` list of operators over raw documents, nothing lost.

Every input row ends in exactly one place: the kept output, a rejected file that names the operator
and the statistic/bound (or the document it duplicates), or the errors file (file:line and why).
Counts are reconciled at the end; a mismatch or a failing operator raises, never "0 documents, exit 0".

Stable API (used by the CLI, `steelforge data compare` and the benchmarks):

- `run_clean(recipe) -> StageReport` and `clean_complete(recipe) -> bool`: the `data` stage.
- `run_pipeline(config, out_dir, *, num_workers=None, executor=None, trace=0, raw_dir=None,
  force=False) -> CleanResult`: per-operator `OpStats` (op, kind, docs_in, docs_out, chars_in,
  chars_out, seconds), kept/rejected/error counts and the output paths.
- `print_summary(result)`: the per-operator table.

Output layout under `out_dir`: `kept/*.jsonl.zst` (`{"id","text","source","meta"}`, input order),
`rejected/*.jsonl.zst` (`{"id","source","op","op_index","stat","value","min","max","duplicate_of",
"text"}`, the fields that apply; `op_index` is the operator's position in `process`),
`errors.jsonl` (`{"file","line","reason","id","source","excerpt"}`), `stats.json`, `_SUCCESS`
(recipe fingerprint) and `work/` (per-file completion markers, statistics, intermediate shards).

Execution: the process list is cut at each deduplicator. Each piece runs one `FileTask` per input
file on an executor (`steelforge.clean.executors`: in-process, a process pool, or Ray tasks): the task
reads its file, runs the operators in batches (the batch runner also computes the next deduplicator's
signatures for the survivors), writes its outputs and completion marker and returns a summary. Then
the deduplicator resolves clusters over all signatures (the barrier) and writes each file's decisions,
and the next piece's tasks read the survivors with those decisions applied. An interrupted run resumes
at file granularity; a file that was half done is redone from scratch. The parts, one job each:
`_PieceInputs` (what a piece reads per file), `FileTask` (one file through one piece), `_FileSink` (one
file's outputs and completion marker), `_Run` (file tasks on the executor, progress),
`resolve_duplicates` (the barrier) and `reconcile` (counts, errors, `stats.json`). Per-operator
counts cross processes as `OpCounts`.

Memory: documents stream in batches inside the file tasks; the driver holds per-file summaries and, at
the barrier, the deduplicators' signatures of one piece (16 bytes per document for exact dedup,
8 for SimHash, 8 per LSH band for MinHash), plus the duplicate map. The barrier calls the
deduplicator's `find_duplicates_streaming(ids, read)`, which reads the signature files itself
(`read()` yields them again, in chunks): MinHash keeps only the band keys of every document and reads
the full MinHash values back for the candidates that `language_aware` verifies (those sharing a band
with another document).
"""

from __future__ import annotations

import bisect
import glob
import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rich.progress import DownloadColumn, TransferSpeedColumn

from steelforge.clean.clean_config import CleanConfig, SourceSpec
from steelforge.clean.executors import Executor, make_executor
from steelforge.clean.io import BadRecord, ReadPosition, ShardWriter, iter_documents, iter_records
from steelforge.clean.ops.base import Deduplicator, Filter, Mapper, Op, build_op
from steelforge.errors import DataError, SteelforgeError
from steelforge.reporting import StageReport, console, make_progress, print_table
from steelforge.stage import (
    StageMarker,
    atomic_write_json,
    atomic_write_text,
    changed_keys,
    describe_changes,
    digest,
    files_fingerprint,
)

SUCCESS = "_SUCCESS"
# Settings that change how fast, not what: left out of the fingerprint.
_RUNTIME_FIELDS = {"num_workers", "executor", "batch_size", "trace", "output"}


class OperatorError(SteelforgeError):
    """An operator raised on a document: the run stops instead of silently dropping data."""


class OpCounts(NamedTuple):
    """One operator's counts over a batch (or a file): what crosses from worker processes to the driver.

    A NamedTuple, so it pickles small and its JSON form (a list, in the per-file stats) reads back with
    `OpCounts(*values)`.
    """

    docs_in: int
    docs_out: int
    chars_in: int
    chars_out: int
    seconds: float

    def __add__(self, other: tuple) -> OpCounts:  # type: ignore[override]
        return OpCounts(*(a + b for a, b in zip(self, other, strict=True)))


NO_COUNTS = OpCounts(0, 0, 0, 0, 0.0)


@dataclass
class OpStats:
    """One row of the summary: what an operator received, passed on, and how long it took."""

    op: str
    kind: str
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    seconds: float = 0.0

    def add(self, counts: OpCounts) -> None:
        self.docs_in += counts.docs_in
        self.docs_out += counts.docs_out
        self.chars_in += counts.chars_in
        self.chars_out += counts.chars_out
        self.seconds += counts.seconds


@dataclass
class CleanResult:
    """What `run_pipeline` did; `skipped` when the outputs were already complete."""

    out_dir: Path
    fingerprint: str
    ops: list[OpStats]
    docs_in: int
    kept: int
    rejected: int
    errors: int
    kept_paths: list[Path]
    rejected_paths: list[Path]
    errors_path: Path
    stats_path: Path
    chars_in: int = 0
    chars_out: int = 0
    seconds: float = 0.0
    skipped: bool = False
    traces: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def kept_dir(self) -> Path:
        return self.out_dir / "kept"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["kept_paths"] = [p.name for p in self.kept_paths]
        data["rejected_paths"] = [p.name for p in self.rejected_paths]
        data["errors_path"] = self.errors_path.name
        data["stats_path"] = self.stats_path.name
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], out_dir: Path) -> CleanResult:
        data = dict(data)
        data["out_dir"] = out_dir
        data["ops"] = [OpStats(**o) for o in data["ops"]]
        data["kept_paths"] = [out_dir / "kept" / n for n in data["kept_paths"]]
        data["rejected_paths"] = [out_dir / "rejected" / n for n in data["rejected_paths"]]
        data["errors_path"] = out_dir / data["errors_path"]
        data["stats_path"] = out_dir / data["stats_path"]
        return cls(**data)


# ---- the batch runner (runs inside workers) -------------------------------------------------------
@dataclass
class BatchResult:
    kept: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    signatures: list[Any] | None
    stats: dict[int, OpCounts]
    traces: dict[int, list[dict[str, str]]]
    sign_seconds: float = 0.0
    chars_in: int = 0
    chars_out: int = 0


def rejection(doc: dict[str, Any], op: Op, index: int, detail: dict[str, Any]) -> dict[str, Any]:
    """A rejected-document record: who rejected it (name and position in `process`) and why, then the text."""
    record: dict[str, Any] = {"id": doc["id"], "source": doc.get("source"), "op": op.name, "op_index": index}
    record.update(detail)
    record["text"] = doc["text"]
    return record


class BatchRunner:
    """Apply one pipeline piece to a batch: pending dedup decisions, then mappers/filters, then signatures.

    A batch is a list of `(document, duplicate_of | None)`. Picklable, so every executor runs it.
    """

    def __init__(
        self,
        ops: list[tuple[int, Op]],
        dedup_before: tuple[int, Deduplicator] | None,
        signer: Deduplicator | None,
        trace: int,
    ) -> None:
        self.ops = ops
        self.dedup_before = dedup_before
        self.signer = signer
        self.trace = trace

    def __call__(self, batch: list[tuple[dict[str, Any], str | None]]) -> BatchResult:
        rejected: list[dict[str, Any]] = []
        stats: dict[int, OpCounts] = {}
        traces: dict[int, list[dict[str, str]]] = {}
        batch_chars = sum(len(doc["text"]) for doc, _ in batch)
        if self.dedup_before is not None:
            index, dedup = self.dedup_before
            alive = []
            for doc, duplicate_of in batch:
                if duplicate_of is None:
                    alive.append(doc)
                else:
                    rejected.append(
                        rejection(doc, dedup, index, {"stat": "duplicate", "duplicate_of": duplicate_of})
                    )
            chars_in = sum(len(d["text"]) for d, _ in batch)
            stats[index] = OpCounts(len(batch), len(alive), chars_in, sum(len(d["text"]) for d in alive), 0.0)
        else:
            alive = [doc for doc, _ in batch]
        for index, op in self.ops:
            start = time.perf_counter()
            n_in, chars_in = len(alive), sum(len(d["text"]) for d in alive)
            if isinstance(op, Mapper):
                examples = traces.setdefault(index, []) if self.trace else None
                for doc in alive:
                    before = doc["text"]
                    doc["text"] = self._call(op, doc, op.map_text, doc["text"])
                    if examples is not None and len(examples) < self.trace and doc["text"] != before:
                        examples.append({"id": doc["id"], "before": before, "after": doc["text"]})
            elif isinstance(op, Filter):
                survivors = []
                for doc in alive:
                    op_stats = self._call(op, doc, op.compute_stats, doc["text"])
                    if self._call(op, doc, op.keep, op_stats):
                        survivors.append(doc)
                    else:
                        rejected.append(rejection(doc, op, index, op.explain(op_stats)))
                alive = survivors
            else:
                raise TypeError(
                    f"operator '{op.name}' is a {op.kind}; only mappers and filters run in a batch"
                )
            stats[index] = OpCounts(
                n_in, len(alive), chars_in, sum(len(d["text"]) for d in alive), time.perf_counter() - start
            )
        signatures = None
        sign_seconds = 0.0
        if self.signer is not None:
            start = time.perf_counter()
            signer = self.signer
            signatures = [self._call(signer, doc, signer.signature, doc["text"]) for doc in alive]
            sign_seconds = time.perf_counter() - start
        chars_out = sum(len(d["text"]) for d in alive)
        return BatchResult(alive, rejected, signatures, stats, traces, sign_seconds, batch_chars, chars_out)

    @staticmethod
    def _call(op: Op, doc: dict[str, Any], fn: Any, arg: Any) -> Any:
        try:
            return fn(arg)
        except Exception as exc:
            raise OperatorError(
                f"operator '{op.name}' failed on document '{doc['id']}' ({type(exc).__name__}: {exc}); "
                "fix the operator's parameters or the input, then run again (finished files are kept)"
            ) from exc


# ---- plan: input files and pipeline pieces ---------------------------------------------------------
@dataclass
class InputFile:
    task: str
    path: Path
    spec: SourceSpec


@dataclass
class Piece:
    """Mappers/filters between two deduplicators; `signer` is the deduplicator that follows."""

    index: int
    ops: list[tuple[int, Op]]
    dedup_before: tuple[int, Deduplicator] | None
    signer: tuple[int, Deduplicator] | None


def plan_pieces(ops: list[Op]) -> list[Piece]:
    pieces: list[Piece] = []
    current: list[tuple[int, Op]] = []
    before: tuple[int, Deduplicator] | None = None
    for index, op in enumerate(ops):
        if isinstance(op, Deduplicator):
            pieces.append(Piece(len(pieces), current, before, (index, op)))
            current, before = [], (index, op)
        elif isinstance(op, Mapper | Filter):
            current.append((index, op))
        else:
            raise SteelforgeError(f"operator '{op.name}' is neither a mapper, a filter nor a deduplicator")
    pieces.append(Piece(len(pieces), current, before, None))
    return pieces


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def synthetic_path(raw_dir: Path, spec: SourceSpec) -> Path:
    assert spec.synthetic is not None
    return raw_dir / f"{_SAFE.sub('_', spec.name)}-{spec.synthetic.num_docs}-{spec.synthetic.seed}.jsonl"


def synthetic_spec(spec: SourceSpec) -> SourceSpec:
    """How the generated corpus is read: its own ids and per-document sources."""
    return spec.model_copy(
        update={"text_field": "text", "id_field": "id", "source_field": "source", "template": None}
    )


def resolve_inputs(config: CleanConfig, raw_dir: Path) -> list[InputFile]:
    """Input files in a fixed order (sources as listed, files sorted), each one task."""
    files: list[InputFile] = []
    for spec in config.inputs:
        if spec.synthetic is not None:
            paths = [synthetic_path(raw_dir, spec)]
            spec = synthetic_spec(spec)
        else:
            found: set[str] = set()
            for pattern in spec.globs():
                matched = glob.glob(os.path.expanduser(pattern), recursive=True)
                if not matched:
                    raise DataError(
                        f"source '{spec.name}': path '{pattern}' matches no file; check the glob (relative to {Path.cwd()})"
                    )
                found.update(m for m in matched if Path(m).is_file())
            paths = [Path(p) for p in sorted(found)]
        for path in paths:
            files.append(InputFile(f"{len(files):05d}-{_SAFE.sub('_', spec.name)}", path, spec))
    return files


def materialise_synthetic(config: CleanConfig, raw_dir: Path) -> None:
    """Write the generated demo corpus once (`write_corpus` is atomic) so it is read like any other input."""
    for spec in config.inputs:
        if spec.synthetic is None:
            continue
        path = synthetic_path(raw_dir, spec)
        if path.exists():
            continue
        from steelforge.clean.synthetic import write_corpus

        write_corpus(path, spec.synthetic.num_docs, spec.synthetic.seed)


def made_from(config: CleanConfig, files: list[InputFile]) -> dict[str, Any]:
    """What determines the output: operators, sources, shard sizes and the input files' fingerprint (path,
    size, mtime; `stage.files_fingerprint`). Generated inputs count by their name (seed and size)."""
    generated = sorted(f.path.name for f in files if f.spec.synthetic is not None)
    read = [f.path for f in files if f.spec.synthetic is None]
    return {
        "config": config.model_dump(mode="json", exclude=_RUNTIME_FIELDS),
        "files": {"generated": generated, "read": files_fingerprint(read)},
    }


def fingerprint(config: CleanConfig, files: list[InputFile]) -> str:
    """A short hash of `made_from` (kept in the completion marker and in `work/fingerprint`)."""
    return digest(made_from(config, files))


# ---- the driver ------------------------------------------------------------------------------------
class _Layout:
    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.kept = out_dir / "kept"
        self.rejected = out_dir / "rejected"
        self.errors_dir = out_dir / "work" / "errors"
        self.work = out_dir / "work"
        self.errors = out_dir / "errors.jsonl"
        self.stats = out_dir / "stats.json"
        self.success = out_dir / SUCCESS

    def piece_dir(self, piece: int) -> Path:
        return self.work / f"piece{piece}"

    def wipe(self) -> None:
        for path in (self.kept, self.rejected, self.work):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.errors, self.stats, self.success):
            path.unlink(missing_ok=True)


def _remove_task_outputs(directory: Path, prefix: str) -> None:
    if not directory.exists():
        return
    for path in directory.iterdir():
        name = path.name.lstrip(".")
        if name.startswith(f"{prefix}-") or name.startswith(f"{prefix}."):
            path.unlink()


def _read_pickles(path: Path) -> Iterator[Any]:
    with open(path, "rb") as stream:
        while True:
            try:
                yield pickle.load(stream)
            except EOFError:
                return


def _write_pickle(path: Path, data: Any) -> None:
    """Pickle `data` to `path` atomically (aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as stream:
        pickle.dump(data, stream, protocol=5)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, json.loads(json.dumps(data, default=str)))


def _batches(items: Iterable[tuple[dict[str, Any], str | None]], size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _FileSink:
    """Outputs of one (piece, input file): kept or intermediate shards, rejected records, signatures, stats."""

    def __init__(self, layout: _Layout, config: CleanConfig, trace: int, piece: Piece, f: InputFile) -> None:
        self.file = f
        self.piece = piece
        self.work = layout.piece_dir(piece.index)
        self.trace = trace
        last = piece.signer is None
        self.kept = ShardWriter(
            layout.kept if last else self.work, f.task,
            max_docs=config.shard_max_docs if last else None, max_bytes=config.shard_max_bytes,
        )  # fmt: skip
        self.rejected = ShardWriter(layout.rejected, f"{f.task}.p{piece.index}", max_bytes=None)
        self.sig_tmp = self.work / f".{f.task}.sig.tmp"
        # Signatures of the survivors, for the deduplicator that follows this piece (if any).
        self.sig_stream = open(self.sig_tmp, "wb") if piece.signer is not None else None  # noqa: SIM115
        self.totals: dict[int, OpCounts] = {}
        self.traces: dict[int, list[dict[str, str]]] = {}
        self.sign_seconds = 0.0
        self.n_in = self.n_kept = self.n_rejected = self.chars_in = self.chars_out = 0

    def add(self, result: BatchResult) -> None:
        for doc in result.kept:
            self.kept.write(doc)
        for record in result.rejected:
            self.rejected.write(record)
        if result.signatures is not None and self.sig_stream is not None:
            pairs = [(d["id"], sig) for d, sig in zip(result.kept, result.signatures, strict=True)]
            pickle.dump(pairs, self.sig_stream, protocol=5)
        for index, counts in result.stats.items():
            self.totals[index] = self.totals.get(index, NO_COUNTS) + counts
        for index, examples in result.traces.items():
            have = self.traces.setdefault(index, [])
            have.extend(examples[: max(0, self.trace - len(have))])
        self.sign_seconds += result.sign_seconds
        self.chars_in += result.chars_in
        self.chars_out += result.chars_out
        self.n_in += len(result.kept) + len(result.rejected)
        self.n_kept += len(result.kept)
        self.n_rejected += len(result.rejected)

    def finish(self, errors: int) -> None:
        """Close every output, then write the stats and the completion marker (in that order)."""
        self.kept.close()
        self.rejected.close()
        task = self.file.task
        if self.sig_stream is not None:
            self.sig_stream.close()
            os.replace(self.sig_tmp, self.work / f"{task}.sig")
        stats = {
            "docs_in": self.n_in, "kept": self.n_kept, "rejected": self.n_rejected, "errors": errors,
            "chars_in": self.chars_in, "chars_out": self.chars_out,
            "ops": self.totals, "sign_seconds": self.sign_seconds, "traces": self.traces,
        }  # fmt: skip
        _write_json(self.work / f"{task}.json", stats)
        (self.work / f"{task}.done").touch()


class _PieceInputs:
    """Routing: what each piece reads for each input file (the raw file for the first piece, the previous
    piece's survivor shards after that), with bad input rows written to the errors folder on the way."""

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.errors: dict[str, int] = {}  # bad rows per input file task, until its sink is finished

    def piece_input(
        self, piece: Piece, f: InputFile, dup_of: dict[int, str], offset: int, position: ReadPosition
    ) -> Iterator:
        """(document, duplicate_of) pairs; bad input rows go to the errors file on the way (piece 0).

        `position` follows the on-disk bytes read (the progress bar's unit)."""
        if piece.index == 0:
            self.layout.errors_dir.mkdir(parents=True, exist_ok=True)
            errors_path = self.layout.errors_dir / f"{f.task}.jsonl"
            tmp = errors_path.with_name(f".{errors_path.name}.tmp")
            with open(tmp, "w", encoding="utf-8") as errors:
                for item in iter_documents(f.path, f.spec, position=position):
                    if isinstance(item, BadRecord):
                        errors.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
                        self.errors[f.task] = self.errors.get(f.task, 0) + 1
                    else:
                        yield item, None
            os.replace(tmp, errors_path)
            return
        base = 0
        for shard in self.piece_shards(piece, f):
            at = ReadPosition()
            for doc in iter_records(shard, at):
                position.bytes = base + at.bytes
                yield doc, dup_of.get(offset)
                offset += 1
            base += shard.stat().st_size
            position.bytes = base

    def piece_shards(self, piece: Piece, f: InputFile) -> list[Path]:
        """The survivors of the previous piece for input file `f` (what piece `piece` reads)."""
        previous = self.layout.piece_dir(piece.index - 1)
        return sorted(previous.glob(f"{f.task}-[0-9][0-9][0-9][0-9][0-9].jsonl.zst"))

    def input_bytes(self, piece: Piece, f: InputFile) -> int:
        """On-disk bytes piece `piece` reads for input file `f`."""
        if piece.index == 0:
            return f.path.stat().st_size
        return sum(shard.stat().st_size for shard in self.piece_shards(piece, f))


@dataclass
class FileTask:
    """One (piece, input file), done start to finish by whichever worker runs it.

    The task reads its own input (the raw file, or the previous piece's survivor shards with the barrier's
    decisions for this file), runs the piece's operators, writes its kept/rejected shards, signatures,
    statistics and completion marker itself, and returns only a small summary: the driver never holds
    documents. Outputs of a half-done earlier attempt are removed first, so a retried task (a Ray worker that
    died, a resumed run) writes the same bytes once. Picklable, operators included: pool workers and Ray
    tasks run it as is.
    """

    out_dir: Path
    config: CleanConfig
    trace: int
    piece: Piece

    def __call__(self, f: InputFile, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        layout = _Layout(self.out_dir)
        piece = self.piece
        work = layout.piece_dir(piece.index)
        work.mkdir(parents=True, exist_ok=True)
        _remove_task_outputs(layout.kept if piece.signer is None else work, f.task)
        _remove_task_outputs(layout.rejected, f"{f.task}.p{piece.index}")
        _remove_task_outputs(work, f.task)
        dup_of: dict[int, str] = {}
        if piece.dedup_before is not None:
            with open(_decisions_path(layout, piece.index - 1, f), "rb") as stream:
                dup_of = pickle.load(stream)
        runner = BatchRunner(
            piece.ops, piece.dedup_before, piece.signer[1] if piece.signer else None, self.trace
        )
        inputs = _PieceInputs(layout)
        position = ReadPosition()
        sink = _FileSink(layout, self.config, self.trace, piece, f)
        for batch in _batches(inputs.piece_input(piece, f, dup_of, 0, position), self.config.batch_size):
            sink.add(runner(batch))
            if on_progress is not None:
                on_progress(position.bytes, sink.n_in)
        sink.finish(inputs.errors.pop(f.task, 0))
        return {"task": f.task, "docs_in": sink.n_in, "kept": sink.n_kept, "rejected": sink.n_rejected}


def _decisions_path(layout: _Layout, piece_index: int, f: InputFile) -> Path:
    """The barrier's duplicate decisions for one input file (its documents' positions within the file)."""
    return layout.work / f"dedup{piece_index}" / f"{f.task}.pkl"


class _Run:
    """Runs each piece as one `FileTask` per unfinished input file on the executor; the driver only sees
    per-file summaries (and the dedup barrier's signature files)."""

    def __init__(
        self, config: CleanConfig, out_dir: Path, executor: Executor, trace: int, files: list[InputFile]
    ):
        self.config = config
        self.out_dir = out_dir
        self.layout = _Layout(out_dir)
        self.executor = executor
        self.trace = trace
        self.files = files
        self.ops = [build_op(spec, config.semantics) for spec in config.process]
        self.pieces = plan_pieces(self.ops)
        self.inputs = _PieceInputs(self.layout)

    def run_piece(self, piece: Piece, progress: Any) -> None:
        """Every unfinished input file through one piece; progress in input bytes."""
        work = self.layout.piece_dir(piece.index)
        work.mkdir(parents=True, exist_ok=True)
        label = f"clean {piece.index + 1}/{len(self.pieces)}"
        pending = [f for f in self.files if not (work / f"{f.task}.done").exists()]
        sizes = {f.task: self.inputs.input_bytes(piece, f) for f in pending}
        done = sum(self.inputs.input_bytes(piece, f) for f in self.files if f.task not in sizes)
        bar = progress.add_task(label, total=done + sum(sizes.values()), completed=done)
        task = FileTask(self.out_dir, self.config, self.trace, piece)
        # Applying dedup decisions alone is bookkeeping: not worth shipping to workers.
        parallel = self.executor.num_workers > 1 or self.executor.name == "ray"
        if not parallel or not (piece.ops or piece.signer is not None):
            for f in pending:

                def moved(position: int, docs: int, f: InputFile = f, start: int = done) -> None:
                    progress.update(
                        bar, completed=start + position, description=f"{label} {f.path.name}: {docs:,} docs"
                    )

                task(f, moved)
                done += sizes[f.task]
                progress.update(bar, completed=done)
            return
        for f, summary in zip(pending, self.executor.run(task, pending), strict=True):
            done += sizes[f.task]
            progress.update(
                bar, completed=done, description=f"{label} {f.path.name}: {summary['docs_in']:,} docs"
            )


def resolve_duplicates(layout: _Layout, files: list[InputFile], piece: Piece) -> None:
    """The dedup barrier: every signature of this piece's survivors, clusters resolved in input order."""
    assert piece.signer is not None
    out = layout.work / f"dedup{piece.index}.pkl"
    if out.exists():
        return
    _, dedup = piece.signer
    start = time.perf_counter()
    ids: list[str] = []
    offsets: dict[str, int] = {}
    paths = [layout.piece_dir(piece.index) / f"{f.task}.sig" for f in files]
    for f, path in zip(files, paths, strict=True):
        offsets[f.task] = len(ids)
        for chunk in _read_pickles(path):
            ids.extend(doc_id for doc_id, _ in chunk)
    positions = [str(i) for i in range(len(ids))]

    def chunks() -> Iterator[list[Any]]:
        """The signatures, in input order, one pickled batch at a time (read again at each call)."""
        for path in paths:
            for chunk in _read_pickles(path):
                yield [sig for _, sig in chunk]

    found = dedup.find_duplicates_streaming(positions, chunks)
    # One decision file per input file (positions within that file), so each file task loads only its own.
    per_file: dict[str, dict[int, str]] = {f.task: {} for f in files}
    starts = sorted((offset, task) for task, offset in offsets.items())
    begins = [offset for offset, _ in starts]
    for dup, kept in found.items():
        at = bisect.bisect_right(begins, int(dup)) - 1
        offset, task = starts[at]
        per_file[task][int(dup) - offset] = ids[int(kept)]
    for f in files:
        _write_pickle(_decisions_path(layout, piece.index, f), per_file[f.task])
    _write_pickle(out, {"duplicates": len(found), "seconds": time.perf_counter() - start})


def reconcile(
    layout: _Layout,
    ops: list[Op],
    pieces: list[Piece],
    files: list[InputFile],
    trace: int,
    fp: str,
    seconds: float,
    current_made_from: dict[str, Any] | None = None,
) -> CleanResult:
    """Reconciliation: sum the per-file stats of every piece, check that every document read was kept or
    rejected, merge the errors, write `stats.json` and the success marker (`stage.StageMarker`: what the
    output was made from, its fingerprint and the counts)."""
    op_stats = [OpStats(op.name, op.kind) for op in ops]
    docs_in = kept = rejected = errors = chars_in = chars_out = 0
    traces: dict[str, list[dict[str, str]]] = {}
    for piece in pieces:
        work = layout.piece_dir(piece.index)
        for f in files:
            stats = json.loads((work / f"{f.task}.json").read_text(encoding="utf-8"))
            for index, values in stats["ops"].items():
                op_stats[int(index)].add(OpCounts(*values))
            if piece.signer is not None:
                op_stats[piece.signer[0]].seconds += stats["sign_seconds"]
            for index, examples in stats["traces"].items():
                have = traces.setdefault(f"{int(index)}:{ops[int(index)].name}", [])
                have.extend(examples[: max(0, trace - len(have))])
            rejected += stats["rejected"]
            if piece.index == 0:
                docs_in += stats["docs_in"]
                errors += stats["errors"]
                chars_in += stats["chars_in"]
            if piece.signer is None:
                kept += stats["kept"]
                chars_out += stats["chars_out"]
        if piece.signer is not None:
            with open(layout.work / f"dedup{piece.index}.pkl", "rb") as stream:
                op_stats[piece.signer[0]].seconds += pickle.load(stream)["seconds"]
    if docs_in != kept + rejected:
        raise SteelforgeError(
            f"cleaning lost documents: {docs_in} read, {kept} kept + {rejected} rejected; "
            f"remove {layout.out} and run again"
        )
    with open(layout.errors.with_name(".errors.jsonl.tmp"), "wb") as merged:
        for f in files:
            part = layout.errors_dir / f"{f.task}.jsonl"
            merged.write(part.read_bytes())
    os.replace(layout.errors.with_name(".errors.jsonl.tmp"), layout.errors)
    kept_paths = sorted(layout.kept.glob("*.jsonl.zst")) if layout.kept.exists() else []
    rejected_paths = sorted(layout.rejected.glob("*.jsonl.zst")) if layout.rejected.exists() else []
    result = CleanResult(
        layout.out, fp, op_stats, docs_in, kept, rejected, errors, kept_paths, rejected_paths,
        layout.errors, layout.stats, chars_in, chars_out, seconds, False, traces,
    )  # fmt: skip
    _write_json(layout.stats, result.to_json())
    for piece in pieces[:-1]:  # intermediate survivors are no longer needed
        for path in layout.piece_dir(piece.index).glob("*-[0-9][0-9][0-9][0-9][0-9].jsonl.zst"):
            path.unlink()
    StageMarker(layout.success, "data").write(
        current_made_from or {"fingerprint": fp}, fingerprint=fp, kept=kept, rejected=rejected, errors=errors
    )
    return result


def is_complete(out_dir: Path, fp: str) -> bool:
    raw = StageMarker(Path(out_dir) / SUCCESS, "data").read()
    return raw is not None and raw.get("fingerprint") == fp


def _say_why_rerun(out_dir: Path, current: dict[str, Any]) -> None:
    """One line naming what changed since the last complete cleaning run in `out_dir` (none: first run)."""
    raw = StageMarker(Path(out_dir) / SUCCESS, "data").read()
    if raw is None or not isinstance(raw.get("made_from"), dict):
        return
    keys = changed_keys(raw["made_from"], current)
    if keys:
        console.print(f"cleaning runs again: {describe_changes(raw['made_from'], current, keys)}", markup=False)


def run_pipeline(
    config: CleanConfig,
    out_dir: Path,
    *,
    num_workers: int | None = None,
    executor: str | None = None,
    trace: int = 0,
    raw_dir: Path | None = None,
    force: bool = False,
) -> CleanResult:
    """Clean `config.inputs` into `out_dir` (see the module docstring); a complete output is not redone."""
    out_dir = Path(out_dir)
    raw_dir = Path(raw_dir) if raw_dir is not None else out_dir / "raw"
    materialise_synthetic(config, raw_dir)
    files = resolve_inputs(config, raw_dir)
    current = made_from(config, files)
    fp = digest(current)
    layout = _Layout(out_dir)
    if not force and is_complete(out_dir, fp):
        result = CleanResult.from_json(json.loads(layout.stats.read_text(encoding="utf-8")), out_dir)
        result.skipped = True
        return result
    if not force:
        _say_why_rerun(out_dir, current)
    fp_file = layout.work / "fingerprint"
    if force or not fp_file.exists() or fp_file.read_text().strip() != fp:
        layout.wipe()  # different recipe or inputs: nothing from an earlier run can be reused
    layout.work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fp_file, fp)
    start = time.perf_counter()
    pool = make_executor(executor or config.executor, num_workers or config.num_workers)
    run = _Run(config, out_dir, pool, max(trace, config.trace), files)
    with make_progress(DownloadColumn(), TransferSpeedColumn()) as progress:
        for piece in run.pieces:
            run.run_piece(piece, progress)
            if piece.signer is not None:
                resolve_duplicates(run.layout, files, piece)
    return reconcile(run.layout, run.ops, run.pieces, files, run.trace, fp, time.perf_counter() - start, current)


# ---- reporting and the stage API ------------------------------------------------------------------
def print_summary(result: CleanResult) -> None:
    """Per-operator docs and chars in/out and time, then the reconciliation line."""
    rows = [(s.op, s.docs_in, s.docs_out, s.chars_in, s.chars_out, s.seconds) for s in result.ops]
    rows.append(("total", result.docs_in, result.kept, result.chars_in, result.chars_out, result.seconds))
    print_table(
        "cleaning by operator (docs, chars, seconds)",
        ["operator", "in", "out", "chars in", "chars out", "s"],
        rows,
    )
    console.print(
        f"read {result.docs_in + result.errors:,} rows = kept {result.kept:,} + rejected {result.rejected:,} "
        f"+ malformed {result.errors:,}"
    )


def _around_first_change(before: str, after: str, width: int) -> tuple[str, str]:
    """Both texts cut to `width` characters starting a little before their first difference."""
    first = next(
        (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
        min(len(before), len(after)),
    )
    start = max(0, first - width // 4)
    prefix = "…" if start else ""
    return prefix + before[start : start + width], prefix + after[start : start + width]


def print_traces(result: CleanResult, width: int = 160) -> None:
    """Before/after examples per mapper (`--trace N`), shown around the first changed character."""
    for op, examples in result.traces.items():
        console.rule(f"trace: {op}")
        for ex in examples:
            before, after = _around_first_change(ex["before"], ex["after"], width)
            console.print(f"[bold]{ex['id']}[/]", markup=True)
            console.print(f"  - {before!r}", style="red", markup=False)
            console.print(f"  + {after!r}", style="green", markup=False)


def _recipe_paths(recipe: Any) -> tuple[CleanConfig, Path, Path]:
    if recipe.data is None:
        raise SteelforgeError("the recipe has no 'data:' section; add one to run the cleaning stage")
    return recipe.data, recipe.stage_dir("data"), recipe.root / "raw"


def clean_complete(recipe: Any) -> bool:
    """True when the data stage's outputs exist for this recipe's cleaning settings and inputs."""
    config, out_dir, raw_dir = _recipe_paths(recipe)
    if not (out_dir / SUCCESS).exists():
        return False
    try:
        files = resolve_inputs(config, raw_dir)
        if any(f.spec.synthetic is not None and not f.path.exists() for f in files):
            return False
        return is_complete(out_dir, fingerprint(config, files))
    except DataError:
        return False


def run_clean(recipe: Any) -> StageReport:
    """The `data` stage: run the pipeline, print the per-operator table, report counts and outputs."""
    config, out_dir, raw_dir = _recipe_paths(recipe)
    # The CLI calls this only when the outputs are incomplete (resume) or when --force asks for a re-run.
    result = run_pipeline(config, out_dir, raw_dir=raw_dir, trace=config.trace, force=clean_complete(recipe))
    print_summary(result)
    if result.traces:
        print_traces(result)
    report = StageReport(stage="data", skipped=result.skipped)
    report.add("documents read", result.docs_in + result.errors)
    report.add("kept", result.kept)
    report.add("rejected", result.rejected)
    report.add("malformed", result.errors)
    report.add("chars in -> out", f"{result.chars_in:,} -> {result.chars_out:,}")
    report.outputs.update(
        {
            "kept": result.kept_dir,
            "rejected": out_dir / "rejected",
            "errors": result.errors_path,
            "stats": result.stats_path,
        }
    )
    return report
