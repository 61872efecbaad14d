"""The GPU path's wiring, checked on CPU: Steel's kernel patching (with PyTorch stand-ins for Liger's),
TF32/bf16 set-up and its refusals, and FSDP2 gradient sync on the last micro-batch only (2 gloo ranks).
The Liger and flash-attention kernels themselves need CUDA: bench/gpu_smoke.sh runs them on a GPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steelforge.errors import RecipeError


class _RefRMSNorm(nn.Module):
    calls = 0

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def test_steel_kernels_are_patched_and_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.models.qwen2 import modeling_qwen2

    from steelforge.models.loading import load_model
    from steelforge.train.distributed import is_steel, patch_steel_kernels

    original_rope = modeling_qwen2.apply_rotary_pos_emb
    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", original_rope)  # restored after the test
    calls = {"silu_mul": 0, "rope": 0}

    def silu_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["silu_mul"] += 1
        return F.silu(a) * b

    def rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        calls["rope"] += 1
        return original_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    for mlp_type in ("senet", "raw"):
        torch.manual_seed(0)
        model = load_model({"preset": "tiny-steel", "overrides": {
            "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 64, "n_experts": 2, "mlp_type": mlp_type}})
        assert is_steel(model)
        ids = torch.randint(0, 128, (2, 12))
        before = model(input_ids=ids).logits
        names = sorted(n for n, _ in model.named_parameters())
        counts = patch_steel_kernels(model, rms_norm=_RefRMSNorm, silu_mul=silu_mul, rotary=rope)
        assert counts == {"rms_norm": 2 * 2 + 1, "swiglu": 2 * 2, "rope": 1}
        assert sorted(n for n, _ in model.named_parameters()) == names  # checkpoints keep loading
        _RefRMSNorm.calls = 0
        calls.update(silu_mul=0, rope=0)
        after = model(input_ids=ids).logits
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
        per_expert = 2 if mlp_type == "senet" else 1
        assert _RefRMSNorm.calls == 5 and calls["rope"] == 2 and calls["silu_mul"] == 2 * 2 * per_expert


def test_precision_setup_refuses_bf16_without_support(monkeypatch: pytest.MonkeyPatch) -> None:
    from steelforge.train.distributed import configure_precision

    assert configure_precision("bf16", torch.device("cpu")) == {"tf32": False}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(RecipeError, match="no bf16 support"):
        configure_precision("bf16", torch.device("cuda", 0))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert configure_precision("fp32", torch.device("cuda", 0)) == {"tf32": False}  # pre-Ampere
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        assert configure_precision("fp32", torch.device("cuda", 0)) == {"tf32": True}
        assert torch.backends.cuda.matmul.allow_tf32
        assert configure_precision("fp32", torch.device("cuda", 0), tf32=False) == {"tf32": False}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def grad_sync_worker() -> None:
    from _dist_helpers import full_state, patterned_batches, tiny_qwen2

    from steelforge.train.config import OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig
    from steelforge.train.distributed import build_mesh, destroy_distributed, init_distributed, parallelize
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.pretrain import causal_lm_loss
    from steelforge.train.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)
    parallel = ParallelConfig(data_parallel="fsdp")
    env = init_distributed(parallel)
    results = {}
    for last_only in (False, True):
        model = parallelize(tiny_qwen2(), build_mesh(parallel, env.world_size, env.device), SpeedConfig(), parallel)
        syncs: list[bool] = []
        original = model.set_requires_gradient_sync

        def recording(flag: bool, *args, _original=original, _syncs=syncs, **kwargs):
            _syncs.append(flag)
            return _original(flag, *args, **kwargs)

        model.set_requires_gradient_sync = recording
        opt = build_optimizer(model, OptimConfig(lr=1e-2))
        sched = build_scheduler(opt, ScheduleConfig(warmup_steps=1), total_steps=3, peak_lr=1e-2)
        cfg = TrainerConfig(max_steps=3, grad_accum=3, grad_sync_last_micro_batch=last_only)
        batches = patterned_batches(micro=2, rank=env.rank, world=env.world_size, ignore_frac=0.3)
        Trainer(model, causal_lm_loss(), batches, cfg, optimizer=opt, scheduler=sched).fit()
        state = full_state(model)
        results[last_only] = (state, syncs)
    if env.is_main:
        every, last = results[False], results[True]
        same = all(torch.allclose(every[0][k], last[0][k], rtol=1e-5, atol=1e-6) for k in every[0])
        report = {"same": same, "syncs_every": every[1], "syncs_last": last[1]}
        (Path(os.environ["STEELFORGE_TEST_OUT"]) / "sync.json").write_text(json.dumps(report))
    destroy_distributed()


@pytest.mark.distributed
@pytest.mark.timeout(200)
def test_fsdp_gradient_sync_on_the_last_micro_batch_only(tmp_path: Path) -> None:
    from _dist_helpers import run_distributed

    run_distributed(grad_sync_worker, env={"STEELFORGE_TEST_OUT": str(tmp_path)}, timeout=150)
    report = json.loads((tmp_path / "sync.json").read_text())
    assert report["syncs_every"] == []
    assert report["syncs_last"] == [False, False, True] * 3
    assert report["same"]
