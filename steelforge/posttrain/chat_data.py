"""Conversation and preference data: readers, tokenization into a stage's prepared folder, epochs and packing.

Readers accept OpenAI `messages`, ShareGPT `conversations` (`from`/`value`), Alpaca (`instruction`/`input`/
`output`) and preference pairs (`prompt` or `messages` plus `chosen`/`rejected`, strings or message lists).
Bad records (malformed JSON, unknown roles, no assistant turn, chosen == rejected, too long) are counted and
written to `errors.jsonl` with file and line; they never stop a run.

Tokenization happens once per stage into `<stage>/data/` (written aside, then renamed), with a marker that
records the input files' fingerprints, the tokenizer fingerprint, the template and `cutoff_len`; a rerun with
the same inputs reuses it. Each epoch draws its conversations with a seeded generator (every conversation
exactly once unless mixture weights subsample a dataset), shuffles them and packs them into rows whose
`position_ids` restart at every conversation (the project's packed-sequence convention).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steelforge.errors import DataError
from steelforge.posttrain.config import ChatDataset
from steelforge.posttrain.templates import TemplateMismatch, tokenize_with_mask
from steelforge.reporting import track

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant"}  # fmt: skip
IGNORE = -100
MARKER = "prepared.json"


class BadRecord(ValueError):
    """One record that cannot be used; the reason becomes a line of errors.jsonl."""

    @property
    def kind(self) -> str:
        """The summary bucket of this reason (the reason itself names the record's values)."""
        text = str(self)
        for kind in ("unknown role", "no assistant turn", "chosen equals rejected", "without a prompt"):
            if kind in text:
                return kind
        return "invalid record"


# ---- error accounting -----------------------------------------------------------------------------
@dataclass
class ErrorLog:
    """Counts of bad records by reason, plus the first occurrences (file, line) for errors.jsonl."""

    counts: Counter = field(default_factory=Counter)
    entries: list[dict[str, Any]] = field(default_factory=list)
    limit: int = 10_000

    def add(self, file: Path | str, line: int, reason: str, kind: str) -> None:
        self.counts[kind] += 1
        if len(self.entries) < self.limit:
            self.entries.append({"file": str(file), "line": line, "kind": kind, "reason": reason})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---- readers ---------------------------------------------------------------------------------------
def _message(m: Any, where: str) -> dict[str, str]:
    if not isinstance(m, dict):
        raise BadRecord(f"{where} is not an object")
    if "role" in m:
        role, content = m.get("role"), m.get("content")
    elif "from" in m:
        raw = m.get("from")
        role, content = _SHAREGPT_ROLES.get(str(raw).lower(), raw), m.get("value")
    else:
        raise BadRecord(f"{where} has neither role/content nor from/value")
    if role not in ROLES:
        raise BadRecord(f"unknown role {role!r} in {where} (expected system, user or assistant)")
    if not isinstance(content, str):
        raise BadRecord(f"{where} content is not a string")
    return {"role": str(role), "content": content}


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRecord(f"{where} must be a non-empty list of messages")
    return [_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def detect_format(record: dict[str, Any]) -> str:
    if "chosen" in record or "rejected" in record:
        return "preference"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise BadRecord(f"unrecognised record keys {sorted(record)[:6]}; expected messages, conversations, "
                    "instruction/output or chosen/rejected")  # fmt: skip


def conversation(record: dict[str, Any], fmt: str = "auto") -> list[dict[str, str]]:
    """A record as a list of {role, content}; raises BadRecord with the reason."""
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "messages":
        msgs = _messages(record.get("messages"), "messages")
    elif fmt == "sharegpt":
        msgs = _messages(record.get("conversations"), "conversations")
        if isinstance(record.get("system"), str) and record["system"] and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": record["system"]})
    elif fmt == "alpaca":
        instruction, inp, out = record.get("instruction", ""), record.get("input", ""), record.get("output")
        if not isinstance(instruction, str) or not isinstance(inp, str) or not isinstance(out, str):
            raise BadRecord("alpaca fields instruction/input/output must be strings")
        msgs = []
        if isinstance(record.get("system"), str) and record["system"]:
            msgs.append({"role": "system", "content": record["system"]})
        for turn in record.get("history") or []:
            if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(x, str) for x in turn)):
                raise BadRecord("alpaca history must be a list of [instruction, response] pairs")
            msgs += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        msgs += [{"role": "user", "content": f"{instruction}\n\n{inp}" if inp else instruction},
                 {"role": "assistant", "content": out}]  # fmt: skip
    else:
        raise BadRecord(f"format {fmt!r} is not a conversation format (a preference file in sft.datasets?)")
    if not any(m["role"] == "assistant" and m["content"] for m in msgs):
        raise BadRecord("no assistant turn")
    return msgs


