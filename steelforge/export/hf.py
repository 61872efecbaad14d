"""`steelforge export CHECKPOINT OUT_DIR`: a released Hugging Face folder from a training checkpoint.

Accepted sources: an engine checkpoint folder (`<stage>/checkpoints/step_N`, DCP shards + `recipe.yaml`), a
`checkpoints/` folder (its newest complete step), or an exported `hf/` folder. The output holds consolidated
safetensors (sharded above `max_shard_size`), `config.json` (Steel: plus its standalone modeling files and
`auto_map`; Moxin: a plain `MistralForCausalLM`), the tokenizer with its chat template,
`generation_config.json` listing every stop token, `recipe.yaml`, and a README.md model card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steelforge.errors import SteelforgeError

# Tokens that end a turn or a document in the tokenizers steelforge ships (Qwen1.5's ChatML end and
# end-of-text; SentencePiece's </s>). A chat model must stop on any of them.
STOP_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "</s>")


class ExportError(SteelforgeError):
    """The export source is not a checkpoint steelforge can read."""


@dataclass
class ExportSource:
    """What an export starts from: where the weights are, the recipe text, and the run folder."""

    kind: str  # "dcp" or "hf"
    path: Path
    recipe_yaml: str
    run_dir: Path | None
    stage: str | None
    step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> dict[str, Any]:
        return yaml.safe_load(self.recipe_yaml) or {} if self.recipe_yaml else {}


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end a generation: the tokenizer's eos plus the known turn/document ends it has."""
    ids: list[int] = []
    special = {**tokenizer.get_added_vocab(), **{t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}}
    for token in STOP_TOKENS:  # only as special tokens: Qwen's BPE has a plain "</s>" piece (id 128247)
        tid = special.get(token)
        if isinstance(tid, int) and tid >= 0 and tid not in ids:
            ids.append(tid)
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int) and eos not in ids:
        ids.insert(0, eos)
    return ids


def resolve_source(checkpoint: str | Path, run_dir: str | Path | None = None) -> ExportSource:
    """Classify `checkpoint` and find its recipe and run folder (`<run>/<stage>/checkpoints/step_N`)."""
    from steelforge.train.checkpoint import META_FILE, RECIPE_FILE, Checkpointer, checkpoint_step, is_complete

    path = Path(checkpoint)
    if not path.is_dir():
        raise ExportError(f"checkpoint '{path}' is not a folder; pass a checkpoints/step_N folder or an hf/ folder")
    if (path / "config.json").is_file():
        recipe_yaml = (path / RECIPE_FILE).read_text(encoding="utf-8") if (path / RECIPE_FILE).is_file() else ""
        stage_dir = path.parent
        guess = stage_dir.parent if (stage_dir / "checkpoints").is_dir() or path.name.startswith("hf") else None
        return ExportSource("hf", path, recipe_yaml, _run_dir(run_dir, guess), stage_dir.name if guess else None)
    if not is_complete(path):
        latest = Checkpointer(path).latest()
        if latest is None:
            raise ExportError(
                f"'{path}' holds neither a complete checkpoint ({META_FILE} + .metadata) nor config.json; "
                "pass a checkpoints/step_N folder or an hf/ folder"
            )
        path = latest
    recipe_file = path / RECIPE_FILE
    recipe_yaml = recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else ""
    if not recipe_yaml.strip():
        raise ExportError(f"checkpoint {path} has no {RECIPE_FILE}; it cannot say which model it holds")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    stage_dir = path.parent.parent
    return ExportSource(
        "dcp", path, recipe_yaml, _run_dir(run_dir, stage_dir.parent), stage_dir.name, checkpoint_step(path), meta
    )


def _run_dir(explicit: str | Path | None, guess: Path | None) -> Path | None:
    if explicit is not None:
        found = Path(explicit)
        if not found.is_dir():
            raise ExportError(f"--run-dir '{found}' is not a folder; pass the run's output folder (e.g. runs/demo)")
        return found
    return guess if guess is not None and guess.is_dir() else None


def load_source(source: ExportSource) -> tuple[Any, Any]:
    """The model (float32, CPU, eval mode) and tokenizer a source holds."""
    import torch

    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer
    from steelforge.train.checkpoint import Checkpointer

    if source.kind == "hf":
        model = load_model(str(source.path), dtype=torch.float32)
        tokenizer = load_tokenizer(str(source.path))
    else:
        recipe = source.recipe
        if not recipe.get("model"):
            raise ExportError(f"the recipe.yaml of {source.path} has no 'model:' section; it cannot be exported")
        model = load_model(recipe["model"], dtype=torch.float32)
        Checkpointer(source.path.parent).load(source.path, {"model": model})
        tokenizer = load_tokenizer(recipe.get("tokenizer", "qwen1.5"))
    model.eval()
    return model, tokenizer


def generation_config_dict(model: Any, tokenizer: Any) -> dict[str, Any]:
    """`generation_config.json`: every stop token as eos, a pad token, greedy by default."""
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    bos = getattr(model.config, "bos_token_id", None)
    out: dict[str, Any] = {"eos_token_id": stops, "pad_token_id": pad, "do_sample": False}
    if bos is not None:
        out["bos_token_id"] = bos
    return out


@dataclass
class ExportResult:
    out_dir: Path
    source: ExportSource
    files: list[str]
    parameters: int
    stop_token_ids: list[int]


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    max_shard_size: int | str = "2GB",
    run_dir: str | Path | None = None,
    dtype: str | None = None,
    license_id: str = "apache-2.0",
) -> ExportResult:
    """Write the released folder for `checkpoint` into `out_dir` atomically (aside, then renamed)."""
    import torch
    from transformers import GenerationConfig

    from steelforge.export.model_card import build_model_card
    from steelforge.train.checkpoint import save_consolidated

    source = resolve_source(checkpoint, run_dir)
    model, tokenizer = load_source(source)
    target_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, None: None}.get(dtype, "bad")
    if target_dtype == "bad":
        raise ExportError(f"--dtype '{dtype}' is unknown; use fp32, bf16 or fp16")
    if target_dtype is not None:
        model.to(target_dtype)  # the config records the dtype of the saved weights
    gen = generation_config_dict(model, tokenizer)
    model.generation_config = GenerationConfig(**gen)
    out_dir = Path(out_dir)

    def finalize(tmp: Path) -> None:
        card = build_model_card(model, tokenizer, source, generation=gen, license_id=license_id)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    save_consolidated(
        model, tokenizer, out_dir, recipe_yaml=source.recipe_yaml, max_shard_size=max_shard_size,
        finalize=finalize,
    )
    return ExportResult(
        out_dir=out_dir,
        source=source,
        files=sorted(p.name for p in out_dir.iterdir()),
        parameters=sum(p.numel() for p in model.parameters()),
        stop_token_ids=gen["eos_token_id"],
    )
