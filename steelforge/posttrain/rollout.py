"""Rollout backends: who generates GRPO's completions between optimizer steps.

`HFRollout` (the tested default, CPU and GPU) runs `steelforge.models.generate` on the policy itself, so every
rollout uses the current weights with nothing to sync. `VLLMRollout` serves rollouts from a colocated vLLM
engine on GPU (chosen by `backend: auto` when `vllm` is importable and CUDA is available); after each optimizer
step the trainer calls `sync_weights(model)`, which streams the policy's parameters into vLLM's model. It is
written against vLLM's documented offline API (`LLM`, `SamplingParams`, `TokensPrompt`, `LLM.apply_model`)
and cannot run on the CPU machines this project is tested on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from steelforge.models.generate import GenerationResult, generate


@dataclass
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: Sequence[int] = ()
    pad_token_id: int = 0


class RolloutBackend(Protocol):
    """Generates completions for token-id prompts with the policy's current weights."""

    name: str

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, generator: torch.Generator | None
    ) -> GenerationResult: ...

    def sync_weights(self, model: nn.Module) -> None: ...


class HFRollout:
    """Batched KV-cache generation on the policy module itself (eval mode while generating)."""

    name = "hf"

    def __init__(self, model: nn.Module, batch_rows: int | None = None) -> None:
        self.model = model
        self.batch_rows = batch_rows

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, generator: torch.Generator | None
    ) -> GenerationResult:
        was_training = self.model.training
        self.model.eval()
        try:
            step = self.batch_rows or len(prompts)
            parts = [
                generate(
                    self.model,
                    prompts[i : i + step],
                    max_new_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    top_k=settings.top_k,
                    stop_token_ids=settings.stop_token_ids,
                    pad_token_id=settings.pad_token_id,
                    generator=generator,
                )
                for i in range(0, len(prompts), step)
            ]
        finally:
            self.model.train(was_training)
        return GenerationResult(
            sequences=[s for p in parts for s in p.sequences],
            finish_reasons=[r for p in parts for r in p.finish_reasons],
            prompt_tokens=sum(p.prompt_tokens for p in parts),
            completion_tokens=sum(p.completion_tokens for p in parts),
            steps=sum(p.steps for p in parts),
            seconds=sum(p.seconds for p in parts),
        )

    def sync_weights(self, model: nn.Module) -> None:
        """Nothing to do: the rollouts run on the trained module."""


class VLLMRollout:
    """A colocated vLLM engine (same GPU, `gpu_memory_utilization` share) serving the rollouts.

    Not exercised by the test suite (vLLM needs CUDA); the HF backend is the reference it must agree with.
    """

    name = "vllm"

    def __init__(
        self, model_dir: str, *, gpu_memory_utilization: float = 0.3, seed: int = 0, max_model_len: int = 4096
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model_dir,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=True,  # the G rollouts of one prompt share its prefill
        )

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, generator: torch.Generator | None
    ) -> GenerationResult:
        import time

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seed = None if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        params = SamplingParams(
            n=1,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k if settings.top_k > 0 else -1,
            max_tokens=settings.max_new_tokens,
            stop_token_ids=list(settings.stop_token_ids),
            seed=seed,
        )
        start = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        seqs, reasons = [], []
        for out in outputs:
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            seqs.append(ids)
            reasons.append("stop" if comp.finish_reason == "stop" else "length")
        return GenerationResult(
            sequences=seqs,
            finish_reasons=reasons,
            prompt_tokens=sum(len(p) for p in prompts),
            completion_tokens=sum(len(s) for s in seqs),
            steps=max((len(s) for s in seqs), default=0),
            seconds=time.perf_counter() - start,
        )

    def sync_weights(self, model: nn.Module) -> None:
        """Push the policy's (full, unsharded) parameters into vLLM's model via its `load_weights`."""
        state = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.state_dict().items()
        }

        def load(vllm_model: Any) -> None:
            vllm_model.load_weights(weights=list(state.items()))

        self.llm.apply_model(load)
        self.llm.reset_prefix_cache()


def vllm_available() -> bool:
    """vLLM importable and a CUDA device present (the only setting where it can serve rollouts)."""
    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(
    kind: str, model: nn.Module, *, model_dir: str | None, batch_rows: int | None, **vllm_kw: Any
):
    """`hf`, `vllm`, or `auto` (vLLM when available and the policy has an HF folder to start it from)."""
    if kind == "vllm" or (kind == "auto" and vllm_available() and model_dir is not None):
        if model_dir is None:
            from steelforge.errors import RecipeError

            raise RecipeError("grpo.backend: vllm needs grpo.model to be an HF folder (vLLM loads it itself)")
        return VLLMRollout(model_dir, **vllm_kw)
    return HFRollout(model, batch_rows)
