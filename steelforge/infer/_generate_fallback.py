"""TEMPORARY: `generate` with the signature of `steelforge.models.generate.generate` (branch `grpo`).

Built on transformers' `model.generate` with a streamer (per-step tokens -> `on_tokens`) and a stopping
criterion (`should_stop`). Imported in exactly one place, `steelforge/infer/generation.py`; delete this file and
switch that import when `steelforge.models.generate` lands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer


@dataclass
class GenerationResult:
    """Per row: the new token ids (stop token not included) and why the row ended."""

    sequences: list[list[int]]
    finish_reasons: list[str]  # "stop" | "length" | "cancelled"
    prompt_lengths: list[int] = field(default_factory=list)


class _StepStreamer(BaseStreamer):
    """Hands each decoding step's tokens to `on_tokens` (None for rows already finished)."""

    def __init__(self, batch: int, stops: set[int], on_tokens: Callable[[list[int | None]], None] | None) -> None:
        self.seen_prompt = False
        self.done = [False] * batch
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.stopped = [False] * batch
        self.stops = stops
        self.on_tokens = on_tokens

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call carries the prompts
            self.seen_prompt = True
            return
        step: list[int | None] = []
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                step.append(None)
                continue
            step.append(int(token))
            if token in self.stops:
                self.done[row] = self.stopped[row] = True
            else:
                self.tokens[row].append(int(token))
        if self.on_tokens is not None:
            self.on_tokens(step)

    def end(self) -> None:
        pass


class _Cancel(StoppingCriteria):
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.fired = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        self.fired = self.fired or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


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
    """Batched, left-padded, KV-cached generation; greedy when `temperature` is 0."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    streamer = _StepStreamer(len(prompts), set(stop_token_ids), on_tokens)
    cancel = _Cancel(should_stop or (lambda: False))
    sampling = temperature > 0
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sampling,
        "temperature": temperature if sampling else None,
        "top_p": top_p if sampling and top_p < 1.0 else None,
        "top_k": top_k if sampling and top_k > 0 else None,
        "eos_token_id": list(stop_token_ids),
        "pad_token_id": pad_token_id,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([cancel]),
    }
    if generator is not None and sampling:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(generator.get_state())
            model.generate(ids.to(device), attention_mask=mask.to(device), **kwargs)
            generator.set_state(torch.get_rng_state())
    else:
        model.generate(ids.to(device), attention_mask=mask.to(device), **kwargs)
    reasons = []
    for row in range(len(prompts)):
        if streamer.stopped[row]:
            reasons.append("stop")
        elif cancel.fired and len(streamer.tokens[row]) < max_new_tokens:
            reasons.append("cancelled")
        else:
            reasons.append("length")
    return GenerationResult(streamer.tokens, reasons, [len(p) for p in prompts])
