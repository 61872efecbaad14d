"""CMMLU (`{dev,test}/{subject}.csv`) exactly as the official `src/mp_utils.py` + `hf_causal_model.py` prompt it.

The header names the subject in Chinese (`categories.py`'s `name_en2zh`, shipped as data/cmmlu_subjects.json);
shots are the first k dev rows; when the prompt would exceed `max_length` tokens the longest shots are dropped
the way `gen_prompt` does it; the letters are scored without a leading space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steelforge.eval.tasks.base import (
    LETTERS,
    ChoiceItem,
    TaskDataError,
    chat_wrap,
    check_answers,
    limited,
    package_json,
    read_csv,
    require_file,
    split_subjects,
)

TASK = "cmmlu"
COLUMNS = ("Question", "A", "B", "C", "D", "Answer")


def subject_table() -> dict[str, Any]:
    return package_json("cmmlu_subjects.json")


def subject_names(data_dir: Path | None = None) -> dict[str, str]:
    """CMMLU's 67 Chinese names, updated by DATA/subjects.json ({"name_en2zh": {...}}) when the folder has one."""
    names = dict(subject_table()["name_en2zh"])
    local = Path(data_dir) / "subjects.json" if data_dir is not None else None
    if local is not None and local.is_file():
        try:
            names.update(json.loads(local.read_text(encoding="utf-8"))["name_en2zh"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TaskDataError(
                f"cmmlu: {local} must be JSON with a 'name_en2zh' mapping of subject -> Chinese name"
            ) from None
    return names


def header(subject: str, names: dict[str, str] | None = None) -> str:
    names = names if names is not None else subject_table()["name_en2zh"]
    if subject not in names:
        raise TaskDataError(
            f"cmmlu: subject '{subject}' is not one of CMMLU's 67 subjects; rename the CSV or drop it"
        )
    return f"以下是关于{names[subject]}的单项选择题，请直接给出正确答案的选项。\n\n"


def format_example(df: Any, idx: int, include_answer: bool = True) -> str:
    """`mp_utils.format_example` (cells go through str.format as pandas parsed them)."""
    prompt = "题目：" + f"{df.iloc[idx, 0]}"
    k = df.shape[1] - 2
    for j in range(k):
        prompt += f"\n{LETTERS[j]}. {df.iloc[idx, j + 1]}"
    prompt += "\n答案是："
    if include_answer:
        prompt += f"{df.iloc[idx, k + 1]}\n\n"
    return prompt


def gen_prefix(
    dev_df: Any,
    subject: str,
    prompt_end: str,
    num_fewshot: int,
    tokenizer: Any,
    max_length: int,
    names: dict[str, str] | None = None,
) -> str:
    """`mp_utils.gen_prompt` without `prompt_end`: the header plus the shots that fit."""
    prompt = header(subject, names)
    if tokenizer is None:
        return prompt + "".join(format_example(dev_df, i) for i in range(num_fewshot))
    start_end = len(tokenizer.encode(prompt) + tokenizer.encode(prompt_end))
    if start_end > max_length:
        return ""
    shots = []
    for i in range(min(num_fewshot, dev_df.shape[0])):
        example = format_example(dev_df, i)
        shots.append((example, tokenizer.encode(example)))
    while shots and sum(len(e[1]) for e in shots) >= max_length - start_end:
        longest = max(len(e[1]) for e in shots)
        shots = [e for e in shots if len(e[1]) != longest]
    return prompt + "".join(e[0] for e in shots)


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
    """Items of every subject (sorted, as the official loop), `limit` items per subject."""
    data_dir = Path(data_dir)
    test_dir, names = split_subjects(data_dir, split, "cmmlu", "CMMLU", ".csv", subjects)
    table = subject_names(data_dir)
    items: list[ChoiceItem] = []
    for subject in names:
        test_path = require_file(test_dir / f"{subject}.csv", TASK, f"{split} split of '{subject}'")
        dev_path = require_file(data_dir / "dev" / f"{subject}.csv", TASK, f"dev split of '{subject}'")
        test_df = read_csv(test_path, TASK, header=True, index_col=True, columns=COLUMNS)
        dev_df = read_csv(dev_path, TASK, header=True, index_col=True, columns=COLUMNS)
        check_answers(list(dev_df.iloc[:num_fewshot, 5]), dev_path, TASK)
        golds = check_answers(list(test_df.iloc[:, 5]), test_path, TASK)
        header(subject, table)
        for i in limited(list(range(test_df.shape[0])), limit):
            question = format_example(test_df, i, include_answer=False)
            prefix = gen_prefix(dev_df, subject, question, num_fewshot, tokenizer, max_length, table)
            if chat:
                prefix, question = "", chat_wrap(tokenizer, prefix + question)
            items.append(ChoiceItem(TASK, subject, i, prefix, question, golds[i], LETTERS))
    return items


def aggregate(per_subject: dict[str, float], data_dir: Path | None = None) -> dict[str, float]:
    """Category averages as `mp_utils.get_results` computes them: the mean of subject accuracies.

    The official code counts a subject without results as 0 (a defaultdict); here only scored subjects count,
    so a partial run does not look worse than it is. Subjects named only by DATA/subjects.json have no category
    (`data_dir` is accepted for the same call shape as C-Eval's).
    """
    out = {}
    for category, members in subject_table()["category2subject"].items():
        scored = [per_subject[s] for s in members if s in per_subject]
        if scored:
            out[category] = sum(scored) / len(scored)
    return out
