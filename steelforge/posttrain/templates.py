"""Chat templates by name, and the exact assistant-token mask of a rendered conversation.

Rendering always goes through the tokenizer's `apply_chat_template` (Jinja), so a model trained here is
prompted the same way by transformers, vLLM or TRL afterwards. The mask does not rely on `{% generation %}`
tags (few templates have them): the trained character span of assistant turn i is the text between the
rendering of turns < i plus the generation prompt and the rendering of turns <= i (end-of-turn token
included, the whitespace after it not); a token is trained when it starts inside such a span.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steelforge.errors import RecipeError
from steelforge.tokenizers.qwen import CHAT_TEMPLATE as CHATML_TEMPLATE

# Tülu 3 / OLMo 2's template (open-instruct's `tulu` template behind a BOS), as Moxin's instruct models use:
# "<|user|>\n...\n<|assistant|>\n...</s>"; between turns a newline follows the EOS.
TULU_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{% if not loop.last %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML_TEMPLATE, "tulu": TULU_TEMPLATE}


def resolve_template(name: str, tokenizer: Any) -> tuple[str, str]:
    """(template label, Jinja text) for `chat_template:`: auto, chatml, tulu or a .jinja file."""
    if name == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, str) and own:
            return "tokenizer", own
        return "tulu", TULU_TEMPLATE
    if name in TEMPLATES:
        return name, TEMPLATES[name]
    path = Path(name)
    if path.is_file():
        return path.name, path.read_text(encoding="utf-8")
    raise RecipeError(
        f"chat_template '{name}' is neither a known template (auto, chatml, tulu) nor an existing .jinja file; "
        "fix the name or the path"
    )


def apply_template(tokenizer: Any, template: str) -> Any:
    """Install the template on the tokenizer (exports then carry it in tokenizer_config.json)."""
    tokenizer.chat_template = template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class TemplateMismatch(RecipeError):
    """The template renders a conversation's prefix differently from the whole conversation."""


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(full text, character spans [start, end) of every assistant turn, end-of-turn token included)."""
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1]).rstrip()
        if not (full.startswith(through) and through.startswith(before)):
            raise TemplateMismatch(
                f"the chat template renders turn {i} differently inside the whole conversation than as a prefix, "
                "so trained tokens cannot be located; use a template whose rendering grows turn by turn"
            )
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans


def tokenize_with_mask(
    tokenizer: Any, messages: list[dict[str, str]], *, train_from_char: int = 0
) -> tuple[list[int], list[int]]:
    """(token ids of the rendered conversation, 0/1 per token: 1 on assistant tokens at or after `train_from_char`).

    The ids equal `apply_chat_template(messages, tokenize=True)`: the same text, tokenized without added
    special tokens.
    """
    full, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [0] * len(ids)
    spans = [(max(s, train_from_char), e) for s, e in spans if e > train_from_char]
    k = 0
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        if end <= start:  # zero-width tokens (e.g. a template's BOS) are never trained
            continue
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start < spans[k][1]:
            mask[t] = 1
    return ids, mask
