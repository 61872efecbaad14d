"""Demo data for every stage after pretraining, generated from a seed like the demo corpus.

The demo must show each stage doing its job on a CPU in minutes, with no data of the user's own and nothing
copied from elsewhere. So the tasks here are small and checkable, and they speak about the same things the
pretraining corpus teaches (`synthetic.py`: arithmetic written out as `a+b=c`, word problems with their worked
answers), in Chinese and English (about 80/20, as Steel-LLM's SFT mix):

- `sft`: conversations (OpenAI `messages`, some with a system prompt, some multi-turn) for three families whose
  answers follow from the question: addition of small numbers, repeating a word, the next number;
- `dpo`: preference pairs on the same families: the correct answer against a wrong sum, a wrong repetition or an
  unhelpful reply;
- `grpo`: prompts with a verifiable numeric `answer` (addition), for an outcome reward;
- `eval`: multiple-choice items in the published CMMLU (`{dev,test}/{subject}.csv` + `subjects.json`) and C-Eval
  (`{dev,val}/{subject}_{split}.csv`) layouts, and a GSM8K-style generation set (`question`, `answer` ending in
  `#### n`), so that `steelforge eval` reads them unchanged.

Train and held-out splits never share a prompt. Same `seed`, same files, byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from steelforge.clean.synthetic import _EN_KIDS, _EN_OBJECTS, _ZH_KIDS, _ZH_OBJECTS, _ZH_SYLLABLES, _en_word
from steelforge.config_base import StrictModel
from steelforge.reporting import StageReport

Example = dict[str, Any]

SYSTEM_ZH = "你是一个乐于助人的助手。"
SYSTEM_EN = "You are a helpful assistant."
ZH_SHARE = 0.8

# Eval subjects in the CMMLU/C-Eval layouts: handle -> Chinese name (what the official prompts put in).
EVAL_SUBJECTS: dict[str, str] = {"demo_arithmetic": "算术", "demo_sequences": "数列"}


# ---- task families --------------------------------------------------------------------------------
def _addition(rng: random.Random, zh: bool) -> tuple[str, str, int]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    s = a + b
    if zh:
        question = rng.choice((f"{a}+{b}等于多少？", f"计算{a}加{b}。", f"请算一算：{a}+{b}=?"))
        return question, f"{a}+{b}={s}，答案是{s}。", s
    question = rng.choice((f"What is {a} plus {b}?", f"Compute {a} + {b}.", f"Please work out {a}+{b}."))
    return question, f"{a} + {b} = {s}. The answer is {s}.", s


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_ZH_SYLLABLES) for _ in range(rng.randint(1, 3)))


def _repeat(rng: random.Random, zh: bool) -> tuple[str, str, str]:
    if zh:
        word = _word(rng)
        return rng.choice((f"请把“{word}”重复两遍。", f"把“{word}”连着写两次。")), f"{word}{word}", word
    word = _en_word(rng, rng.randint(1, 2)).lower()
    return rng.choice((f"Repeat the word {word} twice.", f"Say {word} two times.")), f"{word} {word}", word


def _next_number(rng: random.Random, zh: bool) -> tuple[str, str, int]:
    n = rng.randint(0, 98)
    if zh:
        return (
            rng.choice((f"{n}的下一个数是几？", f"{n}后面的数是多少？")),
            f"{n}的下一个数是{n + 1}。",
            n + 1,
        )
    return (
        rng.choice((f"What number comes after {n}?", f"What is the next number after {n}?")),
        (f"The number after {n} is {n + 1}."),
        n + 1,
    )


_FAMILIES: tuple[Callable[[random.Random, bool], tuple[str, str, Any]], ...] = (
    _addition,
    _repeat,
    _next_number,
)


class _Unique:
    """Hands out examples whose prompt was never handed out before (so train and held-out never overlap)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def take(
        self, make: Callable[[], tuple[str, str, Any]], tries: int = 1000
    ) -> tuple[str, str, Any] | None:
        for _ in range(tries):
            item = make()
            if item[0] not in self.seen:
                self.seen.add(item[0])
                return item
        return None


