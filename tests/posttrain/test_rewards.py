"""Reward functions: answer extraction on tricky completions, GSM8K gold answers, choice letters, format, registry."""

from __future__ import annotations

import sys
import textwrap
import threading

import pytest

from steelforge.errors import SteelforgeError
from steelforge.posttrain.rewards import (
    REWARDS,
    choice,
    extract_choice,
    extract_final_answer,
    extract_gsm8k_gold,
    format_reward,
    last_boxed,
    math_verify,
    resolve_reward,
)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("So the total is 72.", "72"),
        ("She pays $1,234 in total.", "1234"),
        ("The total is 1,234,567 dollars", "1234567"),
        ("Half of it: 3/4 of the cake remains", "\\frac{3}{4}"),
        ("The probability is $\\frac{3}{4}$.", "0.75"),
        ("It is \\dfrac{3}{4}", "3/4"),
        ("The answer is -5.", "-5"),
        ("Temperature drops to −3 degrees", "-3"),
        ("x = 2.50", "2.5"),
        ("He has 12 apples.", "12"),
        ("所以答案是：12。", "12"),
        ("答案为１２", "12"),
        ("First 5 then 7, so \\boxed{9}. Later text 3.", "9"),
        ("\\boxed{2} ... correction: \\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt{2}"),
        ("\\boxed{1,234}", "1234"),
        ("Final: \\boxed{12 \\text{ apples}}", "12"),
        ("步骤1：5+7=12\n步骤2：12×6=72\n答案：72", "#### 72"),
        ("Natalia sold 48/2 = 24 clips in May. 48+24 = 72 clips altogether.", "Natalia sold...\n#### 72"),
    ],
)
def test_math_verify_accepts_equivalent_answers(completion: str, answer: str) -> None:
    assert math_verify(completion, answer) == 1.0


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("So the total is 73.", "72"),
        ("\\boxed{72} ... wait, \\boxed{71}", "72"),  # the last box counts
        ("5-3 = 2", "-3"),  # a minus between numbers is subtraction, not a sign
        ("I don't know.", "72"),
        ("", "72"),
        ("\\boxed{", "72"),
        ("\\boxed{}}}{{", "1"),
        ("72", "not a number"),
    ],
)
def test_math_verify_rejects_wrong_or_missing_answers(completion: str, answer: str) -> None:
    assert math_verify(completion, answer) == 0.0


def test_extraction_details() -> None:
    assert last_boxed("a \\boxed{x^{2}+\\frac{1}{2}} b") == "x^{2}+\\frac{1}{2}"
    assert last_boxed("\\boxed{1} and \\fbox{2}") == "2"
    assert last_boxed("no box") is None
    assert extract_final_answer("Totals 1,234 and then 56.") == "56"
    assert extract_final_answer("ratio \\frac{3}{4} here") == "\\frac{3}{4}"
    assert extract_final_answer("2/3 of them") == "2/3"
    assert extract_final_answer("nothing") is None


def test_gsm8k_gold_extraction() -> None:
    solution = textwrap.dedent("""\
        Natalia sold 48/2 = <<48/2=24>>24 clips in May.
        Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.
        #### 72""")
    assert extract_gsm8k_gold(solution) == "72"
    assert extract_gsm8k_gold("He earns $1,200 a week.\n#### 1,200") == "1200"
    assert extract_gsm8k_gold("#### -3") == "-3"
    assert extract_gsm8k_gold("#### $5.") == "5"
    assert extract_gsm8k_gold("no marker, 40 then 41") == "41"
    assert math_verify("so she has 1200 dollars", "He earns $1,200 a week.\n#### 1,200") == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "答案是C",
        "答案：C",
        "答案为 C",
        "经过分析，正确答案应该是（C）。",
        "the answer is (C)",
        "The correct answer is **C**.",
        "Answer: C",
        "选C",
        "故选：C",
        "C. 因为北京是首都",
        "(C) Paris",
        "C",
        " C \n",
        "A 看起来对，但B和D不对，答案是C",  # the explicit phrase wins over the first letter
        "答案是A……不对，答案是C",  # the last explicit phrase wins
        "I think it's (C).",
    ],
)
def test_choice_phrasings(completion: str) -> None:
    assert extract_choice(completion) == "C"
    assert choice(completion, "C") == 1.0
    assert choice(completion, "B") == 0.0


