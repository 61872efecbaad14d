"""Reading raw documents and writing sharded outputs, streaming with bounded memory.

Readers understand `.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.json` (a JSON array or JSON lines) and
`.parquet` (read in record batches). Nothing is loaded whole: JSON arrays are decoded one element at
a time from a buffered stream, so a 20 GB input never sits in memory.

- `iter_rows(path)` yields `(row_number, dict | BadRecord)`: malformed input (bad JSON, non-UTF-8
  bytes, a non-object row) becomes a `BadRecord` naming the file and line instead of stopping.
- `iter_records(path)` yields the rows as dicts and raises `DataError` at the first malformed one.
- `iter_documents(path, spec, file_index)` maps a source's rows to `{"id", "text", "source", "meta"}`
  with the `SourceSpec`'s field mapping or template, and turns missing fields and empty text into
  `BadRecord`s too, so the pipeline can account for every input row.
- `ShardWriter` writes `.jsonl.zst` shards atomically (temporary file, then rename), a new shard every
  `max_docs` documents or `max_bytes` uncompressed bytes.
"""

from __future__ import annotations

import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import zstandard

from steelforge.errors import DataError

if TYPE_CHECKING:
    from steelforge.clean.clean_config import SourceSpec

SUFFIXES: tuple[str, ...] = (".jsonl.zst", ".jsonl.gz", ".jsonl", ".json", ".parquet")
_READ_CHUNK = 1 << 20
_PARQUET_BATCH = 1024
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass
class BadRecord:
    """An input row that cannot become a document: where it is and why."""

    file: str
    line: int
    reason: str
    id: str | None = None
    source: str | None = None
    excerpt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_of(path: str | Path) -> str:
    """The reader a file needs, from its name; unknown suffixes are a `DataError`."""
    name = str(path).lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise DataError(f"input file '{path}' has an unsupported suffix; use one of {', '.join(SUFFIXES)}")


