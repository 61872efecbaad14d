"""C-Eval (`{dev,val,test}/{subject}_{split}.csv`: id, question, A-D, answer) as `code/evaluator_series` prompts it.

The official llama path (`evaluators/llama.py`, `eval_llama.py`) puts the subject *handle* (e.g.
`computer_network`) into the header where the README shows the Chinese name; this reproduces the code. Scored on
`val` by default (test answers are not public). With 0 shots the header is kept (the official 0-shot branch
concatenates a list and a string and cannot run). When the prompt exceeds `max_length`, shots are dropped from the
end (the official code has no rule; this is MMLU's).
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

TASK = "ceval"
COLUMNS = ("id", "question", "A", "B", "C", "D", "answer")


def subject_mapping(data_dir: Path | None = None) -> dict[str, list[str]]:
    """C-Eval's 52 subjects, updated by DATA/subject_mapping.json (same layout) when the folder has one."""
    mapping = dict(package_json("ceval_subject_mapping.json"))
    local = Path(data_dir) / "subject_mapping.json" if data_dir is not None else None
    if local is not None and local.is_file():
        try:
            extra = json.loads(local.read_text(encoding="utf-8"))
            if not all(isinstance(v, list) and len(v) == 3 for v in extra.values()):
                raise TypeError
        except (json.JSONDecodeError, TypeError, AttributeError):
            raise TaskDataError(
                f"ceval: {local} must map subject -> [English name, Chinese name, category]"
            ) from None
        mapping.update(extra)
    return mapping


def header(subject: str) -> str:
    return f"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"


def format_example(line: Any, include_answer: bool = True) -> str:
    """`LLaMA_Evaluator.format_example` (no chain of thought)."""
    example = f"{line['question']}"
    for choice in LETTERS:
        example += f"\n{choice}. {line[f'{choice}']}"
    if include_answer:
        example += "\n答案：" + f"{line['answer']}" + "\n\n"
    else:
        example += "\n答案："
    return example


def fit_prefix(dev_df: Any, subject: str, question: str, k: int, tokenizer: Any, max_length: int) -> str:
    k = min(k, dev_df.shape[0])
    while True:
        prefix = header(subject) + "".join(format_example(dev_df.iloc[i, :]) for i in range(k))
        if k == 0 or tokenizer is None or len(tokenizer.encode(prefix + question)) <= max_length:
            return prefix
        k -= 1


def load(
    data_dir: Path,
    *,
    num_fewshot: int = 5,
    tokenizer: Any = None,
    max_length: int = 2048,
    limit: int | None = None,
    subjects: list[str] | None = None,
    chat: bool = False,
    split: str = "val",
) -> list[ChoiceItem]:
    data_dir = Path(data_dir)
    split_dir, names = split_subjects(data_dir, split, "ceval", "C-Eval", f"_{split}.csv", subjects)
    mapping = subject_mapping(data_dir)
    items: list[ChoiceItem] = []
    for subject in names:
        if subject not in mapping:
            raise TaskDataError(
                f"ceval: subject '{subject}' is not in C-Eval's subject_mapping.json; rename or drop it"
            )
        path = require_file(split_dir / f"{subject}_{split}.csv", TASK, f"{split} split of '{subject}'")
        df = read_csv(path, TASK, header=True, index_col=False, columns=COLUMNS)
        golds = check_answers(list(df["answer"]), path, TASK)
        dev_df = None
        if num_fewshot > 0:
            dev_path = require_file(
                data_dir / "dev" / f"{subject}_dev.csv", TASK, f"dev split of '{subject}'"
            )
            dev_df = read_csv(dev_path, TASK, header=True, index_col=False, columns=COLUMNS)
            check_answers(list(dev_df["answer"])[:num_fewshot], dev_path, TASK)
        for i in limited(list(range(df.shape[0])), limit):
            question = format_example(df.iloc[i, :], include_answer=False)
            if dev_df is None:
                prefix = header(subject)
            else:
                prefix = fit_prefix(dev_df, subject, question, num_fewshot, tokenizer, max_length)
            if chat:
                prefix, question = "", chat_wrap(tokenizer, prefix + question)
            items.append(ChoiceItem(TASK, subject, i, prefix, question, golds[i], LETTERS))
    return items


def aggregate(per_subject: dict[str, float], data_dir: Path | None = None) -> dict[str, float]:
    """Mean subject accuracy per category (STEM, Social Science, Humanities, Other) of subject_mapping.json."""
    mapping = subject_mapping(data_dir)
    groups: dict[str, list[float]] = {}
    for subject, acc in per_subject.items():
        groups.setdefault(mapping[subject][2], []).append(acc)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}
