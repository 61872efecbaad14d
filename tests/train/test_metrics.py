"""MetricsLogger sinks (console, JSONL, TensorBoard-if-installed, PNG), device peaks and MFU arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from steelforge.reporting import console
from steelforge.train import metrics as m
from steelforge.train.metrics import (
    MetricsLogger,
    count_training_flops,
    measure_cpu_gemm_peak,
    mfu,
    peak_flops,
    peak_memory_bytes,
    table_peak_flops,
)


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, False, 312e12),
        ("NVIDIA A100-SXM4-40GB", torch.float32, False, 19.5e12),
        ("NVIDIA A100-SXM4-40GB", torch.float32, True, 156e12),
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, False, 756e12),
        ("NVIDIA H200", torch.bfloat16, False, 989e12),
        ("NVIDIA L40S", torch.bfloat16, False, 362e12),
        ("NVIDIA L4", torch.bfloat16, False, 121e12),
        ("NVIDIA GeForce RTX 4090", torch.float16, False, 165.2e12),
        ("Tesla V100-SXM2-16GB", torch.float32, True, 15.7e12),  # no TF32 on Volta
    ],
)
def test_gpu_peak_table(name: str, dtype: torch.dtype, tf32: bool, expected: float) -> None:
    assert table_peak_flops(name, dtype, tf32=tf32) == expected


def test_unknown_gpu_has_no_table_entry() -> None:
    assert table_peak_flops("Imaginary Accelerator 9000", torch.bfloat16) is None


def test_cpu_peak_is_a_measured_gemm_cached_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    first = measure_cpu_gemm_peak(n=256, reps=3)
    assert 1e8 < first < 1e14  # a real CPU, in FLOP/s
    monkeypatch.setattr(m.time, "perf_counter", lambda: pytest.fail("cached value must not re-measure"))
    assert measure_cpu_gemm_peak(n=256, reps=3) == first
    monkeypatch.setattr(m, "_GEMM_CACHE", {("cpu", torch.float32, 2048, torch.get_num_threads()): 4.2e11})
    assert peak_flops(torch.device("cpu"), torch.float32) == 4.2e11


def test_mfu_arithmetic() -> None:
    # 1,000 tokens/s of a model needing 6e9 FLOPs per token on a 12 TFLOP/s device = 50 %
    assert mfu(1_000, 6e9, 12e12) == pytest.approx(0.5)
    assert mfu(1_000, 6e9, 0.0) == 0.0


def test_counted_flops_match_the_6n_plus_attention_formula() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    layers, d, inter, vocab, seq, batch = 2, 64, 128, 96, 16, 2
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(cfg)
    ids = torch.randint(0, vocab, (batch, seq))
    counted = count_training_flops(model, ids) / (batch * seq)
    kv = d // 4 * 2
    matmul_params = layers * (d * d + 2 * d * kv + d * d + 3 * d * inter) + d * vocab
    # SDPA is counted as full (non-causal) attention: QK^T and PV, forward + 2x backward.
    analytic = 6 * matmul_params + 12 * layers * d * seq
    assert counted == pytest.approx(analytic, rel=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_logger_writes_jsonl_console_line_and_curves(tmp_path: Path) -> None:
    with console.capture() as cap, MetricsLogger(tmp_path, total_steps=10, is_main=True) as log:
        for step in range(1, 6):
            log.log(
                step,
                {
                    "loss": torch.tensor(5.0 - step * 0.5),
                    "lr": 1e-3 * step / 5,
                    "grad_norm": 0.9,
                    "tokens_per_s": 1234.0,
                    "mfu": 0.123,
                    "tokens": 4096.0 * step,
                },
            )
        png = log.plot()
        rows = dict(log.summary_rows())
    lines = [x for x in cap.get().splitlines() if x.startswith("step ")]
    assert len(lines) == 5
    assert lines[-1].startswith("step 5/10 | loss 2.5000 | lr 1.00e-03 | gnorm 0.900 | 1.23k tok/s/dev")
    assert "MFU 12.3%" in lines[-1] and "data 20.48k tok" in lines[-1] and "ETA " in lines[-1]
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[0]["loss"] == 4.5
    assert png == tmp_path / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows["first loss"] == 4.5 and rows["min loss"] == 2.5 and rows["tokens seen"] == 20480
    assert rows["mean MFU %"] == pytest.approx(12.3)


def test_resumed_run_appends_and_history_keeps_last_value_per_step(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, total_steps=6, is_main=True, tensorboard=False) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 3.0, "lr": 0.1})
    with MetricsLogger(tmp_path, total_steps=6, is_main=True, tensorboard=False) as log:
        for step in (3, 4):  # resumed from the step-2 checkpoint: step 3 is trained again
            log.log(step, {"loss": 2.0, "lr": 0.2})
        hist = log.history()
        assert log.plot() is not None
    assert [(r["step"], r["loss"]) for r in hist] == [(1, 3.0), (2, 3.0), (3, 2.0), (4, 2.0)]


def test_only_the_main_rank_writes(tmp_path: Path) -> None:
    with console.capture() as cap, MetricsLogger(tmp_path / "r1", total_steps=3, is_main=False) as log:
        log.log(1, {"loss": 1.0})
        assert log.plot() is None
    assert cap.get() == "" and not (tmp_path / "r1").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="TensorBoard is installed")
def test_tensorboard_absent_is_skipped_cleanly(tmp_path: Path) -> None:
    with console.capture() as cap, MetricsLogger(tmp_path, total_steps=1, is_main=True) as log:
        assert not log.tensorboard_enabled
        log.log(1, {"loss": 1.0})
    assert "TensorBoard is not installed" in cap.get()


def test_eta_and_formatting() -> None:
    assert m._fmt_duration(3 * 86400 + 5 * 3600) == "3d05h"
    assert m._fmt_duration(3725) == "1h02m"
    assert m._fmt_duration(math.nan) == "?"
    assert m._fmt_count(1.5e9) == "1.50B"
    assert peak_memory_bytes("cpu") > 10 * 2**20
