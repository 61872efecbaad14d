"""perplexity_filter: build-time errors, and causal-LM perplexities that match a direct computation."""

from __future__ import annotations

import math

import pytest

from steelforge.data.ops import build_op
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


def test_causal_lm_perplexity_matches_the_model_loss_and_is_batch_invariant() -> None:
    pytest.importorskip(
        "steelforge.tokenizer", reason="steelforge.tokenizer is not available in this checkout"
    )
    import torch

    torch.manual_seed(0)
    op = build_op(
        {"perplexity_filter": {"model": "tiny-steel", "max_ppl": 1e9, "batch_size": 2, "max_length": 64}},
        "language_aware",
    )
    texts = [
        "机器学习是人工智能的一个分支，研究计算机怎样模拟人类的学习行为。",
        "The quick brown fox jumps over the lazy dog again and again.",
        "短",
        "def main():\n    return 42\n",
    ]
    batched = op.compute_stats_batch(texts)
    single = [op.compute_stats(t) for t in texts]
    lm, _ = op._causal_lm()
    ids = op._encode(texts)
    for text_ids, got_batched, got_single in zip(ids, batched, single, strict=True):
        if len(text_ids) < 2:
            assert got_batched == got_single == {"perplexity": 0.0}
            continue
        with torch.inference_mode():
            x = torch.tensor([text_ids])
            loss = lm(input_ids=x, labels=x).loss
        expected = math.exp(float(loss))
        assert got_single["perplexity"] == pytest.approx(expected, rel=1e-4)
        assert got_batched["perplexity"] == pytest.approx(expected, rel=1e-3)  # padding does not leak
    op.max_ppl = sorted(s["perplexity"] for s in single)[-2]
    assert [op.keep(s) for s in single].count(False) == 1
    assert op.explain(single[0])["stat"] == "perplexity"
