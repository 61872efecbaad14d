"""A distributed run stops with its launcher: `kill -9` of torchrun makes both ranks save and exit (they
must not train on unseen and race a relaunch), and SIGTERM to the ranks — the supported way to stop a
distributed run — ends torchrun with exit code 0 after a checkpoint. Real torchrun, 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _tiny_run import VOCAB, _fp, _store, _tokenizer_dir

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path) -> Path:
    tok = _tokenizer_dir(tmp_path / "tok")
    store = _store(tmp_path / "store", _fp(tok))
    raw = {
        "name": "dist", "out_dir": str(tmp_path / "out"), "seed": 1, "tokenizer": str(tok),
        "model": {"preset": "tiny-moxin", "overrides": {
            "vocab_size": VOCAB, "hidden_size": 32, "head_dim": 8, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 32}},
        "pretrain": {
            "max_steps": 100000, "seq_len": 16, "micro_batch_size": 2, "grad_accum": 1, "stores": [str(store)],
            "log_every": 1, "tensorboard": False, "parallel": {"backend": "gloo"},
            "checkpoint": {"every": 100000, "export_final": False},
        },
    }  # fmt: skip
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEELFORGE_QUIET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "steelforge.cli", "pretrain", str(recipe)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"steelforge.cli" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if metrics.is_file():
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip()]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            pytest.fail(f"torchrun ended early: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    pytest.fail("the distributed run never reached step 2")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the ranks")
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_kill9_of_the_launcher_stops_the_ranks(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    proc = _launch(recipe)
    ranks: list[int] = []
    try:
        _wait_for_step(proc, tmp_path / "out" / "pretrain" / "metrics.jsonl", 2)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        proc.kill()
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 90
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(r) for r in ranks), "ranks outlived their launcher"
        saved = sorted((tmp_path / "out" / "pretrain" / "checkpoints").glob("step_*"))
        assert saved, "the ranks stopped without saving a checkpoint"
    finally:
        for pid in ranks + _children(proc.pid):  # never leave a rank behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the ranks")
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_sigterm_to_the_ranks_ends_torchrun_with_code_zero(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    proc = _launch(recipe)
    try:
        _wait_for_step(proc, tmp_path / "out" / "pretrain" / "metrics.jsonl", 2)
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert sorted((tmp_path / "out" / "pretrain" / "checkpoints").glob("step_*"))
    finally:
        if proc.poll() is None:
            proc.kill()
