"""Named model configurations: the two papers' models and CPU-sized versions for tests and the demo.

A preset is a family (`steel` -> `SteelConfig`, `mistral` -> transformers' native `MistralConfig`) plus the
config fields; `build_config` in `loading.py` turns it into a `PretrainedConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

QWEN_VOCAB = 151_936  # Qwen1.5 tokenizer (151,646 ids) padded to a multiple of 128, as Steel-LLM ships it
MISTRAL_VOCAB = 32_000  # Mistral-7B v1 SentencePiece tokenizer, used by Moxin-7B


@dataclass(frozen=True)
class Preset:
    family: str
    description: str
    fields: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "steel-1b": Preset(
        family="steel",
        description="Steel-LLM 1B (paper Table 1): Qwen1.5 decoder, Soft-MoE of 6 dual-SwiGLU experts",
        fields={
            "vocab_size": QWEN_VOCAB,
            "hidden_size": 1792,
            "num_hidden_layers": 18,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "intermediate_size": 1792,
            "mlp_div_ratio": 4,
            "n_experts": 6,
            "slots_per_expert": 1,
            "FFN_type": "softmoe_v3",
            "mlp_type": "senet",
            "softmoe_dispatch": "causal",
            "max_position_embeddings": 2048,
            "rope_theta": 1_000_000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        },
    ),
    "moxin-7b": Preset(
        family="mistral",
        description="Moxin-7B (paper Table 1): Mistral architecture, GQA 32/8, sliding window 4096",
        fields={
            "vocab_size": MISTRAL_VOCAB,
            "hidden_size": 4096,
            "head_dim": 128,
            "intermediate_size": 14336,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "sliding_window": 4096,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10_000.0,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
    "tiny-steel": Preset(
        family="steel",
        description="CPU-sized Steel (tests, demo): 4 layers, hidden 128, 4 experts; full Qwen vocabulary",
        fields={
            "vocab_size": QWEN_VOCAB,
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 512,
            "mlp_div_ratio": 4,
            "n_experts": 4,
            "slots_per_expert": 1,
            "FFN_type": "softmoe_v3",
            "mlp_type": "senet",
            "softmoe_dispatch": "causal",
            "max_position_embeddings": 2048,
            "rope_theta": 1_000_000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        },
    ),
    "tiny-moxin": Preset(
        family="mistral",
        description="CPU-sized Moxin (tests, demo): 4 layers, hidden 128, GQA 4/2, sliding window 128",
        fields={
            "vocab_size": MISTRAL_VOCAB,
            "hidden_size": 128,
            "head_dim": 32,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "sliding_window": 128,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10_000.0,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
}


def preset_names() -> list[str]:
    """Names accepted by `load_model`, `build_config` and `steelforge model info`."""
    return list(PRESETS)