def _draw(
    rng: random.Random, unique: _Unique, families: tuple = _FAMILIES
) -> tuple[str, str, Any, bool] | None:
    """A fresh example from a random family and language; None once every family's prompts are used up."""
    zh = rng.random() < ZH_SHARE
    order = list(families)
    rng.shuffle(order)
    for family in order:
        item = unique.take(lambda family=family: family(rng, zh), tries=200)
        if item is not None:
            return (*item, zh)
    return None


# ---- SFT ------------------------------------------------------------------------------------------
def sft_conversations(n: int, rng: random.Random, unique: _Unique) -> list[Example]:
    """`messages` conversations: a quarter with a system prompt, a fifth with two user turns."""
    out: list[Example] = []
    while len(out) < n:
        first = _draw(rng, unique)
        if first is None:
            break
        question, answer, _, zh = first
        messages: list[dict[str, str]] = []
        if rng.random() < 0.25:
            messages.append({"role": "system", "content": SYSTEM_ZH if zh else SYSTEM_EN})
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.2:
            second = _draw(rng, unique)
            if second is not None:
                messages += [
                    {"role": "user", "content": second[0]},
                    {"role": "assistant", "content": second[1]},
                ]
        out.append({"messages": messages})
    return out


# ---- DPO ------------------------------------------------------------------------------------------
def _rejected(rng: random.Random, question: str, answer: str, value: Any, zh: bool) -> str:
    if isinstance(value, int) and rng.random() < 0.7:
        wrong = value + rng.choice((-3, -2, -1, 1, 2, 3))
        return answer.replace(str(value), str(max(wrong, 0) if wrong != value else value + 1))
    if isinstance(value, str) and rng.random() < 0.6:
        return value  # said once instead of twice
    return "我不知道。" if zh else "I don't know."


def preference_pairs(n: int, rng: random.Random, unique: _Unique) -> list[Example]:
    """`prompt` + `chosen`/`rejected` as message lists (TRL's conversational preference format)."""
    out: list[Example] = []
    while len(out) < n:
        item = _draw(rng, unique)
        if item is None:
            break
        question, answer, value, zh = item
        rejected = _rejected(rng, question, answer, value, zh)
        if rejected == answer:
            continue
        out.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return out


# ---- GRPO -----------------------------------------------------------------------------------------
def rl_prompts(n: int, rng: random.Random, unique: _Unique) -> list[Example]:
    """Addition prompts with a verifiable `answer` (the number), asking for the answer in a fixed phrase."""
    out: list[Example] = []
    while len(out) < n:
        item = _draw(rng, unique, families=(_addition,))
        if item is None:
            break
        question, _, value, zh = item
        out.append(
            {
                "messages": [{"role": "user", "content": question}],
                "answer": str(value),
                "lang": "zh" if zh else "en",
            }
        )
    return out


# ---- evaluation -----------------------------------------------------------------------------------
def _choices(rng: random.Random, correct: int) -> tuple[list[str], str]:
    options = {correct}
    while len(options) < 4:
        options.add(max(0, correct + rng.choice((-3, -2, -1, 1, 2, 3, 4))))
    ordered = sorted(options)
    rng.shuffle(ordered)
    return [str(v) for v in ordered], "ABCD"[ordered.index(correct)]


def mc_items(subject: str, n: int, rng: random.Random, unique: _Unique) -> list[dict[str, str]]:
    """Multiple-choice items (Question, A–D, Answer) for one demo subject."""
    items: list[dict[str, str]] = []
    while len(items) < n:
        if subject == "demo_arithmetic":
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            question, correct = f"{a}+{b}等于多少？", a + b
        else:
            start, step = rng.randint(0, 40), rng.randint(1, 5)
            seq = [start + i * step for i in range(4)]
            question, correct = f"数列{'，'.join(map(str, seq))}的下一个数是几？", start + 4 * step
        if question in unique.seen:
            if len(unique.seen) > 10_000:
                break
            continue
        unique.seen.add(question)
        options, letter = _choices(rng, correct)
        items.append(
            {
                "Question": question,
                "A": options[0],
                "B": options[1],
                "C": options[2],
                "D": options[3],
                "Answer": letter,
            }
        )
    return items


