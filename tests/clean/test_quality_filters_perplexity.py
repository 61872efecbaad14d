"""perplexity_filter: build-time errors, and causal-LM perplexities that match a direct computation."""

from __future__ import annotations

import math

import pytest

from steelforge.clean.ops import build_op
from steelforge.errors import RecipeError


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "needs exactly one scorer"),
        ({"model": "tiny-steel", "kenlm_model": "x.arpa"}, "needs exactly one scorer"),
        ({"model": "no/such/folder"}, "is neither a model folder nor a preset"),
        (
            {"kenlm_model": "missing.arpa", "sp_model": "missing.model"},
            "'kenlm_model' = 'missing.arpa' is not a file",
        ),
    ],
)
def test_perplexity_filter_errors_at_build_time(params: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        build_op({"perplexity_filter": params}, "language_aware")


def test_kenlm_scorer_needs_the_kenlm_package(tmp_path) -> None:
    try:
        import kenlm  # noqa: F401

        pytest.skip("kenlm is installed here; the missing-package message cannot be shown")
    except ImportError:
        pass
    (tmp_path / "zh.arpa.bin").write_bytes(b"x")
    (tmp_path / "zh.sp.model").write_bytes(b"x")
    params = {"kenlm_model": str(tmp_path / "zh.arpa.bin"), "sp_model": str(tmp_path / "zh.sp.model")}
    with pytest.raises(RecipeError, match="needs the `kenlm` package"):
        build_op({"perplexity_filter": params}, "language_aware")


WORDS = ["the", "a", "model", "data", "clean", "text", "learns", "from", "good", "and", "is", "of"]


@pytest.fixture(scope="module")
def small_lm_folder(tmp_path_factory) -> str:
    """A team's own small causal LM: a 1-layer Llama and a word-level tokenizer, saved as HF folders."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("small_lm")
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(
        folder
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def test_tokenizer_must_exist_at_build_time(small_lm_folder: str) -> None:
    with pytest.raises(RecipeError, match="'tokenizer' = 'no/such/tokenizer'"):
        build_op(
            {"perplexity_filter": {"model": small_lm_folder, "tokenizer": "no/such/tokenizer"}},
            "language_aware",
        )


def test_causal_lm_perplexity_matches_the_model_loss_and_is_batch_invariant(small_lm_folder: str) -> None:
    import torch

    params = {"model": small_lm_folder, "tokenizer": small_lm_folder, "max_ppl": 1e9, "batch_size": 2}
    op = build_op({"perplexity_filter": params}, "language_aware")
    texts = [
        "the model learns from good clean data and the data is clean",
        "a text of the model",
        "clean",  # one token: too short to score, perplexity 0 and kept
        "data data data data data data data data",
        "机器学习 is a model of data",
    ]
    batched = op.compute_stats_batch(texts)
    single = [op.compute_stats(t) for t in texts]
    lm, _ = op._causal_lm()
    ids = op._encode(texts)
    for text_ids, got_batched, got_single in zip(ids, batched, single, strict=True):
        if len(text_ids) < 2:
            assert got_batched == got_single == {"perplexity": 0.0}
            assert op.keep(got_single)
            continue
        with torch.inference_mode():
            x = torch.tensor([text_ids])
            expected = math.exp(float(lm(input_ids=x, labels=x).loss))
        assert got_single["perplexity"] == pytest.approx(expected, rel=1e-4)
        assert got_batched["perplexity"] == pytest.approx(expected, rel=1e-4)  # padding does not leak
    op.max_ppl = sorted(s["perplexity"] for s in single)[-2]
    assert [op.keep(s) for s in single].count(False) == 1
    rejected = max(single, key=lambda s: s["perplexity"])
    assert op.explain(rejected) == {
        "stat": "perplexity",
        "value": rejected["perplexity"],
        "min": 0.0,
        "max": op.max_ppl,
    }
