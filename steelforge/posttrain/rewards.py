"""Verifiable rewards for GRPO: maths answers, multiple-choice letters and output format.

A reward function is `(prompt, completion, example) -> float`, where `example` is the dataset row (the gold
answer under `answer`, `solution` or `gold`). Reward functions run on model output, which is often junk early
in RL: they never raise on it, they return 0.0. `resolve_reward` turns a recipe's string (a name in `REWARDS` or
`module:function`) into the function.
"""

from __future__ import annotations

import importlib
import re
import threading
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from steelforge.posttrain.errors import RewardError

RewardFn = Callable[[str, str, Mapping[str, Any]], float]

GOLD_KEYS = ("answer", "solution", "gold")


# ---- answer extraction ---------------------------------------------------------------------------


def _normalise(text: str) -> str:
    """NFKC (full-width digits and punctuation such as `１２`, `：`, `，` become ASCII) and ASCII minus signs."""
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("\u2013", "-")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, else None."""
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


_SIGN = r"(?:(?<![0-9A-Za-z)\]}])-)?"
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_ANSWER_TOKEN = re.compile(
    rf"{_SIGN}\\d?frac\s*\{{\s*-?{_NUMBER}\s*\}}\s*\{{\s*-?{_NUMBER}\s*\}}"  # \frac{3}{4}, \dfrac{3}{4}
    rf"|{_SIGN}{_NUMBER}\s*/\s*{_NUMBER}(?![\d/])"  # 3/4 (not a date such as 1/2/2024)
    rf"|{_SIGN}{_NUMBER}"
)


def last_number(text: str) -> str | None:
    """The last number in the text (`1,234`, `-3.5`, `3/4`, `\\frac{3}{4}`), thousands separators removed."""
    matches = _ANSWER_TOKEN.findall(_normalise(text))
    if not matches:
        return None
    token = re.sub(r"\s+", "", matches[-1])
    return re.sub(r"(?<=\d),(?=\d{3})", "", token)


def extract_final_answer(text: str) -> str | None:
    """The final answer of a solution: the last `\\boxed{...}`, else the last number in the text, else None."""
    text = _normalise(text)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    return last_number(text)


def extract_gsm8k_gold(answer_field: str) -> str:
    """GSM8K's gold answer: what follows the last `####` (`#### 1,234` gives `1234`).

    Without `####` the last number of the field is used, and failing that the stripped field.
    """
    text = _normalise(answer_field)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        tail = tail.replace("$", "").rstrip(".").strip()
        return re.sub(r"(?<=\d),(?=\d{3})", "", tail)
    return last_number(text) or text.strip()


# ---- maths ---------------------------------------------------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _parse(answer: str) -> list:
    from math_verify import parse

    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeout = 5 if _in_main_thread() else None
    answer = answer.strip()
    if not answer.startswith("$"):
        answer = f"${answer}$"
    return parse(answer, parsing_timeout=timeout)


def math_verify(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer equals `answer` mathematically (via math-verify), else 0.0.

    The final answer is the last `\\boxed{...}`, else the last number (`1,234`, `3/4`, `\\frac{3}{4}`, `-2.5`,
    `12 apples`, `答案是：12。`). A GSM8K answer field (`... #### 72`) is reduced to its final number first.
    """
    try:
        predicted = extract_final_answer(completion)
        if predicted is None:
            return 0.0
        gold = extract_gsm8k_gold(answer) if "####" in answer else _normalise(answer)
        gold = last_boxed(gold) or gold
        from math_verify import verify

        gold_parsed, predicted_parsed = _parse(gold), _parse(predicted)
        if not gold_parsed or not predicted_parsed:
            return 0.0
        timeout = 5 if _in_main_thread() else None
        return 1.0 if verify(gold_parsed, predicted_parsed, timeout_seconds=timeout) else 0.0
    except Exception:  # model output is untrusted: a parser failure is a wrong answer, not a crash
        return 0.0


# ---- multiple choice -----------------------------------------------------------------------------


def _explicit_choice(letters: str) -> re.Pattern[str]:
    c = f"[{letters}]"
    return re.compile(
        rf"答案\s*(?:应该|應該|应|應)?\s*(?:是|为|為)?\s*[:：]?\s*(?:选项|選項|选)?\s*[(（\[]?\s*({c})(?![A-Za-z])"
        rf"|(?:选择|選擇|选|選)\s*(?:项|項)?\s*[:：]?\s*[(（\[]?\s*({c})(?![A-Za-z])"
        rf"|\b[Aa]nswer\s*(?:is|:|=)?\s*:?\s*\**\s*(?:option\s*|choice\s*)?[(\[]?\s*({c})(?![A-Za-z])"
        rf"|\b(?:option|choice)\s+[(\[]?({c})[)\]]?\s+is\s+(?:the\s+)?correct"
    )


