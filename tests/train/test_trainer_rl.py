"""An RL-shaped objective through the unchanged Trainer loop, on 2 gloo processes (torchrun):
rollouts generated between optimizer steps (`pre_step`), a frozen reference model sharded like the policy,
two optimisation passes over each buffered batch, its own metrics reduced by mean/sum/max, generated tokens
counted apart from trained tokens, and a SIGKILL mid-run resumed to the same numbers as an unbroken run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from _dist_helpers import run_distributed, tiny_qwen2

from steelforge.train.train_module import LossFnTrainModule, LossOutput

pytestmark = [pytest.mark.timeout(300), pytest.mark.distributed]

VOCAB, PROMPT, COMPLETION, GROUP, PROMPTS_PER_RANK, MICRO = 96, 4, 6, 4, 2, 4
MAX_STEPS, PASSES, CKPT_EVERY, KILL_AT = 6, 2, 3, 5


class ToyGRPO(LossFnTrainModule):
    """Reward: share of completion tokens from the lower half of the vocabulary; group-relative advantages,
    clipped ratio to the rollout policy, k3 KL to a frozen reference. Rollouts every `PASSES` steps."""

    metric_reductions: ClassVar[dict[str, str]] = {"generated_tokens": "sum", "ranks": "sum", "rank_max": "max", "reward_max": "max"}

    def __init__(self, model, ref, optimizer, scheduler, *, grad_accum: int, seed: int = 0) -> None:
        super().__init__(model, self._loss, optimizer, scheduler, grad_accum=grad_accum, clip_grad_norm=1.0)
        self.ref = ref
        self.seed = seed
        self.buffer: dict[str, torch.Tensor] = {}  # checkpointed: passes after a resume reuse it

    def state_objects(self):
        return {**super().state_objects(), "rollouts": self.buffer}

    def _logps(self, model, ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits[:, PROMPT - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, PROMPT:, None]).squeeze(-1)

    @torch.no_grad()
    def pre_step(self, step: int):
        import torch.distributed as dist

        if (step - 1) % PASSES != 0 and self.buffer:
            return {"ranks": 1.0, "rank_max": float(self.rank)}
        gen = torch.Generator().manual_seed(self.seed * 1000 + step * 10 + self.rank)
        starts = torch.randint(0, VOCAB, (PROMPTS_PER_RANK, 1), generator=gen)
        prompts = ((starts + torch.arange(PROMPT)) % VOCAB).repeat_interleave(GROUP, 0)
        ids = prompts
        self.model.eval()
        for _ in range(COMPLETION):  # plain sampling loop: same number of forwards on every rank (FSDP)
            probs = torch.softmax(self.model(input_ids=ids, use_cache=False).logits[:, -1].float(), -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
        self.model.train()
        reward = (ids[:, PROMPT:] < VOCAB // 2).float().mean(1)
        grouped = reward.view(-1, GROUP)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
        local = {"ids": ids, "adv": adv, "old": self._logps(self.model, ids), "ref": self._logps(self.ref, ids)}
        # Every rank keeps the global buffer (one checkpoint entry, any world size) and trains on its slice.
        for key, value in local.items():
            parts = [torch.empty_like(value) for _ in range(self.world_size)]
            dist.all_gather(parts, value.contiguous())
            self.buffer[key] = torch.cat(parts)
        return {
            "reward": float(reward.mean()),
            "reward_max": float(reward.max()),
            "generated_tokens": float(ids.shape[0] * COMPLETION),
            "ranks": 1.0,
            "rank_max": float(self.rank),
        }

    def micro_batches(self):
        rows = PROMPTS_PER_RANK * GROUP
        while True:
            for i in range(rows // MICRO):
                start = self.rank * rows + i * MICRO
                yield {k: v[start : start + MICRO] for k, v in self.buffer.items()}

    def _loss(self, model, batch) -> LossOutput:
        logp = self._logps(model, batch["ids"])
        ratio = torch.exp(logp - batch["old"])
        adv = batch["adv"][:, None]
        policy = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
        d = batch["ref"] - logp
        kl = torch.exp(d) - d - 1
        return LossOutput((policy + 0.05 * kl).sum(), torch.tensor(float(logp.numel())), {"kl": float(kl.mean())})


class _LazyBatches:
    """The trainer's batch source: micro-batches of whatever the module's buffer holds when iterated."""

    def __init__(self, module: ToyGRPO) -> None:
        self.module = module

    def __iter__(self):
        return self.module.micro_batches()


def rl_worker() -> None:
    from steelforge.train.checkpoint import Checkpointer
    from steelforge.train.config import OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig
    from steelforge.train.distributed import build_mesh, destroy_distributed, init_distributed, parallelize
    from steelforge.train.metrics import MetricsLogger
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.train_module import FrozenModel
    from steelforge.train.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)
    out = Path(os.environ["STEELFORGE_TEST_OUT"])
    kill_at = int(os.environ.get("STEELFORGE_TEST_KILL_AT", "0"))
    parallel = ParallelConfig(data_parallel="fsdp")
    env = init_distributed(parallel)
    mesh = build_mesh(parallel, env.world_size, env.device)
    speed = SpeedConfig()
    policy = parallelize(tiny_qwen2(vocab=VOCAB), mesh, speed, parallel)
    ref = FrozenModel(tiny_qwen2(vocab=VOCAB), parallelize=lambda m: parallelize(m, mesh, speed, parallel))
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    optim_cfg = OptimConfig(lr=3e-3)
    opt = build_optimizer(policy, optim_cfg)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=1), total_steps=MAX_STEPS, peak_lr=optim_cfg.lr)
    grad_accum = PROMPTS_PER_RANK * GROUP // MICRO
    module = ToyGRPO(policy, ref, opt, sched, grad_accum=grad_accum)

    if kill_at:
        original = module.pre_step

        def pre_step(step: int):
            if step == kill_at and env.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(step)

        module.pre_step = pre_step  # type: ignore[method-assign]
    cfg = TrainerConfig(max_steps=MAX_STEPS, grad_accum=grad_accum, checkpoint_every=CKPT_EVERY)
    logger = MetricsLogger(out, total_steps=MAX_STEPS, is_main=env.is_main, tensorboard=False)
    summary = Trainer(
        module, batches=_LazyBatches(module), cfg=cfg, checkpointer=Checkpointer(out / "ckpt"), metrics=logger
    ).fit()
    logger.close()
    if env.is_main:
        (out / "summary.json").write_text(json.dumps(summary))
    destroy_distributed()


def _records(out: Path) -> dict[int, dict]:
    by_step = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_step[rec["step"]] = rec
    return by_step


def test_rl_objective_trains_resumes_after_sigkill_and_logs_its_metrics(tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    run_distributed(rl_worker, env={"STEELFORGE_TEST_OUT": str(whole)}, timeout=150)
    with pytest.raises(AssertionError, match="torchrun exited"):
        run_distributed(rl_worker, env={"STEELFORGE_TEST_OUT": str(broken), "STEELFORGE_TEST_KILL_AT": str(KILL_AT)},
                        timeout=150)
    assert not (broken / "summary.json").exists()
    assert sorted(p.name for p in (broken / "ckpt").iterdir() if p.name.startswith("step_")) == ["step_000000003"]
    run_distributed(rl_worker, env={"STEELFORGE_TEST_OUT": str(broken)}, timeout=150)

    ref, res = _records(whole), _records(broken)
    summary = json.loads((broken / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["resumed_from"].endswith("step_000000003")
    rows = 2 * PROMPTS_PER_RANK * GROUP
    # Rollouts at steps 1, 3, 5 only (two passes per buffer), counted apart from trained tokens.
    assert summary["generated_tokens"] == 3 * rows * COMPLETION
    assert [ref[s].get("generated_tokens", 0) for s in range(1, 7)] == [rows * COMPLETION, 0, ] * 3
    for step in range(1, MAX_STEPS + 1):
        rec = ref[step]
        assert rec["ranks"] == 2.0 and rec["rank_max"] == 1.0  # sum and max over the 2 ranks
        assert "kl" in rec and "loss" in rec and "grad_norm" in rec
    assert 0.0 <= ref[1]["reward"] <= ref[1]["reward_max"] <= 1.0
    assert ref[1]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert ref[2]["kl"] > 0.0  # the policy moved away from the frozen reference
    # Resumed from step 3 (the restored buffer feeds step 4's second pass): the same numbers as unbroken.
    for step in (4, 5, 6):
        assert res[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-6, abs=1e-9), step
        if "reward" in ref[step]:
            assert res[step]["reward"] == ref[step]["reward"]
