"""`token_logps` equals log_softmax(full logits).gather, in values, entropies and gradients, on padded and packed rows."""

from __future__ import annotations

import itertools

import pytest
import torch

from steelforge.posttrain.logprobs import selected_logps, token_logps

VOCAB = 97


def _qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.2, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def _steel(seed: int = 0):
    from models.conftest import small_model

    return small_model("tiny-steel", seed=seed, vocab_size=VOCAB)


def _full_reference(model, ids, attention_mask, completion_mask, position_ids=None, temperature: float = 1.0):
    """The plain path: the model's [B, T, V] logits, fp32 log_softmax, gather; entropy from the full softmax."""
    mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
    if position_ids is None and mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: HF generate's numbering
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits.float()
    logits = logits / temperature
    logp_all = logits[:, :-1].log_softmax(-1)
    picked = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    keep = completion_mask[:, 1:].to(picked.dtype)
    zero = torch.zeros(ids.shape[0], 1)
    return torch.cat([zero, picked * keep], 1), torch.cat([zero, entropy * keep], 1)


def _batch(kind: str, seed: int = 0):
    """Rows of different lengths: left-padded prompts, right-padded completions, or two packed rows."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 11), generator=gen)
    lengths = torch.tensor([11, 7, 4])
    arange = torch.arange(11)
    position_ids = None
    if kind == "left":
        attention = (arange[None] >= 11 - lengths[:, None]).long()
        completion = attention * (arange[None] >= 7).long()
    elif kind == "right":
        attention = (arange[None] < lengths[:, None]).long()
        completion = attention * (arange[None] >= 2).long()
    else:  # packed: documents of lengths (4, 7), (5, 3, 3) and (11) in three rows
        attention = torch.ones(3, 11, dtype=torch.long)
        position_ids = torch.stack([
            torch.cat([torch.arange(4), torch.arange(7)]),
            torch.cat([torch.arange(5), torch.arange(3), torch.arange(3)]),
            torch.arange(11),
        ])  # fmt: skip
        completion = (position_ids >= 2).long()
    ids = ids * attention  # pad id 0
    return ids, attention, completion, position_ids


def _grads(model, fn, weights):
    model.zero_grad(set_to_none=True)
    logps, entropy = fn()
    (logps * weights[0] + entropy * weights[1]).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("builder", [_qwen2, _steel], ids=["qwen2", "steel"])
@pytest.mark.parametrize("kind", ["left", "right", "packed"])
def test_values_entropy_and_gradients_equal_full_logits(builder, kind: str) -> None:
    model = builder()
    ids, attention, completion, position_ids = _batch(kind)
    ours, ours_entropy = token_logps(model, ids, attention, completion, position_ids, chunk_size=4, return_entropy=True)
    full, full_entropy = _full_reference(model, ids, attention, completion, position_ids)
    assert ours.dtype == torch.float32 and ours.shape == ids.shape
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_entropy, full_entropy, rtol=1e-5, atol=1e-5)
    assert not ours[:, 0].any() and not ours[completion == 0].any()

    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(2, *ids.shape, generator=gen)
    ours_g = _grads(model, lambda: token_logps(model, ids, attention, completion, position_ids, chunk_size=3,
                                               return_entropy=True), weights)  # fmt: skip
    full_g = _grads(model, lambda: _full_reference(model, ids, attention, completion, position_ids), weights)
    assert ours_g.keys() == full_g.keys()
    for name, ref in full_g.items():
        # float32 summation order differs; bound the error relative to the parameter's largest gradient
        atol = 1e-5 * float(ref.abs().max())
        torch.testing.assert_close(ours_g[name], ref, rtol=1e-4, atol=atol, msg=name)


def test_packed_rows_score_like_separate_documents() -> None:
    """Packed position ids give each document its own attention: equal to scoring the documents one by one."""
    model = _qwen2()
    ids, attention, completion, position_ids = _batch("packed")
    packed = token_logps(model, ids, attention, completion, position_ids)
    starts = [*(position_ids[1] == 0).nonzero().flatten().tolist(), 11]
    for start, end in itertools.pairwise(starts):
        doc = ids[1:2, start:end]
        alone = token_logps(model, doc, None, completion[1:2, start:end])
        torch.testing.assert_close(packed[1:2, start:end], alone, rtol=1e-5, atol=1e-5)


def test_packed_rows_with_trailing_padding() -> None:
    """Right padding after packed documents is dropped from the mask so packing is still detected."""
    model = _qwen2()
    ids, _, completion, position_ids = _batch("packed")
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0
    completion = completion * attention
    ours = token_logps(model, ids, attention, completion, position_ids)
    full, _ = _full_reference(model, ids, None, completion, position_ids)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    attention[1, :2] = 0
    with pytest.raises(ValueError, match="pad packed rows on the right"):
        token_logps(model, ids, attention, completion, position_ids)


def test_default_positions_on_left_padding() -> None:
    """Default: cumsum(mask) - 1 (HF generate). TRL's 0..T-1 numbering agrees to rounding under RoPE."""
    model = _qwen2()
    ids, attention, completion, _ = _batch("left")
    default = token_logps(model, ids, attention, completion)
    generate = token_logps(model, ids, attention, completion, (attention.cumsum(1) - 1).clamp(min=0))
    trl = token_logps(model, ids, attention, completion, torch.arange(ids.shape[1]).expand_as(ids))
    assert torch.equal(default, generate)
    torch.testing.assert_close(default, trl, rtol=1e-5, atol=1e-5)
    # without padding the default is plain 0..T-1
    full = torch.ones_like(ids)
    assert torch.equal(token_logps(model, ids, full, completion), token_logps(model, ids, None, completion))


