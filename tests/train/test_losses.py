"""Chunked linear cross-entropy equals the full-logits path (values and gradients); Liger on CUDA only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steelforge.train.losses import (
    chunked_linear_cross_entropy,
    full_linear_cross_entropy,
    liger_available,
    liger_linear_cross_entropy,
    linear_cross_entropy,
)


def _inputs(n: int = 37, d: int = 16, v: int = 50, seed: int = 0, ignore_frac: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float32).requires_grad_()
    weight = (0.3 * torch.randn(v, d, generator=gen, dtype=torch.float32)).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < ignore_frac] = -100
    return hidden, weight, labels


def _loss_and_grads(fn, hidden, weight, labels, **kw):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss, count = fn(h, w, labels, **kw)
    (loss * 0.37).backward()
    return loss.detach(), count, h.grad, w.grad


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), chunk=st.integers(1, 50), ignore_frac=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_chunked_equals_full_values_and_gradients(n: int, chunk: int, ignore_frac: float, seed: int) -> None:
    hidden, weight, labels = _inputs(n=n, seed=seed, ignore_frac=ignore_frac)
    full = _loss_and_grads(full_linear_cross_entropy, hidden, weight, labels)
    chunked = _loss_and_grads(chunked_linear_cross_entropy, hidden, weight, labels, chunk_tokens=chunk)
    torch.testing.assert_close(chunked[0], full[0], rtol=1e-5, atol=1e-5)
    assert int(chunked[1]) == int(full[1]) == int((labels != -100).sum())
    torch.testing.assert_close(chunked[2], full[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[3], full[3], rtol=1e-5, atol=1e-6)


def test_custom_ignore_index_and_batched_shape() -> None:
    """A configurable ignore label (Steel-LLM: the <|endoftext|> id) is excluded from sum and count."""
    hidden, weight, labels = _inputs(n=24)
    labels = labels.clamp_min(0)
    labels[::3] = 7
    h3, y3 = hidden.reshape(4, 6, -1), labels.reshape(4, 6)
    loss, count = chunked_linear_cross_entropy(h3, weight, y3, ignore_index=7, chunk_tokens=5)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, ignore_index=7, reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert int(count) == int((labels != 7).sum())


def test_bf16_autocast_close_to_fp32() -> None:
    hidden, weight, labels = _inputs(n=64, d=32, v=100)
    ref, _ = full_linear_cross_entropy(hidden, weight, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, labels, mode="chunked", chunk_tokens=16)
    assert loss.dtype == torch.float32  # logits are upcast before the softmax
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0)


def test_full_logits_are_not_kept_for_backward() -> None:
    """The chunked path saves only gradient-sized tensors for backward, never the [tokens, vocab] logits."""
    n, d, v = 256, 8, 1000

    def saved_bytes(fn) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel() * t.element_size())
            return t

        hidden = torch.randn(n, d, requires_grad=True)
        weight = torch.randn(v, d, requires_grad=True)
        labels = torch.randint(0, v, (n,))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(hidden, weight, labels)
        return sum(sizes)

    logits_bytes = n * v * 4
    assert saved_bytes(full_linear_cross_entropy) >= logits_bytes
    chunked = saved_bytes(lambda h, w, y: chunked_linear_cross_entropy(h, w, y, chunk_tokens=32))
    assert chunked <= (n * d + v * d) * 4  # grad of hidden + grad of weight


@pytest.mark.skipif(not liger_available(), reason="Liger's fused linear cross-entropy needs CUDA and liger-kernel")
def test_liger_matches_chunked() -> None:  # pragma: no cover - CUDA only
    hidden, weight, labels = _inputs(n=64, d=32, v=100)
    h, w, y = hidden.float().cuda(), weight.float().cuda(), labels.cuda()
    ref, _ = chunked_linear_cross_entropy(h, w, y)
    got, _ = liger_linear_cross_entropy(h, w, y)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_backward_twice_is_refused() -> None:
    """The gradients are scaled in place in backward, so a second backward must fail loudly, not double them."""
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    loss, _ = chunked_linear_cross_entropy(hidden, weight, torch.randint(0, 11, (6,)), chunk_tokens=4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()
