"""`bench/gpu_smoke.py` runs rarely (only where a GPU is), so its sections are dry-run here on CPU with tiny
models: an API change that would break the GPU smoke test breaks this test first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_smoke.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", STEELFORGE_QUIET="1")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=240)


def test_gpu_smoke_sections_dry_run_on_cpu() -> None:
    done = _run(str(SCRIPT), "kernels", "memory", "--tiny")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "-- kernels: ok" in done.stdout and "-- memory: ok" in done.stdout
    assert "bf16 autocast ok" in done.stdout and "fwd+bwd seq 256" in done.stdout


@pytest.mark.distributed
def test_gpu_smoke_fsdp_step_and_profile_dry_run_under_torchrun() -> None:
    done = _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(SCRIPT), "fsdp-step",
                "profile", "--tiny")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fsdp2 bf16 seq 128" in done.stdout and "tokens/s" in done.stdout
    assert "dense qwen2 same shape" in done.stdout and "-- profile: ok" in done.stdout


def test_gpu_smoke_refuses_without_cuda_unless_tiny() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the refusal only shows on a CPU machine")
    done = _run(str(SCRIPT), "kernels")
    assert done.returncode == 1
    assert "no CUDA device visible to torch; use --tiny" in done.stdout + done.stderr
