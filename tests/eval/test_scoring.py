"""Hand-computed accuracies on a stub model with known logits; lm-eval's acc/acc_norm; log-likelihood sums."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steelforge.eval.runner import EvalOptions, evaluate
from steelforge.eval.scoring import argmax_first, completion_metrics, loglikelihoods
from steelforge.eval.tasks import cmmlu
from steelforge.eval.tasks.base import TaskDataError

from .helpers import StubLM, write_cmmlu

# anatomy (biology -> STEM): 3 items, arts (arts -> Humanities): 2 items
ROWS = {
    "anatomy": [("心脏有几个腔？", "2", "3", "4", "5", "C"), ("肺属于？", "呼吸", "消化", "神经", "循环", "A"),
                ("骨头有几块？", "106", "206", "306", "406", "B")],
    "arts": [("谁画了蒙娜丽莎？", "达芬奇", "梵高", "毕加索", "莫奈", "A"), ("京剧起源于？", "北京", "安徽", "上海", "广州", "B")],
}  # fmt: skip
# per item: the logits of A-D the stub returns; the tie in anatomy[1] goes to the first maximum (A, correct)
LOGITS = {
    ("anatomy", 0): [0.1, 0.2, 0.9, 0.3],  # C correct
    ("anatomy", 1): [0.5, 0.5, 0.1, 0.0],  # tie A/B -> A correct
    ("anatomy", 2): [0.9, 0.1, 0.1, 0.1],  # A wrong (gold B)
    ("arts", 0): [0.0, 0.0, 0.0, 1.0],  # D wrong (gold A)
    ("arts", 1): [0.0, 2.0, 1.0, 0.0],  # B correct
}


@pytest.fixture
def stub_setup(tmp_path, qwen_tok):
    data = write_cmmlu(tmp_path / "cmmlu", ROWS, dev_rows=1)
    items = cmmlu.load(data, num_fewshot=1, tokenizer=qwen_tok)
    model = StubLM(qwen_tok, {it.prompt: LOGITS[(it.subject, it.index)] for it in items})
    return data, model


def test_hand_computed_accuracy(stub_setup, qwen_tok, tmp_path):
    data, model = stub_setup
    opts = EvalOptions(tasks=["cmmlu"], data_dir=data, num_fewshot=1, batch_size=2)
    res = evaluate(model, qwen_tok, opts, out_dir=tmp_path / "out", log_samples=True, show_progress=False)
    r = res["tasks"]["cmmlu"]
    assert r["n"] == 5
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["subjects"]["anatomy"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert r["subjects"]["arts"] == {"accuracy": pytest.approx(1 / 2), "n": 2}
    assert r["average"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # official: mean of subject accuracies
    assert r["categories"] == {"STEM": pytest.approx(2 / 3), "Humanities": pytest.approx(1 / 2)}
    samples = [json.loads(x) for x in (tmp_path / "out" / "samples" / "cmmlu.jsonl").read_text().splitlines()]
    assert [s["pred"] for s in samples] == ["C", "A", "A", "D", "B"]
    assert samples[0]["scores"] == {
        "A": pytest.approx(0.1),
        "B": pytest.approx(0.2),
        "C": pytest.approx(0.9),
        "D": pytest.approx(0.3),
    }
    assert set(samples[0]) >= {"task", "subject", "index", "prompt", "scores", "pred", "gold"}
    first = (tmp_path / "out" / "results.json").read_bytes()
    evaluate(model, qwen_tok, opts, out_dir=tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "results.json").read_bytes() == first  # identical on re-run


def test_bad_task_skipped_or_stopped(tmp_path, qwen_tok, stub_setup):
    data, model = stub_setup
    (data / "dev" / "arts.csv").unlink()
    opts = EvalOptions(tasks=["cmmlu"], data_dir=data, num_fewshot=1)
    with pytest.warns(UserWarning, match="dev split of 'arts'"):
        res = evaluate(model, qwen_tok, opts, show_progress=False)
    assert res["tasks"] == {} and "cmmlu" in res["skipped"]
    opts.on_error = "stop"
    with pytest.raises(TaskDataError, match="dev split of 'arts'"):
        evaluate(model, qwen_tok, opts, show_progress=False)


def test_multi_token_letters_rejected(qwen_tok):
    from steelforge.eval.scoring import letter_token_ids

    with pytest.raises(TaskDataError, match="single-token letters"):
        letter_token_ids(qwen_tok, ["A", "Bxyzzy qq"], "cmmlu")


def test_completion_metrics_as_lm_eval():
    # raw: choice 0 wins; per character: choice 1 (-6/12 = -0.5 > -4/4 = -1); bytes: "ééé" is 6 bytes
    m = completion_metrics([-4.0, -6.0], ["abcd", "abcdefghijkl"], gold=1)
    assert (m["acc"], m["acc_norm"]) == (0.0, 1.0)
    # "ééé": 3 characters, 6 UTF-8 bytes. chars: -1 vs -0.5 -> 1; bytes: -0.5 vs -0.5, the tie goes to 0
    m = completion_metrics([-3.0, -2.5], ["ééé", "abcde"], gold=0)
    assert (m["acc"], m["acc_norm"], m["acc_bytes"]) == (0.0, 0.0, 1.0)
    assert argmax_first([1.0, 1.0]) == 0


def test_loglikelihood_matches_full_logits(tiny_qwen2, qwen_tok):
    pairs = [
        ("Question: what is water?\nAnswer:", " a liquid"),
        ("天空是", "蓝色的"),
        ("Short ", "text here"),
    ]
    got = loglikelihoods(tiny_qwen2, qwen_tok, pairs, batch_size=3)
    for (ctx, cont), value in zip(pairs, got, strict=True):
        if ctx.endswith(" "):
            ctx, cont = ctx[:-1], " " + cont
        c = qwen_tok.encode(ctx)
        whole = qwen_tok.encode(ctx + cont)
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_qwen2(ids).logits.float(), -1)[0]
        ref = sum(float(logp[t - 1, whole[t]]) for t in range(len(c), len(whole)))
        assert math.isclose(value, ref, rel_tol=1e-4, abs_tol=1e-3)


def test_tokenizer_without_single_token_letters_skips_task(stub_setup, qwen_tok, monkeypatch):
    data, model = stub_setup
    monkeypatch.setattr(cmmlu, "LETTERS", ("A", "B", "C", "Dxyzzy qq"))
    opts = EvalOptions(tasks=["cmmlu"], data_dir=data, num_fewshot=0)
    with pytest.warns(UserWarning, match="single-token letters"):
        res = evaluate(model, qwen_tok, opts, show_progress=False)
    assert res["tasks"] == {} and "single-token" in res["skipped"]["cmmlu"]
