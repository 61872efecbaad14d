"""Analytic matmul FLOPs per token, for MFU.

Counts what `torch.utils.flop_counter.FlopCounterMode` counts (matmuls and attention; no norms, activations,
softmaxes or embedding look-ups): 2 FLOPs per multiply-add of every projection a token goes through, plus
4·heads·head_dim·seq for attention scores and values per layer (the full square, as the 12·L·d·T convention
and the counter both do). Training = 3x forward. Soft-MoE counts its real matmuls per dispatch mode: in
`sequence` mode the experts run on n·p slots per sequence, so they cost 1/seq_len of a token's share.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from steelforge.models.steel.modeling_steel import PREFIX_BLOCK


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _attention_params(config: PretrainedConfig) -> int:
    """Weights of Q, K, V and O (biases are additions, not matmuls)."""
    d, hd = config.hidden_size, _head_dim(config)
    q = config.num_attention_heads * hd
    kv = (config.num_key_value_heads or config.num_attention_heads) * hd
    return d * q + 2 * d * kv + q * d


def _ffn_forward_flops(config: PretrainedConfig, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's FFN (dense SwiGLU, or Steel's dense/Soft-MoE FFN)."""
    d = config.hidden_size
    if not hasattr(config, "FFN_type"):  # Llama/Mistral/Qwen2-style dense SwiGLU
        return 2.0 * 3 * d * config.intermediate_size
    inner = config.intermediate_size // config.mlp_div_ratio
    expert = (4 if config.mlp_type == "senet" else 3) * d * inner
    if config.FFN_type == "raw":
        return 2.0 * expert
    n, p = config.n_experts, config.slots_per_expert
    slots = n * p
    router = 2.0 * d * slots  # token . phi logits
    mode = config.softmoe_dispatch
    if mode == "sequence":
        # dispatch einsum (slots x tokens x d) + experts on the slots of a sequence + combine einsum
        return router + 2.0 * d * slots + 2.0 * slots * expert / seq_len + 2.0 * d * slots
    if mode == "token":
        # each expert once per token, then the per-expert weighted sum
        return router + 2.0 * n * expert + 2.0 * n * d
    # causal: prefix mixing in blocks of c positions (a block-total matvec and a c x c triangular matmul per
    # slot, padding included, as `_prefix_mixtures` runs them); experts on every slot of every position; combine
    c = min(PREFIX_BLOCK, seq_len)
    padded = -(-seq_len // c) * c
    prefix = 2.0 * slots * d * (1 + c) * padded / seq_len
    return router + prefix + 2.0 * slots * expert + 2.0 * slots * d


def flops_per_token(config: PretrainedConfig, seq_len: int, training: bool = True) -> float:
    """Matmul FLOPs per token of a decoder LM at `seq_len` (x3 for forward+backward when `training`)."""
    layers = config.num_hidden_layers
    per_layer = 2.0 * _attention_params(config) + _ffn_forward_flops(config, seq_len)
    attention = 4.0 * config.num_attention_heads * _head_dim(config) * seq_len
    head = 2.0 * config.hidden_size * config.vocab_size
    forward = layers * (per_layer + attention) + head
    return 3.0 * forward if training else forward
