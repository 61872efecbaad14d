"""Steel-LLM: a Qwen1.5-style decoder whose FFN is a Soft Mixture of dual-SwiGLU experts.

Standalone on purpose (imports only torch and transformers): an exported checkpoint carries this file and
`configuration_steel.py` next to its weights, so `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` works without steelforge. Attention, RMSNorm and RoPE are transformers' own Qwen2
modules (SDPA/eager/flash through `attn_implementation`, RoPE computed in fp32); parameter names match the
released Steel-LLM checkpoints.

Soft-MoE (Puigcerver et al., 2023, "From Sparse to Soft Mixtures of Experts") dispatch modes, see
`SteelConfig.softmoe_dispatch`:
- `sequence`: the released checkpoints' layer, operation for operation. Slots mix every token of the
  forward call, so a position sees its future: fine for loading those checkpoints, wrong for new training.
- `causal`: the slot input of position t is the prefix softmax mixture of positions <= t; every position
  runs the experts on its own slots. Cached decoding carries the running sums (`SteelCache`).
- `token`: each token alone fills the slots (softmax over expert slots only); no mixing across positions.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RMSNorm, Qwen2RotaryEmbedding

from .configuration_steel import SteelConfig

# transformers 5.24 renamed the cache argument (and output field) `past_key_values` to `cache`; this file speaks
# whichever the installed version uses, so that an exported checkpoint loads beside either.
CACHE_KW = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a caller passed under either name."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


class SteelRMSNorm(Qwen2RMSNorm):
    """Pre-norm RMSNorm, computed in fp32."""


class SteelRotaryEmbedding(Qwen2RotaryEmbedding):
    """RoPE with `rope_theta` from the config; frequencies and angles in fp32."""


class SteelAttention(Qwen2Attention):
    """GQA attention with bias on Q/K/V only, optional sliding window, any `attn_implementation`."""


class SteelMLP(nn.Module):
    """SwiGLU (`mlp_type: raw`), `intermediate_size // mlp_div_ratio` wide."""

    def __init__(self, config: SteelConfig):
        super().__init__()
        hidden, inner = config.hidden_size, config.expert_intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SteelSENet(nn.Module):
    """Steel's dual SwiGLU (`mlp_type: senet`): h = silu(gate_up(x)) * up(x); y = silu(gate_down(h)) * down(h)."""

    def __init__(self, config: SteelConfig):
        super().__init__()
        hidden, inner = config.hidden_size, config.expert_intermediate_size
        self.gate_up_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.gate_down_proj = nn.Linear(inner, hidden, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_fn(self.gate_up_proj(x)) * self.up_proj(x)
        return self.act_fn(self.gate_down_proj(h)) * self.down_proj(h)


EXPERT_CLASSES = {"raw": SteelMLP, "senet": SteelSENet}


def _fp32_softmax(x: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """Softmax over one or several dims in fp32, cast back (as the released Steel-LLM code does)."""
    dtype = x.dtype
    x = x.float()
    e_x = torch.exp(x - torch.amax(x, dim=dim, keepdim=True))
    return (e_x / e_x.sum(dim=dim, keepdim=True)).to(dtype)


def softmoe_states(cache: Cache | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-layer running (numerator, denominator) sums of causal Soft-MoE dispatch, kept on the KV cache."""
    if cache is None:
        return None
    states = getattr(cache, "softmoe_state", None)
    if states is None:
        states = {}
        cache.softmoe_state = states
    return states


class SteelSoftMoE(nn.Module):
    """Soft-MoE layer: phi [d, n, p] and `scale` score L2-normalised tokens against L2-normalised slot keys."""

    def __init__(self, config: SteelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.dim = config.hidden_size
        self.num_experts = config.n_experts
        self.slots_per_expert = config.slots_per_expert
        self.dispatch = config.softmoe_dispatch
        self.phi = nn.Parameter(torch.empty(self.dim, self.num_experts, self.slots_per_expert))
        self.scale = nn.Parameter(torch.ones(1))
        expert_class = EXPERT_CLASSES[config.mlp_type]
        self.experts = nn.ModuleList([expert_class(config) for _ in range(self.num_experts)])

    def forward(
        self,
        x: torch.Tensor,
        cache: Cache | None = None,
        token_mask: torch.Tensor | None = None,
        doc_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        phi = self.scale * F.normalize(self.phi, dim=0)
        logits = torch.einsum("bmd,dnp->bmnp", x, phi)
        if self.dispatch == "sequence":
            return self._sequence(x, logits)
        if self.dispatch == "token":
            return self._token(x, logits)
        return self._causal(x, logits, cache, token_mask, doc_starts)

    def _sequence(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Released Steel-LLM behaviour: dispatch softmax over the tokens of this call, combine over all slots."""
        dispatch = _fp32_softmax(logits, dim=1)
        combine = _fp32_softmax(logits, dim=(2, 3))
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        outs = torch.stack([expert(slots[:, i]) for i, expert in enumerate(self.experts)], dim=1)
        return torch.einsum("bnpd,bmnp->bmd", outs, combine)

    def _token(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Every token fills all slots itself, so slots of one expert agree and their weights add up."""
        combine = torch.softmax(logits.flatten(2).float(), dim=-1).to(x.dtype)
        combine = combine.view(*logits.shape).sum(-1)  # [b, t, n]
        outs = torch.stack([expert(x) for expert in self.experts], dim=2)  # [b, t, n, d]
        return torch.einsum("btnd,btn->btd", outs, combine)

    def _causal(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        cache: Cache | None,
        token_mask: torch.Tensor | None,
        doc_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Slot inputs at position t: softmax over positions <= t, as running sums carried across calls.

        With `doc_starts` (packed documents: True where a document starts) the sums restart at every
        document, so a packed document computes what it computes alone.

        |logit| <= |scale| because tokens and slot keys are unit vectors, so subtracting |scale| bounds every
        exponent in [-2|scale|, 0]: stable without a data-dependent max, which keeps each prefix exactly
        independent of later tokens (and of how the sequence is split into cached calls).
        """
        batch, seq, n, p = logits.shape
        slots = n * p
        flat = logits.reshape(batch, seq, slots).float()
        weights = torch.exp(flat - self.scale.detach().abs().float())
        if token_mask is not None:
            weights = weights * token_mask.to(weights.dtype).unsqueeze(-1)
        states = softmoe_states(cache)
        prev = states.get(self.layer_idx) if states is not None else None
        if doc_starts is not None and prev is not None:
            raise ValueError("packed documents (restarting position_ids) cannot continue a cached Soft-MoE state")
        slot_inputs, last = _prefix_mixtures(weights, x, prev, starts=doc_starts)  # [s, b, t, d]
        if states is not None:
            states[self.layer_idx] = (last[0].detach(), last[1].detach())
        slot_inputs = slot_inputs.to(x.dtype)
        # Expert i reads its p slots, a contiguous [p, b, t, d] block: no gather or copy per expert.
        outs = torch.stack(
            [expert(slot_inputs[i * p : (i + 1) * p]) for i, expert in enumerate(self.experts)], dim=0
        )
        combine = torch.softmax(flat, dim=-1).to(x.dtype)  # [b, t, s]
        return torch.einsum("sbtd,bts->btd", outs.reshape(slots, batch, seq, self.dim), combine)


PREFIX_BLOCK = 64


def _prefix_mixtures(
    weights: torch.Tensor,
    x: torch.Tensor,
    prev: tuple[torch.Tensor, torch.Tensor] | None,
    block: int = PREFIX_BLOCK,
    starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Normalised prefix mixtures sum_{u<=t} w[u,s] x[u] / sum_{u<=t} w[u,s], blockwise, in fp32.

    weights [b, t, s] (non-negative), x [b, t, d]; `prev` is the (numerator [b, s, d], denominator [b, s])
    carried from earlier calls. Returns the mixtures as [s, b, t, d] and the new running sums.
    Within a block of `block` positions the mixture is one lower-triangular matmul; across blocks only the
    block totals are cumulated. That is a few GEMMs instead of materialising w[u,s] * x[u] and its running
    sum over [b, t, s, d], and a position still reads nothing after itself (the triangle is exact zeros).
    `starts` [b, t] (bool, True where a packed document starts) restarts the sums there: see
    `_segmented_prefix_mixtures`.
    """
    if starts is not None:
        return _segmented_prefix_mixtures(weights, x, starts, block)
    batch, seq, slots = weights.shape
    dim = x.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        c = min(block, seq)
        pad = -seq % c
        if pad:  # zero weight and zero input: the padding adds nothing to any sum
            weights = F.pad(weights, (0, 0, 0, pad))
            xf = F.pad(xf, (0, 0, 0, pad))
        nb = (seq + pad) // c
        w = weights.view(batch, nb, c, slots).permute(3, 0, 1, 2)  # [s, b, nb, c]
        xb = xf.view(batch, nb, c, dim)  # [b, nb, c, d]
        denom_in = torch.cumsum(w, dim=-1)  # running sum inside each block
        block_numer = torch.matmul(w.unsqueeze(-2), xb).squeeze(-2)  # [s, b, nb, d]
        block_denom = denom_in[..., -1]  # [s, b, nb]
        # sums of the blocks before (shifted, not inclusive minus own: that would let a block's own tokens
        # perturb its carry by rounding)
        carry_numer = F.pad(torch.cumsum(block_numer[:, :, :-1], dim=2), (0, 0, 1, 0))
        carry_denom = F.pad(torch.cumsum(block_denom[:, :, :-1], dim=2), (1, 0))
        if prev is not None:
            carry_numer = carry_numer + prev[0].float().transpose(0, 1).unsqueeze(2)
            carry_denom = carry_denom + prev[1].float().transpose(0, 1).unsqueeze(2)
        inv = (denom_in + carry_denom.unsqueeze(-1)).clamp_min(1e-30).reciprocal()  # [s, b, nb, c]
        tri = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        mix = torch.where(tri, w.unsqueeze(-2) * inv.unsqueeze(-1), 0.0)  # [s, b, nb, c(t), c(u)]
        out = torch.matmul(mix, xb)  # [s, b, nb, c, d]
        out = torch.addcmul(out, inv.unsqueeze(-1), carry_numer.unsqueeze(-2))
        out = out.reshape(slots, batch, nb * c, dim)[:, :, :seq]
        last_numer = (carry_numer[:, :, -1] + block_numer[:, :, -1]).transpose(0, 1)  # [b, s, d]
        last_denom = (carry_denom[:, :, -1] + block_denom[:, :, -1]).transpose(0, 1)  # [b, s]
    return out, (last_numer, last_denom)


def _segmented_prefix_mixtures(
    weights: torch.Tensor, x: torch.Tensor, starts: torch.Tensor, block: int = PREFIX_BLOCK
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`_prefix_mixtures` whose sums restart at every `starts` position (packed documents).

    Inside a block, position t reads u <= t of its own document (triangle AND same document). Across blocks,
    the carry into block k is the running sum of the document open at the end of block k-1: that block's
    tail (its tokens of that document) plus, when the document began before block k-1, the carry into k-1.
    Only positions of block k still in that document (no start at or before them in the block) add it.
    """
    batch, seq, slots = weights.shape
    dim = x.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        c = min(block, seq)
        pad = -seq % c
        starts = starts.bool()
        if pad:
            weights = F.pad(weights, (0, 0, 0, pad))
            xf = F.pad(xf, (0, 0, 0, pad))
            starts = F.pad(starts, (0, pad))
        nb = (seq + pad) // c
        w = weights.view(batch, nb, c, slots).permute(3, 0, 1, 2)  # [s, b, nb, c]
        xb = xf.view(batch, nb, c, dim)  # [b, nb, c, d]
        doc = torch.cumsum(starts.long(), dim=1).view(batch, nb, c)  # document index of every position
        sb = starts.view(batch, nb, c)
        tri = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        same = (doc.unsqueeze(-1) == doc.unsqueeze(-2)) & tri  # [b, nb, c(t), c(u)]
        samef = same.to(w.dtype)
        denom_in = torch.matmul(samef, w.unsqueeze(-1)).squeeze(-1)  # [s, b, nb, c]
        tail_w = w * samef[..., -1, :]  # weights of the document open at the block's end
        tail_numer = torch.matmul(tail_w.unsqueeze(-2), xb).squeeze(-2)  # [s, b, nb, d]
        tail_denom = tail_w.sum(-1)  # [s, b, nb]
        fresh = sb.any(-1)  # [b, nb]: a document starts inside the block
        carry_numer = torch.zeros_like(tail_numer)
        carry_denom = torch.zeros_like(tail_denom)
        for k in range(1, nb):
            keep = (~fresh[:, k - 1]).to(w.dtype)  # [b]
            carry_numer[:, :, k] = tail_numer[:, :, k - 1] + keep.unsqueeze(-1) * carry_numer[:, :, k - 1]
            carry_denom[:, :, k] = tail_denom[:, :, k - 1] + keep * carry_denom[:, :, k - 1]
        inherit = (torch.cumsum(sb.long(), dim=-1) == 0).to(w.dtype)  # [b, nb, c]
        inv = (denom_in + inherit * carry_denom.unsqueeze(-1)).clamp_min(1e-30).reciprocal()
        mix = samef * w.unsqueeze(-2) * inv.unsqueeze(-1)  # [s, b, nb, c(t), c(u)]
        out = torch.matmul(mix, xb)
        out = out + (inv * inherit).unsqueeze(-1) * carry_numer.unsqueeze(-2)
        out = out.reshape(slots, batch, nb * c, dim)[:, :, :seq]
        keep_last = (~fresh[:, -1]).to(w.dtype)
        last_numer = (tail_numer[:, :, -1] + keep_last.unsqueeze(-1) * carry_numer[:, :, -1]).transpose(0, 1)
        last_denom = (tail_denom[:, :, -1] + keep_last * carry_denom[:, :, -1]).transpose(0, 1)
    return out, (last_numer, last_denom)


def packed_doc_starts(position_ids: torch.Tensor | None, seq: int) -> torch.Tensor | None:
    """True where a packed document starts (position_ids not continuing the previous position), or None when
    every row is one run of positions (the usual unpacked case, left on the unsegmented path)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != seq or seq < 2:
        return None
    restart = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(restart.any()):
        return None
    return F.pad(restart, (1, 0))


class SteelDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)); the FFN is dense or Soft-MoE."""

    def __init__(self, config: SteelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = SteelAttention(config=config, layer_idx=layer_idx)
        if config.FFN_type == "softmoe_v3":
            self.mlp = SteelSoftMoE(config, layer_idx)
        else:
            self.mlp = EXPERT_CLASSES[config.mlp_type](config)
        self.input_layernorm = SteelRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = SteelRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        token_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        doc_starts: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # (called with the installed transformers' name, which its gradient checkpointing clears)
        cache = _one_cache(cache, past_key_values)
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **{CACHE_KW: cache},
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        if isinstance(self.mlp, SteelSoftMoE):
            hidden_states = self.mlp(hidden_states, cache=cache, token_mask=token_mask, doc_starts=doc_starts)
        else:
            hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class SteelCache(DynamicCache):
    """DynamicCache that also reorders/selects the causal Soft-MoE running sums (beam search, batching)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.softmoe_state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _map_states(self, fn) -> None:
        self.softmoe_state = {i: (fn(a), fn(b)) for i, (a, b) in self.softmoe_state.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_states(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_states(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_states(lambda t: t[indices, ...])

    def crop(self, tokens_to_remove: int) -> None:
        if self.softmoe_state and tokens_to_remove:
            raise ValueError(
                "causal Soft-MoE running sums cannot be rolled back; assisted decoding is unsupported"
            )
        super().crop(tokens_to_remove)


class SteelPreTrainedModel(PreTrainedModel):
    config_class = SteelConfig
    config: SteelConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["SteelDecoderLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for linears/embeddings (HF default); LeCun normal phi, unit scale."""
        super()._init_weights(module)
        if isinstance(module, SteelSoftMoE):
            init.normal_(module.phi, mean=0.0, std=module.dim**-0.5)
            init.ones_(module.scale)


class SteelModel(SteelPreTrainedModel):
    def __init__(self, config: SteelConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [SteelDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = SteelRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = SteelRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_hidden_states = bool(output_hidden_states)
        kwargs.pop("return_dict", None)
        kwargs.pop("output_attentions", None)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = SteelCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)

        token_mask = None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            token_mask = attention_mask[:, -inputs_embeds.shape[1] :]

        if not isinstance(mask_mapping := attention_mask, dict):
            mask_kwargs = {
                "config": self.config,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                CACHE_KW: cache,
                "position_ids": position_ids,
            }
            mask_mapping = {"full_attention": create_causal_mask(**mask_kwargs)}
            if self.has_sliding_layers:
                mask_mapping["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        # packed documents: Soft-MoE prefix sums restart where position_ids restart (attention gets its
        # block-diagonal mask from the same position_ids through transformers' masking utilities)
        doc_starts = packed_doc_starts(position_ids, inputs_embeds.shape[1])
        all_hidden_states: tuple[torch.Tensor, ...] = ()
        for i, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(
                hidden_states,
                attention_mask=mask_mapping[self.config.layer_types[i]],
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                token_mask=token_mask,
                doc_starts=doc_starts,
                **{CACHE_KW: cache},
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states or None,
            **{CACHE_KW: cache if use_cache else None},
        )


class SteelForCausalLM(SteelPreTrainedModel, GenerationMixin):
    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SteelConfig):
        super().__init__(config)
        self.model = SteelModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Use `SteelCache` where generate would build a plain DynamicCache (it carries the Soft-MoE sums)."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get(CACHE_KW)
        if type(cache) is DynamicCache and cache.get_seq_length() == 0:
            model_kwargs[CACHE_KW] = SteelCache(config=self.config.get_text_config(decoder=True))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=_one_cache(cache, past_key_values),
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{CACHE_KW: outputs.get(CACHE_KW)},
        )


__all__ = ["SteelCache", "SteelForCausalLM", "SteelModel", "SteelPreTrainedModel"]
