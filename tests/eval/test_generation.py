"""GSM8K/MATH answer extraction on real-looking gold solutions, equivalence, pass@k, greedy decoding."""

from __future__ import annotations

import pytest

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
