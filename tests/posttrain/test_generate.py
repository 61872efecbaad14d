"""Batched KV-cache generation equals uncached greedy decoding, token for token, with left-padded prompts."""

from __future__ import annotations

import pytest
import torch

from steelforge.models.generate import generate, left_pad, sample_next

SMALL = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.3,  # large weights: every sub-layer (Soft-MoE included) moves the logits
}
PAD = 0


def _model(preset: str, seed: int = 0, attn: str = "sdpa", **overrides):
    from steelforge.models.loading import load_model

    torch.manual_seed(seed)
    fields = {**SMALL, **({"head_dim": 16} if preset == "tiny-moxin" else {}), **overrides}
    model = load_model({"preset": preset, "overrides": fields, "attn_implementation": attn})
    with torch.no_grad():  # experts big enough that the Soft-MoE mixture visibly matters
        for name, param in model.named_parameters():
            if name.endswith("mlp.scale"):
                param.fill_(2.0)
            elif ".mlp.experts." in name:
                param.normal_(0.0, 0.5)
    return model.eval()


def _prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in lengths]


def _uncached_greedy(model, prompt: list[int], max_new: int, stop: set[int]) -> list[int]:
    """Reference: one prompt alone, a full forward over the whole sequence per new token, no cache."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            tok = int(logits.argmax())
            out.append(tok)
            ids.append(tok)
            if tok in stop:
                break
    return out


CASES = [
    ("tiny-steel", {"softmoe_dispatch": "causal"}, "sdpa"),
    ("tiny-steel", {"softmoe_dispatch": "causal"}, "eager"),
    ("tiny-steel", {"softmoe_dispatch": "token"}, "sdpa"),
    ("tiny-moxin", {}, "sdpa"),
    ("tiny-moxin", {"sliding_window": 6}, "eager"),
]


@pytest.mark.parametrize(("preset", "overrides", "attn"), CASES)
def test_cached_batched_greedy_equals_uncached(preset, overrides, attn):
    model = _model(preset, seed=1, attn=attn, **overrides)
    prompts = _prompts([3, 11, 1, 7, 16], seed=2)
    result = generate(model, prompts, max_new_tokens=12, stop_token_ids=[], pad_token_id=PAD)
    for prompt, seq in zip(prompts, result.sequences, strict=True):
        assert seq == _uncached_greedy(model, prompt, 12, set())
    assert result.finish_reasons == ["length"] * len(prompts)
    assert result.completion_tokens == 12 * len(prompts)
    assert result.prompt_tokens == sum(map(len, prompts))
    assert result.num_truncated == len(prompts)


def test_left_padding_does_not_leak_into_causal_soft_moe():
    """The same prompt alone and beside a much longer one gives the same logits (pads enter no mixture)."""
    model = _model("tiny-steel", seed=3, softmoe_dispatch="causal")
    short, long = _prompts([4, 15], seed=4)
    ids, mask = left_pad([short, long], PAD)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=pos).logits[0, -4:]
        alone = model(torch.tensor([short])).logits[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_stop_tokens_end_rows_and_finished_rows_stop():
    model = _model("tiny-steel", seed=5, softmoe_dispatch="causal")
    prompts = _prompts([5, 9, 2, 6], seed=6)
    free = generate(model, prompts, max_new_tokens=10, stop_token_ids=[], pad_token_id=PAD)
    # stop on the 3rd generated token of row 1: that row ends there (token included), the others go on
    stop_tok = free.sequences[1][2]
    streamed: list[list[int | None]] = []
    result = generate(
        model,
        prompts,
        max_new_tokens=10,
        stop_token_ids=[stop_tok],
        pad_token_id=PAD,
        on_tokens=streamed.append,
    )
    for ref, seq, reason in zip(free.sequences, result.sequences, result.finish_reasons, strict=True):
        if stop_tok in ref:
            cut = ref.index(stop_tok) + 1
            assert seq == ref[:cut] and reason == "stop"
        else:
            assert seq == ref and reason == "length"
    # streaming: one list per step, None once a row is finished, and the stream rebuilds the sequences
    assert len(streamed) == result.steps
    for row, seq in enumerate(result.sequences):
        column = [step[row] for step in streamed]
        assert [t for t in column if t is not None] == seq
        assert all(t is None for t in column[len(seq) :])
    assert result.completion_tokens == sum(map(len, result.sequences))


def test_all_rows_stopping_ends_generation_early():
    model = _model("tiny-moxin", seed=7)
    prompts = _prompts([3, 8], seed=8)
    free = generate(model, prompts, max_new_tokens=8, stop_token_ids=[], pad_token_id=PAD)
    stops = [free.sequences[0][1], free.sequences[1][1]]
    result = generate(model, prompts, max_new_tokens=8, stop_token_ids=stops, pad_token_id=PAD)
    assert result.finish_reasons == ["stop", "stop"]
    assert result.steps == max(len(s) for s in result.sequences) <= 2


def test_should_stop_cancels_unfinished_rows():
    model = _model("tiny-moxin", seed=7)
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    result = generate(
        model,
        _prompts([3, 5], 9),
        max_new_tokens=20,
        stop_token_ids=[],
        pad_token_id=PAD,
        should_stop=should_stop,
    )
    assert result.finish_reasons == ["cancelled", "cancelled"]
    assert [len(s) for s in result.sequences] == [3, 3]


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k():
    model = _model("tiny-steel", seed=11, softmoe_dispatch="causal")
    prompts = _prompts([4, 6, 2], seed=12)

    def run(seed: int):
        g = torch.Generator().manual_seed(seed)
        return generate(
            model,
            prompts,
            max_new_tokens=8,
            temperature=1.0,
            stop_token_ids=[],
            pad_token_id=PAD,
            generator=g,
        ).sequences

    assert run(0) == run(0)
    assert run(0) != run(1)
    # top_k=1 is greedy whatever the temperature
    g = torch.Generator().manual_seed(0)
    top1 = generate(
        model,
        prompts,
        max_new_tokens=8,
        temperature=1.5,
        top_k=1,
        stop_token_ids=[],
        pad_token_id=PAD,
        generator=g,
    )
    greedy = generate(model, prompts, max_new_tokens=8, stop_token_ids=[], pad_token_id=PAD)
    assert top1.sequences == greedy.sequences


def test_sample_next_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, temperature=1.0, top_p=0.7, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, temperature=1.0, top_p=0.01, generator=g)) for _ in range(50)}
    assert draws == {0}
    assert int(sample_next(logits)) == 0


def test_edge_cases():
    model = _model("tiny-moxin", seed=7)
    assert generate(model, [], max_new_tokens=4, stop_token_ids=[2], pad_token_id=PAD).sequences == []
    zero = generate(model, [[5, 6]], max_new_tokens=0, stop_token_ids=[2], pad_token_id=PAD)
    assert zero.sequences == [[]] and zero.finish_reasons == ["length"]
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], max_new_tokens=4, stop_token_ids=[2], pad_token_id=PAD)


@pytest.mark.parametrize(
    ("preset", "overrides"), [("tiny-steel", {"softmoe_dispatch": "causal"}), ("tiny-moxin", {})]
)
def test_repeated_prompts_share_one_prefill(preset, overrides):
    """GRPO's G copies of a prompt are prefilled once and the cache rows copied: same tokens as uncached."""
    model = _model(preset, seed=13, **overrides)
    a, b = _prompts([6, 3], seed=14)
    prompts = [a, a, b, a, b]
    result = generate(model, prompts, max_new_tokens=8, stop_token_ids=[], pad_token_id=PAD)
    for prompt, seq in zip(prompts, result.sequences, strict=True):
        assert seq == _uncached_greedy(model, prompt, 8, set())
    assert result.prompt_tokens == 3 * 6 + 2 * 3
    sampled = generate(
        model,
        [a] * 4,
        max_new_tokens=8,
        temperature=1.0,
        stop_token_ids=[],
        pad_token_id=PAD,
        generator=torch.Generator().manual_seed(0),
    )
    assert len({tuple(s) for s in sampled.sequences}) > 1  # copies sample independently
