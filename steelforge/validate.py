"""Pre-flight checks: every mistake that can be found before a stage starts is found before the first one.

`steelforge validate`, `steelforge run` and the single-stage commands call `preflight(recipe, stages)`. It checks
what pydantic cannot: operator names and parameters against the cleaning registry (with "did you mean"), input
globs that match nothing, the tokenizer and model sources (without building the tokenizer or any weights),
that output folders can be written, and that each stage has the inputs it needs. The first problem is raised
as one `RecipeError` sentence (exit code 2), so a typo costs seconds instead of the hours of the stages before.
"""

from __future__ import annotations

import difflib
import glob
import inspect
import os
from pathlib import Path
from typing import Any

from steelforge.errors import RecipeError, SteelforgeError


def _did_you_mean(word: str, choices: list[str], fallback: str) -> str:
    guess = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{guess[0]}'?" if guess else fallback


def check_operators(process: list[Any]) -> None:
    """Every `data.process` entry names a registered operator and only parameters it accepts."""
    from steelforge.clean.ops import registered_ops

    ops = registered_ops()
    for index, spec in enumerate(process):
        if isinstance(spec, str):
            name, params = spec, {}
        elif isinstance(spec, dict) and len(spec) == 1:
            name, params = next(iter(spec.items()))
            params = params or {}
        else:
            raise RecipeError(
                f"data.process.{index} = {spec!r} must be a single 'operator_name: {{params}}' mapping"
            )
        if not isinstance(params, dict):
            raise RecipeError(
                f"data.process.{index}: the parameters of '{name}' must be a mapping, not {params!r}"
            )
        cls = ops.get(name)
        if cls is None:
            fix = _did_you_mean(name, list(ops), "see `steelforge data ops` for the list")
            raise RecipeError(f"unknown operator '{name}' in data.process.{index}; {fix}")
        accepted = sorted(
            set(inspect.signature(cls.__init__).parameters) - {"self", "semantics", "args", "kwargs"}
        )
        for param in params:
            if param not in accepted:
                fix = _did_you_mean(param, accepted, f"its parameters are: {', '.join(accepted) or 'none'}")
                raise RecipeError(f"operator '{name}' (data.process.{index}) has no parameter '{param}'; {fix}")


def check_input_globs(recipe: Any, stages: list[str]) -> None:
    """Every `data.inputs[*].path` and `pack.inputs` glob of a stage about to run matches at least one file."""
    sources: list[tuple[str, str]] = []
    if recipe.data is not None and "data" in stages:
        for i, source in enumerate(recipe.data.inputs):
            sources += [(f"data.inputs.{i}.path", pattern) for pattern in source.globs()]
    if recipe.pack is not None and recipe.pack.inputs and "pack" in stages:
        sources += [(f"pack.inputs.{i}", pattern) for i, pattern in enumerate(recipe.pack.inputs)]
    for key, pattern in sources:
        if not glob.glob(os.path.expanduser(pattern), recursive=True):
            raise RecipeError(
                f"'{key}' = '{pattern}' matches no file (relative paths start at {Path.cwd()}); fix the path or glob"
            )


def check_tokenizer_source(name: str) -> None:
    """A named tokenizer steelforge builds offline, or a usable tokenizer folder; nothing is built here."""
    from steelforge.tokenizers.registry import TOKENIZER_NAMES, _check_tokenizer_dir

    if name in TOKENIZER_NAMES:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        _check_tokenizer_dir(path)
        return
    fix = _did_you_mean(name, list(TOKENIZER_NAMES), "or a folder holding tokenizer.json")
    names = ", ".join(f"'{n}'" for n in TOKENIZER_NAMES)
    raise RecipeError(f"tokenizer '{name}' is not a named tokenizer ({names}) nor an existing folder; {fix}")


