"""MMLU (`{dev,test}/{subject}_{split}.csv`, no header) as the original hendrycks/test `evaluate.py` prompts it.

The header is `...about{format_subject(subject)}.` where `format_subject` prefixes every word with a space, so
"about" is followed by two characters of space-plus-word: `about  abstract algebra` has one space from the template
and one from the subject string. Answers are scored as " A" .. " D" (leading space), shots end with ` {answer}\n\n`,
and k shrinks while the prompt is longer than `max_length` tokens (the original `crop` loop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steelforge.eval.tasks.base import (
    LETTERS,
    ChoiceItem,
    chat_wrap,
    check_answers,
    limited,
    package_json,
    read_csv,
    require_file,
    split_subjects,
)

TASK = "mmlu"
COLUMNS = ("question", "A", "B", "C", "D", "answer")
SPACED_LETTERS = tuple(" " + c for c in LETTERS)


def format_subject(subject: str) -> str:
    return "".join(" " + entry for entry in subject.split("_"))


def format_example(df: Any, idx: int, include_answer: bool = True) -> str:
    prompt = f"{df.iloc[idx, 0]}"
    k = df.shape[1] - 2
    for j in range(k):
        prompt += f"\n{LETTERS[j]}. {df.iloc[idx, j + 1]}"
    prompt += "\nAnswer:"
    if include_answer:
        prompt += f" {df.iloc[idx, k + 1]}\n\n"
    return prompt


def gen_prompt(train_df: Any, subject: str, k: int) -> str:
    prompt = (
        f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
    )
    return prompt + "".join(format_example(train_df, i) for i in range(k))


def load(
    data_dir: Path,
    *,
    num_fewshot: int = 5,
    tokenizer: Any = None,
    max_length: int = 2048,
    limit: int | None = None,
    subjects: list[str] | None = None,
    chat: bool = False,
    split: str = "test",
) -> list[ChoiceItem]:
    data_dir = Path(data_dir)
    split_dir, names = split_subjects(data_dir, split, "mmlu", "MMLU", f"_{split}.csv", subjects)
    items: list[ChoiceItem] = []
    for subject in names:
        path = require_file(split_dir / f"{subject}_{split}.csv", TASK, f"{split} split of '{subject}'")
        test_df = read_csv(path, TASK, header=False, index_col=False, columns=COLUMNS)
        golds = check_answers(list(test_df.iloc[:, 5]), path, TASK)
        dev_df = test_df.iloc[:0]
        if num_fewshot > 0:
            dev_path = require_file(
                data_dir / "dev" / f"{subject}_dev.csv", TASK, f"dev split of '{subject}'"
            )
            dev_df = read_csv(dev_path, TASK, header=False, index_col=False, columns=COLUMNS)[:num_fewshot]
            check_answers(list(dev_df.iloc[:, 5]), dev_path, TASK)
        for i in limited(list(range(test_df.shape[0])), limit):
            question = format_example(test_df, i, include_answer=False)
            k = min(num_fewshot, dev_df.shape[0])
            prefix = gen_prompt(dev_df, subject, k)
            while k > 0 and tokenizer is not None and len(tokenizer.encode(prefix + question)) > max_length:
                k -= 1
                prefix = gen_prompt(dev_df, subject, k)
            if chat:
                prefix, question = "", chat_wrap(tokenizer, prefix + question)
            items.append(ChoiceItem(TASK, subject, i, prefix, question, golds[i], SPACED_LETTERS))
    return items


def aggregate(per_subject_counts: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Per category: correct / items over its subjects (the original reports item-weighted accuracy)."""
    table = package_json("mmlu_subjects.json")
    sub2cat = {sub: cat for cat, subs in table["categories"].items() for sub in subs}
    sums: dict[str, list[int]] = {}
    for subject, (correct, n) in per_subject_counts.items():
        for sub in table["subcategories"].get(subject, []):
            acc = sums.setdefault(sub2cat[sub], [0, 0])
            acc[0] += correct
            acc[1] += n
    return {k: v[0] / v[1] for k, v in sorted(sums.items()) if v[1]}
