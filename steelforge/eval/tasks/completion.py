"""ARC, HellaSwag, PIQA and Winogrande as lm-evaluation-harness (0.4) words them, from their published files.

Each choice is a (context, continuation) log-likelihood request; `acc` takes the best raw log-likelihood and
`acc_norm` divides it by the choice's length in characters, as lm-eval's `multiple_choice` tasks do (`acc_bytes`:
UTF-8 bytes). The target delimiter is " " and shots are joined by "\n\n". lm-eval draws few-shot examples at
random from the train split; here they are the first k train rows (identical for k = 0).

Files: ARC `*{Split}.jsonl` (question.stem, question.choices[{text,label}], answerKey); HellaSwag
`hellaswag_{split}.jsonl` (activity_label, ctx_a, ctx_b, endings, label); PIQA `{split}.jsonl` + `{split}-labels.lst`;
Winogrande `{split}.jsonl` (sentence, option1, option2, answer "1"/"2").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from steelforge.eval.tasks.base import CompletionItem, TaskDataError, limited, need_keys, read_jsonl

DELIM = " "
FEWSHOT_DELIM = "\n\n"


# ---- per-task documents: (text, choices, gold) as lm-eval's YAML/utility functions define them ---------------
def arc_doc(row: dict[str, Any]) -> tuple[str, list[str], int]:
    q = row["question"]
    labels = [c["label"] for c in q["choices"]]
    if row["answerKey"] not in labels:
        raise TaskDataError(f"arc: answerKey {row['answerKey']!r} is not among the choice labels {labels}")
    return (
        f"Question: {q['stem']}\nAnswer:",
        [c["text"] for c in q["choices"]],
        labels.index(row["answerKey"]),
    )


def hellaswag_preprocess(text: str) -> str:
    """lm-eval tasks/hellaswag/utils.py `preprocess`."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_doc(row: dict[str, Any]) -> tuple[str, list[str], int]:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
    return query, [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"])


def piqa_doc(row: dict[str, Any]) -> tuple[str, list[str], int]:
    return f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])


def winogrande_parts(row: dict[str, Any]) -> tuple[list[str], str, int]:
    """Contexts (sentence up to "_" with each option), the shared continuation, and the gold index."""
    sentence = row["sentence"]
    if "_" not in sentence:
        raise TaskDataError(f"winogrande: sentence {sentence!r} has no '_' blank")
    idx = sentence.index("_")
    contexts = [sentence[:idx] + opt for opt in (row["option1"], row["option2"])]
    if str(row["answer"]) not in ("1", "2"):
        raise TaskDataError(f"winogrande: answer {row['answer']!r} must be '1' or '2'")
    return contexts, sentence[idx + 1 :].strip(), {"1": 0, "2": 1}[str(row["answer"])]


SPECS: dict[str, dict[str, Any]] = {
    "arc_easy": {"keys": ("question", "answerKey"), "doc": arc_doc, "files": {"test": "*Easy-Test.jsonl", "train": "*Easy-Train.jsonl"}},
    "arc_challenge": {"keys": ("question", "answerKey"), "doc": arc_doc, "files": {"test": "*Challenge-Test.jsonl", "train": "*Challenge-Train.jsonl"}},
    "hellaswag": {"keys": ("activity_label", "ctx_a", "ctx_b", "endings", "label"), "doc": hellaswag_doc, "files": {"test": "hellaswag_val.jsonl", "train": "hellaswag_train.jsonl"}},
    "piqa": {"keys": ("goal", "sol1", "sol2"), "doc": piqa_doc, "files": {"test": "valid.jsonl", "train": "train.jsonl"}},
    "winogrande": {"keys": ("sentence", "option1", "option2", "answer"), "doc": None, "files": {"test": "dev.jsonl", "train": "train_xl.jsonl"}},
}  # fmt: skip


def _find(folder: Path, pattern: str, task: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        raise TaskDataError(
            f"{task}: no file matching {pattern} in {folder}; point --data-dir at the published files"
        )
    return hits[0]


def _rows(folder: Path, task: str, split: str) -> list[dict[str, Any]]:
    path = _find(folder, SPECS[task]["files"][split], task)
    rows = read_jsonl(path, task)
    for n, row in enumerate(rows):
        need_keys(row, SPECS[task]["keys"], path, n, task)
    if task == "piqa":
        labels_path = path.with_name(path.stem + "-labels.lst")
        if not labels_path.is_file():
            raise TaskDataError(f"piqa: {labels_path} is missing; PIQA's labels ship beside {path.name}")
        labels = [ln.strip() for ln in labels_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(labels) != len(rows) or any(lb not in ("0", "1") for lb in labels):
            raise TaskDataError(f"piqa: {labels_path} must hold one 0/1 label per line of {path.name}")
        rows = [{**r, "label": int(lb)} for r, lb in zip(rows, labels, strict=True)]
    return rows


def _shot(task: str, row: dict[str, Any]) -> str:
    if task == "winogrande":
        contexts, cont, gold = winogrande_parts(row)
        return contexts[gold] + DELIM + cont
    text, choices, gold = SPECS[task]["doc"](row)
    return text + DELIM + choices[gold]


def make_item(task: str, index: int, row: dict[str, Any], prefix: str = "") -> CompletionItem:
    """One document as lm-eval's requests: ("context", " continuation") per choice."""
    if task == "winogrande":
        contexts, cont, gold = winogrande_parts(row)
        ctxs = tuple(prefix + c for c in contexts)
        return CompletionItem(task, task, index, ctxs, (DELIM + cont,) * 2, tuple(contexts), gold)
    text, choices, gold = SPECS[task]["doc"](row)
    if not 0 <= gold < len(choices):
        raise TaskDataError(f"{task}: record {index} has gold {gold} outside its {len(choices)} choices")
    ctx = prefix + text
    return CompletionItem(
        task, task, index, (ctx,) * len(choices), tuple(DELIM + c for c in choices), tuple(choices), gold
    )


def load(
    task: str, data_dir: Path, *, num_fewshot: int = 0, limit: int | None = None, **_: Any
) -> list[CompletionItem]:
    if task not in SPECS:
        raise TaskDataError(f"unknown completion task '{task}'; use one of {', '.join(SPECS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TaskDataError(
            f"{task}: data folder {data_dir} is missing; point --data-dir at the published files"
        )
    rows = _rows(data_dir, task, "test")
    prefix = ""
    if num_fewshot > 0:
        train = _rows(data_dir, task, "train")[:num_fewshot]
        prefix = "".join(_shot(task, r) + FEWSHOT_DELIM for r in train)
    return [make_item(task, i, row, prefix) for i, row in enumerate(limited(rows, limit))]
