"""Sample text from a trained model: the last step of the demo and `steelforge sample`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from steelforge.errors import SteelforgeError
from steelforge.reporting import console, print_table

if TYPE_CHECKING:
    from steelforge.recipe import Recipe

# Prompts in the style of the embedded demo corpus (encyclopedic facts, arithmetic, Q&A, code).
DEFAULT_PROMPTS: tuple[str, ...] = ("小明有3个苹果，", "问：", "The city of", "def ")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids generation stops at: the model's generation config `eos_token_id` (int or list) and the
    tokenizer's end-of-sequence token; never a hard-coded token string (mistral-v1 has no `<|im_end|>`:
    converting it would give `<unk>`)."""
    found: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [*(eos if isinstance(eos, list | tuple) else [eos]), getattr(tokenizer, "eos_token_id", None)]:
        if value is not None and int(value) not in found:
            found.append(int(value))
    if not found:
        raise SteelforgeError(
            "neither the model's generation config nor the tokenizer names an end-of-sequence token; "
            "set eos_token_id in the model folder's generation_config.json"
        )
    return found


def generate_samples(
    model_dir: str | Path,
    prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    *,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Continue each prompt with the model in `model_dir` (greedy when temperature is 0)."""
    import torch
    from transformers.utils import logging as hf_logging

    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer

    hf_logging.disable_progress_bar()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise SteelforgeError(f"model folder '{model_dir}' has no config.json; pass an exported model folder (e.g. runs/demo/pretrain/hf)")
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir))
    model.eval()
    stop_ids = stop_token_ids(model, tokenizer)
    torch.manual_seed(seed)
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                eos_token_id=stop_ids,
            )
        outputs.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return outputs


def print_samples(prompts: list[str] | tuple[str, ...], outputs: list[str]) -> None:
    rows = [(p, (o.replace("\n", "⏎"))[:120]) for p, o in zip(prompts, outputs, strict=True)]
    print_table("samples", ["prompt", "continuation"], rows, text_columns=True)


def sample_after_pretrain(recipe: Recipe) -> list[tuple[str, str]]:
    """Demo epilogue: sample from the exported pretrained model and say where it is."""
    model_dir = recipe.stage_dir("pretrain") / "hf"
    if not (model_dir / "config.json").is_file():
        return [("sample", f"no exported model at {model_dir}")]
    console.rule("[bold]sample")
    outputs = generate_samples(model_dir, DEFAULT_PROMPTS, seed=recipe.seed)
    print_samples(DEFAULT_PROMPTS, outputs)
    return [("sample", f"{len(outputs)} continuations from {model_dir}")]
