"""GRPO prompt data: JSONL rows with `prompt` (text) or `messages` (chat) and a gold `answer`.

Rows are rendered once (the tokenizer's chat template with `add_generation_prompt`, or raw text), tokenized,
deduplicated on the rendered prompt, and kept only when the gold answer is usable by the configured rewards
(a maths answer math-verify can parse, a choice letter). Every dropped row is counted by reason, never silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelforge.errors import DataError

ANSWER_KEYS = ("answer", "solution", "gold")


@dataclass
class PromptExample:
    """One prompt ready for rollouts: its token ids, rendered text and the original row (rewards read it)."""

    prompt_ids: list[int]
    prompt_text: str
    row: dict[str, Any]


@dataclass
class PromptSet:
    examples: list[PromptExample]
    dropped: Counter = field(default_factory=Counter)
    total_rows: int = 0

    def __len__(self) -> int:
        return len(self.examples)


def _answer(row: dict[str, Any]) -> str | None:
    for key in ANSWER_KEYS:
        if row.get(key) is not None and str(row[key]).strip():
            return str(row[key])
    return None


def answer_is_usable(answer: str, reward_names: Sequence[str]) -> bool:
    """Whether the built-in rewards can score against this gold answer (user rewards: always assumed)."""
    from steelforge.posttrain.rewards import choice, math_verify

    if (
        "math_verify" in reward_names
        and math_verify(f"\\boxed{{{answer.split('####')[-1].strip()}}}", answer) != 1.0
    ):
        return False
    return not ("choice" in reward_names and not any(choice(f"答案是{letter}", answer) for letter in "ABCD"))


def render_prompt(
    row: dict[str, Any], tokenizer: Any, *, chat_template: bool, system_prompt: str | None
) -> str:
    """The text the policy continues: chat-templated messages (generation prompt added) or the raw prompt."""
    messages = row.get("messages")
    prompt = row.get("prompt")
    if isinstance(prompt, list):  # TRL's conversational format puts the messages under `prompt`
        messages, prompt = prompt, None
    if messages is None and prompt is None:
        raise ValueError("row has neither 'prompt' nor 'messages'")
    if not chat_template:
        if prompt is None:
            raise ValueError("chat_template is off but the row has only 'messages'")
        return str(prompt)
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            "grpo.chat_template is on but the tokenizer has no chat template; set grpo.chat_template: false"
        )
    if messages is None:
        messages = [{"role": "user", "content": str(prompt)}]
    else:
        messages = [m for m in messages if m.get("role") != "assistant" or m is not messages[-1]]
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def load_prompts(
    path: str | Path,
    tokenizer: Any,
    *,
    reward_names: Sequence[str] = ("math_verify",),
    chat_template: bool = True,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
) -> PromptSet:
    """Read, render, tokenize, deduplicate and filter a prompt file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file '{path}' does not exist; set grpo.prompts to a JSONL file")
    out = PromptSet(examples=[])
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            out.total_rows += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                out.dropped["invalid json"] += 1
                continue
            if not isinstance(row, dict):
                out.dropped["not an object"] += 1
                continue
            answer = _answer(row)
            if answer is None:
                out.dropped["no answer"] += 1
                continue
            try:
                text = render_prompt(row, tokenizer, chat_template=chat_template, system_prompt=system_prompt)
            except DataError:
                raise
            except (ValueError, TypeError, KeyError):
                out.dropped["no prompt"] += 1
                continue
            if text in seen:
                out.dropped["duplicate"] += 1
                continue
            seen.add(text)
            if not answer_is_usable(answer, reward_names):
                out.dropped["answer not parsable"] += 1
                continue
            ids = (
                tokenizer(text, add_special_tokens=False)["input_ids"]
                if chat_template
                else _encode(tokenizer, text)
            )
            if not ids:
                out.dropped["empty prompt"] += 1
                continue
            if max_prompt_length is not None and len(ids) > max_prompt_length:
                out.dropped["prompt too long"] += 1
                continue
            row.setdefault("_line", lineno)
            out.examples.append(PromptExample(prompt_ids=list(ids), prompt_text=text, row=row))
    if not out.examples:
        reasons = ", ".join(f"{k}: {v}" for k, v in out.dropped.items()) or "the file is empty"
        raise DataError(
            f"prompt file '{path}' has no usable prompt ({reasons}); check its 'prompt'/'answer' fields"
        )
    return out


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Raw-text prompts get the tokenizer's usual specials (e.g. BOS for Mistral)."""
    return list(tokenizer(text)["input_ids"])
