"""Batched forward passes behind every task: letter logits, continuation log-likelihoods, generations.

Letter scoring runs the decoder once per prompt batch (right padding + attention mask; each row's logits are
read at its own last real position), projects only those rows through `lm_head` and casts them to fp32, so a
151,936-token vocabulary never makes a [B, T, V] tensor and fp16/bf16 models are compared in fp32. Prompts are
sorted by (shared k-shot prefix, length) so a batch wastes little padding; results come back in input order.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from steelforge.eval.tasks.base import ChoiceItem, CompletionItem, TaskDataError
from steelforge.posttrain.logprobs import decoder_hidden, token_logps

Progress = Callable[[int], None]


def letter_token_ids(tokenizer: Any, letters: Sequence[str], task: str) -> list[int]:
    """The single token of each answer letter (e.g. "A" or " A"); a tokenizer that splits one is an error."""
    ids = []
    for letter in letters:
        enc = tokenizer.encode(letter, add_special_tokens=False)
        if len(enc) != 1:
            raise TaskDataError(
                f"{task}: the tokenizer encodes answer letter {letter!r} as {len(enc)} tokens {enc}; letter scoring "
                "needs single-token letters (use --format with completion scoring or another tokenizer)"
            )
        ids.append(enc[0])
    return ids


def _pad_right(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _batches(order: list[int], lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = max([lengths[j] for j in cur] + [lengths[i]])
        if cur and (len(cur) >= batch_size or width * (len(cur) + 1) > max_batch_tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else (tokenizer.eos_token_id or 0))


MIN_SHARED_TOKENS = 32  # a shared prefix shorter than this is recomputed rather than cached


def _shared_prefix_len(tokenizer: Any, prefix: str, rows: list[list[int]]) -> int:
    """Tokens every row starts with that the prefix alone also encodes to (the last prefix token is left out: it
    may merge with the question's first characters). 0 when no cache is worth it or the rows disagree."""
    if not prefix:
        return 0
    n = len(tokenizer(prefix)["input_ids"]) - 1
    if n < MIN_SHARED_TOKENS:
        return 0
    head = rows[0][:n]
    return n if all(len(r) > n and r[:n] == head for r in rows) else 0


def _decoder(model: nn.Module) -> nn.Module:
    decoder = getattr(model, "model", None)
    return decoder if decoder is not None else model.get_decoder()


def _supports_cache(model: nn.Module) -> bool:
    """HF decoders with a KV cache (config.use_cache); anything else recomputes the prefix."""
    return bool(getattr(getattr(model, "config", None), "use_cache", False))


def _cache_kwarg(decoder: nn.Module) -> str:
    """transformers 5.24 renames `past_key_values` to `cache` (the old name is deprecated until 5.40)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@torch.no_grad()
def last_token_logits(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    group_keys: Sequence[str] | None = None,
    reuse_prefix: bool = True,
    progress: Progress | None = None,
) -> list[list[float]]:
    """fp32 next-token logits of `token_ids` after each prompt, tokenized as `tokenizer(prompt)` (official).

    Prompts with the same `group_keys` string (their shared k-shot prefix) run the prefix once: its KV cache is
    copied to every batch of the group, which then only runs the question tokens.
    """
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    keys = list(group_keys or [""] * len(prompts))
    device = _device(model)
    head = model.get_output_embeddings()
    picked = torch.tensor(list(token_ids), dtype=torch.long, device=device)
    pad_id = _pad_id(tokenizer)
    out: list[list[float]] = [[] for _ in prompts]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for key in sorted(groups):
        members = groups[key]
        use = reuse_prefix and _supports_cache(model)
        shared = _shared_prefix_len(tokenizer, key, [encoded[i] for i in members]) if use else 0
        lengths = [len(e) - shared for e in encoded]
        order = sorted(members, key=lambda i: (lengths[i], i))
        cache = None
        if shared:
            prefix_ids = torch.tensor([encoded[members[0]][:shared]], dtype=torch.long, device=device)
            pre = _decoder(model)(input_ids=prefix_ids, use_cache=True)
            cache = getattr(pre, "cache", None) or pre.past_key_values
        for batch in _batches(order, lengths, batch_size, max_batch_tokens):
            ids, mask = _pad_right([encoded[i][shared:] for i in batch], pad_id, device)
            if cache is None:
                hidden = decoder_hidden(model, ids, mask, None)
            else:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
                full_mask = torch.cat([mask.new_ones(len(batch), shared), mask], dim=1)
                pos = (shared + torch.arange(ids.shape[1], device=device)).expand(len(batch), -1)
                decoder = _decoder(model)
                kwargs = {_cache_kwarg(decoder): past}
                hidden = decoder(
                    input_ids=ids, attention_mask=full_mask, position_ids=pos, use_cache=True, **kwargs
                ).last_hidden_state
            last = mask.sum(dim=1) - 1
            rows = hidden[torch.arange(len(batch), device=device), last]
            logits = head(rows).float()[:, picked]
            for j, i in enumerate(batch):
                out[i] = logits[j].tolist()
            if progress is not None:
                progress(len(batch))
    return out


def score_choices(
    model: nn.Module, tokenizer: Any, items: Sequence[ChoiceItem], *, batch_size: int = 16,
    reuse_prefix: bool = True, progress: Progress | None = None,
) -> list[list[float]]:  # fmt: skip
    """Letter logits per item (items of one task share letters)."""
    if not items:
        return []
    ids = letter_token_ids(tokenizer, items[0].letters, items[0].task)
    return last_token_logits(
        model, tokenizer, [it.prompt for it in items], ids, batch_size=batch_size,
        group_keys=[it.prefix for it in items], reuse_prefix=reuse_prefix, progress=progress,
    )  # fmt: skip


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value; the first one wins ties (numpy's argmax, as the official scripts use)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


# ---- continuation log-likelihood (lm-evaluation-harness's `loglikelihood` requests) --------------------------
def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval HFLM `_encode_pair`: trailing context spaces move to the continuation; the continuation's tokens
    are the tail of the jointly encoded string (so merges across the boundary count as lm-eval counts them)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_enc = tokenizer.encode(context, add_special_tokens=False)
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [int(prefix)], whole
    return context_enc, whole[len(context_enc) :]


@torch.no_grad()
def loglikelihoods(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int = 2048,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    progress: Progress | None = None,
) -> list[float]:
    """Sum of log p(continuation | context) per pair, left-truncated to `max_length` as lm-eval does."""
    rows: list[list[int]] = []
    n_cont: list[int] = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise TaskDataError(
                f"continuation {continuation!r} encodes to no tokens; every choice needs text"
            )
        full = (ctx + cont)[-(max_length + 1) :]
        rows.append(full)
        n_cont.append(min(len(cont), len(full) - 1))
    lengths = [len(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (-lengths[i], i))
    device = _device(model)
    out = [0.0] * len(rows)
    for batch in _batches(order, lengths, batch_size, max_batch_tokens):
        ids, mask = _pad_right([rows[i] for i in batch], _pad_id(tokenizer), device)
        completion = torch.zeros_like(mask)
        for j, i in enumerate(batch):
            completion[j, lengths[i] - n_cont[i] : lengths[i]] = 1
        logps = token_logps(model, ids, mask, completion)
        sums = logps.sum(dim=1).tolist()
        for j, i in enumerate(batch):
            out[i] = float(sums[j])
        if progress is not None:
            progress(len(batch))
    return out


def score_completions(
    model: nn.Module, tokenizer: Any, items: Sequence[CompletionItem], *, max_length: int = 2048,
    batch_size: int = 16, progress: Progress | None = None,
) -> list[list[float]]:  # fmt: skip
    """Per item, the log-likelihood of each choice's continuation."""
    pairs = [(c, t) for it in items for c, t in zip(it.contexts, it.continuations, strict=True)]
    flat = loglikelihoods(
        model, tokenizer, pairs, max_length=max_length, batch_size=batch_size, progress=progress
    )
    out, pos = [], 0
    for it in items:
        out.append(flat[pos : pos + len(it.continuations)])
        pos += len(it.continuations)
    return out


def completion_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """lm-eval's multiple_choice `process_results`: acc (argmax ll), acc_norm (ll / characters of the choice),
    acc_bytes (ll / UTF-8 bytes of the choice); np.argmax semantics (first maximum)."""
    pred = argmax_first(lls)
    pred_norm = argmax_first([ll / float(len(c)) for ll, c in zip(lls, choices, strict=True)])
    pred_bytes = argmax_first(
        [ll / float(len(c.encode("utf-8"))) for ll, c in zip(lls, choices, strict=True)]
    )
    return {
        "acc": float(pred == gold), "acc_norm": float(pred_norm == gold), "acc_bytes": float(pred_bytes == gold),
        "pred": pred, "pred_norm": pred_norm,
    }  # fmt: skip