def preference(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """(prompt messages, chosen messages, rejected messages) of a preference record."""
    if "chosen" not in record or "rejected" not in record:
        raise BadRecord("a preference record needs both 'chosen' and 'rejected'")
    prompt_value = record.get("prompt", record.get("messages"))
    if isinstance(prompt_value, str):
        prompt = [{"role": "user", "content": prompt_value}]
    elif prompt_value is None:
        prompt = []
    else:
        prompt = _messages(prompt_value, "prompt")
    chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
    if not prompt:  # conversational pairs that repeat the prompt inside chosen/rejected (UltraFeedback style)
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
    if not prompt:
        raise BadRecord("preference pair without a prompt")
    if prompt[-1]["role"] == "assistant":
        raise BadRecord("the prompt ends with an assistant turn")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["role"] == "assistant" and m["content"] for m in side):
            raise BadRecord(f"{name} has no assistant turn")
    if chosen == rejected:
        raise BadRecord("chosen equals rejected")
    return prompt, chosen, rejected


def read_jsonl(path: Path, errors: ErrorLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every parsable line; malformed lines and empty files go to `errors`."""
    if not path.is_file():
        raise DataError(f"chat data file '{path}' does not exist; fix the path in the recipe's datasets")
    seen = 0
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            seen += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.add(path, line_no, f"malformed JSON: {exc.msg}", "malformed line")
                continue
            if not isinstance(record, dict):
                errors.add(path, line_no, "a line must hold a JSON object", "malformed line")
                continue
            yield line_no, record
    if seen == 0:
        errors.add(path, 0, "the file has no records", "empty file")


def _count_lines(path: Path) -> int | None:
    """Lines in a file (the progress bar's total), None when it cannot be read (the reader reports that)."""
    try:
        with path.open("rb") as fh:
            return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None


# ---- fingerprints and the prepared folder ------------------------------------------------------------
def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def prepared_key(datasets: list[ChatDataset], tokenizer_fp: str, template: str, settings: dict[str, Any]) -> dict:
    return {
        "inputs": [
            {"path": str(d.path), "name": d.label, "format": d.format, "max_samples": d.max_samples,
             "sha256": file_fingerprint(d.path) if d.path.is_file() else None}
            for d in datasets
        ],
        "tokenizer": tokenizer_fp,
        "template_sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
        **settings,
    }


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _publish(tmp: Path, folder: Path) -> None:
    """Replace `folder` by `tmp` (old copy moved aside first, so a crash leaves one complete folder)."""
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def _write_errors(tmp: Path, errors: ErrorLog) -> None:
    with (tmp / "errors.jsonl").open("w", encoding="utf-8") as fh:
        for entry in errors.entries:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")


@dataclass
class Ragged:
    """Variable-length int sequences stored flat (values + offsets)."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def build(cls, rows: list[list[int]], dtype: Any) -> Ragged:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        values = np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(offsets[-1]))
        return cls(values, offsets)


@dataclass
class SFTData:
    """Tokenized conversations of every dataset: ids and 0/1 trained-token masks, plus per-dataset ranges."""

    ids: Ragged
    mask: Ragged
    dataset_of: np.ndarray  # dataset index per conversation
    names: list[str]
    weights: list[float | None]
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def _tokenize_sft(tokenizer: Any, messages: list[dict[str, str]], cutoff_len: int, overflow: str,
                  errors: ErrorLog, file: Path, line: int) -> tuple[list[int], list[int]] | None:  # fmt: skip
    ids, mask = tokenize_with_mask(tokenizer, messages)
    if len(ids) > cutoff_len:
        if overflow == "drop":
            errors.add(file, line, f"{len(ids)} tokens > cutoff_len {cutoff_len}", "over cutoff_len (dropped)")
            return None
        errors.add(file, line, f"{len(ids)} tokens > cutoff_len {cutoff_len}", "over cutoff_len (truncated)")
        ids, mask = ids[:cutoff_len], mask[:cutoff_len]
        if sum(mask[1:]) == 0:
            errors.add(file, line, "no assistant token left after truncation", "no trained token after truncation")
            return None
    return ids, mask


def prepare_sft(datasets: list[ChatDataset], tokenizer: Any, tokenizer_fp: str, template: str, folder: Path, *,
                cutoff_len: int, overflow: str) -> SFTData:  # fmt: skip
    """Tokenize every dataset into `folder` (reused when its marker matches the inputs)."""
    key = prepared_key(datasets, tokenizer_fp, template, {"kind": "sft", "cutoff_len": cutoff_len,
                                                          "overflow": overflow})  # fmt: skip
    marker = _read_marker(folder)
    if marker is None or marker.get("key") != key:
        errors = ErrorLog()
        ids_rows, mask_rows, owner = [], [], []
        for d_index, d in enumerate(datasets):
            kept = 0
            for line, record in track(read_jsonl(d.path, errors), f"tokenize {d.label}", total=_count_lines(d.path)):
                if d.max_samples is not None and kept >= d.max_samples:
                    break
                try:
                    msgs = conversation(record, d.format)
                    out = _tokenize_sft(tokenizer, msgs, cutoff_len, overflow, errors, d.path, line)
                except BadRecord as exc:
                    errors.add(d.path, line, str(exc), exc.kind)
                    continue
                except TemplateMismatch as exc:
                    errors.add(d.path, line, str(exc), "template mismatch")
                    continue
                if out is None:
                    continue
                ids_rows.append(out[0])
                mask_rows.append(out[1])
                owner.append(d_index)
                kept += 1
        if not ids_rows:
            raise DataError(
                f"no usable conversation in {', '.join(str(d.path) for d in datasets)} "
                f"({errors.total} bad records: {dict(errors.counts)}); see the files' format in docs/sft.md"
            )
        _save(folder, key, errors, ids=Ragged.build(ids_rows, np.int32), mask=Ragged.build(mask_rows, np.uint8),
              dataset_of=np.asarray(owner, dtype=np.int32))  # fmt: skip
    return load_sft(folder, datasets)


def _save(folder: Path, key: dict, errors: ErrorLog, **arrays: Any) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    flat: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name, value in arrays.items():
        if isinstance(value, Ragged):
            flat[f"{name}_values"], flat[f"{name}_offsets"] = value.values, value.offsets
            counts["records"] = len(value)
            counts["tokens"] = int(value.offsets[-1]) if name in ("ids", "chosen_ids") else counts.get("tokens", 0)
        else:
            flat[name] = value
    np.savez(tmp / "data.npz", **flat)
    _write_errors(tmp, errors)
    stats = {**counts, "bad_records": errors.total, "bad_by_kind": dict(errors.counts)}
    (tmp / MARKER).write_text(json.dumps({"key": key, "stats": stats}, indent=1), encoding="utf-8")
    _publish(tmp, folder)


def _load_arrays(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    marker = _read_marker(folder)
    if marker is None:
        raise DataError(f"prepared data folder '{folder}' has no {MARKER}; rerun the stage with --force")
    with np.load(folder / "data.npz") as z:
        arrays = {k: z[k] for k in z.files}
    out: dict[str, Any] = {}
    for k in list(arrays):
        if k.endswith("_values"):
            base = k[: -len("_values")]
            out[base] = Ragged(arrays[k], arrays[f"{base}_offsets"])
        elif not k.endswith("_offsets"):
            out[k] = arrays[k]
    return out, marker["stats"]


def load_sft(folder: Path, datasets: list[ChatDataset]) -> SFTData:
    arrays, stats = _load_arrays(folder)
    return SFTData(arrays["ids"], arrays["mask"], arrays["dataset_of"], [d.label for d in datasets],
                   [d.weight for d in datasets], stats)  # fmt: skip


# ---- preference pairs ----------------------------------------------------------------------------------
@dataclass
class PairData:
    """Tokenized preference pairs: full chosen/rejected sequences and their completion masks."""

    chosen_ids: Ragged
    chosen_mask: Ragged
    rejected_ids: Ragged
    rejected_mask: Ragged
    dataset_of: np.ndarray
    names: list[str]
    weights: list[float | None]
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.chosen_ids)


def _pair_side(tokenizer: Any, prompt: list[dict[str, str]], side: list[dict[str, str]], cutoff_len: int,
               max_prompt_len: int | None, overflow: str) -> tuple[list[int], list[int], str | None]:  # fmt: skip
    """(ids, completion mask, overflow note) of prompt + side; the prompt keeps its end when cut."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids, mask = tokenize_with_mask(tokenizer, prompt + side, train_from_char=len(prompt_text))
    first = mask.index(1) if 1 in mask else len(ids)
    note = None
    if max_prompt_len is not None and first > max_prompt_len:
        if overflow == "drop":
            return [], [], "drop"
        ids, mask = ids[first - max_prompt_len :], mask[first - max_prompt_len :]
        first = max_prompt_len
        note = "truncate"
    if len(ids) > cutoff_len:
        if overflow == "drop":
            return [], [], "drop"
        keep_prompt = max(1, min(first, cutoff_len // 2))
        ids = ids[first - keep_prompt : first] + ids[first:][: cutoff_len - keep_prompt]
        mask = mask[first - keep_prompt : first] + mask[first:][: cutoff_len - keep_prompt]
        note = "truncate"
    return ids, mask, note


def prepare_pairs(datasets: list[ChatDataset], tokenizer: Any, tokenizer_fp: str, template: str, folder: Path, *,
                  cutoff_len: int, overflow: str, max_prompt_len: int | None) -> PairData:  # fmt: skip
    """Tokenize every preference file into `folder` (reused when its marker matches the inputs)."""
    key = prepared_key(datasets, tokenizer_fp, template, {"kind": "dpo", "cutoff_len": cutoff_len,
                                                          "overflow": overflow, "max_prompt_len": max_prompt_len})
    marker = _read_marker(folder)
    if marker is None or marker.get("key") != key:
        errors = ErrorLog()
        cols: dict[str, list[list[int]]] = {"chosen_ids": [], "chosen_mask": [], "rejected_ids": [],
                                            "rejected_mask": []}  # fmt: skip
        owner = []
        for d_index, d in enumerate(datasets):
            kept = 0
            for line, record in track(read_jsonl(d.path, errors), f"tokenize {d.label}", total=_count_lines(d.path)):
                if d.max_samples is not None and kept >= d.max_samples:
                    break
                try:
                    prompt, chosen, rejected = preference(record)
                    c_ids, c_mask, c_note = _pair_side(tokenizer, prompt, chosen, cutoff_len, max_prompt_len, overflow)
                    r_ids, r_mask, r_note = _pair_side(tokenizer, prompt, rejected, cutoff_len, max_prompt_len,
                                                       overflow)  # fmt: skip
                except BadRecord as exc:
                    errors.add(d.path, line, str(exc), exc.kind)
                    continue
                except TemplateMismatch as exc:
                    errors.add(d.path, line, str(exc), "template mismatch")
                    continue
                notes = {c_note, r_note} - {None}
                if "drop" in notes:
                    errors.add(d.path, line, f"pair longer than cutoff_len {cutoff_len}", "over cutoff_len (dropped)")
                    continue
                if notes:
                    errors.add(d.path, line, f"pair longer than cutoff_len {cutoff_len}",
                               "over cutoff_len (truncated)")  # fmt: skip
                if sum(c_mask) == 0 or sum(r_mask) == 0:
                    errors.add(d.path, line, "no completion token left after truncation", "no completion token")
                    continue
                for name, value in (("chosen_ids", c_ids), ("chosen_mask", c_mask), ("rejected_ids", r_ids),
                                    ("rejected_mask", r_mask)):  # fmt: skip
                    cols[name].append(value)
                owner.append(d_index)
                kept += 1
        if not owner:
            raise DataError(
                f"no usable preference pair in {', '.join(str(d.path) for d in datasets)} "
                f"({errors.total} bad records: {dict(errors.counts)}); see the formats in docs/dpo.md"
            )
        _save(folder, key, errors, chosen_ids=Ragged.build(cols["chosen_ids"], np.int32),
              chosen_mask=Ragged.build(cols["chosen_mask"], np.uint8),
              rejected_ids=Ragged.build(cols["rejected_ids"], np.int32),
              rejected_mask=Ragged.build(cols["rejected_mask"], np.uint8),
              dataset_of=np.asarray(owner, dtype=np.int32))  # fmt: skip
    arrays, stats = _load_arrays(folder)
    return PairData(arrays["chosen_ids"], arrays["chosen_mask"], arrays["rejected_ids"], arrays["rejected_mask"],
                    arrays["dataset_of"], [d.label for d in datasets], [d.weight for d in datasets], stats)  # fmt: skip


# ---- epochs ------------------------------------------------------------------------------------------
def epoch_selection(dataset_of: np.ndarray, weights: list[float | None], seed: int, epoch: int) -> np.ndarray:
    """Indices of this epoch's records in training order (seeded by seed and epoch).

    Without weights every record appears exactly once. With weights each dataset gets its share of the epoch;
    the dataset that runs out first sets the size and the others are subsampled (no record twice per epoch).
    """
    rng = np.random.default_rng([seed, epoch])
    n_sets = len(weights)
    members = [np.flatnonzero(dataset_of == i) for i in range(n_sets)]
    if all(w is None for w in weights):
        chosen = np.arange(len(dataset_of))
    else:
        w = np.asarray([1.0 if x is None else float(x) for x in weights])
        sizes = np.asarray([len(m) for m in members], dtype=np.float64)
        active = sizes > 0
        total = min(sizes[i] * w[active].sum() / w[i] for i in range(n_sets) if active[i])
        parts = []
        for i, m in enumerate(members):
            if not active[i]:
                continue
            take = min(len(m), math.floor(total * w[i] / w[active].sum() + 1e-9))
            parts.append(rng.choice(m, size=take, replace=False) if take < len(m) else m)
        chosen = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return rng.permutation(chosen)


def pack_rows(order: np.ndarray, lengths: np.ndarray, capacity: int, packing: bool) -> list[list[int]]:
    """Rows of record indices: in order, a new row whenever the next record does not fit."""
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order.tolist():
        n = int(lengths[index])
        if current and (not packing or used + n > capacity):
            rows.append(current)
            current, used = [], 0
        current.append(index)
        used += n
    if current:
        rows.append(current)
    return rows


def sft_row(data: SFTData, members: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, labels, position_ids) of one packed row; labels[t] is the target of position t."""
    ids, labels, pos = [], [], []
    for i in members:
        x, m = data.ids[i].astype(np.int64), data.mask[i]
        lab = np.full(len(x), IGNORE, dtype=np.int64)
        lab[:-1] = np.where(m[1:] > 0, x[1:], IGNORE)
        ids.append(x)
        labels.append(lab)
        pos.append(np.arange(len(x), dtype=np.int64))
    return np.concatenate(ids), np.concatenate(labels), np.concatenate(pos)


def _pad(rows: list[np.ndarray], value: int, width: int) -> torch.Tensor:
    out = np.full((len(rows), width), value, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return torch.from_numpy(out)


class _EpochStream:
    """Rows of successive epochs (planned on demand, cached), addressed by a global row cursor."""

    def __init__(self, dataset_of: np.ndarray, weights: list[float | None], lengths: np.ndarray, *, seed: int,
                 epochs: float | None, capacity: int, packing: bool) -> None:  # fmt: skip
        self.dataset_of, self.weights, self.lengths = dataset_of, weights, lengths
        self.seed, self.capacity, self.packing = seed, capacity, packing
        self.epochs = epochs
        self._plans: dict[int, list[list[int]]] = {}

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            order = epoch_selection(self.dataset_of, self.weights, self.seed, epoch)
            self._plans[epoch] = pack_rows(order, self.lengths, self.capacity, self.packing)
        return self._plans[epoch]

    def total_rows(self) -> int:
        """Rows in `epochs` passes (fractional epochs take the first share of the last one)."""
        epochs = self.epochs or 1.0
        whole = math.floor(epochs)
        total = sum(len(self.epoch_rows(e)) for e in range(whole))
        frac = epochs - whole
        if frac > 1e-9:
            total += math.floor(frac * len(self.epoch_rows(whole)))
        return total

    def row(self, cursor: int) -> list[int]:
        epoch = 0
        while cursor >= len(self.epoch_rows(epoch)):
            cursor -= len(self.epoch_rows(epoch))
            epoch += 1
            self._plans = {k: v for k, v in self._plans.items() if k >= epoch - 1}
        return self.epoch_rows(epoch)[cursor]


class SFTLoader:
    """Micro-batches of packed rows for one rank; `state_dict()` is the global row cursor (resumable).

    Each micro-step takes the next `micro_batch_size * world_size` rows of the stream and rank r keeps its
    slice, so R processes see exactly the rows one process with an R-times larger micro-batch sees.
    """

    def __init__(self, data: SFTData, *, micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epochs: float | None = 1.0, cutoff_len: int, packing: bool = True, pad_id: int = 0) -> None:  # fmt: skip
        self.data = data
        self.micro, self.rank, self.world = micro_batch_size, rank, world_size
        self.pad_id = pad_id
        self.stream = _EpochStream(data.dataset_of, data.weights, data.ids.lengths(), seed=seed, epochs=epochs,
                                   capacity=cutoff_len, packing=packing)  # fmt: skip
        self.cursor = 0

    def rows_per_micro_step(self) -> int:
        return self.micro * self.world

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])

    def tokens_ahead(self, micro_steps: int) -> int:
        """Tokens (padding excluded) in the next `micro_steps` micro-steps over all ranks: tokens/s of a step."""
        lengths = self.data.ids.lengths()
        n = micro_steps * self.rows_per_micro_step()
        return int(sum(int(lengths[self.stream.row(self.cursor + j)].sum()) for j in range(n)))

    def batch_at(self, cursor: int) -> dict[str, torch.Tensor]:
        start = cursor + self.rank * self.micro
        rows = [sft_row(self.data, self.stream.row(start + j)) for j in range(self.micro)]
        width = max(len(r[0]) for r in rows)
        pos = []
        for _, _, p in rows:  # padding continues as its own "document" so that it never joins the last one
            pos.append(np.concatenate([p, np.arange(width - len(p), dtype=np.int64)]))
        return {
            "input_ids": _pad([r[0] for r in rows], self.pad_id, width),
            "labels": _pad([r[1] for r in rows], IGNORE, width),
            "position_ids": torch.from_numpy(np.stack(pos)),
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = self.batch_at(self.cursor)
            self.cursor += self.rows_per_micro_step()
            yield batch


class PairLoader:
    """Micro-batches of preference pairs: chosen rows then rejected rows, right-padded, with pair indices."""

    def __init__(self, data: PairData, *, micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epochs: float | None = 1.0, pad_id: int = 0) -> None:  # fmt: skip
        self.data = data
        self.micro, self.rank, self.world = micro_batch_size, rank, world_size
        self.pad_id = pad_id
        ones = np.ones(len(data), dtype=np.int64)
        self.stream = _EpochStream(data.dataset_of, data.weights, ones, seed=seed, epochs=epochs, capacity=1,
                                   packing=False)  # fmt: skip
        self.cursor = 0
        self.ref_logps: torch.Tensor | None = None  # [n_pairs, 2] when precomputed

    def rows_per_micro_step(self) -> int:
        return self.micro * self.world

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        d = self.data
        seqs = [d.chosen_ids[i] for i in indices] + [d.rejected_ids[i] for i in indices]
        masks = [d.chosen_mask[i] for i in indices] + [d.rejected_mask[i] for i in indices]
        width = max(len(s) for s in seqs)
        batch = {
            "input_ids": _pad(seqs, self.pad_id, width),
            "attention_mask": _pad([np.ones(len(s), dtype=np.int64) for s in seqs], 0, width),
            "completion_mask": _pad(masks, 0, width),
            "index": torch.tensor(indices, dtype=torch.long),
        }
        if self.ref_logps is not None:
            batch["ref_logps"] = self.ref_logps[torch.tensor(indices)]
        return batch

    def tokens_ahead(self, micro_steps: int) -> int:
        """Tokens (chosen + rejected, padding excluded) in the next `micro_steps` micro-steps over all ranks."""
        c, r = self.data.chosen_ids.lengths(), self.data.rejected_ids.lengths()
        n = micro_steps * self.rows_per_micro_step()
        return int(sum(int(c[i] + r[i]) for i in (self.stream.row(self.cursor + j)[0] for j in range(n))))

    def batch_at(self, cursor: int) -> dict[str, torch.Tensor]:
        start = cursor + self.rank * self.micro
        return self.collate([self.stream.row(start + j)[0] for j in range(self.micro)])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = self.batch_at(self.cursor)
            self.cursor += self.rows_per_micro_step()
            yield batch


def token_statistics(lengths: np.ndarray, trained: np.ndarray) -> list[tuple[str, Any]]:
    """Rows for the dry-run table: counts and length percentiles."""
    if len(lengths) == 0:
        return [("records", 0)]
    return [
        ("records", len(lengths)),
        ("tokens", int(lengths.sum())),
        ("trained tokens", int(trained.sum())),
        ("trained share", f"{trained.sum() / max(lengths.sum(), 1):.1%}"),
        ("length mean / p50 / p95 / max", f"{lengths.mean():.0f} / {np.percentile(lengths, 50):.0f} / "
                                          f"{np.percentile(lengths, 95):.0f} / {lengths.max()}"),
    ]
