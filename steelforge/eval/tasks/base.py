"""What every task reader yields: items to score, plus the shared errors and CSV/JSONL readers.

Readers only read files and build prompt strings; scoring (batched forward passes) lives in
`steelforge.eval.scoring`, so a prompt can be checked character by character without a model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from steelforge.errors import DataError

LETTERS = ("A", "B", "C", "D")


class TaskDataError(DataError):
    """A benchmark folder that cannot be scored as published (missing file, wrong columns, bad answers)."""


@dataclass(frozen=True)
class ChoiceItem:
    """A lettered multiple-choice question scored by the next-token logits of the letters.

    `prefix` (header + k shots) is shared by every item of a subject; `prompt == prefix + question`.
    """

    task: str
    subject: str
    index: int
    prefix: str
    question: str
    gold: str
    letters: tuple[str, ...]  # the strings whose first (single) token is scored, e.g. "A" or " A"

    @property
    def prompt(self) -> str:
        return self.prefix + self.question


@dataclass(frozen=True)
class CompletionItem:
    """A question scored by the log-likelihood of each continuation given its context (lm-eval's requests)."""

    task: str
    subject: str
    index: int
    contexts: tuple[str, ...]  # one per choice (Winogrande) or the same context repeated
    continuations: tuple[str, ...]  # target delimiter included, e.g. " Paris"
    choices: tuple[str, ...]  # the choice strings acc_norm divides by (lm-eval's `doc_to_choice`)
    gold: int


@dataclass(frozen=True)
class GenerationItem:
    """A problem answered by free generation; `answer` is the gold final answer (a number or LaTeX)."""

    task: str
    subject: str
    index: int
    prompt: str
    answer: str
    stop: tuple[str, ...] = field(default_factory=tuple)


def package_json(name: str) -> Any:
    """A subject table shipped with the package (steelforge/eval/data/NAME)."""
    text = resources.files("steelforge.eval").joinpath("data", name).read_text(encoding="utf-8")
    return json.loads(text)


def require_file(path: Path, task: str, what: str) -> Path:
    if not path.is_file():
        raise TaskDataError(
            f"{task}: {what} file {path} is missing; point --data-dir at the benchmark's published layout"
        )
    return path


def read_csv(path: Path, task: str, *, header: bool, index_col: bool, columns: Sequence[str]) -> Any:
    """A pandas frame read exactly as the official scripts read it (so cells render the same in prompts)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, header=0 if header else None, index_col=0 if index_col else None)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TaskDataError(f"{task}: {path} is not a readable CSV ({exc}); re-download the file") from None
    if header:
        got = [str(c) for c in df.columns]
        if got != list(columns):
            raise TaskDataError(
                f"{task}: {path} has columns {got}, expected {list(columns)}; use the benchmark's published CSVs"
            )
    elif df.shape[1] != len(columns):
        raise TaskDataError(
            f"{task}: {path} has {df.shape[1]} columns, expected {len(columns)} ({', '.join(columns)}) without a header"
        )
    if df.shape[0] == 0:
        raise TaskDataError(f"{task}: {path} has no rows; an empty split cannot be scored")
    return df


def check_answers(values: Sequence[Any], path: Path, task: str) -> list[str]:
    out = []
    for row, value in enumerate(values):
        if not isinstance(value, str) or value not in LETTERS:
            raise TaskDataError(
                f"{task}: {path} row {row} has answer {value!r}; answers must be one of A, B, C, D"
            )
        out.append(value)
    return out


def read_jsonl(path: Path, task: str) -> list[dict[str, Any]]:
    rows = []
    with open(require_file(path, task, "data"), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise TaskDataError(
                        f"{task}: {path} line {n} is not JSON; re-download the file"
                    ) from None
    if not rows:
        raise TaskDataError(f"{task}: {path} has no rows; an empty split cannot be scored")
    return rows


def need_keys(row: dict[str, Any], keys: Sequence[str], path: Path, n: int, task: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise TaskDataError(
            f"{task}: {path} record {n} lacks {', '.join(missing)}; expected the published fields"
        )


def limited(items: list[Any], limit: int | None) -> list[Any]:
    return items if limit is None else items[:limit]


def subjects_in(folder: Path, suffix: str) -> Iterator[str]:
    for p in sorted(folder.glob(f"*{suffix}")):
        yield p.name[: -len(suffix)]


def split_subjects(
    data_dir: Path, split: str, task: str, dataset: str, suffix: str, subjects: list[str] | None
) -> tuple[Path, list[str]]:
    """The split's folder and the subjects to score (`subjects`, else every `<subject><suffix>` file in it);
    a missing folder or an empty split is one clear error."""
    split_dir = Path(data_dir) / split
    if not split_dir.is_dir():
        raise TaskDataError(
            f"{task}: {split_dir} is missing; --data-dir must hold {dataset}'s dev/ and {split}/ folders"
        )
    names = subjects or list(subjects_in(split_dir, suffix))
    if not names:
        raise TaskDataError(
            f"{task}: {split_dir} holds no <subject>{suffix} files; an empty split cannot be scored"
        )
    return split_dir, names


def warn_skip(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def chat_wrap(tokenizer: Any, text: str) -> str:
    """`text` as one user turn through the tokenizer's chat template, ending where the assistant answers."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TaskDataError(
            "chat prompts need a tokenizer with a chat template; drop --chat or use a chat model"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
