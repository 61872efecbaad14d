"""Batched generation through one KV cache: rollouts (GRPO), generation tasks (eval) and chat/serve (infer).

Prompts of different lengths are left-padded into one batch, prefilled in one forward call and decoded one
token per step against a single cache (transformers' `DynamicCache`, or the model's own cache class where it
defines one, e.g. `SteelCache`, which also carries the causal Soft-MoE running sums). Rows that finish are
dropped from the batch (and from the cache), so no step is spent on them; generation ends when every row has
stopped, hit `max_new_tokens`, or `should_stop()` says so. Lives in `models/` because posttrain, eval and infer
all use it and a stage never imports a later one.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicCache

__all__ = ["GenerationResult", "generate", "left_pad", "sample_next"]


@dataclass
class GenerationResult:
    """Completions (ids only, the stop token included when hit) and why each ended."""

    sequences: list[list[int]]
    finish_reasons: list[str]  # 'stop' | 'length' | 'cancelled'
    prompt_tokens: int = 0  # real (unpadded) prompt tokens
    completion_tokens: int = 0  # generated tokens over all rows
    steps: int = 0  # forward calls (prefill included)
    seconds: float = 0.0
    num_truncated: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.num_truncated = sum(r == "length" for r in self.finish_reasons)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask), both [batch, longest]."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row from last-position logits [batch, vocab]: argmax at temperature 0, else sampled.

    Filters as transformers' logits warpers do: temperature, then top-k, then top-p (the smallest set whose
    probability reaches `top_p`, always at least one token).
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1.0 - top_p)
        remove_sorted[..., -1] = False  # the most likely token always stays
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cache_kw(model: torch.nn.Module) -> str:
    """The name the model's forward takes its cache under (transformers 5.24 renamed it to `cache`)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: torch.nn.Module) -> Cache:
    """The model's own DynamicCache subclass when its modeling file exports one, else DynamicCache."""
    module = sys.modules.get(type(model).__module__)
    config = model.config.get_text_config(decoder=True)
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name, None)
        if isinstance(obj, type) and issubclass(obj, DynamicCache) and obj is not DynamicCache:
            return obj(config=config)
    return DynamicCache(config=config)


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    on_tokens: Callable[[list[int | None]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Complete every prompt (token ids) with `model`, batched, through one KV cache.

    Greedy when `temperature == 0`. `on_tokens` is called after each decoding step with the new token of every
    row (None for rows that had already finished): this is how chat/serve stream. `should_stop` is polled before
    each step; when it returns True the unfinished rows end as 'cancelled'. The model's train/eval mode is left
    as it is (callers put it in eval mode).
    """
    start = time.perf_counter()
    n = len(prompts)
    sequences: list[list[int]] = [[] for _ in range(n)]
    reasons: list[str] = ["length"] * n
    prompt_tokens = sum(len(p) for p in prompts)
    if n == 0:
        return GenerationResult([], [], 0, 0, 0, 0.0)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    if max_new_tokens <= 0:
        return GenerationResult(sequences, reasons, prompt_tokens, 0, 0, time.perf_counter() - start)

    device = _model_device(model)
    stop = torch.as_tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    # Identical prompts (GRPO's G rollouts of one prompt) are prefilled once; their cache rows are then copied.
    unique: dict[tuple[int, ...], int] = {}
    source = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
    distinct = [list(p) for p in unique]
    expand = torch.as_tensor(source, dtype=torch.long, device=device) if len(distinct) < n else None
    input_ids, mask = left_pad(distinct, pad_token_id, device)
    # positions count real tokens only, so a left-padded prompt sees the same RoPE angles as unpadded
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    next_pos = positions[:, -1] + 1
    if expand is not None:
        next_pos = next_pos[expand]
    cache = _new_cache(model)
    kw = _cache_kw(model)
    active = torch.arange(n, device=device)  # original row index of every batch row
    step_input, step_pos = input_ids, positions
    steps = 0
    completion_tokens = 0
    cancelled = False
    for t in range(max_new_tokens):
        if should_stop is not None and should_stop():
            cancelled = True
            break
        out = model(
            input_ids=step_input,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            logits_to_keep=1,
            **{kw: cache},
        )
        steps += 1
        cache = out[kw] if out.get(kw) is not None else cache
        logits = out.logits[:, -1, :]
        if t == 0 and expand is not None:
            cache.batch_select_indices(expand)
            mask, logits = mask[expand], logits[expand]
        tokens = sample_next(logits, temperature=temperature, top_p=top_p, top_k=top_k, generator=generator)
        done = torch.isin(tokens, stop) if stop.numel() else torch.zeros_like(tokens, dtype=torch.bool)
        token_list = tokens.tolist()
        rows = active.tolist()
        done_list = done.tolist()
        streamed: list[int | None] = [None] * n
        for row, tok, finished in zip(rows, token_list, done_list, strict=True):
            sequences[row].append(tok)
            streamed[row] = tok
            if finished:
                reasons[row] = "stop"
        completion_tokens += len(rows)
        if on_tokens is not None:
            on_tokens(streamed)
        if t == max_new_tokens - 1:
            break
        keep = ~done
        if not bool(keep.any()):
            break
        if not bool(keep.all()):
            idx = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(idx)
            active, tokens, mask, next_pos = active[idx], tokens[idx], mask[idx], next_pos[idx]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step_input = tokens.unsqueeze(-1)
        step_pos = next_pos.unsqueeze(-1)
        next_pos = next_pos + 1
    if cancelled:
        for row in active.tolist():
            if reasons[row] != "stop":
                reasons[row] = "cancelled"
    return GenerationResult(
        sequences, reasons, prompt_tokens, completion_tokens, steps, time.perf_counter() - start
    )
