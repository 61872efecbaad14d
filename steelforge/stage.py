"""Stage plumbing shared by every stage: atomic writes, directory publishing, input fingerprints, and
completion markers that record what a stage's output was made from.

Why one module: a stage that crashes half-way must never leave something that looks finished, and a stage
whose inputs or settings changed must never be skipped or resumed as if nothing happened. Both rules are
only as good as their weakest copy, so there is one copy.

A marker is a small JSON file holding ``made_from``: a flat-ish mapping of everything that changes the
result (resolved settings, tokenizer fingerprint, input/store fingerprints, model architecture). On a
re-run the stage builds the same mapping and `changed_keys` names what differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from steelforge.errors import SteelforgeError

TMP_PREFIX = ".tmp-"


class ResumeMismatch(SteelforgeError):
    """A stage's saved state was made from other inputs or settings than the recipe now describes."""


# ---- atomic files ----------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX needs the parent directory flushed too)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write to a hidden sibling, fsync, then rename: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def remove_tree(path: Path) -> None:
    """Delete a folder so that a kill half-way never leaves something that looks complete."""
    path = Path(path)
    if not path.exists():
        return
    doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a finished folder into place, replacing an older one; durable once it returns."""
    tmp, final = Path(tmp), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        remove_tree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """``with staged_dir(out) as tmp: write into tmp`` — published as ``out`` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final)


# ---- fingerprints ----------------------------------------------------------------------------------
def digest(obj: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-serialisable value (keys sorted, so dict order never matters)."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Path, size and modification time (ns) of input files: cheap, and changes on any rewrite."""
    listing = []
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        listing.append([str(p), st.st_size, st.st_mtime_ns])
    return digest(listing)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- made-from records -----------------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (they change as a whole)."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def changed_keys(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two made-from records (a missing key counts as changed)."""
    old = flatten(json.loads(json.dumps(recorded, default=str)))
    new = flatten(json.loads(json.dumps(current, default=str)))
    return sorted(k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING))


_MISSING = object()


def describe_changes(
    recorded: Mapping[str, Any], current: Mapping[str, Any], keys: list[str], limit: int = 6
) -> str:
    """``a.b (2 -> 4), c (x -> y)`` for the first `limit` keys."""
    old, new = flatten(dict(recorded)), flatten(dict(current))
    # scalars first: `num_hidden_layers (4 -> 2)` says more than the list it derives (`layer_types`)
    keys = sorted(keys, key=lambda k: isinstance(old.get(k, new.get(k)), list | dict))
    parts = []
    for key in keys[:limit]:
        before, after = old.get(key, "unset"), new.get(key, "unset")
        parts.append(f"{key} ({_short(before)} -> {_short(after)})")
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


class StageMarker:
    """A completion marker: ``{"stage", "made_from", ...extra}`` written atomically as JSON.

    `check(made_from)` returns the changed keys ([] when the output is still what the recipe describes).
    """

    def __init__(self, path: Path, stage: str) -> None:
        self.path = Path(path)
        self.stage = stage

    def read(self) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    def write(self, made_from: Mapping[str, Any], **extra: Any) -> None:
        atomic_write_json(self.path, {"stage": self.stage, "made_from": dict(made_from), **extra})

    def check(self, made_from: Mapping[str, Any]) -> list[str] | None:
        """None when there is no marker; else the keys that changed since it was written."""
        raw = self.read()
        if raw is None:
            return None
        return changed_keys(raw.get("made_from") or {}, made_from)


def mismatch_sentence(
    what: str, recorded: Mapping[str, Any], current: Mapping[str, Any], keys: list[str]
) -> str:
    """One sentence: what changed, and the three ways forward."""
    return (
        f"{what} was made from other settings than the recipe now gives: {describe_changes(recorded, current, keys)}; "
        "restore those settings to resume, pass --force-new-run to start over in the same folder, set a new "
        "out_dir, or continue training deliberately with "
        "`resume: {from: <checkpoint>, reset_optimizer: true, reset_data: true}`"
    )


__all__ = [
    "ResumeMismatch",
    "StageMarker",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "changed_keys",
    "describe_changes",
    "digest",
    "file_sha256",
    "files_fingerprint",
    "flatten",
    "fsync_dir",
    "mismatch_sentence",
    "publish_dir",
    "remove_tree",
    "staged_dir",
]


def trained_stage_complete(recipe: Any, stage: str, done_file: str) -> bool:
    """True when a training stage ran to its end for this recipe: its marker (written after the final export)
    names the stage's fingerprint (`Recipe.stage_fingerprint`: later stages' sections left out) and `hf/` exists."""
    out = recipe.stage_dir(stage)
    try:
        done = json.loads((out / done_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return done.get("recipe_hash") == recipe.stage_fingerprint(stage) and (out / "hf").is_dir()
