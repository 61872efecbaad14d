"""The training loop: learning, accumulation with global-token normalisation, non-finite skipping,
signals with checkpoint + resume, metrics."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from _dist_helpers import patterned_batches, tiny_qwen2

from steelforge.train.config import OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig
from steelforge.train.distributed import parallelize
from steelforge.train.engine import LossOutput, Trainer, TrainerConfig, TrainingDiverged
from steelforge.train.optim import build_optimizer, build_scheduler
from steelforge.train.pretrain import causal_lm_loss

torch.set_num_threads(1)


def _trainer(steps: int, batches, *, lr: float = 3e-3, loss_fn=None, seed: int = 0, **cfg) -> Trainer:
    model = tiny_qwen2(seed=seed)
    parallelize(model, None, SpeedConfig(), ParallelConfig())
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0))
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=5), total_steps=steps, peak_lr=lr)
    extra = {k: cfg.pop(k) for k in ("checkpointer", "metrics", "stop_signal", "state_objects") if k in cfg}
    tcfg = TrainerConfig(max_steps=steps, **cfg)
    return Trainer(model, loss_fn or causal_lm_loss(), batches, tcfg, optimizer=opt, scheduler=sched, **extra)


def test_loss_goes_down_over_a_few_hundred_steps() -> None:
    summary = _trainer(200, patterned_batches(micro=4, seq=16)).fit()
    assert summary["steps"] == 200 and summary["skipped"] == 0
    assert summary["last_loss"] < 0.35 * summary["first_loss"], summary


def test_accumulation_normalises_by_global_valid_tokens() -> None:
    """2 micro-batches of 2 rows (uneven valid tokens) == 1 micro-batch of the same 4 rows."""
    big = list(itertools.islice(patterned_batches(micro=4, ignore_frac=0.4, seed=3), 5))
    halves = [{k: v[sl] for k, v in b.items()} for b in big for sl in (slice(0, 2), slice(2, 4))]
    one = _trainer(5, iter(big), grad_accum=1)
    two = _trainer(5, iter(halves), grad_accum=2)
    s1, s2 = one.fit(), two.fit()
    assert s1["last_loss"] == pytest.approx(s2["last_loss"], rel=1e-5)
    for (name, p1), (_, p2) in zip(one.model.named_parameters(), two.model.named_parameters(), strict=True):
        torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_step_gradients_equal_mean_loss_with_torch_clipping(max_norm: float) -> None:
    """Token normalisation folded into clipping == mean loss + `clip_grad_norm_` (clipping on and off)."""
    batches = list(itertools.islice(patterned_batches(micro=4, ignore_frac=0.3, seed=5), 3))
    trainer = _trainer(3, iter(batches), clip_grad_norm=max_norm)
    seen: list[list[torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: seen.append([p.grad.clone() for p in trainer.model.parameters()])
    )
    reference = tiny_qwen2(seed=1)
    loss_fn = causal_lm_loss()
    for batch in batches:
        reference.load_state_dict(trainer.model.state_dict())
        reference.zero_grad(set_to_none=True)
        out = loss_fn(reference, batch)
        (out.loss_sum / out.num_tokens).backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
        stats = trainer.train_step()
        assert stats["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
        for (name, p), got in zip(reference.named_parameters(), seen[-1], strict=True):
            torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


def _inject_nan(bad_steps: set[int] | None = None, from_step: int | None = None):
    """A loss whose gradients are NaN on the chosen optimizer steps (counted by micro-batch calls)."""
    base = causal_lm_loss()
    calls = itertools.count(1)

    def loss_fn(model, batch) -> LossOutput:
        step = next(calls)
        out = base(model, batch)
        if (bad_steps and step in bad_steps) or (from_step is not None and step >= from_step):
            return LossOutput(out.loss_sum * torch.tensor(float("nan")), out.num_tokens)
        return out

    return loss_fn


def test_non_finite_step_is_skipped_and_counted() -> None:
    trainer = _trainer(6, patterned_batches(), loss_fn=_inject_nan({3}))
    trainer.batches = iter(trainer.batch_source)
    for _ in range(2):
        trainer.train_step()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    state_before = trainer.optimizer.state_dict()["state"][0]["step"].clone()
    stats = trainer.train_step()
    assert stats["finite"] == 0.0 and trainer.counters["skipped"] == 1
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed on a skipped step"
    assert torch.equal(trainer.optimizer.state_dict()["state"][0]["step"], state_before)
    stats = trainer.train_step()
    assert stats["finite"] == 1.0 and trainer.counters["nonfinite_in_row"] == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_m_non_finite_in_a_row_stop_with_last_good_checkpoint(tmp_path: Path) -> None:
    from steelforge.train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "ckpt", keep_last=2)
    trainer = _trainer(20, patterned_batches(), loss_fn=_inject_nan(from_step=5), checkpointer=ckpt,
                       checkpoint_every=2, max_nonfinite_steps=3, resume="none")
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        trainer.fit()
    latest = ckpt.latest()
    assert latest is not None and ckpt.read_meta(latest)["step"] == 4
    fresh = _trainer(20, patterned_batches(), checkpointer=ckpt)
    assert fresh.maybe_resume() == latest and fresh.counters["step"] == 4
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())


class _Cursor:
    """A stand-in data loader with a resumable cursor (the TokenLoader contract in small)."""

    def __init__(self) -> None:
        self.position = 0
        self._source = list(itertools.islice(patterned_batches(micro=2), 40))

    def __iter__(self):
        while True:
            batch = self._source[self.position % len(self._source)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def test_sigterm_saves_checkpoint_exits_cleanly_and_resume_continues(tmp_path: Path) -> None:
    from steelforge.train.checkpoint import Checkpointer, StopSignal
    from steelforge.train.metrics import MetricsLogger

    base = causal_lm_loss()
    calls = itertools.count(1)

    def loss_fn(model, batch):
        if next(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a cluster preemption during step 3
        return base(model, batch)

    ckpt = Checkpointer(tmp_path / "ckpt")
    loader = _Cursor()
    metrics = MetricsLogger(tmp_path, total_steps=8, is_main=True, tensorboard=False)
    with StopSignal() as stop:
        first = _trainer(8, loader, loss_fn=loss_fn, checkpointer=ckpt, metrics=metrics, stop_signal=stop,
                         state_objects={"loader": loader}, checkpoint_every=100, tokens_per_step=32,
                         flops_per_token=1e4, peak_flops=1e9)
        summary = first.fit()
    metrics.close()
    assert summary["stopped_by"] == "signal" and summary["steps"] == 3
    assert ckpt.read_meta(ckpt.latest())["step"] == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens"} <= records[-1].keys()
    assert records[-1]["tokens"] == 96 and records[-1]["mfu"] > 0 and math.isfinite(records[-1]["grad_norm"])

    loader2 = _Cursor()
    second = _trainer(8, loader2, seed=1, checkpointer=ckpt, state_objects={"loader": loader2})
    summary2 = second.fit()
    assert summary2["resumed_from"].endswith("step_000000003")
    assert summary2["steps"] == 8 and summary2["steps_this_run"] == 5
    assert loader2.position == 8  # continued from the saved cursor (3) for 5 more micro-batches

    # The same 8 steps without interruption give the same parameters (fp32 CPU: bit-identical).
    loader3 = _Cursor()
    straight = _trainer(8, loader3, state_objects={"loader": loader3})
    straight.fit()
    for (name, p), (_, q) in zip(second.model.named_parameters(), straight.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name