def file_stem(path: str | Path) -> str:
    """File name without the data suffixes ('a/b.jsonl.gz' -> 'b')."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


class _Damaged(Exception):
    """A compressed input ends early or holds bytes its codec rejects (raised after the good lines)."""


def _decompressor(fmt: str) -> Any:
    if fmt == ".jsonl.gz":
        return zlib.decompressobj(wbits=31)  # gzip member
    return zstandard.ZstdDecompressor().decompressobj()


def _decompressed_chunks(path: Path, fmt: str, position: ReadPosition) -> Iterator[bytes]:
    """The decompressed bytes of a `.jsonl.gz` / `.jsonl.zst` file, chunk by chunk.

    Decompressor objects instead of `gzip.open` / zstandard's stream reader: those stop silently or with
    a bare EOFError on a truncated file, while here every member/frame must reach its end marker (`eof`),
    so a truncated or corrupt file raises `_Damaged` once the bytes before the damage are out.
    Concatenated gzip members and zstd frames are read one after another.
    """
    errors: tuple[type[Exception], ...] = (zlib.error, zstandard.ZstdError)
    with open(path, "rb") as raw:
        dec = _decompressor(fmt)
        started = False  # the current member/frame has received input
        while chunk := raw.read(_READ_CHUNK):
            position.bytes = raw.tell()
            while chunk:
                try:
                    out = dec.decompress(chunk)
                except errors as exc:
                    raise _Damaged(f"corrupt {fmt[7:]} data ({exc})") from None
                started = True
                if out:
                    yield out
                if not dec.eof:
                    break
                chunk = dec.unused_data
                dec, started = _decompressor(fmt), False
        if started and not dec.eof:
            raise _Damaged(f"truncated {fmt[7:]} file (it ends before the compressed stream does)")


@dataclass
class ReadPosition:
    """How far a reader has got into its file, in on-disk bytes (what a progress bar counts)."""

    bytes: int = 0


def _raw_lines(path: Path, fmt: str, position: ReadPosition | None = None) -> Iterator[bytes]:
    """The lines of an input file as bytes (with their newline); compressed ones via `_decompressed_chunks`."""
    position = position if position is not None else ReadPosition()
    if fmt not in (".jsonl.gz", ".jsonl.zst"):
        with open(path, "rb") as stream:
            for line in stream:
                position.bytes += len(line)
                yield line
        return
    pending = b""
    for chunk in _decompressed_chunks(path, fmt, position):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def _excerpt(raw: bytes | str, limit: int = 200) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    raw = _SURROGATE.sub("\ufffd", raw)
    return raw.strip()[:limit]


def _parse_line(path: Path, number: int, raw: bytes) -> dict[str, Any] | BadRecord | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(str(path), number, f"non-UTF-8 bytes at byte {exc.start}", excerpt=_excerpt(raw))
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRecord(
            str(path), number, f"bad JSON: {exc.msg} at column {exc.colno}", excerpt=_excerpt(line)
        )
    if not isinstance(row, dict):
        return BadRecord(
            str(path), number, f"row is a JSON {type(row).__name__}, not an object", excerpt=_excerpt(line)
        )
    if _LONE_SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(row):
        return BadRecord(str(path), number, _LONE_SURROGATE_REASON, excerpt=_excerpt(line))
    return row


# A `\uD800`-`\uDFFF` escape: valid JSON, but alone (not in a high+low pair) it is no Unicode character, and
# text holding one cannot be encoded, segmented or written back as UTF-8.
_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE_REASON = "lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair): not Unicode text"


def _has_lone_surrogate(row: Any) -> bool:
    """Whether a decoded JSON value holds a lone surrogate anywhere (checked only when an escape is present)."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_json_lines(
    path: Path, fmt: str, position: ReadPosition | None = None
) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """Rows of a JSON-lines file; a damaged compressed file ends with one `BadRecord` naming the damage
    and how many lines were read before it (the partial line at the damage is not parsed)."""
    number = 0
    held: bytes | None = None  # the latest line, parsed only once the next one (or a clean end) shows it whole
    try:
        for raw in _raw_lines(path, fmt, position):
            if held is not None:
                number += 1
                parsed = _parse_line(path, number, held)
                if parsed is not None:
                    yield number, parsed
            held = raw
    except _Damaged as exc:
        complete = held is not None and held.endswith(b"\n")
        if complete:
            number += 1
            parsed = _parse_line(path, number, held)  # type: ignore[arg-type]
            if parsed is not None:
                yield number, parsed
        yield number + 1, BadRecord(
            str(path), number + 1, f"{exc}; {number} lines read before the damage, the rest is lost"
        )
        return
    if held is not None:
        number += 1
        parsed = _parse_line(path, number, held)
        if parsed is not None:
            yield number, parsed


def _iter_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """Decode a top-level JSON array element by element (bounded memory); rows are numbered by line."""
    decoder = json.JSONDecoder()
    with open(path, "rb") as stream:
        # surrogateescape keeps undecodable bytes as lone surrogates, so one bad element can be reported
        # (and skipped) instead of stopping the whole file.
        reader = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape")
        buf, pos, line, eof = "", 0, 1, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = reader.read(_READ_CHUNK)
            if not chunk:
                eof = True
                return False
            buf = buf[pos:] + chunk
            pos = 0
            return True

        def skip(chars: str) -> None:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < len(buf) or not fill():
                    return

        skip(" \t\r\n")
        if pos >= len(buf) or buf[pos] != "[":
            raise DataError(
                f"'{path}' starts with neither '[' nor a JSON line; expected a JSON array of objects"
            )
        pos += 1
        while True:
            skip(" \t\r\n,")
            if pos >= len(buf):
                raise DataError(f"'{path}' ends before its JSON array is closed (truncated file?)")
            if buf[pos] == "]":
                return
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if not fill():
                        raise DataError(f"'{path}' has bad JSON at line {line}: {exc.msg}") from None
            start_line = line
            line += buf.count("\n", pos, end)
            if _SURROGATE.search(buf, pos, end):
                yield (
                    start_line,
                    BadRecord(str(path), start_line, "non-UTF-8 bytes", excerpt=_excerpt(buf[pos:end])),
                )
            elif (
                isinstance(value, dict)
                and _LONE_SURROGATE_ESCAPE.search(buf, pos, end)
                and _has_lone_surrogate(value)
            ):
                yield start_line, BadRecord(str(path), start_line, _LONE_SURROGATE_REASON)
            elif isinstance(value, dict):
                yield start_line, value
            else:
                kind = type(value).__name__
                yield (
                    start_line,
                    BadRecord(str(path), start_line, f"array element is a JSON {kind}, not an object"),
                )
            pos = end


