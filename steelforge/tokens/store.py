"""The token store: uint32 token shards, document offsets and a `manifest.json`.

On-disk format (version 1), one folder per store:

* `<source>-<NNNNN>.u32` — a shard: the token ids of one source, little-endian `uint32`, no
  header (`tokens * 4` bytes). A source's token stream is the concatenation of its shards in
  manifest order; documents are packed back to back, each preceded by the BOS token (if any) and
  followed by the separator token (if any), and
  a document may continue into the source's next shard. Every shard but a source's last one
  holds exactly `shard_tokens` tokens.
* `<source>-<NNNNN>.docs` — the offsets (little-endian `uint64`, relative to the shard's first
  token) at which a document starts in that shard, ascending; `documents` entries.
* `manifest.json` — `{"format": "steelforge-token-store", "version": 1, "dtype": "uint32",
  "tokenizer": {"name", "fingerprint"}, "separator": {"token", "id"}, "bos": {"token", "id"}
  (absent in stores written before it existed: no BOS), "shard_tokens",
  "complete", "shards": [{"file", "docs_file", "md5", "docs_md5", "tokens", "documents",
  "source"}, ...]}`. Shards are written to a temporary name and renamed, the manifest last, so a
  shard listed in a manifest is always whole.

Opening a store checks that every listed file exists with the right size (cheap); `verify()`
re-hashes every file against its md5.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from steelforge.errors import DataError
from steelforge.stage import atomic_write_bytes

FORMAT_NAME = "steelforge-token-store"
FORMAT_VERSION = 2  # 2: optional per-token loss masks (`<stem>.mask`, uint8); version 1 stores still read
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.dtype("<u4")
OFFSET_DTYPE = np.dtype("<u8")
TOKEN_SUFFIX = ".u32"
DOCS_SUFFIX = ".docs"
MASK_SUFFIX = ".mask"
MASK_DTYPE = np.dtype("u1")


@dataclass(frozen=True)
class ShardInfo:
    """One shard's manifest entry."""

    file: str
    docs_file: str
    md5: str
    docs_md5: str
    tokens: int
    documents: int
    source: str
    mask_file: str | None = None  # 1 where the token is a training target, 0 where no loss is taken
    mask_md5: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardInfo:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass
class Manifest:
    """What a store holds; serialised as `manifest.json`."""

    tokenizer_name: str
    tokenizer_fingerprint: str
    separator_token: str | None
    separator_id: int | None
    shard_tokens: int
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    bos_token: str | None = None
    bos_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": "uint32",
            "tokenizer": {"name": self.tokenizer_name, "fingerprint": self.tokenizer_fingerprint},
            "separator": {"token": self.separator_token, "id": self.separator_id},
            "bos": {"token": self.bos_token, "id": self.bos_id},
            "shard_tokens": self.shard_tokens,
            "complete": self.complete,
            "extra": self.extra,
            "shards": [{k: v for k, v in asdict(s).items() if v is not None} for s in self.shards],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> Manifest:
        if raw.get("format") != FORMAT_NAME or raw.get("dtype") != "uint32":
            raise DataError(
                f"{where} is not a steelforge token store manifest (format/dtype missing); re-run `steelforge pack`"
            )
        if raw.get("version") not in READABLE_VERSIONS:
            raise DataError(
                f"{where} has store format version {raw.get('version')}, this release reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-run `steelforge pack`"
            )
        return cls(
            tokenizer_name=raw["tokenizer"]["name"],
            tokenizer_fingerprint=raw["tokenizer"]["fingerprint"],
            separator_token=raw["separator"]["token"],
            separator_id=raw["separator"]["id"],
            shard_tokens=int(raw["shard_tokens"]),
            shards=[ShardInfo.from_dict(s) for s in raw["shards"]],
            complete=bool(raw.get("complete", False)),
            extra=dict(raw.get("extra", {})),
            bos_token=(raw.get("bos") or {}).get("token"),  # stores packed before BOS support have none
            bos_id=(raw.get("bos") or {}).get("id"),
        )

    def save(self, directory: Path) -> None:
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"
        atomic_write_bytes(Path(directory) / MANIFEST, text.encode())