def check_model_source(recipe: Any) -> None:
    """The `model:` section resolves to a config and an architecture (built on the meta device: no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from steelforge.models.loading import build_config
    from steelforge.models.presets import preset_names

    spec = recipe.model
    if spec.preset is not None and spec.preset not in preset_names():
        fix = _did_you_mean(spec.preset, preset_names(), f"choose one of {', '.join(preset_names())}")
        raise RecipeError(f"model.preset '{spec.preset}' is unknown; {fix}")
    config = build_config(spec)
    for key, value in config.to_dict().items():
        sized = key.endswith(("_size", "_dim")) or key.startswith("num_") or key == "vocab_size"
        if sized and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            where = f"model.overrides.{key}" if key in spec.overrides else f"the model's {key}"
            raise RecipeError(f"{where} = {value} must be a positive size; give a whole number of at least 1")
    try:
        with torch.device("meta"):
            # the architecture only: the attention kernel (flash-attn on GPU nodes) is checked where it runs
            AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except (ValueError, TypeError, RuntimeError, AssertionError, ZeroDivisionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(
            f"the model: section does not describe a buildable model ({first}); check model.overrides"
        ) from None


def _writable(path: Path) -> bool:
    """True when `path` can be created or written (its nearest existing ancestor is a writable folder)."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def check_outputs(recipe: Any, stages: list[str]) -> None:
    for stage in stages:
        out = recipe.stage_dir(stage)
        if out.exists() and not out.is_dir():
            raise RecipeError(f"the {stage} output '{out}' is a file, not a folder; remove it or set another out_dir")
        if not _writable(out):
            raise RecipeError(f"the {stage} output folder '{out}' cannot be written; set out_dir to a writable folder")


def check_stage_inputs(recipe: Any, stages: list[str]) -> None:
    """Each stage can find its input: from an earlier stage of this run, or from what is already on disk."""
    needs_clean_output = "pack" in stages and not (recipe.pack and recipe.pack.inputs) and "data" not in stages
    if needs_clean_output and not (recipe.stage_dir("data") / "_SUCCESS").is_file():
        raise RecipeError(
            "the pack stage has no input: add a 'data:' section, set pack.inputs to globs of documents, "
            f"or run `steelforge clean` first (no finished output in '{recipe.stage_dir('data')}')"
        )
    if "pretrain" in stages:
        cfg = recipe.pretrain
        if cfg.stores:
            for i, store in enumerate(cfg.stores):
                if not (Path(store) / "manifest.json").is_file():
                    raise RecipeError(
                        f"pretrain.stores.{i} = '{store}' is not a token store (no manifest.json); run "
                        "`steelforge pack` for it or fix the path"
                    )
        elif "pack" not in stages and not (recipe.stage_dir("pack") / "manifest.json").is_file():
            raise RecipeError(
                "the pretrain stage has no token store: add a 'pack:' section, set pretrain.stores, or run "
                f"`steelforge pack` first (no store in '{recipe.stage_dir('pack')}')"
            )
        if cfg.val_store is not None and not (Path(cfg.val_store) / "manifest.json").is_file():
            raise RecipeError(f"pretrain.val_store = '{cfg.val_store}' is not a token store (no manifest.json)")
        if cfg.resume is not None and not (Path(cfg.resume.from_) / "checkpoint.json").is_file():
            raise RecipeError(
                f"pretrain.resume.from = '{cfg.resume.from_}' is not a complete checkpoint (no checkpoint.json); "
                "point it at a .../checkpoints/step_* folder"
            )


def preflight(recipe: Any, stages: list[str]) -> None:
    """Run every check relevant to `stages`; raises one `RecipeError` sentence for the first problem."""
    try:
        if "data" in stages and recipe.data is not None:
            check_operators(recipe.data.process)
        check_input_globs(recipe, stages)
        if {"pack", "pretrain"} & set(stages):
            check_tokenizer_source(str(recipe.tokenizer))
        if "pretrain" in stages and recipe.model is not None:
            check_model_source(recipe)
        check_outputs(recipe, stages)
        check_stage_inputs(recipe, stages)
    except RecipeError:
        raise
    except SteelforgeError as exc:  # e.g. the tokenizer folder check: same sentence, recipe exit code
        raise RecipeError(str(exc)) from None


__all__ = [
    "check_input_globs",
    "check_model_source",
    "check_operators",
    "check_outputs",
    "check_stage_inputs",
    "check_tokenizer_source",
    "preflight",
]
