"""Build or load any causal LM: a preset, a recipe `model:` block, an HF folder, an official Steel-LLM folder.

No code from a model folder is ever executed: Steel is registered with the Auto classes by this package,
official Steel-LLM folders (`model_type: qwen2` plus `FFN_type`) are recognised from their `config.json`, and
other folders that need `auto_map` code are refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from steelforge.errors import RecipeError
from steelforge.models.config import ModelSpec
from steelforge.models.presets import PRESETS, preset_names
from steelforge.models.steel import SteelConfig

logger = logging.getLogger("steelforge.models")

ModelSource = str | Path | ModelSpec | Mapping[str, Any] | PretrainedConfig
FAMILIES: dict[str, type[PretrainedConfig]] = {"steel": SteelConfig, "mistral": MistralConfig}
# keys of an official Steel-LLM config.json that name its remote code rather than the architecture
_OFFICIAL_ONLY_KEYS = ("model_type", "auto_map", "architectures", "transformers_version")


def _spec(source: ModelSource) -> ModelSpec | PretrainedConfig:
    """Normalise every accepted source to a ModelSpec (or a ready config)."""
    if isinstance(source, PretrainedConfig | ModelSpec):
        return source
    if isinstance(source, Mapping):
        try:
            return ModelSpec(**source)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "model"
            raise RecipeError(f"model.{key}: {first['msg']}; see `steelforge model info --help`") from None
    text = str(source)
    if text in PRESETS:
        return ModelSpec(preset=text)
    if Path(text).is_dir():
        return ModelSpec(path=text)
    raise RecipeError(
        f"model '{text}' is neither a preset ({', '.join(preset_names())}) nor an existing model folder"
    )


def is_official_steel(config_dict: Mapping[str, Any]) -> bool:
    """Official Steel-LLM releases say `model_type: qwen2` and carry Steel's FFN keys."""
    return config_dict.get("model_type") == "qwen2" and "FFN_type" in config_dict


def _read_config_json(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise RecipeError(f"model folder {path} has no config.json; point model.path at an HF model folder")
    return json.loads(config_file.read_text())


def _folder_config(path: Path) -> PretrainedConfig:
    raw = _read_config_json(path)
    if is_official_steel(raw):
        fields = {k: v for k, v in raw.items() if k not in _OFFICIAL_ONLY_KEYS}
        fields["softmoe_dispatch"] = "sequence"
        logger.warning(
            "%s is an official Steel-LLM checkpoint: loaded with softmoe_dispatch=sequence, which is NOT causal "
            "(each position sees the whole forward call); set softmoe_dispatch=causal to train it further.",
            path,
        )
        return SteelConfig(**fields)
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise RecipeError(
            f"model folder {path} has model_type {model_type!r}, which transformers does not know; steelforge "
            "never runs code shipped inside a model folder"
        )
    return AutoConfig.from_pretrained(path, trust_remote_code=False)


def _apply_overrides(config: PretrainedConfig, overrides: Mapping[str, Any], origin: str) -> PretrainedConfig:
    if not overrides:
        return config
    known = set(config.to_dict()) | {"rope_theta"}
    for key in overrides:
        if key not in known:
            raise RecipeError(
                f"model.overrides.{key} is not a field of the {origin} config; check the spelling"
            )
    fields = {**config.to_dict(), **overrides}
    if "rope_theta" in overrides:
        fields["rope_parameters"] = {
            **(fields.get("rope_parameters") or {}),
            "rope_theta": overrides["rope_theta"],
        }
        fields.pop("rope_theta")
    for derived in ("model_type", "transformers_version", "layer_types"):
        if derived not in overrides:
            fields.pop(derived, None)  # layer_types follows num_hidden_layers/sliding_window unless given
    return type(config)(**fields)


def build_config(source: ModelSource) -> PretrainedConfig:
    """The config for a preset name, a `model:` block/ModelSpec, or a folder (with recipe overrides applied)."""
    spec = _spec(source)
    if isinstance(spec, PretrainedConfig):
        return spec
    if spec.preset is not None:
        if spec.preset not in PRESETS:
            raise RecipeError(
                f"model.preset '{spec.preset}' is unknown; choose one of {', '.join(preset_names())}"
            )
        preset = PRESETS[spec.preset]
        config = FAMILIES[preset.family](**preset.fields)
        origin = spec.preset
    else:
        path = Path(spec.path)
        if not path.is_dir():
            raise RecipeError(f"model.path {path} is not a folder; give an HF model folder")
        config = _folder_config(path)
        origin = str(path)
    config = _apply_overrides(config, spec.overrides, origin)
    config._attn_implementation = spec.attn_implementation
    return config


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype) or getattr(
            torch, dtype
        )
    except AttributeError:
        raise RecipeError(f"dtype '{dtype}' is unknown; use float32, bfloat16 or float16") from None


def load_model(
    source: ModelSource,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    on_meta: bool = False,
) -> PreTrainedModel:
    """A causal LM with HF's layout (`model.model.layers`, `model.lm_head`).

    Presets and configs get fresh weights (init from `initializer_range`); folders load their weights.
    `on_meta=True` builds the architecture on the meta device without weights (the training engine calls
    `to_empty()` and `init_weights()` shard by shard).
    """
    spec = _spec(source)
    config = build_config(spec)
    attn = config._attn_implementation or "sdpa"
    torch_dtype = _as_dtype(dtype)
    path = Path(spec.path) if isinstance(spec, ModelSpec) and spec.path else None
    if on_meta:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch_dtype)
        return model
    if path is not None and _has_weights(path):
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, attn_implementation=attn, dtype=torch_dtype, trust_remote_code=False
        )
    else:
        # Fresh weights are allocated and initialised on the target device: a 7B init on a GPU takes
        # seconds, on the CPU followed by a copy minutes.
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch_dtype)
    if device is not None:
        model = model.to(device)
    return model