# ---- files -----------------------------------------------------------------------------------------
def file_md5(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_shard(
    directory: Path,
    stem: str,
    tokens: np.ndarray,
    doc_starts: Iterable[int],
    source: str,
    mask: np.ndarray | None = None,
) -> ShardInfo:
    """Write one shard (tokens + document start offsets + optional loss mask) atomically; its manifest entry."""
    token_bytes = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes()
    starts = np.asarray(list(doc_starts), dtype=OFFSET_DTYPE)
    if starts.size and (starts[0] >= max(1, len(tokens)) or np.any(np.diff(starts.astype(np.int64)) <= 0)):
        raise ValueError(f"document offsets of shard {stem} must be ascending and inside the shard")
    doc_bytes = starts.tobytes()
    info = ShardInfo(
        file=stem + TOKEN_SUFFIX,
        docs_file=stem + DOCS_SUFFIX,
        md5=hashlib.md5(token_bytes, usedforsecurity=False).hexdigest(),
        docs_md5=hashlib.md5(doc_bytes, usedforsecurity=False).hexdigest(),
        tokens=len(token_bytes) // TOKEN_DTYPE.itemsize,
        documents=int(starts.size),
        source=source,
    )
    if mask is not None:
        if len(mask) != len(tokens):
            raise ValueError(f"the loss mask of shard {stem} has {len(mask)} entries for {len(tokens)} tokens")
        mask_bytes = np.ascontiguousarray(mask, dtype=MASK_DTYPE).tobytes()
        info = replace(
            info, mask_file=stem + MASK_SUFFIX, mask_md5=hashlib.md5(mask_bytes, usedforsecurity=False).hexdigest()
        )
        atomic_write_bytes(Path(directory) / info.mask_file, mask_bytes)  # type: ignore[operator]
    atomic_write_bytes(Path(directory) / info.docs_file, doc_bytes)
    atomic_write_bytes(Path(directory) / info.file, token_bytes)
    return info


# ---- reading ---------------------------------------------------------------------------------------
class TokenStore:
    """A store opened for reading: manifest checked, every shard present with the right size."""

    def __init__(self, path: str | Path, check_sizes: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DataError(
                f"'{self.path}' is not a token store (no {MANIFEST}); run `steelforge pack` to create it"
            )
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read '{manifest_path}' ({exc}); re-run `steelforge pack`") from exc
        self.manifest = Manifest.from_dict(raw, f"'{manifest_path}'")
        if not self.manifest.complete:
            raise DataError(
                f"token store '{self.path}' is incomplete (packing did not finish); re-run `steelforge pack`"
            )
        self._tokens: dict[str, np.memmap] = {}
        self._docs: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        # Set by a reader that knows the model's vocabulary: each shard's ids are range-checked when first opened.
        self.vocab_size: int | None = None
        if check_sizes:
            self.check_sizes()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open memmaps (worker processes reopen them; pickling would copy data)."""
        return {**self.__dict__, "_tokens": {}, "_docs": {}, "_masks": {}}

    @property
    def shards(self) -> list[ShardInfo]:
        return self.manifest.shards

    def check_sizes(self) -> None:
        """Every listed file exists with the size the manifest implies (no hashing)."""
        for shard in self.shards:
            files = [(shard.file, shard.tokens * 4), (shard.docs_file, shard.documents * 8)]
            if shard.mask_file:
                files.append((shard.mask_file, shard.tokens))
            for name, size in files:
                path = self.path / name
                if not path.is_file():
                    raise DataError(
                        f"shard '{name}' listed in '{self.path / MANIFEST}' is missing (renamed or deleted?); "
                        "restore it or re-run `steelforge pack`"
                    )
                actual = path.stat().st_size
                if actual != size:
                    raise DataError(
                        f"shard '{path}' has {actual} bytes but the manifest says {size} (truncated or changed); "
                        "restore it or re-run `steelforge pack`"
                    )

    def verify(self) -> list[str]:
        """Re-hash every shard; returns one sentence per bad file (empty when all match)."""
        problems = []
        for shard in self.shards:
            files = [
                (shard.file, shard.tokens * 4, shard.md5),
                (shard.docs_file, shard.documents * 8, shard.docs_md5),
            ]
            if shard.mask_file:
                files.append((shard.mask_file, shard.tokens, shard.mask_md5))
            for name, size, md5 in files:
                path = self.path / name
                if not path.is_file():
                    problems.append(f"shard '{name}' is missing")
                elif path.stat().st_size != size:
                    problems.append(
                        f"shard '{name}' has {path.stat().st_size} bytes, expected {size} (truncated or changed)"
                    )
                elif file_md5(path) != md5:
                    problems.append(f"shard '{name}' md5 differs from the manifest (changed on disk)")
        return problems

    def fingerprint(self, n_shards: int | None = None) -> str:
        """A hash of the (first `n_shards`) shards' md5s: changes when a shard changes, and an
        append keeps the old fingerprint as a prefix."""
        digest = hashlib.sha256(self.manifest.tokenizer_fingerprint.encode())
        for shard in self.shards[: n_shards if n_shards is not None else len(self.shards)]:
            digest.update(shard.md5.encode())
            if shard.mask_md5:  # unmasked stores keep the fingerprint they had before masks existed
                digest.update(shard.mask_md5.encode())
        return digest.hexdigest()[:32]

    def sources(self) -> dict[str, list[ShardInfo]]:
        """Shards of each source, in stream order (sources in order of first appearance)."""
        out: dict[str, list[ShardInfo]] = {}
        for shard in self.shards:
            out.setdefault(shard.source, []).append(shard)
        return out

    def source_stats(self) -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = {}
        for shard in self.shards:
            row = stats.setdefault(shard.source, {"tokens": 0, "documents": 0, "shards": 0})
            row["tokens"] += shard.tokens
            row["documents"] += shard.documents
            row["shards"] += 1
        return stats

    def tokens(self, shard: ShardInfo) -> np.ndarray:
        """The shard's tokens as a read-only memmap (opened once)."""
        mm = self._tokens.get(shard.file)
        if mm is None:
            if shard.tokens == 0:
                return np.zeros(0, dtype=TOKEN_DTYPE)
            mm = np.memmap(self.path / shard.file, dtype=TOKEN_DTYPE, mode="r")
            if self.vocab_size is not None and mm.size and int(mm.max()) >= self.vocab_size:
                bad = int(np.argmax(mm >= self.vocab_size))
                raise DataError(
                    f"shard '{self.path / shard.file}' holds token id {int(mm[bad])} at position {bad}, beyond the "
                    f"model's vocabulary of {self.vocab_size}; the shard is damaged or was packed for another "
                    "model: run `steelforge store verify` and re-pack"
                )
            self._tokens[shard.file] = mm
        return mm

    @property
    def has_masks(self) -> bool:
        return any(s.mask_file for s in self.shards)

    def mask(self, shard: ShardInfo) -> np.ndarray | None:
        """The shard's loss mask (1 = a training target) as a read-only memmap, or None (every token trains)."""
        if not shard.mask_file:
            return None
        arr = self._masks.get(shard.file)
        if arr is None:
            if shard.tokens == 0:
                return np.zeros(0, dtype=MASK_DTYPE)
            arr = self._masks[shard.file] = np.memmap(self.path / shard.mask_file, dtype=MASK_DTYPE, mode="r")
        return arr

    def doc_starts(self, shard: ShardInfo) -> np.ndarray:
        arr = self._docs.get(shard.file)
        if arr is None:
            if shard.documents == 0:
                arr = np.zeros(0, dtype=OFFSET_DTYPE)
            else:
                arr = np.memmap(self.path / shard.docs_file, dtype=OFFSET_DTYPE, mode="r")
            self._docs[shard.file] = arr
        return arr


def check_tokenizer(
    store: TokenStore, expected_fingerprint: str, what: str = "the model recipe's tokenizer"
) -> None:
    """A clear error when a store was packed with another tokenizer than the one training uses."""
    if store.manifest.tokenizer_fingerprint != expected_fingerprint:
        raise DataError(
            f"token store '{store.path}' was packed with tokenizer '{store.manifest.tokenizer_name}' "
            f"(fingerprint {store.manifest.tokenizer_fingerprint[:12]}) but {what} has fingerprint "
            f"{expected_fingerprint[:12]}; re-pack the data with the same tokenizer"
        )


# ---- appending -------------------------------------------------------------------------------------
def _resolve_new_shards(paths: list[Path]) -> list[tuple[TokenStore, ShardInfo]]:
    """Expand each argument (a store folder, or a shard file inside a store) to its manifest entries."""
    found = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            src = TokenStore(path)
            found += [(src, s) for s in src.shards]
            continue
        if not path.is_file():
            raise DataError(f"'{path}' does not exist; pass a token store folder or a .u32 shard inside one")
        src = TokenStore(path.parent)
        matches = [s for s in src.shards if path.name in (s.file, s.docs_file)]
        if not matches:
            raise DataError(
                f"'{path}' is not listed in '{path.parent / MANIFEST}'; pass a shard of a packed store"
            )
        found += [(src, matches[0])]
    return found


def document_hashes(store: TokenStore, shard: ShardInfo) -> set[bytes]:
    """8-byte hashes of the documents that start and end inside `shard` (independent of the shard size)."""
    tokens = store.tokens(shard)
    starts = [int(x) for x in store.doc_starts(shard)]
    out = set()
    for begin, end in itertools.pairwise(starts):  # the last one may continue in the next shard
        out.add(hashlib.blake2b(np.asarray(tokens[begin:end]).tobytes(), digest_size=8).digest())
    return out


# An append whose documents are mostly in the store already is a re-pack of the same data, not new data.
DUPLICATE_DOCS_LIMIT = 0.5


def _check_document_overlap(store: TokenStore, incoming: list[tuple[TokenStore, ShardInfo]]) -> None:
    known: set[bytes] = set()
    for shard in store.shards:
        known |= document_hashes(store, shard)
    new: set[bytes] = set()
    for src, shard in incoming:
        new |= document_hashes(src, shard)
    if not new:
        return
    repeated = len(new & known)
    if repeated > DUPLICATE_DOCS_LIMIT * len(new):
        raise DataError(
            f"{repeated:,} of the {len(new):,} documents being appended are already in '{store.path}' (the same "
            "data packed again, e.g. with another shard size); appending would repeat them, leave them out"
        )


def _framing(manifest: Manifest) -> tuple[int | None, int | None]:
    """The ids around every document of a store: (BOS, separator)."""
    return manifest.bos_id, manifest.separator_id


def append_shards(store_dir: str | Path, new: list[str | Path]) -> list[ShardInfo]:
    """Copy shards of other stores (same tokenizer) into `store_dir` and list them in its manifest.

    Refuses a shard whose md5 is already in the store, documents that are mostly in the store already
    (the same data re-packed with another shard size), and any tokenizer mismatch, before copying anything. The shards' own md5s are re-checked while copying.
    """
    store = TokenStore(store_dir)
    incoming = _resolve_new_shards([Path(p) for p in new])
    known = {s.md5: s.file for s in store.shards}
    for src, shard in incoming:
        check_tokenizer(store, src.manifest.tokenizer_fingerprint, f"shard '{src.path / shard.file}'")
        framing, theirs = _framing(store.manifest), _framing(src.manifest)
        if theirs != framing:
            raise DataError(
                f"shard '{src.path / shard.file}' was packed with (BOS, separator) {theirs}, the store with "
                f"{framing}; pack it again with the store's pack.bos and pack.separator"
            )
        if shard.md5 in known:
            raise DataError(
                f"shard '{src.path / shard.file}' (md5 {shard.md5}) is already in the store as '{known[shard.md5]}'; "
                "appending it again would repeat its data, leave it out"
            )
        known[shard.md5] = shard.file
    _check_document_overlap(store, incoming)
    next_index: dict[str, int] = {}
    for shard in store.shards:
        next_index[shard.source] = next_index.get(shard.source, 0) + 1
    added = []
    for src, shard in incoming:
        index = next_index.get(shard.source, 0)
        while (store.path / f"{shard_stem(shard.source, index)}{TOKEN_SUFFIX}").exists():
            index += 1
        next_index[shard.source] = index + 1
        data = (src.path / shard.file).read_bytes()
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != shard.md5:
            raise DataError(
                f"shard '{src.path / shard.file}' does not match its manifest md5; run `steelforge store verify {src.path}`"
            )
        docs = (src.path / shard.docs_file).read_bytes()
        stem = shard_stem(shard.source, index)
        mask_file = None
        if shard.mask_file:
            mask_file = stem + MASK_SUFFIX
            atomic_write_bytes(store.path / mask_file, (src.path / shard.mask_file).read_bytes())
        atomic_write_bytes(store.path / (stem + DOCS_SUFFIX), docs)
        atomic_write_bytes(store.path / (stem + TOKEN_SUFFIX), data)
        added.append(
            ShardInfo(
                stem + TOKEN_SUFFIX,
                stem + DOCS_SUFFIX,
                shard.md5,
                shard.docs_md5,
                shard.tokens,
                shard.documents,
                shard.source,
                mask_file,
                shard.mask_md5,
            )
        )
    store.manifest.shards.extend(added)
    store.manifest.save(store.path)
    return added


def shard_stem(source: str, index: int) -> str:
    """File stem of a source's `index`-th shard; the source name is made file-name safe."""
    safe = "".join(c if c.isalnum() or c in "._" else "_" for c in source) or "source"
    return f"{safe}-{index:05d}"
