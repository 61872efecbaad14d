"""`steelforge pretrain` survives preemption and crashes: SIGTERM saves and exits 0; after a SIGKILL at a
random step the resumed run ends with the same parameters, bit for bit, as a run that was never
interrupted (fp32, CPU).

Everything is tiny: a word-level tokenizer folder, a hand-written token store, a 2-block Mistral.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
VOCAB, STEPS, EVERY = 64, 12, 3


def _tokenizer_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(path)
    return path


def _store(path: Path, fingerprint: str) -> Path:
    from steelforge.tokens.store import Manifest, write_shard

    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, VOCAB, size=int(rng.integers(20, 60))) for _ in range(60)]
    tokens = np.concatenate([np.append(d, 0) for d in docs])
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
    shard = write_shard(path, "tiny-00000", tokens, starts, source="tiny")
    Manifest("tiny", fingerprint, "<|endoftext|>", 0, len(tokens), shards=[shard]).save(path)
    return path


@pytest.fixture(scope="module")
def recipe_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Recipes over the same tokenizer and store: the killed run's, the stopped run's, the reference's."""
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint

    root = tmp_path_factory.mktemp("pretrain_resume")
    tok_dir = _tokenizer_dir(root / "tokenizer")
    store = _store(root / "store", tokenizer_fingerprint(load_tokenizer(str(tok_dir))))
    paths = {}
    for name in ("killed", "stopped", "reference"):
        recipe = {
            "name": name,
            "out_dir": str(root / name),
            "seed": 7,
            "tokenizer": str(tok_dir),
            "model": {
                "preset": "tiny-moxin",
                "overrides": {
                    "vocab_size": VOCAB,
                    "hidden_size": 32,
                    "head_dim": 8,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                    "sliding_window": 32,
                },
            },
            "pretrain": {
                "max_steps": STEPS,
                "seq_len": 16,
                "micro_batch_size": 4,
                "grad_accum": 1,
                "stores": [str(store)],
                "log_every": 1,
                "tensorboard": False,
                "optim": {"lr": 3e-3},
                "schedule": {"warmup_steps": 2},
                "checkpoint": {"every": EVERY, "keep_last": 2, "export_final": True},
            },
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        paths[name] = path
    return paths


def _run_in_process(recipe_path: Path) -> None:
    """`run_pretrain` here, with one thread like the CLI subprocesses (same kernels, same bits)."""
    from steelforge.recipe import load_recipe
    from steelforge.train.pretrain import run_pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pretrain(load_recipe(recipe_path))
    finally:
        torch.set_num_threads(threads)


def _cli(recipe_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", STEELFORGE_QUIET="1")
    code = "import sys, torch; torch.set_num_threads(1); from steelforge.cli import main; sys.argv[0]='steelforge'; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "pretrain", str(recipe_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_at_step(proc: subprocess.Popen, metrics: Path, step: int, sig: int) -> int:
    """Send `sig` once `metrics.jsonl` shows `step` (or later) was trained; returns the last step seen."""
    deadline = time.monotonic() + 240
    while True:
        seen = 0
        if metrics.is_file():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            seen = max((int(r["step"]) for r in lines), default=0)
        if seen >= step:
            proc.send_signal(sig)
            return seen
        if proc.poll() is not None:
            pytest.fail(f"pretrain ended before step {step}: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"pretrain never reached step {step}"
        time.sleep(0.02)


def _latest_step(recipe_path: Path) -> int:
    from steelforge.train.checkpoint import Checkpointer

    out = yaml.safe_load(recipe_path.read_text())["out_dir"]
    latest = Checkpointer(Path(out) / "pretrain" / "checkpoints").latest()
    assert latest is not None
    return int(latest.name.split("_")[1])


def _out(recipe_path: Path) -> Path:
    return Path(yaml.safe_load(recipe_path.read_text())["out_dir"]) / "pretrain"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrain_cli_killed_at_random_step_resumes_bit_identical(recipe_files: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    run, reference = recipe_files["killed"], recipe_files["reference"]
    kill_at = random.Random().randint(EVERY + 1, STEPS - 1)
    proc = _cli(run)
    killed_after = _signal_at_step(proc, _out(run) / "metrics.jsonl", kill_at, signal.SIGKILL)
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert EVERY <= _latest_step(run) < STEPS
    assert not (_out(run) / "hf").exists()

    _run_in_process(run)  # resumes from the newest complete checkpoint
    _run_in_process(reference)
    got = load_file(_out(run) / "hf" / "model.safetensors")
    ref = load_file(_out(reference) / "hf" / "model.safetensors")
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.equal(got[name], ref[name]), f"{name} differs after SIGKILL at step {killed_after}"
    assert _latest_step(run) == STEPS


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrain_cli_sigterm_saves_and_exits_zero(recipe_files: dict[str, Path]) -> None:
    run = recipe_files["stopped"]
    proc = _cli(run)
    seen = _signal_at_step(proc, _out(run) / "metrics.jsonl", 2, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert seen <= _latest_step(run) < STEPS  # saved at the step that was running, not on the every-3 grid
    assert not (_out(run) / "hf").exists() and not (_out(run) / "pretrain_done.json").exists()
