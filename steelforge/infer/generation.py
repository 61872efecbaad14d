"""Loading a released model for inference; chat and serve generate through `steelforge.models.generate`
(batched, left-padded, one KV cache; `on_tokens` streams, `should_stop` cancels), imported here only.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steelforge.errors import SteelforgeError
from steelforge.models.generate import GenerationResult, generate

__all__ = ["GenerationResult", "LoadedModel", "generate", "load_for_inference", "quantization_drift", "quantize_int8"]


@dataclass
class LoadedModel:
    """A model ready to generate: weights, tokenizer, stop and pad ids, chat template, context size."""

    model: Any
    tokenizer: Any
    stop_token_ids: list[int]
    pad_token_id: int
    chat_template: str | None
    max_context: int
    name: str


def _stops_from_folder(path: Path, tokenizer: Any) -> list[int]:
    from steelforge.export.hf import stop_token_ids

    gen = path / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        if isinstance(eos, int):
            return [eos]
        if isinstance(eos, list) and eos:
            return [int(e) for e in eos]
    return stop_token_ids(tokenizer)


def load_for_inference(
    model_dir: str | Path, *, int8: bool = False, chat_template: str | None = None, threads: int | None = None
) -> LoadedModel:
    """An exported model folder (`steelforge export` or a stage's `hf/`) in eval mode on CPU.

    `chat_template` is a Jinja template or a file holding one; it replaces the tokenizer's (mistral-v1 has none).
    """
    from transformers.utils import logging as hf_logging

    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer

    hf_logging.disable_progress_bar()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise SteelforgeError(f"model folder '{path}' has no config.json; pass a folder written by `steelforge export`")
    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(str(path))
    model = load_model(str(path), dtype=torch.float32).eval()
    if int8:
        model = quantize_int8(model)
    stops = _stops_from_folder(path, tokenizer)
    template = tokenizer.chat_template
    if chat_template:
        template = Path(chat_template).read_text(encoding="utf-8") if Path(chat_template).is_file() else chat_template
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    max_context = int(getattr(model.config, "max_position_embeddings", 2048))
    return LoadedModel(model, tokenizer, stops, pad, template, max_context, path.resolve().name)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every Linear (weights int8, activations quantised per batch) for CPU.

    torch's own `quantize_dynamic` (torchao is the successor but is not a dependency); the drift it causes is
    measured by `quantization_drift`.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the eager-mode quantisation API
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


@torch.no_grad()
def quantization_drift(reference: torch.nn.Module, quantized: torch.nn.Module, prompts: list[list[int]]) -> dict[str, float]:
    """Next-token top-1 agreement and mean KL(reference || quantized) over every position of `prompts`."""
    agree = total = 0
    kl_sum = 0.0
    for ids in prompts:
        x = torch.tensor([ids])
        ref = torch.log_softmax(reference(x).logits[0].float(), dim=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.log_softmax(quantized(x).logits[0].float(), dim=-1)
        agree += int((ref.argmax(-1) == q.argmax(-1)).sum())
        kl_sum += float((ref.exp() * (ref - q)).sum(-1).sum())
        total += len(ids)
    return {"top1_agreement": agree / total, "kl": kl_sum / total, "positions": float(total)}
