"""Per-token log-probabilities of a causal LM without the batch's [B, T, V] fp32 logits.

DPO and GRPO need log p(token t | tokens < t) at completion positions only, three times per step (policy,
reference, old policy). With Qwen's 151,936-token vocabulary a [B, T, V] fp32 logits tensor is 0.6 GB per
1,024 tokens, and `log_softmax` plus its backward hold two or three of them. `token_logps` runs the decoder
once, gathers the hidden states of the scored positions and projects them through `lm_head` a few rows at a
time inside an autograd function; its backward recomputes each chunk's logits (as the chunked cross-entropy of
`steelforge.train.losses` does in forward), so at most one chunk of logits is alive in forward and backward.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

DEFAULT_CHUNK = 128


def _compute_dtype(t: Tensor) -> torch.dtype:
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


def _chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float) -> Tensor:
    """fp32 logits of one chunk (the product runs in the model's dtype, as the model's own head does)."""
    z = (h @ w.t()).float()
    if b is not None:
        z += b.float()
    if temperature != 1.0:
        z /= temperature
    return z


class _SelectedLogProbs(torch.autograd.Function):
    """log_softmax(h @ W.T + b)[target] (and the entropy) per row, chunk by chunk; backward recomputes chunks."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int,
                temperature: float, want_entropy: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        n = hidden.shape[0]
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logps)
        mean_z = torch.empty_like(logps) if want_entropy else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk):
                end = min(start + chunk, n)
                z = _chunk_logits(hidden[start:end].to(dtype), w, bias, temperature)
                picked = z.gather(1, targets[start:end, None]).squeeze(1)
                row_max = z.amax(dim=-1, keepdim=True)
                if want_entropy:
                    e = torch.exp(z - row_max)
                    row_sum = e.sum(dim=-1)
                    # E_p[z] = sum(e * z) / sum(e) as a batched dot product: no third chunk-sized buffer.
                    mean_z[start:end] = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1) / row_sum
                    del e
                else:
                    row_sum = z.sub_(row_max).exp_().sum(dim=-1)
                lse[start:end] = row_max.squeeze(1) + row_sum.log()
                logps[start:end] = picked - lse[start:end]
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse, mean_z)
        ctx.chunk, ctx.temperature, ctx.want_entropy = chunk, temperature, want_entropy
        if want_entropy:
            return logps, lse - mean_z
        entropy = torch.zeros(0, device=hidden.device)
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logps: Tensor | None, grad_entropy: Tensor | None):  # type: ignore[override]
        hidden, weight, bias, targets, lse, mean_z = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if grad_logps is None:
            grad_logps = torch.zeros_like(lse)
        use_entropy = ctx.want_entropy and grad_entropy is not None
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        inv_t = 1.0 / ctx.temperature
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.chunk):
                end = min(start + ctx.chunk, hidden.shape[0])
                h = hidden[start:end].to(dtype)
                z = _chunk_logits(h, w, bias, ctx.temperature)
                g = grad_logps[start:end, None].float()
                if use_entropy:
                    # d logp_t / dz = onehot_t - p;  d H / dz = -p * (z - E_p[z]).
                    p = torch.exp(z - lse[start:end, None])
                    gh = grad_entropy[start:end, None].float()
                    grad_z = z.sub_(mean_z[start:end, None]).mul_(-gh).sub_(g).mul_(p)
                    del p
                else:
                    grad_z = z.sub_(lse[start:end, None]).exp_().mul_(-g)
                rows = torch.arange(end - start, device=z.device)
                grad_z[rows, targets[start:end]] += g.squeeze(1)
                if inv_t != 1.0:
                    grad_z *= inv_t
                gz = grad_z.to(dtype)
                if need_h:
                    grad_hidden[start:end] = (gz @ w).to(hidden.dtype)
                if need_w and dtype == torch.float32:
                    grad_weight.addmm_(grad_z.t(), h)
                elif need_w:
                    grad_weight += (gz.t() @ h).float()
                if need_b:
                    grad_bias += grad_z.sum(0)
                del z, grad_z, gz
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if need_w else None,
            grad_bias.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


