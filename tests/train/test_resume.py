"""Kill and resume through the training engine: SIGKILL at a random step, SIGTERM, world size 2 -> 1.

A resumed run must end with the parameters of a run that was never interrupted: bit-identical on one
fp32 CPU process (dropout included, so the RNG states are restored too), allclose when two gloo ranks
wrote the checkpoint and one process finishes the run at the same global batch.

Run as a script (``python test_resume.py OUT --steps N ...``) this file is the training worker.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
VOCAB, DIM, SEQ, GLOBAL_BATCH = 64, 32, 16, 8
STEPS, EVERY = 12, 3


class TinyLM(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(DIM),
                nn.Linear(DIM, 4 * DIM),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(4 * DIM, DIM),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.layers:
            h = h + block(h)
        return self.head(h)


class ShardedBatches:
    """Global sample order from (seed, index); rank r takes its slice of each global batch.

    The state is a count of global samples, so it means the same thing at any world size. ``fault``
    sends ``signal`` to this process when the batch of step ``at`` is requested (i.e. mid-run).
    """

    def __init__(self, rank: int, world: int, fault: tuple[int, int] | None = None) -> None:
        self.rank, self.world, self.fault = rank, world, fault
        self.consumed = 0

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> torch.Tensor:
        step = self.consumed // GLOBAL_BATCH + 1
        if self.fault is not None and step == self.fault[1] and self.rank == 0:
            os.kill(os.getpid(), self.fault[0])
        per_rank = GLOBAL_BATCH // self.world
        first = self.consumed + self.rank * per_rank
        rows = [
            torch.randint(0, VOCAB, (SEQ + 1,), generator=torch.Generator().manual_seed(1_000 + i))
            for i in range(first, first + per_rank)
        ]
        self.consumed += GLOBAL_BATCH
        return torch.stack(rows)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = state["consumed"]


def _loss_fn(model: nn.Module, ids: torch.Tensor):
    from steelforge.train.engine import LossOutput

    logits = model(ids[:, :-1])
    labels = ids[:, 1:].reshape(-1)
    loss_sum = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels, reduction="sum")
    return LossOutput(loss_sum, torch.tensor(labels.numel()))


def run_training(
    out: Path,
    *,
    steps: int = STEPS,
    every: int = EVERY,
    dropout: float = 0.0,
    fault: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor] | None:
    """Train (resuming from ``out/checkpoints`` when possible); the final full parameters, or None if stopped."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from steelforge.train.checkpoint import Checkpointer, stop_on_signals
    from steelforge.train.engine import Trainer, TrainerConfig
    from steelforge.train.metrics import MetricsLogger

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    model = TinyLM(dropout)
    if world > 1:
        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    loader = ShardedBatches(rank, world, fault)
    cfg = TrainerConfig(
        max_steps=steps, checkpoint_every=every, tokens_per_step=GLOBAL_BATCH * SEQ, clip_grad_norm=1.0
    )
    with stop_on_signals() as stop, MetricsLogger(out, total_steps=steps, is_main=rank == 0) as metrics:
        trainer = Trainer(
            model,
            _loss_fn,
            loader,
            cfg,
            optimizer=opt,
            scheduler=sched,
            checkpointer=Checkpointer(out / "checkpoints", keep_last=2),
            metrics=metrics,
            state_objects={"loader": loader},
            stop_signal=stop,
        )
        summary = trainer.fit()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return full if summary["stopped_by"] == "max_steps" else None


def _in_process(out: Path, dropout: float = 0.0) -> dict[str, torch.Tensor]:
    """The same training in this process, with the worker's single thread so kernels match bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        params = run_training(out, dropout=dropout)
    finally:
        torch.set_num_threads(threads)
    assert params is not None
    return params


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[float, dict[str, torch.Tensor]]:
    """Uninterrupted runs, with dropout (RNG matters) and without (comparable across world sizes)."""
    root = tmp_path_factory.mktemp("reference")
    return {dropout: _in_process(root / str(dropout), dropout) for dropout in (0.0, 0.1)}


def _worker(out: Path, *extra: str, nproc: int = 1) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", STEELFORGE_QUIET="1")
    if nproc == 1:
        cmd = [sys.executable, str(HERE)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            str(HERE),
        ]
    cmd += [str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, expect_rc: int = 0) -> None:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == expect_rc, err[-3000:]


def _latest_step(out: Path) -> int:
    from steelforge.train.checkpoint import Checkpointer

    latest = Checkpointer(out / "checkpoints").latest()
    assert latest is not None
    return int(latest.name.split("_")[1])


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_is_bit_identical(tmp_path: Path, reference: dict) -> None:
    kill_at = random.Random().randint(EVERY + 1, STEPS)  # the process dies inside step kill_at
    _finish(_worker(tmp_path, "--dropout", "0.1", "--kill-at", str(kill_at)), -signal.SIGKILL)
    assert _latest_step(tmp_path) == (kill_at - 1) // EVERY * EVERY
    got = _in_process(tmp_path, dropout=0.1)
    ref = reference[0.1]
    for name in ref:
        assert torch.equal(ref[name], got[name]), f"{name} differs after a kill at step {kill_at}"
    assert _latest_step(tmp_path) == STEPS
    steps_logged = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(steps_logged) >= STEPS  # the resumed run appended to the killed run's metrics


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resume_matches(tmp_path: Path, reference: dict) -> None:
    _finish(_worker(tmp_path, "--dropout", "0.1", "--term-at", "5"), 0)
    assert _latest_step(tmp_path) == 5  # saved on the signal, not on the every-3 schedule
    got = _in_process(tmp_path, dropout=0.1)
    assert all(torch.equal(reference[0.1][k], got[k]) for k in got)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_run_killed_then_resumed_on_one_process_matches(tmp_path: Path, reference: dict) -> None:
    kill_at = random.Random().randint(EVERY + 1, STEPS)
    _finish(_worker(tmp_path, "--kill-at", str(kill_at), nproc=2), 1)  # torchrun reports the failure
    assert _latest_step(tmp_path) == (kill_at - 1) // EVERY * EVERY
    meta = (tmp_path / "checkpoints" / f"step_{_latest_step(tmp_path):09d}" / "checkpoint.json").read_text()
    assert '"world_size": 2' in meta
    got = _in_process(tmp_path)
    for name, ref in reference[0.0].items():
        torch.testing.assert_close(got[name], ref, rtol=1e-5, atol=1e-6, msg=f"{name}, kill at {kill_at}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--term-at", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    fault = (
        (signal.SIGKILL, args.kill_at)
        if args.kill_at
        else (signal.SIGTERM, args.term_at)
        if args.term_at
        else None
    )
    run_training(Path(args.out), dropout=args.dropout, fault=fault)
