"""Each precision/speed switch against the plain path on one training micro-batch (loss and gradients)."""

from __future__ import annotations

import pytest
import torch
from _dist_helpers import patterned_batches, tiny_qwen2

from steelforge.train.config import ParallelConfig, SpeedConfig
from steelforge.train.distributed import apply_liger, autocast_context, parallelize
from steelforge.train.losses import liger_available
from steelforge.train.pretrain import causal_lm_loss

BATCH = next(patterned_batches(micro=2, seq=16, ignore_frac=0.2))


def _loss_and_grads(layers: int = 2, precision: str = "fp32", loss: str = "chunked", **speed):
    torch.manual_seed(0)
    model = tiny_qwen2(layers=layers)
    cfg = SpeedConfig(precision=precision, loss=loss, loss_chunk_tokens=7, **speed)
    parallelize(model, None, cfg, ParallelConfig())
    loss_fn = causal_lm_loss(mode=loss, chunk_tokens=7)
    with autocast_context(model, precision, torch.device("cpu")):
        out = loss_fn(model, BATCH)
    mean = out.loss_sum / out.num_tokens
    mean.backward()
    grads = {n.replace("._checkpoint_wrapped_module", "").replace("._orig_mod", ""): p.grad.clone()
             for n, p in model.named_parameters()}
    return mean.detach(), grads


def _assert_same(a, b, **tol) -> None:
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        torch.testing.assert_close(a[1][key], b[1][key], **tol, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture(scope="module")
def plain():
    return _loss_and_grads()


@pytest.mark.parametrize("mode", ["full", "every_k"])
def test_activation_checkpointing_is_exact(plain, mode: str) -> None:
    _assert_same(_loss_and_grads(activation_checkpointing=mode, ac_every=2), plain, rtol=0, atol=0)


def test_full_cross_entropy_equals_chunked(plain) -> None:
    _assert_same(_loss_and_grads(loss="full"), plain, rtol=1e-5, atol=1e-6)


def test_eager_attention_close_to_sdpa(plain) -> None:
    _assert_same(_loss_and_grads(attention="eager"), plain, rtol=1e-4, atol=1e-5)


def test_bf16_within_tolerance(plain) -> None:
    loss, grads = _loss_and_grads(precision="bf16")
    assert abs(float(loss) - float(plain[0])) / float(plain[0]) < 1e-2
    for key, ref in plain[1].items():
        cos = torch.nn.functional.cosine_similarity(grads[key].flatten().double(), ref.flatten().double(), dim=0)
        assert cos > 0.98, f"{key}: gradient direction differs in bf16 (cosine {float(cos):.4f})"
    assert all(g.dtype == torch.float32 for g in grads.values())  # fp32 master weights and gradients


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        # inductor's C++ code generation: about 50 s on one CPU core with a cold cache
        pytest.param("inductor", marks=pytest.mark.slow),
    ],
)
def test_compile_per_block_close(plain, backend: str) -> None:
    torch._dynamo.reset()
    compiled = _loss_and_grads(compile=True, compile_backend=backend)
    _assert_same(compiled, plain, rtol=1e-4, atol=1e-5)


def test_liger_switch_falls_back_without_cuda() -> None:
    model = tiny_qwen2()
    assert apply_liger(model, "on") is liger_available()


@pytest.mark.skipif(not liger_available(), reason="Liger kernels need CUDA and the liger-kernel package")
def test_liger_kernels_close(plain) -> None:  # pragma: no cover - CUDA only
    _assert_same(_loss_and_grads(liger="on"), plain, rtol=1e-3, atol=1e-4)
