"""Cross-entropy over large vocabularies without the whole batch's fp32 logits.

A 151,936-token vocabulary at micro-batch 8 x seq 2048 gives 2.5e9 logits: 10 GB in fp32, more than
the rest of a 1B model's activations. `chunked_linear_cross_entropy` projects and scores a few thousand
tokens at a time and computes the gradients of each chunk while its logits exist (the approach of
Liger's fused linear cross-entropy, in plain PyTorch), so only one chunk of logits is ever alive.
On CUDA with Liger installed `linear_cross_entropy` uses Liger's Triton kernel instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token cross-entropies of `hidden @ weight.T`, chunk by chunk; grads computed in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, ignore_index: int, chunk: int) -> Tensor:
        compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(
            hidden.device.type
        ) else hidden.dtype
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(compute_dtype)
                y = labels[start : start + chunk]
                valid = y != ignore_index
                target = torch.where(valid, y, torch.zeros_like(y))
                # One fp32 buffer per chunk, transformed in place: logits -> exp(logits - max) -> softmax grad.
                # A single exp pass and no temporaries the size of the chunk (logsumexp would add two).
                logits = (h @ w.t()).float()
                picked = logits.gather(1, target[:, None]).squeeze(1)
                row_max = logits.amax(dim=-1, keepdim=True)
                logits.sub_(row_max).exp_()
                row_sum = logits.sum(dim=-1, keepdim=True)
                lse = (row_max + row_sum.log()).squeeze(1)
                loss_sum += torch.where(valid, lse - picked, 0.0).sum()
                if needs_grad:
                    # d(loss)/d(logits) = softmax - onehot(target), zero on ignored rows.
                    inv = torch.where(valid[:, None], row_sum.reciprocal(), 0.0)
                    grad_logits = logits.mul_(inv)
                    rows = torch.arange(len(y), device=y.device)
                    grad_logits[rows, target] -= valid.to(grad_logits.dtype)
                    g = grad_logits.to(compute_dtype)
                    if grad_hidden.dtype == compute_dtype and grad_hidden.is_contiguous():
                        torch.mm(g, w, out=grad_hidden[start : start + chunk])
                    else:
                        grad_hidden[start : start + chunk] = (g @ w).to(hidden.dtype)
                    if compute_dtype == torch.float32:
                        grad_weight.addmm_(g.t(), h)
                    else:
                        grad_weight += (g.t() @ h).float()
                del logits
        ctx.consumed = False
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        if ctx.consumed:
            raise RuntimeError("chunked cross-entropy gradients were already used; its backward can run only once")
        ctx.consumed = True
        grad_hidden, grad_weight = ctx.saved_tensors
        # The saved gradients are this function's own buffers: scale them in place, no second copy.
        return grad_hidden.mul_(grad_output.to(grad_hidden.dtype)), grad_weight.mul_(grad_output.to(grad_weight.dtype)), None, None, None


def chunked_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, *, ignore_index: int = -100, chunk_tokens: int = 4096
) -> tuple[Tensor, Tensor]:
    """(sum of token losses, number of valid tokens) of `hidden @ weight.T` against `labels`.

    `hidden` is [..., d] and `labels` [...] (already aligned: labels[t] is the target of position t).
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    loss_sum = _ChunkedLinearCrossEntropy.apply(h, weight, y, ignore_index, chunk_tokens)
    return loss_sum, (y != ignore_index).sum()


def full_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, *, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """The plain path: whole-batch logits, upcast to fp32, `F.cross_entropy(reduction='sum')`."""
    logits = F.linear(hidden, weight).float()
    y = labels.reshape(-1)
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y, ignore_index=ignore_index, reduction="sum")
    return loss_sum, (y != ignore_index).sum()


def liger_available() -> bool:
    """True when Liger's Triton kernels can run here (CUDA present and `liger-kernel` installed)."""
    if not torch.cuda.is_available():
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def liger_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, *, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """Liger's fused linear cross-entropy (CUDA, Triton); same contract as the PyTorch paths."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    fn = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction="sum")
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    return fn(weight, h, y), (y != ignore_index).sum()


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    mode: Literal["chunked", "full"] = "chunked",
    chunk_tokens: int = 4096,
    use_liger: bool = False,
) -> tuple[Tensor, Tensor]:
    """Dispatch to Liger (when asked and available), the chunked or the full PyTorch path."""
    if use_liger and hidden.is_cuda and liger_available():
        return liger_linear_cross_entropy(hidden, weight, labels, ignore_index=ignore_index)
    if mode == "full":
        return full_linear_cross_entropy(hidden, weight, labels, ignore_index=ignore_index)
    return chunked_linear_cross_entropy(hidden, weight, labels, ignore_index=ignore_index, chunk_tokens=chunk_tokens)
