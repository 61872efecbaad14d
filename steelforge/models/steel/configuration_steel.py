"""Steel-LLM configuration: a Qwen1.5/Qwen2 decoder whose FFN can be a Soft Mixture of Experts.

Standalone on purpose (imports only transformers): an exported checkpoint carries this file next to its
weights so that `AutoConfig.from_pretrained(dir, trust_remote_code=True)` works without steelforge.
Field names follow the released Steel-LLM `config.json` (`FFN_type`, `mlp_type`, `n_experts`, ...).
"""

from __future__ import annotations

from transformers.models.qwen2.configuration_qwen2 import Qwen2Config

FFN_TYPES = ("raw", "softmoe_v3")
MLP_TYPES = ("raw", "senet")
# sequence: the released checkpoints' Soft-MoE (dispatch softmax over every token of the forward call; not causal)
# causal:   slot inputs at position t mix positions <= t only (prefix softmax), experts applied per position
# token:    each token is its own Soft-MoE input (softmax over the expert slots only)
DISPATCH_MODES = ("sequence", "causal", "token")


class SteelConfig(Qwen2Config):
    """Qwen2 fields plus Steel's FFN choices; `softmoe_dispatch` picks how Soft-MoE slots see the tokens."""

    model_type = "steel"

    FFN_type: str = "softmoe_v3"
    mlp_type: str = "senet"
    n_experts: int = 6
    slots_per_expert: int = 1
    mlp_div_ratio: int = 4
    softmoe_dispatch: str = "causal"

    def __post_init__(self, **kwargs):
        if self.FFN_type not in FFN_TYPES:
            raise ValueError(f"FFN_type must be one of {FFN_TYPES}, got {self.FFN_type!r}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if self.softmoe_dispatch not in DISPATCH_MODES:
            raise ValueError(
                f"softmoe_dispatch must be one of {DISPATCH_MODES}, got {self.softmoe_dispatch!r}"
            )
        if self.intermediate_size % self.mlp_div_ratio:
            raise ValueError(
                f"intermediate_size {self.intermediate_size} is not divisible by mlp_div_ratio {self.mlp_div_ratio}"
            )
        super().__post_init__(**kwargs)

    @property
    def expert_intermediate_size(self) -> int:
        """Inner width of one expert (and of the dense FFN): Steel divides `intermediate_size` by `mlp_div_ratio`."""
        return self.intermediate_size // self.mlp_div_ratio


__all__ = ["SteelConfig"]
