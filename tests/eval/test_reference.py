"""The official CMMLU code's prompts (sha256) and predictions on the reference tiny Qwen2, item by item."""

from __future__ import annotations

import hashlib
import json

import pytest

from steelforge.eval.scoring import argmax_first, score_choices
from steelforge.eval.tasks import cmmlu


@pytest.mark.parametrize("shots", [0, 5])
def test_every_prompt_and_prediction_reproduced(shots, reference_dir, qwen_tok, tiny_qwen2):
    ref = [
        json.loads(ln)
        for ln in (reference_dir / f"cmmlu_official_fp32_{shots}shot.jsonl").read_text().splitlines()
    ]
    items = cmmlu.load(reference_dir / "cmmlu", num_fewshot=shots, tokenizer=qwen_tok)
    assert len(items) == len(ref) == 445
    for it, r in zip(items, ref, strict=True):
        assert (it.subject, it.index) == (r["subject"], r["row"])
        assert hashlib.sha256(it.prompt.encode("utf-8")).hexdigest() == r["prompt_sha256"], (
            it.subject,
            it.index,
        )
        assert len(qwen_tok(it.prompt)["input_ids"]) == r["n_tokens"]
        assert it.gold == r["gold"]
    logits = score_choices(tiny_qwen2, qwen_tok, items, batch_size=16)
    preds = ["ABCD"[argmax_first(row)] for row in logits]
    wrong = [(it.subject, it.index) for it, p, r in zip(items, preds, ref, strict=True) if p != r["pred"]]
    assert wrong == []
    worst = max(
        abs(v - r["logits"][c])
        for row, r in zip(logits, ref, strict=True)
        for v, c in zip(row, "ABCD", strict=True)
    )
    assert worst < 1e-4


def test_batched_and_prefix_cached_equal_unbatched(reference_dir, qwen_tok, tiny_qwen2):
    items = cmmlu.load(reference_dir / "cmmlu", num_fewshot=5, tokenizer=qwen_tok, limit=6)
    one = score_choices(tiny_qwen2, qwen_tok, items, batch_size=1, reuse_prefix=False)
    many = score_choices(tiny_qwen2, qwen_tok, items, batch_size=12, reuse_prefix=False)
    cached = score_choices(
        tiny_qwen2, qwen_tok, items, batch_size=4, reuse_prefix=True
    )  # k-shot prefix run once
    for a, b, c in zip(one, many, cached, strict=True):
        assert argmax_first(a) == argmax_first(b) == argmax_first(c)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
        assert max(abs(x - y) for x, y in zip(a, c, strict=True)) < 1e-4


def test_bf16_model_scores_in_fp32(reference_dir, qwen_tok, tiny_qwen2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.bfloat16).eval()
    items = cmmlu.load(reference_dir / "cmmlu", num_fewshot=0, tokenizer=qwen_tok, limit=3)
    logits = score_choices(model, qwen_tok, items)
    assert all(isinstance(v, float) for row in logits for v in row)