def test_temperature_divides_the_logits() -> None:
    model = _qwen2()
    ids, attention, completion, _ = _batch("right")
    ours = token_logps(model, ids, attention, completion, temperature=0.7)
    full, _ = _full_reference(model, ids, attention, completion, temperature=0.7)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)


def test_bf16_model_gives_fp32_log_probs() -> None:
    model = _qwen2().to(torch.bfloat16)
    ids, attention, completion, _ = _batch("left")
    ours, entropy = token_logps(model, ids, attention, completion, return_entropy=True)
    assert ours.dtype == entropy.dtype == torch.float32
    full, full_entropy = _full_reference(model, ids, attention, completion)
    torch.testing.assert_close(ours, full, rtol=0, atol=3e-2)
    torch.testing.assert_close(entropy, full_entropy, rtol=0, atol=3e-2)
    ours.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_selected_logps_with_bias_and_frozen_head(chunk: int) -> None:
    """Rows straight through the autograd function: a head bias, and a frozen head (hidden gradient only)."""
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(13, 8, generator=gen, requires_grad=True)
    weight = torch.randn(VOCAB, 8, generator=gen, requires_grad=True)
    bias = torch.randn(VOCAB, generator=gen, requires_grad=True)
    targets = torch.randint(0, VOCAB, (13,), generator=gen)
    upstream = torch.randn(2, 13, generator=gen)

    logps, entropy = selected_logps(hidden, weight, targets, bias=bias, chunk_size=chunk, return_entropy=True)
    ours = torch.autograd.grad((logps * upstream[0] + entropy * upstream[1]).sum(), (hidden, weight, bias))
    logp_all = (hidden @ weight.T + bias).log_softmax(-1)
    ref_logps = logp_all.gather(1, targets[:, None]).squeeze(1)
    ref_entropy = -(logp_all.exp() * logp_all).sum(-1)
    ref = torch.autograd.grad((ref_logps * upstream[0] + ref_entropy * upstream[1]).sum(), (hidden, weight, bias))
    torch.testing.assert_close(logps, ref_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    (only_hidden,) = torch.autograd.grad(
        selected_logps(hidden, weight.detach(), targets, chunk_size=chunk).sum(), (hidden,)
    )
    (ref_hidden,) = torch.autograd.grad((hidden @ weight.detach().T).log_softmax(-1).gather(1, targets[:, None]).sum(),
                                        (hidden,))  # fmt: skip
    torch.testing.assert_close(only_hidden, ref_hidden, rtol=1e-4, atol=1e-5)


def test_no_scored_positions_and_bad_shapes() -> None:
    model = _qwen2()
    ids, attention, _, _ = _batch("right")
    out = token_logps(model, ids, attention, torch.zeros_like(ids))
    assert out.shape == ids.shape and not out.any()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        token_logps(model, ids, attention, torch.ones(3, 4, dtype=torch.long))


def test_forward_hidden_is_used_when_it_can_take_the_batch() -> None:
    """FSDP models score through `forward_hidden`; with padding only when it accepts an attention mask."""
    import types

    model = _qwen2()
    calls: list[str] = []

    def plain(self, input_ids, position_ids=None):
        calls.append("plain")
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    def masked(self, input_ids, position_ids=None, attention_mask=None):
        calls.append("masked")
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # fmt: skip

    ids, attention, completion, _ = _batch("right")
    expected = token_logps(model, ids, attention, completion)
    model.forward_hidden = types.MethodType(plain, model)
    torch.testing.assert_close(token_logps(model, ids, torch.ones_like(ids), completion), expected)
    torch.testing.assert_close(token_logps(model, ids, attention, completion), expected)  # falls back to .model
    model.forward_hidden = types.MethodType(masked, model)
    torch.testing.assert_close(token_logps(model, ids, attention, completion), expected)
    assert calls == ["plain", "masked"]