@pytest.mark.parametrize("junk", ["", "   ", "I cannot tell", "A cat sat on the mat.", "答案是E", "🙂", "\x00\x01"])
def test_choice_junk_scores_zero(junk: str) -> None:
    assert extract_choice(junk) is None
    assert choice(junk, "A") == 0.0


def test_choice_gold_forms() -> None:
    assert choice("Answer: B", "(B)") == 1.0
    assert choice("Answer: B", "B. 3 meters") == 1.0
    assert choice("Answer: B", "b") == 1.0
    assert choice("Answer: B", "") == 0.0


def test_format_reward() -> None:
    good = "<think>12 * 6 = 72</think>\n<answer>72</answer>"
    assert format_reward("p", good, {}) == 1.0
    assert format_reward("p", "<answer>72</answer><think>x</think>", {}) == 0.0  # order matters
    assert format_reward("p", "<think> </think><answer>72</answer>", {}) == 0.0  # blank thinking
    assert format_reward("p", "<think>a</think><think>b</think><answer>1</answer>", {}) == 0.0
    assert format_reward("p", good + " trailing words", {}) == 0.0
    assert format_reward("p", "Answer: 72", {}, pattern=r"Answer: \d+") == 1.0
    assert format_reward("p", "Answer: 72", {"format_pattern": r".*\\boxed\{.+\}.*"}) == 0.0
    assert format_reward("p", "<answer>1</answer>", {}, tags=["answer"]) == 1.0
    assert format_reward("p", "x", {}, pattern="(") == 0.0  # a broken regex is not a crash


def test_registry_rewards_read_the_gold_answer() -> None:
    assert REWARDS["math_verify"]("q", "\\boxed{72}", {"answer": "#### 72"}) == 1.0
    assert REWARDS["math_verify"]("q", "\\boxed{72}", {"solution": "The answer is $\\boxed{72}$."}) == 1.0
    assert REWARDS["math_verify"]("q", "\\boxed{72}", {"question": "no gold"}) == 0.0
    assert REWARDS["choice"]("q", "答案是D", {"answer": "D"}) == 1.0
    assert REWARDS["format"]("q", "<think>a</think><answer>b</answer>", {}) == 1.0


def test_math_verify_works_off_the_main_thread() -> None:
    """math-verify's timeouts use SIGALRM (main thread only); reward workers in threads still get answers."""
    results: list[float] = []
    thread = threading.Thread(target=lambda: results.append(math_verify("\\boxed{\\frac{1}{2}}", "0.5")))
    thread.start()
    thread.join()
    assert results == [1.0]


def test_resolve_reward(tmp_path, monkeypatch) -> None:
    assert resolve_reward("choice") is REWARDS["choice"]
    (tmp_path / "my_rewards_mod.py").write_text("def short(prompt, completion, example):\n    return 1.0\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = resolve_reward("my_rewards_mod:short")
    assert fn("p", "c", {}) == 1.0
    assert resolve_reward(fn) is fn
    cases = {
        "nope": "unknown reward 'nope'; use one of math_verify, choice, format",
        "no_such_module_xyz:fn": "cannot import module 'no_such_module_xyz'",
        "my_rewards_mod:missing": "has no attribute 'missing'",
        "my_rewards_mod:VALUE": "is not a function",
        ":fn": "must be written 'module:function'",
    }
    for name, message in cases.items():
        with pytest.raises(SteelforgeError) as info:
            resolve_reward(name)
        assert message in str(info.value) and "\n" not in str(info.value)
        assert isinstance(info.value, ValueError)
    sys.modules.pop("my_rewards_mod", None)
