"""The Trainer's callbacks, metric reductions, FrozenModel and the W&B sink (single process, seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from _dist_helpers import patterned_batches, tiny_qwen2

from steelforge.train.callbacks import Callback
from steelforge.train.optim import build_optimizer, build_scheduler
from steelforge.train.pretrain import causal_lm_loss
from steelforge.train.train_module import FrozenModel, LossFnTrainModule, accumulate_metrics
from steelforge.train.trainer import Trainer, TrainerConfig


def _parts(steps: int):
    from steelforge.train.config import OptimConfig, ScheduleConfig

    model = tiny_qwen2()
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=1), total_steps=steps, peak_lr=1e-2)
    return model, opt, sched


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_step_start(self, trainer, step):
        self.events.append(("start", step))

    def on_batch(self, trainer, batch):
        self.events.append(("batch", tuple(batch["input_ids"].shape)))

    def on_step_end(self, trainer, step, metrics):
        self.events.append(("end", step, "loss" in metrics and "tokens_per_s" in metrics))

    def on_checkpoint(self, trainer, step, path):
        self.events.append(("checkpoint", step, path.name))

    def on_train_end(self, trainer, summary):
        self.events.append(("train_end", summary["steps"]))


def test_callbacks_hear_every_hook_in_order(tmp_path: Path) -> None:
    from steelforge.train.checkpoint import Checkpointer

    model, opt, sched = _parts(3)
    rec = Recorder()
    cfg = TrainerConfig(max_steps=3, grad_accum=2, checkpoint_every=2)
    summary = Trainer(model, causal_lm_loss(), patterned_batches(), cfg, optimizer=opt, scheduler=sched,
                      checkpointer=Checkpointer(tmp_path / "ck"), callbacks=[rec]).fit()
    assert summary["steps"] == 3
    b = ("batch", (4, 16))
    assert rec.events == [
        ("start", 1), b, b, ("end", 1, True),
        # the standard checkpoint callback runs before user callbacks
        ("start", 2), b, b, ("checkpoint", 2, "step_000000002"), ("end", 2, True),
        ("start", 3), b, b, ("end", 3, True), ("checkpoint", 3, "step_000000003"),
        ("train_end", 3),
    ]


class PassesModule(LossFnTrainModule):
    """Two optimisation passes over one buffered batch, a sum- and a max-reduced metric."""

    metric_reductions: ClassVar[dict[str, str]] = {"rows": "sum", "worst": "max", "generated_tokens": "sum"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.source = patterned_batches()
        self.buffer = None
        self.filled_at: list[int] = []

    def pre_step(self, step):
        if (step - 1) % 2 == 0:
            self.buffer = next(self.source)
            self.filled_at.append(step)
            return {"generated_tokens": 10.0}
        return {}

    def train_batch(self, batch):
        metrics = dict(super().train_batch(self.buffer))
        return {**metrics, "rows": float(self.buffer["input_ids"].shape[0]), "worst": float(batch)}


def test_train_module_between_steps_work_and_metric_reductions() -> None:
    model, opt, sched = _parts(4)
    module = PassesModule(model, causal_lm_loss(), opt, sched, grad_accum=2)
    cfg = TrainerConfig(max_steps=4, grad_accum=2)
    trainer = Trainer(module, batches=iter(range(100)), cfg=cfg)
    first = trainer.train_step()
    assert first["rows"] == 8.0 and first["worst"] == 1.0 and first["generated_tokens"] == 10.0
    summary = trainer.fit()
    assert module.filled_at == [1, 3]
    assert summary["generated_tokens"] == 20 and summary["steps"] == 4


def test_accumulate_metrics_mean_sum_max() -> None:
    into: dict[str, float] = {}
    for value in (1.0, 3.0):
        accumulate_metrics(into, {"m": value, "s": value, "x": value}, {"s": "sum", "x": "max"}, 2)
    assert into == {"m": 2.0, "s": 4.0, "x": 3.0}


def test_frozen_model_never_trains_and_offloads() -> None:
    inner = tiny_qwen2()
    frozen = FrozenModel(inner, offload=True, device="cpu")
    parent = torch.nn.ModuleDict({"ref": frozen})
    parent.train()
    assert not frozen.training and not inner.training
    assert not any(p.requires_grad for p in frozen.parameters())
    ids = torch.randint(0, 96, (1, 8))
    out = frozen(input_ids=ids)
    assert not out.logits.requires_grad and frozen.config is inner.config
    with pytest.raises(ValueError, match="cannot be combined"):
        FrozenModel(tiny_qwen2(), parallelize=lambda m: m, offload=True)


def test_wandb_offline_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from steelforge.train.metrics import MetricsLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path, total_steps=2, is_main=True, tensorboard=False, wandb={"mode": "offline"})
    assert logger.wandb_run is not None
    logger.log(1, {"loss": 2.0, "reward": 0.5})
    logger.log(2, {"loss": 1.5, "reward": 0.75})
    run_id = (tmp_path / "wandb_run_id").read_text()
    logger.close()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
    assert [json.loads(line)["reward"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0.5, 0.75]


def test_objective_metrics_reach_console_line_and_curves(tmp_path: Path) -> None:
    from steelforge.train.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, total_steps=3, is_main=True, tensorboard=False)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 2.0 / step, "lr": 1e-3, "tokens": 10.0 * step, "reward": 0.1 * step, "kl": 0.01})
    line = logger.format_line(3, {"loss": 1.0, "reward": 0.3, "kl": 0.01, "tokens": 30.0})
    assert "reward 0.3" in line and "kl 0.01" in line and "tokens 30" not in line
    path = logger.plot()
    logger.close()
    assert path is not None and path.stat().st_size > 0
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert height == 800 and width == 1000  # a second row for the objective's reward and kl curves