def word_problems(n: int, rng: random.Random, unique: _Unique) -> list[Example]:
    """GSM8K-style problems: `question` and an `answer` with the working and a final `#### n` line."""
    out: list[Example] = []
    while len(out) < n:
        zh = rng.random() < ZH_SHARE
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if zh:
            kid = rng.choice(_ZH_KIDS)
            unit, noun = rng.choice(_ZH_OBJECTS)
            question = f"{kid}有{a}{unit}{noun}，又买了{b}{unit}，现在有几{unit}？"
            answer = f"{a}+{b}={a + b}，现在有{a + b}{unit}。\n#### {a + b}"
        else:
            kid, obj = rng.choice(_EN_KIDS), rng.choice(_EN_OBJECTS)
            question = f"{kid} has {a} {obj} and gets {b} more. How many {obj} does {kid} have now?"
            answer = f"{a} + {b} = {a + b}, so {kid} has {a + b} {obj}.\n#### {a + b}"
        if question in unique.seen:
            continue
        unique.seen.add(question)
        out.append({"question": question, "answer": answer})
    return out


# ---- files ----------------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _jsonl(rows: Iterable[Example]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _csv(rows: list[dict[str, str]], columns: list[str], *, unnamed_index: bool) -> str:
    """CSV text with `columns`; CMMLU's files start with an unnamed index column (pandas' `to_csv`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(([""] if unnamed_index else []) + columns)
    for i, row in enumerate(rows):
        writer.writerow(([str(i)] if unnamed_index else []) + [row[key] for key in columns])
    return buffer.getvalue()


def write_task_files(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sft: tuple[int, int] = (2000, 100),
    dpo: tuple[int, int] = (600, 100),
    grpo: tuple[int, int] = (150, 50),
    eval_items: int = 60,
    word_problem_items: int = 40,
) -> dict[str, Path]:
    """Write every demo task file under `out_dir` (train/held-out sizes per stage); returns name -> path."""
    root = Path(out_dir)
    rng = random.Random(f"demo-tasks-{seed}")
    paths: dict[str, Path] = {}

    def put(name: str, rel: str, text: str) -> None:
        path = root / rel
        _atomic_write(path, text)
        paths[name] = path

    # Each stage draws from its own pool, so a held-out prompt never appears in any stage's training data.
    chat_pool, rl_pool, eval_pool = _Unique(), _Unique(), _Unique()
    heldout_sft = sft_conversations(sft[1], rng, chat_pool)
    heldout_dpo = preference_pairs(dpo[1], rng, chat_pool)
    heldout_rl = rl_prompts(grpo[1], rng, rl_pool)
    put("sft_heldout", "sft/heldout.jsonl", _jsonl(heldout_sft))
    put("dpo_heldout", "dpo/heldout.jsonl", _jsonl(heldout_dpo))
    put("grpo_heldout", "grpo/heldout.jsonl", _jsonl(heldout_rl))
    put("sft_train", "sft/train.jsonl", _jsonl(sft_conversations(sft[0], rng, chat_pool)))
    put("dpo_train", "dpo/train.jsonl", _jsonl(preference_pairs(dpo[0], rng, chat_pool)))
    put("grpo_train", "grpo/train.jsonl", _jsonl(rl_prompts(grpo[0], rng, rl_pool)))

    cmmlu_columns = ["Question", "A", "B", "C", "D", "Answer"]
    ceval_columns = ["id", "question", "A", "B", "C", "D", "answer"]

    def as_ceval(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [
            {"id": str(i), "question": r["Question"], **{k: r[k] for k in "ABCD"}, "answer": r["Answer"]}
            for i, r in enumerate(rows)
        ]

    for subject in EVAL_SUBJECTS:
        dev = mc_items(subject, 5, rng, eval_pool)
        test = mc_items(subject, eval_items, rng, eval_pool)
        put(
            f"cmmlu_dev_{subject}",
            f"eval/cmmlu/dev/{subject}.csv",
            _csv(dev, cmmlu_columns, unnamed_index=True),
        )
        put(
            f"cmmlu_test_{subject}",
            f"eval/cmmlu/test/{subject}.csv",
            _csv(test, cmmlu_columns, unnamed_index=True),
        )
        put(
            f"ceval_dev_{subject}",
            f"eval/ceval/dev/{subject}_dev.csv",
            _csv(as_ceval(dev), ceval_columns, unnamed_index=False),
        )
        put(
            f"ceval_val_{subject}",
            f"eval/ceval/val/{subject}_val.csv",
            _csv(as_ceval(test), ceval_columns, unnamed_index=False),
        )
    subjects = {"name_en2zh": EVAL_SUBJECTS}
    put(
        "cmmlu_subjects",
        "eval/cmmlu/subjects.json",
        json.dumps(subjects, ensure_ascii=False, indent=1) + "\n",
    )
    ceval_mapping = {handle: [handle, zh, "STEM"] for handle, zh in EVAL_SUBJECTS.items()}
    put(
        "ceval_subjects",
        "eval/ceval/subject_mapping.json",
        json.dumps(ceval_mapping, ensure_ascii=False, indent=1) + "\n",
    )
    put("gsm8k_test", "eval/gsm8k/test.jsonl", _jsonl(word_problems(word_problem_items, rng, _Unique())))
    return paths


# ---- the `tasks:` stage -----------------------------------------------------------------------------
DONE_FILE = "tasks_done.json"


class TasksConfig(StrictModel):
    """The recipe's `tasks:` section: write the demo's post-training and evaluation files under <out_dir>/tasks."""

    output: Path | None = Field(None, description="Folder for the task files (default <out_dir>/tasks).")
    seed: int = Field(0, description="Seed of the task files (same seed, same bytes).")
    sft: tuple[int, int] = Field((2000, 100), description="SFT conversations: (train, held-out).")
    dpo: tuple[int, int] = Field((600, 100), description="Preference pairs: (train, held-out).")
    grpo: tuple[int, int] = Field(
        (150, 50), description="RL prompts with verifiable answers: (train, held-out)."
    )
    eval_items: int = Field(60, ge=5, description="Multiple-choice test items per evaluation subject.")
    word_problem_items: int = Field(40, ge=1, description="GSM8K-style generation items.")


def _settings(cfg: TasksConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude={"output"})


def tasks_complete(recipe: Any) -> bool:
    """True when the files exist and were written with the recipe's current settings."""
    marker = recipe.stage_dir("tasks") / DONE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("settings") == _settings(recipe.tasks)
    except ValueError:
        return False


def run_tasks(recipe: Any) -> StageReport:
    """Write every task file, then the completion marker (last, so an interrupted run writes them again)."""
    cfg: TasksConfig = recipe.tasks
    out = recipe.stage_dir("tasks")
    kwargs = _settings(cfg)
    paths = write_task_files(out, **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    _atomic_write(
        out / DONE_FILE,
        json.dumps(
            {"settings": kwargs, "files": sorted(str(p.relative_to(out)) for p in paths.values())}, indent=1
        )
        + "\n",
    )
    report = StageReport(stage="tasks")
    for name in ("sft_train", "dpo_train", "grpo_train"):
        report.add(f"{name} records", sum(1 for _ in paths[name].open(encoding="utf-8")))
    report.add("evaluation subjects", len(EVAL_SUBJECTS))
    report.outputs["dir"] = out
    return report
