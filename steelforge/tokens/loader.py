"""`TokenLoader`: this rank's micro-batches of the global sample order, with exact resume.

Each optimizer step consumes one global batch of `micro_batch_size * grad_accum * world_size`
samples from `GlobalSampler`; rank `r` takes the `r`-th contiguous slice of it and yields it as
`grad_accum` micro-batches. The state is the sampler's state at the start of the current step
plus how many of this rank's micro-batches were already yielded, so it is the same on every rank
and a resume with another world size (at a step boundary, same global batch) continues the same
global sequence. Sources: one store mixes its own sources (the `source` of each shard); several
stores mix one source per store, named after the store's folder (the keys of `mixture`). With
`num_workers > 0` a torch `DataLoader` prefetches in worker processes;
every batch carries the state right after it, so prefetched batches never leak into the state.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from steelforge.errors import DataError
from steelforge.tokens.sampler import GlobalSampler, Phase, phase_seq_len
from steelforge.tokens.store import ShardInfo, TokenStore, check_tokenizer

LOADER_STATE_VERSION = 1
_STATE_KEY = "_loader_state"


class SourceStream:
    """One source's token stream: its shards (possibly from several stores) end to end."""

    def __init__(self, name: str, parts: list[tuple[TokenStore, ShardInfo]]) -> None:
        self.name = name
        self.parts = parts
        self.starts = [0]
        for _, shard in parts:
            self.starts.append(self.starts[-1] + shard.tokens)

    @property
    def tokens(self) -> int:
        return self.starts[-1]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens `[start, start + length)` as int64 (copied out of the memmaps)."""
        out = np.empty(length, dtype=np.int64)
        filled, pos = 0, start
        i = bisect.bisect_right(self.starts, pos) - 1
        while filled < length:
            store, shard = self.parts[i]
            offset = pos - self.starts[i]
            take = min(length - filled, shard.tokens - offset)
            out[filled : filled + take] = store.tokens(shard)[offset : offset + take]
            filled, pos, i = filled + take, pos + take, i + 1
        return out

    def read_mask(self, start: int, length: int) -> np.ndarray:
        """Loss mask of tokens `[start, start + length)` (1 = a training target); ones where a shard has none."""
        out = np.ones(length, dtype=np.uint8)
        filled, pos = 0, start
        i = bisect.bisect_right(self.starts, pos) - 1
        while filled < length:
            store, shard = self.parts[i]
            offset = pos - self.starts[i]
            take = min(length - filled, shard.tokens - offset)
            mask = store.mask(shard)
            if mask is not None:
                out[filled : filled + take] = mask[offset : offset + take]
            filled, pos, i = filled + take, pos + take, i + 1
        return out

    @property
    def has_masks(self) -> bool:
        return any(shard.mask_file for _, shard in self.parts)

    def doc_starts(self, start: int, end: int) -> np.ndarray:
        """Document start offsets in `[start, end)`, relative to `start`."""
        found = []
        i = bisect.bisect_right(self.starts, start) - 1
        while i < len(self.parts) and self.starts[i] < end:
            store, shard = self.parts[i]
            starts = store.doc_starts(shard)
            lo = max(0, start - self.starts[i])
            hi = end - self.starts[i]
            a, b = np.searchsorted(starts, lo), np.searchsorted(starts, hi)
            if b > a:
                found.append(starts[a:b].astype(np.int64) + (self.starts[i] - start))
            i += 1
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def position_ids_for(length: int, doc_starts: np.ndarray) -> np.ndarray:
    """Positions 0.. that restart at every document start (and at the sample's first token)."""
    idx = np.arange(length, dtype=np.int64)
    reset = np.zeros(length, dtype=bool)
    reset[0] = True
    reset[doc_starts[doc_starts < length]] = True
    return idx - np.maximum.accumulate(np.where(reset, idx, 0))


def open_stores(stores: str | Path | Sequence[str | Path]) -> list[TokenStore]:
    paths = [stores] if isinstance(stores, str | Path) else list(stores)
    if not paths:
        raise DataError(
            "no token store given; pass a store folder (the pack stage's output) or a list of them"
        )
    opened = [TokenStore(p) for p in paths]
    first = opened[0]
    for other in opened[1:]:
        check_tokenizer(other, first.manifest.tokenizer_fingerprint, f"store '{first.path}'")
    return opened


def source_streams(stores: list[TokenStore]) -> dict[str, SourceStream]:
    """The sources the sampler mixes: one store's own sources (the `source` of its shards), or,
    when several stores are given, one source per store named after its folder (its shards in
    manifest order, so appended shards extend the stream at its end)."""
    if len(stores) == 1:
        parts: dict[str, list[tuple[TokenStore, ShardInfo]]] = {}
        for shard in stores[0].shards:
            parts.setdefault(shard.source, []).append((stores[0], shard))
        return {name: SourceStream(name, p) for name, p in parts.items()}
    streams: dict[str, SourceStream] = {}
    for store in stores:
        name = store.path.name
        if name in streams:
            raise DataError(
                f"two stores are both named '{name}' ({streams[name].parts[0][0].path} and {store.path}); "
                "stores are mixed by folder name, so give them distinct folder names"
            )
        streams[name] = SourceStream(name, [(store, shard) for shard in store.shards])
    return streams


def _as_phases(phases: Sequence[Phase] | None, seq_len: int, mixture: dict[str, float] | None) -> list[Phase]:
    """One accepted shape: `Phase` objects (the recipe's `PhaseConfig`s are converted by the stage)."""
    if phases is None:
        return [Phase(None, seq_len, mixture)]
    for i, p in enumerate(phases):
        if not isinstance(p, Phase):
            raise DataError(
                f"phase {i} = {p!r} is a {type(p).__name__}, not a steelforge.tokens.sampler.Phase; "
                "build it as Phase(until_tokens, seq_len, mixture)"
            )
    return list(phases)


class TokenLoader:
    """This rank's micro-batches (`input_ids`, `labels`, optional `position_ids` and `cu_seqlens`), infinite.

    See the module docstring for the order and the state. `tokenizer_fingerprint`, when given,
    must match the stores' (the model recipe's tokenizer). With `loss_masks` (default) a store's loss masks
    set `labels` to -100 where the target token is masked. `return_position_ids` isolates documents: position
    ids restart at every document (the model then keeps attention, and Steel's causal Soft-MoE, inside
    documents), `cu_seqlens` (int32, over the flattened micro-batch: flash-attention's varlen boundaries) comes
    along, and the target that would cross into the next document is not trained.
    """

    def __init__(
        self,
        stores: str | Path | Sequence[str | Path],
        *,
        seq_len: int,
        micro_batch_size: int,
        grad_accum: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        mixture: dict[str, float] | None = None,
        phases: Sequence[Any] | None = None,
        return_position_ids: bool = False,
        loss_masks: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        tokenizer_fingerprint: str | None = None,
        vocab_size: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise DataError(
                f"rank {rank} is outside world size {world_size}; rank must be in [0, world_size)"
            )
        if micro_batch_size < 1 or grad_accum < 1:
            raise DataError(
                f"micro_batch_size ({micro_batch_size}) and grad_accum ({grad_accum}) must be at least 1"
            )
        self.store_paths = [str(p) for p in ([stores] if isinstance(stores, str | Path) else stores)]
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.return_position_ids = return_position_ids
        self.loss_masks = loss_masks
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.phases = _as_phases(phases, seq_len, mixture)
        self._stores = open_stores(self.store_paths)
        if tokenizer_fingerprint is not None:
            for store in self._stores:
                check_tokenizer(store, tokenizer_fingerprint)
        for store in self._stores:
            store.vocab_size = vocab_size  # ids >= the model's vocabulary fail when a shard is first read
        self._streams = source_streams(self._stores)
        self._store_marks = [[len(s.shards), s.fingerprint()] for s in self._stores]
        sampler = self._new_sampler()
        self._state: dict[str, Any] = self._pack_state(sampler.state_dict(), 0)

    # ---- public properties -----------------------------------------------------------------------
    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    @property
    def current_seq_len(self) -> int:
        # Read from the cursor: building a sampler here (every step, for tokens/s) would cost a shuffle.
        sampler_state = self._state["sampler"]
        return phase_seq_len(self.phases, int(sampler_state["phase"]), int(sampler_state["tokens"]))

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.current_seq_len

    # ---- state -----------------------------------------------------------------------------------
    def _new_sampler(self) -> GlobalSampler:
        tokens = {name: s.tokens for name, s in self._streams.items()}
        return GlobalSampler(
            tokens, global_batch_size=self.global_batch_size, phases=self.phases, seed=self.seed
        )

    def _restore_sampler(self, state: dict[str, Any], take_appends: bool = True) -> GlobalSampler:
        sampler = self._new_sampler()
        sampler.load_state_dict(state["sampler"], take_appends=take_appends)
        return sampler

    def _pack_state(self, sampler_state: dict[str, Any], micro: int) -> dict[str, Any]:
        return {
            "version": LOADER_STATE_VERSION,
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
            "micro": micro,
            "stores": self._store_marks,
            "sampler": sampler_state,
        }

    def state_dict(self) -> dict[str, Any]:
        """The position right after the last yielded batch (small, JSON-serialisable)."""
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batch that `state` was taken after."""
        if state.get("version") != LOADER_STATE_VERSION:
            raise DataError(
                f"loader state version {state.get('version')} is not {LOADER_STATE_VERSION}; it comes from another release"
            )
        layout = (state["world_size"], state.get("micro_batch_size", self.micro_batch_size))
        if state["micro"] and layout != (self.world_size, self.micro_batch_size):
            raise DataError(
                f"the checkpoint was taken mid-accumulation (micro-batch {state['micro']} of {self.grad_accum}) with world size "
                f"{layout[0]} and micro-batch size {layout[1]}; resume with those or from a checkpoint at a step boundary"
            )
        self._check_stores(state["stores"])
        sampler = self._restore_sampler(state)  # validates seed, global batch size, phases and appends
        if state["micro"]:  # mid-step: appends are taken in after this step (see `_generate`)
            sampler = self._restore_sampler(state, take_appends=False)
        self._state = self._pack_state(sampler.state_dict(), int(state["micro"]))

    def _check_stores(self, recorded: list[list[Any]]) -> None:
        if len(recorded) != len(self._stores):
            raise DataError(
                f"the checkpoint read {len(recorded)} store(s) but {len(self._stores)} are given; pass the same stores"
            )
        for store, (n_shards, fingerprint) in zip(self._stores, recorded, strict=True):
            if n_shards == len(store.shards) and fingerprint == store.fingerprint():
                continue
            if n_shards > len(store.shards) or store.fingerprint(n_shards) != fingerprint:
                raise DataError(
                    f"token store '{store.path}' differs from the one in the checkpoint (its first {n_shards} shards changed); "
                    "restore the original shards (only appends are allowed mid-training)"
                )
            problems = store.verify()  # shards were appended: hash everything once
            if problems:
                raise DataError(
                    f"token store '{store.path}' fails verification: {problems[0]}; restore that shard"
                )

    # ---- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.num_workers <= 0:
            for raw, state in self._generate(self._state, 0, 1):
                batch = _split_tokens(raw)
                self._state = state
                if self.pin_memory and torch.cuda.is_available():
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                yield batch
            return
        dataset = _WorkerDataset(self, self._state)
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
        )
        for raw in loader:
            self._state = json.loads(raw.pop(_STATE_KEY))
            yield _split_tokens(raw)

    def _generate(
        self, state: dict[str, Any], worker: int, n_workers: int
    ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """(micro-batch, state after it) from `state` on; worker `w` of `n` builds every n-th batch."""
        skip = int(state["micro"])
        # a step begun before shards were appended is finished with the old order, then they join
        sampler = self._restore_sampler(state, take_appends=not skip)
        grow_after_step = bool(skip)
        counter = 0
        per_rank = self.micro_batch_size * self.grad_accum
        while True:
            seq_len = sampler.peek_seq_len()
            step_state = sampler.state_dict()
            want = range(self.rank * per_rank, (self.rank + 1) * per_rank)
            mine = sampler.next_batch(want)[want.start : want.stop]
            if grow_after_step:
                sampler.update_sources(sampler.current_sizes)
                grow_after_step = False
            after_step = sampler.state_dict()
            for a in range(skip, self.grad_accum):
                if counter % n_workers == worker:
                    micro = mine[a * self.micro_batch_size : (a + 1) * self.micro_batch_size]
                    nxt = (
                        self._pack_state(step_state, a + 1)
                        if a + 1 < self.grad_accum
                        else self._pack_state(after_step, 0)
                    )
                    yield self._collate(micro, seq_len), nxt
                counter += 1
            skip = 0

    def _collate(self, samples: list[tuple[str, int]], seq_len: int) -> dict[str, torch.Tensor]:
        rows = np.empty((len(samples), seq_len + 1), dtype=np.int64)
        isolate = self.return_position_ids
        positions = np.empty((len(samples), seq_len), dtype=np.int64) if isolate else None
        keep: np.ndarray | None = None  # 1 where the label (the next token) is trained
        for j, (source, index) in enumerate(samples):
            stream = self._streams[source]
            start = index * seq_len
            rows[j] = stream.read(start, seq_len + 1)
            if self.loss_masks and stream.has_masks:
                if keep is None:
                    keep = np.ones((len(samples), seq_len), dtype=np.uint8)
                keep[j] = stream.read_mask(start + 1, seq_len)
            if positions is not None:
                starts = stream.doc_starts(start, start + seq_len + 1)
                positions[j] = position_ids_for(seq_len, starts)
                crossing = starts[(starts >= 1) & (starts <= seq_len)] - 1  # labels whose target opens a document
                if crossing.size:
                    if keep is None:
                        keep = np.ones((len(samples), seq_len), dtype=np.uint8)
                    keep[j, crossing] = 0
        out = {"tokens": torch.from_numpy(rows)}
        if keep is not None:
            out["label_keep"] = torch.from_numpy(keep)
        if positions is not None:
            out["position_ids"] = torch.from_numpy(positions)
            flat_starts = np.flatnonzero(positions.reshape(-1) == 0)
            out["cu_seqlens"] = torch.from_numpy(np.append(flat_starts, positions.size).astype(np.int32))
        return out


def _split_tokens(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`tokens` [B, L+1] -> `input_ids` and `labels` [B, L] (-100 where `label_keep` is 0); done after the
    worker hand-off so that one tensor instead of two crosses the process boundary."""
    tokens = batch.pop("tokens")
    labels = tokens[:, 1:].clone()
    keep = batch.pop("label_keep", None)
    if keep is not None:
        labels[keep == 0] = -100
    out = {"input_ids": tokens[:, :-1].contiguous(), "labels": labels}
    out.update(batch)
    return out


class _WorkerDataset(IterableDataset):
    """Worker `w` of `n` builds micro-batches w, w+n, ...; the DataLoader interleaves them back in
    order. Each batch carries the loader state right after it (as JSON)."""

    def __init__(self, loader: TokenLoader, state: dict[str, Any]) -> None:
        self.loader = loader
        self.state = state

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for batch, state in self.loader._generate(self.state, worker, n):
            batch[_STATE_KEY] = json.dumps(state)
            yield batch


__all__ = [
    "SourceStream",
    "TokenLoader",
    "open_stores",
    "position_ids_for",
    "source_streams",
]
