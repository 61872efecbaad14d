"""GSM8K/MATH answer extraction on real-looking gold solutions, equivalence, pass@k, greedy decoding."""

from __future__ import annotations

import pytest
import torch

from steelforge.eval.tasks.generation import cut_at_stop, generate_texts, gsm8k_gold, is_correct, pass_at_k

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
GSM8K_THOUSANDS = "Each box holds 250 pens, so 5 boxes hold 5*250 = <<5*250=1250>>1,250 pens.\n#### 1,250"


def test_gsm8k_gold_extraction():
    assert gsm8k_gold(GSM8K_SOLUTION) == "72"
    assert gsm8k_gold(GSM8K_THOUSANDS) == "1250"


def test_gsm8k_completion_checked():
    assert is_correct("She sold 24 in May, so 48 + 24 = 72 clips.\nThe answer is 72.", "72")
    assert not is_correct("She sold 48 + 12 = 60 clips. The answer is 60.", "72")


def test_math500_boxed_answers():
    assert is_correct("So the radius is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}")
    assert is_correct("Therefore the answer is $\\boxed{0.5}$.", "\\frac12")
    assert is_correct("The point is $\\boxed{(3, \\frac{\\pi}{2})}$.", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert not is_correct("The answer is $\\boxed{3}$.", "\\frac{1}{2}")


def test_pass_at_k_unbiased():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_stop_strings_and_greedy_is_deterministic(tiny_qwen2, qwen_tok):
    assert cut_at_stop("12\n\nQuestion: next", ("Question:",)) == "12\n\n"
    a = generate_texts(tiny_qwen2, qwen_tok, ["Question: 1+1?\nAnswer:", "天空"], max_new_tokens=5)
    b = generate_texts(tiny_qwen2, qwen_tok, ["Question: 1+1?\nAnswer:", "天空"], max_new_tokens=5)
    assert a == b and len(a) == 2


def _gsm8k_dir(tmp_path):
    import json

    rows = [{"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
            {"question": "What is 10*12?", "answer": "10*12=<<10*12=120>>120\n#### 120"}]  # fmt: skip
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_pass_at_k_aggregation_hand_computed(tmp_path, monkeypatch, qwen_tok):
    from steelforge.eval import runner
    from steelforge.eval.tasks import generation

    answers = {"What is 2+3?": ["The answer is 5.", "It is 6."], "What is 10*12?": ["12", "13"]}
    calls = {"n": 0}

    def fake(model, tokenizer, prompts, *, seed, **kw):
        r = calls["n"]
        calls["n"] += 1
        return [answers[p.split("Question: ")[-1].split("\n")[0]][r % 2] for p in prompts]

    monkeypatch.setattr(generation, "generate_texts", fake)
    opts = runner.EvalOptions(tasks=["gsm8k"], data_dir=_gsm8k_dir(tmp_path), num_fewshot=0, temperature=0.7,
                              num_samples=2)  # fmt: skip
    model = torch.nn.Linear(1, 1)
    res = runner.evaluate(model, qwen_tok, opts, show_progress=False)["tasks"]["gsm8k"]
    # problem 1: 1 of 2 samples right -> pass@1 0.5, pass@2 1; problem 2: none right -> 0, 0
    assert res["pass@1"] == pytest.approx(0.25) and res["pass@2"] == pytest.approx(0.5)
    assert res["accuracy"] == res["pass@1"] and res["n"] == 2


def test_gsm8k_greedy_end_to_end(tmp_path, tiny_qwen2, qwen_tok):
    from steelforge.eval.runner import EvalOptions, evaluate

    opts = EvalOptions(tasks=["gsm8k"], data_dir=_gsm8k_dir(tmp_path), num_fewshot=0, max_new_tokens=4)
    a = evaluate(tiny_qwen2, qwen_tok, opts, out_dir=tmp_path / "o", log_samples=True, show_progress=False)
    b = evaluate(tiny_qwen2, qwen_tok, opts, show_progress=False)
    assert a["tasks"]["gsm8k"]["n"] == 2 and 0.0 <= a["tasks"]["gsm8k"]["pass@1"] <= 1.0
    assert a["tasks"] == b["tasks"]
    assert (tmp_path / "o" / "samples" / "gsm8k.jsonl").read_text().count("\n") == 2
