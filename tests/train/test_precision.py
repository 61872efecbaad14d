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


def _loss_and_grads(layers: int = 2, precision: str = "fp32", loss: str = "chunked", device: str = "cpu", **speed):
    torch.manual_seed(0)
    model = tiny_qwen2(layers=layers).to(device)
    cfg = SpeedConfig(precision=precision, loss=loss, loss_chunk_tokens=7, **speed)
    parallelize(model, None, cfg, ParallelConfig())
    loss_fn = causal_lm_loss(mode=loss, chunk_tokens=7)
    batch = {k: v.to(device) for k, v in BATCH.items()}
    with autocast_context(model, precision, torch.device(device)):
        out = loss_fn(model, batch)
    mean = out.loss_sum / out.num_tokens
    mean.backward()
    grads = {n.replace("._checkpoint_wrapped_module", "").replace("._orig_mod", ""): p.grad.detach().cpu().clone()
             for n, p in model.named_parameters()}
    return mean.detach().cpu(), grads


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


def test_liger_switch_keeps_pytorch_kernels_off_cuda() -> None:
    """A CPU model keeps PyTorch's kernels even on a machine with CUDA and Liger (no Triton on CPU tensors)."""
    model = tiny_qwen2()
    assert apply_liger(model, "on") is False
    assert apply_liger(model, "auto") is False


def test_rope_dispatch_runs_the_plain_kernel_on_cpu_tensors() -> None:
    """The process-wide RoPE patch sends CPU tensors to the plain kernel and unwraps instead of nesting."""
    from steelforge.train.distributed import _rope_by_device

    calls = []

    def fast(q, k, *a, **kw):
        calls.append("fast")
        return q, k

    def plain(q, k, *a, **kw):
        calls.append("plain")
        return q, k

    rope = _rope_by_device(fast, plain)
    again = _rope_by_device(fast, rope)  # patching twice wraps the plain kernel, not the first wrapper
    q = torch.zeros(1, 2, 3, 4)
    again(q, q, None, None)
    assert calls == ["plain"] and again._plain is plain


@pytest.mark.skipif(not liger_available(), reason="Liger kernels need CUDA and the liger-kernel package")
def test_liger_kernels_close() -> None:  # pragma: no cover - CUDA only
    plain_cuda = _loss_and_grads(device="cuda", liger="off")
    _assert_same(_loss_and_grads(device="cuda", liger="on"), plain_cuda, rtol=1e-3, atol=1e-4)
    # The RoPE patch is process-wide: a CPU model built afterwards still runs (plain kernels).
    _assert_same(_loss_and_grads(device="cpu", liger="auto"), _loss_and_grads(device="cpu", liger="off"),
                 rtol=0, atol=0)
