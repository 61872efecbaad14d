"""Crash-safe training checkpoints: DCP shards of every piece of training state, written atomically.

Layout under ``root`` (one directory per saved step)::

    step_000001200/            complete checkpoint (renamed into place only after every file is written)
        .metadata  __0_0.distcp ...   torch.distributed.checkpoint shards (any world size can load them)
        checkpoint.json        step, world size, recipe hash, format version
        recipe.yaml            the resolved recipe this run was started with
    .tmp-step_000001300/       a save in progress or one killed half-way: ignored by ``latest()``

Model and optimizer go through ``torch.distributed.checkpoint.state_dict`` so FSDP2 (DTensor) and plain
modules are handled alike and a checkpoint written by N ranks loads at M ranks. Small states (scheduler,
data loader cursor, counters) are world-size independent and stored once; RNG states are stored per rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from steelforge.errors import SteelforgeError
from steelforge.stage import fsync_dir as _fsync_dir
from steelforge.stage import publish_dir
from steelforge.stage import remove_tree as _remove_tree

FORMAT_VERSION = 1
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
META_FILE = "checkpoint.json"
RECIPE_FILE = "recipe.yaml"
# Fault injection for the crash-safety tests: seconds to pause inside the DCP write, after the shards
# are on disk and before the metadata file is written (a kill then leaves a half-written checkpoint).
PAUSE_ENV = "STEELFORGE_FAULT_CHECKPOINT_PAUSE_S"


class CheckpointError(SteelforgeError):
    """A checkpoint cannot be used as asked (missing state, other recipe, unreadable directory)."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world() -> tuple[int, int]:
    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """Silence DCP's warning that a run without a process group saves in one process: that is the plan."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class _PausableWriter(FileSystemWriter):
    """DCP file writer with an optional pause before the metadata is written (crash-safety tests only)."""

    def finish(self, metadata: Any, results: Any) -> None:
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        if pause > 0:
            time.sleep(pause)
        super().finish(metadata, results)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA when in use) generator states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _optimizers(value: Any) -> list[torch.optim.Optimizer]:
    if value is None:
        return []
    if isinstance(value, torch.optim.Optimizer):
        return [value]
    return list(value)


def _small_state(obj: Any) -> Any:
    if isinstance(obj, dict):
        return dict(obj)
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise CheckpointError(
        f"cannot checkpoint an object of type {type(obj).__name__}: give a dict or an object with "
        "state_dict()/load_state_dict()"
    )


def _load_small_state(obj: Any, state: Any) -> None:
    if isinstance(obj, dict):
        obj.clear()
        obj.update(state)
    else:
        obj.load_state_dict(state)


def checkpoint_step(path: Path) -> int | None:
    """The step encoded in a complete checkpoint directory name, or None for anything else."""
    name = path.name
    if not name.startswith(STEP_PREFIX):
        return None
    digits = name[len(STEP_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def is_complete(path: Path) -> bool:
    return (
        checkpoint_step(path) is not None and (path / META_FILE).is_file() and (path / ".metadata").is_file()
    )


class Checkpointer:
    """Saves and restores the whole training state; every rank calls ``save``/``load`` together.

    ``app_state`` maps names to state holders: ``"model"`` (nn.Module, FSDP2 or not), ``"optimizer"``
    (an Optimizer, a list of them, or None), and any other name to a dict (restored in place) or an
    object with ``state_dict()``/``load_state_dict()`` (scheduler, data loader, counters).
    """

    def __init__(
        self,
        root: Path,
        *,
        keep_last: int = 2,
        keep_every: int | None = None,
        recipe_yaml: str = "",
        recipe_hash: str = "",
        made_from: dict[str, Any] | None = None,
    ) -> None:
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be at least 1, got {keep_last}; set it to 1 or more")
        if keep_every is not None and keep_every < 1:
            raise CheckpointError(f"keep_every must be a positive step count or None, got {keep_every}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.recipe_yaml = recipe_yaml
        self.recipe_hash = recipe_hash
        self.made_from = made_from

    # ----------------------------------------------------------------- discovery
    def step_dir(self, step: int) -> Path:
        return self.root / f"{STEP_PREFIX}{step:09d}"

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and is_complete(p)]
        return sorted(found, key=lambda p: checkpoint_step(p) or 0)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; half-written temporary directories are never returned."""
        done = self.complete()
        return done[-1] if done else None

    # ----------------------------------------------------------------- save
    def _dcp_state(self, app_state: dict[str, Any], rank: int) -> dict[str, Any]:
        model = app_state.get("model")
        if not isinstance(model, nn.Module):
            raise CheckpointError("app_state needs a 'model' entry holding the nn.Module to checkpoint")
        optims = _optimizers(app_state.get("optimizer"))
        if optims:
            model_sd, optim_sd = get_state_dict(model, optims)
        else:
            model_sd, optim_sd = get_model_state_dict(model), {}
        extra = {
            name: pickle.dumps(_small_state(obj))
            for name, obj in app_state.items()
            if name not in ("model", "optimizer")
        }
        state: dict[str, Any] = {"model": model_sd, "extra": extra}
        if optims:
            state["optim"] = optim_sd
        state[f"rng_rank{rank}"] = pickle.dumps(capture_rng_state())
        return state

    def save(self, step: int, app_state: dict[str, Any]) -> Path:
        """Write ``step``'s checkpoint into a temporary directory, then rename it into place."""
        rank, world = _rank_world()
        final = self.step_dir(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        _barrier()
        state = self._dcp_state(app_state, rank)
        with _single_process_is_intended():
            dcp.save(state, storage_writer=_PausableWriter(tmp, sync_files=True), no_dist=not _distributed())
        if rank == 0:
            meta = {
                "format": FORMAT_VERSION,
                "step": step,
                "world_size": world,
                "recipe_hash": self.recipe_hash,
                "small_states": sorted(state["extra"]),
                "has_optimizer": "optim" in state,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "torch": torch.__version__,
                # what the state was made from (compared on resume) and each file's checksum (verified on resume)
                "made_from": self.made_from,
                "files": file_checksums(tmp),
            }
            _write_text(tmp / RECIPE_FILE, self.recipe_yaml)
            _write_text(tmp / META_FILE, json.dumps(meta, indent=2))
            if final.exists():
                _remove_tree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` checkpoints and every ``keep_every``-th step; drop stale temps."""
        done = self.complete()
        keep = set(done[-self.keep_last :])
        for path in done:
            step = checkpoint_step(path) or 0
            if path in keep or (self.keep_every and step % self.keep_every == 0):
                continue
            _remove_tree(path)
        for stale in self.root.glob(f"{TMP_PREFIX}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)

    def verified_latest(self, warn: Any = None) -> Path | None:
        """The newest complete checkpoint whose files match their recorded checksums.

        A damaged one (flipped byte, truncated shard) is skipped with a warning naming it, and the previous
        checkpoint is used instead; older checkpoints without checksums are taken as they are.
        """
        for path in reversed(self.complete()):
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            if warn is not None:
                warn(f"checkpoint {path} is damaged ({problem}); falling back to the previous checkpoint")
        return None

    # ----------------------------------------------------------------- load
    def read_meta(self, path: Path) -> dict[str, Any]:
        if not is_complete(Path(path)):
            raise CheckpointError(
                f"{path} is not a complete checkpoint (no {META_FILE} or .metadata); "
                "pick one listed by Checkpointer.latest()"
            )
        return json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))

    def load(self, path: Path, app_state: dict[str, Any], *, check_recipe: bool = False) -> dict[str, Any]:
        """Restore every entry of ``app_state`` in place from ``path``; returns the checkpoint's meta.

        With ``check_recipe`` a checkpoint written under another recipe hash is refused.
        """
        path = Path(path)
        meta = self.read_meta(path)
        if check_recipe and meta.get("recipe_hash") != self.recipe_hash:
            raise CheckpointError(
                f"checkpoint {path} was written by recipe {meta.get('recipe_hash')!r}, not the current "
                f"{self.recipe_hash!r}; resume with the original recipe or start a fresh output directory"
            )
        rank, _ = _rank_world()
        saved = FileSystemReader(path).read_metadata().state_dict_metadata
        missing = [
            name for name in app_state if name not in ("model", "optimizer") and f"extra.{name}" not in saved
        ]
        if missing:
            raise CheckpointError(
                f"checkpoint {path} holds no state for {', '.join(missing)}; it has "
                f"{', '.join(meta.get('small_states', [])) or 'none'}"
            )
        state = self._dcp_state(app_state, rank)
        if "optim" in state and not meta.get("has_optimizer", True):
            raise CheckpointError(f"checkpoint {path} has no optimizer state; load it without 'optimizer'")
        # RNG: this rank's own state, or (at another world size) the state of rank (rank mod old world).
        state.pop(f"rng_rank{rank}")
        rng_key = f"rng_rank{rank % int(meta.get('world_size', 1))}"
        if rng_key in saved:
            state[rng_key] = b""
        with _single_process_is_intended():
            dcp.load(state, storage_reader=FileSystemReader(path), no_dist=not _distributed())
        model = app_state["model"]
        optims = _optimizers(app_state.get("optimizer"))
        if optims:
            set_state_dict(model, optims, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
        for name, blob in state["extra"].items():
            _load_small_state(app_state[name], pickle.loads(blob))
        if rng_key in state:
            restore_rng_state(pickle.loads(state[rng_key]))
        return meta

    # ----------------------------------------------------------------- export
    def export_hf(self, model: nn.Module, tokenizer: Any, out_dir: Path) -> Path:
        """Consolidated Hugging Face folder (safetensors, config, tokenizer, chat template), atomically.

        Every rank must call it (FSDP2 shards are gathered); rank 0 writes.
        """
        return save_consolidated(model, tokenizer, out_dir, recipe_yaml=self.recipe_yaml)


def save_consolidated(
    model: nn.Module,
    tokenizer: Any,
    out_dir: Path,
    *,
    recipe_yaml: str = "",
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Write a model as one HF folder: gather the full state dict, ``save_pretrained`` aside, then rename.

    Training's end-of-run export and ``steelforge export`` share this primitive. Every rank must call it
    (FSDP2 shards are gathered); rank 0 writes. ``finalize(tmp_dir)`` adds files (model card, generation
    config) before the folder is renamed into place, so a reader never sees a half-written export.
    """
    rank, _ = _rank_world()
    out_dir = Path(out_dir)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.with_name(f"{TMP_PREFIX}{out_dir.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        full = {k: (v if dtype is None else v.to(dtype)).detach().contiguous() for k, v in full.items()}
        with _no_library_bars():
            model.save_pretrained(tmp, state_dict=full, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _write_generation_eos(tmp, tokenizer)
        if recipe_yaml:
            _write_text(tmp / RECIPE_FILE, recipe_yaml)
        if finalize is not None:
            finalize(tmp)
        publish_dir(tmp, out_dir)
    _barrier()
    return out_dir


@contextlib.contextmanager
def _no_library_bars() -> Iterator[None]:
    """No "Writing model shards" bar from transformers inside our own output, even if it was imported first."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def file_checksums(folder: Path) -> dict[str, list[Any]]:
    """``{name: [size, sha256]}`` of every file in a checkpoint folder (the meta file itself excluded)."""
    from steelforge.stage import file_sha256

    return {
        p.name: [p.stat().st_size, file_sha256(p)]
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name != META_FILE
    }


def verify_checkpoint(path: Path) -> str | None:
    """None when every file recorded in ``checkpoint.json`` is present with its size and sha256, else why not."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable {META_FILE}: {exc}"
    recorded = meta.get("files")
    if not recorded:
        return None  # written before checksums were recorded
    from steelforge.stage import file_sha256

    for name, (size, sha) in sorted(recorded.items()):
        file = Path(path) / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
        if file_sha256(file) != sha:
            return f"{name} does not match its recorded sha256"
    return None


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end a generation: the tokenizer's eos first, then Qwen's <|im_end|>/<|endoftext|> when present.

    Packed documents end with the pack separator (<|im_end|> for qwen1.5), so `generate` must stop there.
    """
    ids: list[int] = []
    if tokenizer is None:
        return ids
    candidates = [getattr(tokenizer, "eos_token", None), "<|im_end|>", "<|endoftext|>"]
    vocab = tokenizer.get_vocab()
    for token in candidates:
        if token is not None and token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    return ids


def _write_generation_eos(folder: Path, tokenizer: Any) -> None:
    stops = stop_token_ids(tokenizer)
    if not stops:
        return
    path = Path(folder) / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["eos_token_id"] = stops
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        config.setdefault("pad_token_id", int(pad))
    _write_text(path, json.dumps(config, indent=2) + "\n")


class StopSignal:
    """Turns SIGTERM/SIGINT (cluster preemption, Ctrl-C) into a flag the training loop polls.

    The loop saves a checkpoint and returns normally when ``should_stop()`` is true, so the process exits 0.
    Under torch.distributed the ranks agree (any rank signalled stops all), keeping collectives in step.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def should_stop(self) -> bool:
        flag = self.received is not None
        if dist.is_available() and dist.is_initialized():
            device = (
                torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            )
            t = torch.tensor([1.0 if flag else 0.0], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        return flag


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopSignal]:
    """``with stop_on_signals() as stop: ... if stop.should_stop(): save; break``."""
    with StopSignal() as stop:
        yield stop