def _iter_json(path: Path, position: ReadPosition | None) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """A `.json` file holds either one JSON array or JSON lines; the first non-space byte tells."""
    with open(path, "rb") as stream:
        head = stream.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):
        return _iter_json_array(path)
    return _iter_json_lines(path, ".jsonl", position)


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"'{path}' is not a readable parquet file: {exc}") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def iter_rows(
    path: str | Path, position: ReadPosition | None = None
) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """Rows of one input file as `(line_or_row_number, dict | BadRecord)`, 1-based, streaming.

    `position` follows the bytes read (JSON lines as they go; JSON arrays and parquet at their end).
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise DataError(f"input file '{path}' does not exist")
    if fmt == ".parquet":
        rows = _iter_parquet(path)
    elif fmt == ".json":
        rows = _iter_json(path, position)
    else:
        rows = _iter_json_lines(path, fmt, position)
    return rows if position is None else _then_at_end(rows, position, path.stat().st_size)


def _then_at_end(rows: Iterator[Any], position: ReadPosition, size: int) -> Iterator[Any]:
    yield from rows
    position.bytes = size


def iter_records(path: str | Path, position: ReadPosition | None = None) -> Iterator[dict[str, Any]]:
    """The rows of one input file as dicts; the first malformed row raises `DataError` (file:line)."""
    for _, row in iter_rows(path, position):
        if isinstance(row, BadRecord):
            raise DataError(f"{row.file}:{row.line}: {row.reason}; fix or remove that line")
        yield row


# ---- field mapping ---------------------------------------------------------------------------------
def _render(template: str, row: dict[str, Any]) -> str:
    """Fill a template; a null field renders as '' (Baidu Baike has null summaries), an absent one is missing."""
    try:
        return template.format_map({k: ("" if v is None else v) for k, v in row.items()})
    except KeyError as exc:
        raise _MissingField(str(exc.args[0])) from None


class _MissingField(Exception):
    pass


def document_text(row: dict[str, Any], spec: SourceSpec) -> str:
    """The text of one row: `text_field`, or `template` plus `item_template` per `list_field` element."""
    if spec.template is None:
        field = spec.text_field or "text"
        if field not in row or row[field] is None:
            raise _MissingField(field)
        value = row[field]
        return value if isinstance(value, str) else str(value)
    text = _render(spec.template, row)
    if spec.list_field is not None:
        items = row.get(spec.list_field)
        if items is None:
            raise _MissingField(spec.list_field)
        for item in items:
            text += _render(spec.item_template or "", item if isinstance(item, dict) else {"item": item})
    return text


def used_fields(spec: SourceSpec) -> set[str]:
    """Top-level fields that feed id, text or source (the rest becomes `meta`)."""
    import string

    fields = {f for f in (spec.id_field, spec.source_field, spec.list_field) if f}
    if spec.template is None:
        fields.add(spec.text_field or "text")
    else:
        fields |= {
            name.split(".")[0].split("[")[0]
            for _, name, _, _ in string.Formatter().parse(spec.template)
            if name
        }
    return fields


def iter_documents(
    path: str | Path, spec: SourceSpec, *, meta: bool = True, position: ReadPosition | None = None
) -> Iterator[dict[str, Any] | BadRecord]:
    """Documents `{"id", "text", "source", "meta"}` of one file, or `BadRecord`s for rows that fail.

    The id is the row's `id_field` when set, else `<source>:<file stem>:<row>` (0-based row among the
    file's rows, malformed ones included, so ids stay stable when a bad line is fixed).
    """
    stem = file_stem(path)
    skip_meta = used_fields(spec)
    for index, (number, row) in enumerate(iter_rows(path, position)):
        if isinstance(row, BadRecord):
            row.source = spec.name
            row.id = f"{spec.name}:{stem}:{index}"
            yield row
            continue
        doc_id = f"{spec.name}:{stem}:{index}"
        if spec.id_field is not None:
            if row.get(spec.id_field) in (None, ""):
                yield BadRecord(str(path), number, f"missing id field '{spec.id_field}'", doc_id, spec.name)
                continue
            doc_id = str(row[spec.id_field])
        source = spec.name
        if spec.source_field is not None and row.get(spec.source_field) not in (None, ""):
            source = str(row[spec.source_field])
        try:
            text = document_text(row, spec)
        except _MissingField as exc:
            yield BadRecord(str(path), number, f"missing field '{exc.args[0]}'", doc_id, source)
            continue
        if not text.strip():
            yield BadRecord(str(path), number, "empty text", doc_id, source)
            continue
        doc: dict[str, Any] = {"id": doc_id, "text": text, "source": source}
        if meta:
            extra = {k: v for k, v in row.items() if k not in skip_meta}
            if extra:
                doc["meta"] = extra
        yield doc


# ---- writing ---------------------------------------------------------------------------------------
def dumps(record: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8, non-ASCII kept readable."""
    return (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")


class ShardWriter:
    """Write records to `<directory>/<prefix>-00000.jsonl.zst`, ... atomically, one shard at a time.

    Each shard is written to a hidden temporary file and renamed when complete, so a reader (or a
    resumed run) never sees half a shard. A new shard starts after `max_docs` records or `max_bytes`
    uncompressed bytes. Use as a context manager; `paths` lists the finished shards.
    """

    def __init__(
        self,
        directory: str | Path,
        prefix: str = "part",
        *,
        max_docs: int | None = None,
        max_bytes: int | None = 256 << 20,
        level: int = 3,
    ) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.level = level
        self.paths: list[Path] = []
        self.count = 0
        self._raw: IO[bytes] | None = None
        self._stream: Any = None
        self._tmp: Path | None = None
        self._docs = 0
        self._bytes = 0

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{self.prefix}-{len(self.paths):05d}.jsonl.zst"
        self._tmp = final.with_name(f".{final.name}.tmp")
        self._raw = open(self._tmp, "wb")  # noqa: SIM115  (closed in _close)
        self._stream = zstandard.ZstdCompressor(level=self.level).stream_writer(self._raw, closefd=False)
        self._docs = self._bytes = 0

    def _close(self) -> None:
        if self._stream is None or self._tmp is None or self._raw is None:
            return
        self._stream.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        final = self.directory / self._tmp.name[1:].removesuffix(".tmp")
        os.replace(self._tmp, final)
        self.paths.append(final)
        self._stream = self._raw = self._tmp = None

    def write(self, record: dict[str, Any]) -> None:
        line = dumps(record)
        if self._stream is None:
            self._open()
        self._stream.write(line)
        self._docs += 1
        self._bytes += len(line)
        self.count += 1
        if (self.max_docs is not None and self._docs >= self.max_docs) or (
            self.max_bytes is not None and self._bytes >= self.max_bytes
        ):
            self._close()

    def close(self) -> list[Path]:
        self._close()
        return self.paths

    def abort(self) -> None:
        """Drop the shard in progress (finished shards stay)."""
        if self._stream is not None and self._raw is not None and self._tmp is not None:
            self._stream.close()
            self._raw.close()
            self._tmp.unlink(missing_ok=True)
            self._stream = self._raw = self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_shards(paths: list[Path] | Path) -> Iterator[dict[str, Any]]:
    """Records of `.jsonl.zst` shards (a list, or every shard of a folder in name order)."""
    if isinstance(paths, Path) and paths.is_dir():
        paths = sorted(paths.glob("*.jsonl.zst"))
    for path in paths if isinstance(paths, list) else [paths]:
        yield from iter_records(path)