def selected_logps(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """fp32 log_softmax(hidden @ weight.T + bias)[targets] for rows `hidden` [N, d]; optionally the entropy."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    logps, entropy = _SelectedLogProbs.apply(
        hidden, weight, bias, targets, chunk_size, float(temperature), return_entropy
    )
    return (logps, entropy) if return_entropy else logps


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _is_packed(position_ids: Tensor, attention_mask: Tensor) -> bool:
    """True when positions restart between two attended tokens of a row (several documents in one row)."""
    restart = position_ids[..., 1:] <= position_ids[..., :-1]
    both = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return bool((restart & both).any())


def _left_padded(mask: Tensor) -> bool:
    """True when some row has a padding position before an attended one."""
    return bool((mask[:, 1:].bool() & ~mask[:, :-1].bool()).any())


def _right_padded(mask: Tensor) -> bool:
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def _decoder_inputs(
    attention_mask: Tensor | None, position_ids: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """The (attention_mask, position_ids) to hand the decoder.

    A mask without zeros is dropped, and so is right padding in packed rows: transformers only detects packed
    documents (block-diagonal attention) when no 2-D mask is given, and under causal attention trailing padding
    cannot change the tokens before it.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None, position_ids
    if position_ids is not None and _is_packed(position_ids, attention_mask):
        if not _right_padded(attention_mask):
            raise ValueError(
                "packed position_ids with padding that is not at the end of the row are not supported; "
                "pad packed rows on the right"
            )
        return None, position_ids
    return attention_mask, position_ids


def decoder_hidden(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
) -> Tensor:
    """The last decoder hidden states [B, T, d] (after the final norm), through `forward_hidden` when present.

    `forward_hidden` (installed for FSDP, see `steelforge.train.distributed`) is used when the batch needs no
    attention mask or when it accepts one; otherwise the decoder (`model.model`) is called directly.
    """
    mask, pos = _decoder_inputs(attention_mask, position_ids)
    forward_hidden = getattr(model, "forward_hidden", None)
    if forward_hidden is not None:
        if mask is None:
            return forward_hidden(input_ids, pos)
        if _accepts(forward_hidden, "attention_mask"):
            return forward_hidden(input_ids, pos, attention_mask=mask)
    decoder = getattr(model, "model", None)
    if decoder is None:
        decoder = model.get_decoder()
    return decoder(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state


def token_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    completion_mask: Tensor,
    position_ids: Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    return_entropy: bool = False,
    temperature: float = 1.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """fp32 [B, T] log p(input_ids[:, t] | input_ids[:, :t]) where `completion_mask` is 1, else 0 (also at t = 0).

    With `return_entropy`, also the [B, T] entropy (nats) of the distribution that predicted token t.
    Differentiable in both; only the scored positions go through `lm_head`, `chunk_size` rows at a time.

    `position_ids` (packed rows) are passed to the model. When they are None and some row is left-padded, the
    positions are `cumsum(attention_mask) - 1` clipped at 0, as HF `generate` numbers them while sampling, so
    every row's first real token is at position 0; otherwise the model numbers the positions 0..T-1 itself.
    TRL 1.16's trainers call the model without `position_ids` (0..T-1 even on left-padded rows); with RoPE only
    position differences matter, and the two numberings agree to float rounding (<= 1e-6 on the TRL reference
    batch, whose values the default reproduces to 1e-5). Pass `torch.arange(T)` for TRL's exact numbering.
    `temperature` divides the logits (TRL's GRPO scores with the sampling temperature).
    """
    if input_ids.dim() != 2 or completion_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and completion_mask must both be [B, T]; got {tuple(input_ids.shape)} and "
            f"{tuple(completion_mask.shape)}"
        )
    if position_ids is None and attention_mask is not None and _left_padded(attention_mask):
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = decoder_hidden(model, input_ids, attention_mask, position_ids)
    head = getattr(model, "lm_head", None)
    if head is None:
        head = model.get_output_embeddings()
    scored = completion_mask[:, 1:].bool()
    if attention_mask is not None:
        scored &= attention_mask[:, 1:].bool()
    rows, cols = scored.nonzero(as_tuple=True)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    result = selected_logps(
        hidden[rows, cols],
        head.weight,
        input_ids[rows, cols + 1],
        bias=head.bias,
        chunk_size=chunk_size,
        temperature=temperature,
        return_entropy=return_entropy,
    )
    if not return_entropy:
        return out.index_put((rows, cols + 1), result)
    logps, entropy = result
    return out.index_put((rows, cols + 1), logps), torch.zeros_like(out).index_put((rows, cols + 1), entropy)