def extract_choice(completion: str, letters: str = "ABCD") -> str | None:
    """The chosen letter: the last explicit `答案是C` / `答案：C` / `选C` / `the answer is (C)` / `Answer: C`,
    else a letter that opens the reply (`C.`, `(C)`, a lone `C`), else the first parenthesised letter.
    """
    text = _normalise(completion).strip()
    found = _explicit_choice(letters).findall(text)
    if found:
        return next(g for g in found[-1] if g)
    start = re.match(rf"[(\[]?([{letters}])(?![A-Za-z])(?:[)\].:、,]|\s|$)", text)
    if start and not (start.group(1) == "A" and re.match(r"A\s+[a-z]", text)):  # "A cat ..." is an article
        return start.group(1)
    paren = re.search(rf"[(\[]([{letters}])[)\]]", text)
    return paren.group(1) if paren else None


def choice(completion: str, answer: str, letters: str = "ABCD") -> float:
    """1.0 when the letter chosen in `completion` equals the gold letter `answer` (`C`, `(C)`, `C. text`)."""
    try:
        answer = answer.strip()
        gold = extract_choice(answer.upper() if len(answer) == 1 else answer, letters)
        return 1.0 if gold is not None and extract_choice(completion, letters) == gold else 0.0
    except Exception:  # never fail a training step on junk
        return 0.0


# ---- format --------------------------------------------------------------------------------------

DEFAULT_TAGS = ("think", "answer")


def _tagged(tag: str) -> str:
    """`<tag>` + non-blank text without another `<tag>`/`</tag>` + `</tag>`."""
    t = re.escape(tag)
    inner = rf"(?:(?!</?{t}>).)"
    return rf"<{t}>{inner}*?\S{inner}*?</{t}>"


def format_reward(
    prompt: str,
    completion: str,
    example: Mapping[str, Any] | None = None,
    *,
    tags: Sequence[str] = DEFAULT_TAGS,
    pattern: str | None = None,
) -> float:
    """1.0 when the completion has the required shape, else 0.0.

    With `pattern`: the whole completion must match the regex (DOTALL). Otherwise each `<tag>...</tag>` of `tags`
    must appear once, non-empty, in that order (R1-style `<think>…</think><answer>…</answer>`), with only
    whitespace between and around them. `example["format_pattern"]` overrides both per row.
    """
    try:
        row_pattern = (example or {}).get("format_pattern")
        pattern = row_pattern or pattern
        if pattern:
            return 1.0 if re.fullmatch(pattern, completion, flags=re.DOTALL) else 0.0
        body = r"\s*".join(_tagged(t) for t in tags)
        return 1.0 if re.fullmatch(rf"\s*{body}\s*", completion, flags=re.DOTALL) else 0.0
    except Exception:
        return 0.0


# ---- registry ------------------------------------------------------------------------------------


def gold_answer(example: Mapping[str, Any]) -> str | None:
    """The row's gold answer: the first of `answer`, `solution`, `gold` that is present."""
    for key in GOLD_KEYS:
        value = example.get(key)
        if value is not None:
            return str(value)
    return None


def math_verify_reward(prompt: str, completion: str, example: Mapping[str, Any]) -> float:
    """`math_verify` against the row's gold answer (0.0 when the row has none)."""
    gold = gold_answer(example)
    return 0.0 if gold is None else math_verify(completion, gold)


def choice_reward(prompt: str, completion: str, example: Mapping[str, Any]) -> float:
    """`choice` against the row's gold letter (0.0 when the row has none)."""
    gold = gold_answer(example)
    return 0.0 if gold is None else choice(completion, gold)


REWARDS: dict[str, RewardFn] = {
    "math_verify": math_verify_reward,
    "choice": choice_reward,
    "format": format_reward,
}


def resolve_reward(name: str | RewardFn) -> RewardFn:
    """A reward function from a name in `REWARDS` or a `module:function` reference (imported)."""
    if callable(name):
        return name
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise RewardError(
            f"unknown reward {name!r}; use one of {', '.join(REWARDS)} or 'module:function' for your own function"
        )
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise RewardError(f"reward {name!r} must be written 'module:function', e.g. 'my_rewards:length_penalty'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(f"cannot import module {module_name!r} for reward {name!r} ({exc})") from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardError(f"module {module_name!r} has no attribute {attr!r} (reward {name!r})")
    if not callable(fn):
        raise RewardError(f"reward {name!r} is not a function but a {type(fn).__name__}")
    return fn
