"""`steelforge pack`: cleaned documents -> token ids -> a token store (see `store.py` for the format).

Documents are tokenized in batches by the fast (Rust) tokenizer, in `num_workers` processes whose
results are consumed in submission order, so the store is byte-identical for any worker count.
Each document is preceded by the BOS token (tokenizers that add one, `pack.bos`), followed by the
separator token and appended to its source's stream; a shard is
written (atomically) every `shard_tokens` tokens. The store is built in `<output>.partial` and
renamed into place when complete, so a crash never leaves a half-written store or shard behind,
and re-running a complete store with the same inputs and settings is a no-op.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from steelforge.clean.executors import ordered_pool_map
from steelforge.errors import DataError, SteelforgeError
from steelforge.reporting import StageReport, console, make_progress
from steelforge.stage import publish_dir
from steelforge.tokens.pack_config import PackConfig
from steelforge.tokens.store import MANIFEST, Manifest, ShardInfo, shard_stem, write_shard


# ---- writing ---------------------------------------------------------------------------------------
class StoreWriter:
    """Appends documents' token ids to per-source streams and cuts them into fixed-size shards."""

    def __init__(self, directory: Path, shard_tokens: int) -> None:
        self.directory = Path(directory)
        self.shard_tokens = shard_tokens
        self.shards: list[ShardInfo] = []
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._lengths: dict[str, int] = {}
        self._starts: dict[str, list[int]] = {}
        self._count: dict[str, int] = {}
        self._stems: dict[str, str] = {}
        self._masks: dict[str, list[np.ndarray]] = {}
        self.with_masks: bool | None = None  # decided by the first document: all have a loss mask or none

    def add(self, source: str, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        """One document (separator included) at the end of `source`'s stream; `mask` (1 = train on this token as
        a target, 0 = no loss, e.g. a prompt) must be given for every document of a store or for none."""
        if self.with_masks is None:
            self.with_masks = mask is not None
        if (mask is not None) != self.with_masks:
            raise DataError(
                "documents with and without loss masks in one store; give every document a mask (all ones where "
                "every token trains) or none"
            )
        if mask is not None and len(mask) != len(ids):
            raise DataError(f"a document has {len(ids)} tokens but a loss mask of {len(mask)}; give one per token")
        if source not in self._buffers:
            stem = shard_stem(source, 0)
            if stem in self._stems:
                raise DataError(
                    f"sources '{self._stems[stem]}' and '{source}' map to the same shard names; rename one"
                )
            self._stems[stem] = source
            self._buffers[source], self._lengths[source], self._starts[source], self._count[source] = (
                [],
                0,
                [],
                0,
            )
        self._starts[source].append(self._lengths[source])
        self._buffers[source].append(ids)
        if mask is not None:
            self._masks.setdefault(source, []).append(np.asarray(mask, dtype=np.uint8))
        self._lengths[source] += len(ids)
        if self._lengths[source] >= self.shard_tokens:
            self._flush(source, final=False)

    def _flush(self, source: str, final: bool) -> None:
        tokens = np.concatenate(self._buffers[source]) if self._buffers[source] else np.zeros(0, np.uint32)
        masks = self._masks.get(source)
        mask = (np.concatenate(masks) if masks else np.zeros(0, np.uint8)) if self.with_masks else None
        starts = np.asarray(self._starts[source], dtype=np.int64)
        size = self.shard_tokens
        while len(tokens) >= size or (final and len(tokens)):
            take = min(size, len(tokens))
            here = starts[starts < take]
            stem = shard_stem(source, self._count[source])
            shard_mask = mask[:take] if mask is not None else None
            self.shards.append(write_shard(self.directory, stem, tokens[:take], here, source, shard_mask))
            self._count[source] += 1
            tokens, starts = tokens[take:], starts[starts >= take] - take
            mask = mask[take:] if mask is not None else None
        self._buffers[source] = [tokens] if len(tokens) else []
        if mask is not None:
            self._masks[source] = [mask] if len(mask) else []
        self._lengths[source] = len(tokens)
        self._starts[source] = starts.tolist()

    def close(self) -> list[ShardInfo]:
        for source in list(self._buffers):
            self._flush(source, final=True)
        return self.shards


def write_token_store(
    directory: Path,
    documents: Iterable[tuple[str, Any] | tuple[str, Any, Any]],
    *,
    tokenizer_name: str,
    tokenizer_fingerprint: str,
    separator_token: str | None = None,
    separator_id: int | None = None,
    shard_tokens: int = 1 << 25,
) -> Manifest:
    """A store from already tokenized `(source, ids)` or `(source, ids, loss_mask)` documents (ids used as given,
    separator included) — for synthetic data, chat data and tests; `pack_documents` tokenizes text first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(directory, shard_tokens)
    for doc in documents:
        source, ids = doc[0], doc[1]
        mask = np.asarray(doc[2], dtype=np.uint8) if len(doc) > 2 else None
        writer.add(source, np.asarray(ids, dtype=np.uint32), mask)
    manifest = Manifest(
        tokenizer_name,
        tokenizer_fingerprint,
        separator_token,
        separator_id,
        shard_tokens,
        writer.close(),
        complete=True,
    )
    manifest.save(directory)
    return manifest


# ---- tokenizing ------------------------------------------------------------------------------------
_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer_json: str, threads: bool) -> None:
    global _WORKER_TOKENIZER
    if not threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _encode(texts: list[str]) -> list[np.ndarray]:
    encodings = _WORKER_TOKENIZER.encode_batch_fast(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]


def encode_batches(
    batches: Iterable[list[str]], tokenizer_json: str, num_workers: int
) -> Iterator[list[np.ndarray]]:
    """Token ids of each batch of texts, in input order, with `num_workers` processes (1: here)."""
    if num_workers <= 1:
        _init_worker(tokenizer_json, threads=True)
        for texts in batches:
            yield _encode(texts)
        return
    yield from ordered_pool_map(
        _encode, batches, num_workers, initializer=_init_worker, initargs=(tokenizer_json, False),
        mp_context=get_context("spawn"),
    )  # fmt: skip


def resolve_separator(tokenizer: Any, value: str | None) -> str | None:
    """`pack.separator` with `auto` resolved: <|im_end|> when the tokenizer has it (Qwen's ChatML tokenizers,
    as Steel-LLM packs), else its EOS token."""
    if value != "auto":
        return value
    if "<|im_end|>" in tokenizer.get_vocab():
        return "<|im_end|>"
    if tokenizer.eos_token is None:
        raise DataError("pack.separator 'auto': the tokenizer has no EOS token; name a separator token or set null")
    return str(tokenizer.eos_token)


def resolve_bos(tokenizer: Any, value: bool | str) -> str | None:
    """The BOS token to put before every document (`pack.bos`), or None. `auto`: the tokenizer's BOS when
    encoding adds it (Llama/Mistral-style tokenizers), as the model saw it in its own pretraining."""
    bos = tokenizer.bos_token
    if value == "auto":
        adds = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
        return str(bos) if adds else None
    if value and bos is None:
        raise DataError("pack.bos is true but the tokenizer has no BOS token; set pack.bos to auto or false")
    return str(bos) if value else None


def separator_id(tokenizer: Any, token: str | None) -> int | None:
    """The id of the separator token, or a clear error when the tokenizer lacks it."""
    if token is None:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(tid) != token:
        raise DataError(
            f"pack.separator '{token}' is not a token of the tokenizer; use one of its special tokens or null"
        )
    return int(tid)


def pack_documents(
    documents: Iterable[tuple[str, str]],
    tokenizer: Any,
    directory: Path,
    *,
    tokenizer_name: str,
    tokenizer_fingerprint: str,
    separator: str | None = "<|im_end|>",
    bos: str | None = None,
    shard_tokens: int = 1 << 25,
    num_workers: int = 1,
    batch_docs: int = 512,
    on_batch: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Tokenize `(source, text)` documents into a store in `directory` (manifest included).

    `tokenizer` is a `PreTrainedTokenizerFast`; each document becomes `[bos] ids [separator]` (the tokens
    given, see `resolve_bos`/`resolve_separator`); `on_batch(documents, tokens)` reports progress.
    Empty documents are skipped (and not counted).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sep = separator_id(tokenizer, separator)
    bos_id = tokenizer.convert_tokens_to_ids(bos) if bos is not None else None
    sep_arr = np.asarray([] if sep is None else [sep], dtype=np.uint32)
    bos_arr = np.asarray([] if bos_id is None else [bos_id], dtype=np.uint32)
    writer = StoreWriter(directory, shard_tokens)
    sources_of_batch: deque[list[str]] = deque()

    def batches() -> Iterator[list[str]]:
        texts, sources = [], []
        for source, text in documents:
            if not text:
                continue
            texts.append(text)
            sources.append(source)
            if len(texts) >= batch_docs:
                sources_of_batch.append(sources)
                yield texts
                texts, sources = [], []
        if texts:
            sources_of_batch.append(sources)
            yield texts

    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    for encoded in encode_batches(batches(), tokenizer_json, num_workers):
        sources = sources_of_batch.popleft()
        n_tokens = 0
        for source, ids in zip(sources, encoded, strict=True):
            doc = np.concatenate([bos_arr, ids, sep_arr]) if sep is not None or bos_id is not None else ids
            writer.add(source, doc)
            n_tokens += len(doc)
        if on_batch is not None:
            on_batch(len(sources), n_tokens)
    manifest = Manifest(
        tokenizer_name=tokenizer_name,
        tokenizer_fingerprint=tokenizer_fingerprint,
        separator_token=separator,
        separator_id=sep,
        shard_tokens=shard_tokens,
        shards=writer.close(),
        complete=True,
        bos_token=bos,
        bos_id=bos_id,
    )
    manifest.save(directory)
    return manifest


# ---- the stage -------------------------------------------------------------------------------------
def resolve_inputs(recipe: Any) -> list[Path]:
    """The pack inputs: `pack.inputs` globs, else the data stage's kept documents."""
    cfg: PackConfig = recipe.pack or PackConfig()
    if cfg.inputs:
        files: list[Path] = []
        for pattern in cfg.inputs:
            matched = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
            if not matched:
                raise DataError(
                    f"pack.inputs pattern '{pattern}' matches no file; fix the glob or run the data stage first"
                )
            files += matched
        return files
    clean_dir = recipe.stage_dir("data")
    kept = clean_dir / "kept"  # the data stage's layout (see steelforge.clean.pipeline)
    if not (clean_dir / "_SUCCESS").is_file():
        raise DataError(
            f"no finished data stage output in '{clean_dir}'; run `steelforge clean` first or set pack.inputs to globs of documents"
        )
    files = sorted(kept.glob("*.jsonl.zst"))
    if not files:
        raise DataError(
            f"the data stage kept no documents in '{kept}'; loosen its filters or set pack.inputs"
        )
    return files


def iter_documents(
    files: list[Path],
    cfg: PackConfig,
    on_file: Callable[[Path], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, str]]:
    """`(source, text)` of every record; the source is the record's `source_field` or the file name.

    `on_bytes(n)` reports progress in on-disk input bytes as documents are read: exact at each file's end,
    estimated inside a file from the text read so far (compressed files use the ratio of the last one).
    """
    from steelforge.clean.io import file_stem, iter_records

    ratio = 1.0  # on-disk bytes per text byte, learnt from each finished file
    for path in files:
        default_source = file_stem(path)
        size = path.stat().st_size
        if path.suffix in (".jsonl", ".json", ".txt"):
            ratio = 1.0
        elif ratio == 1.0:
            ratio = 0.35  # first compressed file: a typical zstd/gzip ratio on text until one is measured
        reported = text_bytes = 0
        for record in iter_records(path):
            text = record.get(cfg.text_field)
            if text is None:
                raise DataError(
                    f"a record in '{path}' has no '{cfg.text_field}' field; set pack.text_field to the text field"
                )
            source = record.get(cfg.source_field) or default_source
            yield str(source), str(text)
            if on_bytes is not None:
                text_bytes += len(str(text).encode("utf-8", "surrogatepass"))
                estimate = min(int(text_bytes * ratio), size)
                if estimate > reported:
                    on_bytes(estimate - reported)
                    reported = estimate
        if on_bytes is not None and size > reported:
            on_bytes(size - reported)
        if text_bytes:
            ratio = size / text_bytes
        if on_file is not None:
            on_file(path)


def pack_made_from(recipe: Any, files: list[Path], tokenizer_fp: str) -> dict[str, Any]:
    """What a store is made from: pack settings (not the worker count), tokenizer, input files (size, mtime ns)."""
    from steelforge.stage import files_fingerprint

    cfg: PackConfig = recipe.pack or PackConfig()
    return {
        "pack": cfg.model_dump(mode="json", exclude={"num_workers", "output"}),
        "tokenizer": {"name": str(recipe.tokenizer), "fingerprint": tokenizer_fp},
        "inputs": {"files": len(files), "fingerprint": files_fingerprint(files)},
    }


def pack_fingerprint(recipe: Any, files: list[Path], tokenizer_fp: str = "") -> str:
    """A short hash of `pack_made_from` (kept in the manifest for tools that compare stores by one value)."""
    from steelforge.stage import digest

    return digest(pack_made_from(recipe, files, tokenizer_fp))


def pack_complete(recipe: Any) -> bool:
    """True when the store exists, is complete and was made from the same inputs, tokenizer and settings.

    When it was made from something else, the changed keys are printed and the store is rebuilt.
    """
    from steelforge.stage import changed_keys, describe_changes
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint

    manifest_path = recipe.stage_dir("pack") / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = resolve_inputs(recipe)
    except (OSError, json.JSONDecodeError, SteelforgeError):
        return False
    recorded = raw.get("extra", {}).get("made_from")
    if not raw.get("complete") or recorded is None:
        return False
    current = pack_made_from(recipe, files, tokenizer_fingerprint(load_tokenizer(recipe.tokenizer)))
    keys = changed_keys(recorded, current)
    if keys:
        console.print(
            f"the token store in {manifest_path.parent} was made from {describe_changes(recorded, current, keys)}"
            " differently; packing again"
        )
    return not keys


def _prepare_output(out: Path) -> Path:
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(
            f"pack output '{out}' exists and is not a token store; choose another pack.output or empty it"
        )
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def run_pack(recipe: Any) -> StageReport:
    """Tokenize and pack the recipe's documents into `recipe.stage_dir("pack")`."""
    from rich.progress import TextColumn

    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint

    cfg: PackConfig = recipe.pack or PackConfig()
    files = resolve_inputs(recipe)
    tokenizer = load_tokenizer(recipe.tokenizer)
    out = recipe.stage_dir("pack")
    partial = _prepare_output(out)
    total_bytes = sum(p.stat().st_size for p in files)
    counts = {"docs": 0, "tokens": 0}
    start = time.perf_counter()
    with make_progress(TextColumn("{task.fields[rate]}")) as progress:
        task = progress.add_task("pack (input bytes)", total=total_bytes, rate="")

        def on_batch(docs: int, tokens: int) -> None:
            counts["docs"] += docs
            counts["tokens"] += tokens
            rate = counts["tokens"] / max(time.perf_counter() - start, 1e-9)
            progress.update(task, rate=f"{counts['tokens']:,} tokens, {rate:,.0f} tokens/s")

        manifest = pack_documents(
            iter_documents(files, cfg, on_bytes=lambda n: progress.advance(task, n)),
            tokenizer,
            partial,
            tokenizer_name=str(recipe.tokenizer),
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
            separator=resolve_separator(tokenizer, cfg.separator),
            bos=resolve_bos(tokenizer, cfg.bos),
            shard_tokens=cfg.shard_tokens,
            num_workers=cfg.num_workers,
            batch_docs=cfg.batch_docs,
            on_batch=on_batch,
        )
    made_from = pack_made_from(recipe, files, manifest.tokenizer_fingerprint)
    manifest.extra = {
        "pack_fingerprint": pack_fingerprint(recipe, files, manifest.tokenizer_fingerprint),
        "made_from": made_from,
        "inputs": [str(p) for p in files],
    }
    manifest.save(partial)
    publish_dir(partial, out)
    seconds = time.perf_counter() - start
    report = StageReport(stage="pack")
    report.add("input files", len(files))
    report.add("documents", counts["docs"])
    report.add("tokens", counts["tokens"])
    report.add("tokens/s", round(counts["tokens"] / max(seconds, 1e-9)))
    for source, shards in _by_source(manifest.shards).items():
        report.add(f"source {source}", f"{sum(s.tokens for s in shards):,} tokens in {len(shards)} shard(s)")
    report.outputs["store"] = out
    return report


def _by_source(shards: list[ShardInfo]) -> dict[str, list[ShardInfo]]:
    out: dict[str, list[ShardInfo]] = {}
    for s in shards:
        out.setdefault(s.source, []).append(s)
    return out
