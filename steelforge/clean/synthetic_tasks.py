"""Demo data for every stage after pretraining, generated from a seed like the demo corpus.

The demo must show each stage doing its job on a CPU in minutes, with no data of the user's own and nothing
copied from elsewhere. So the tasks here are small and checkable, use the corpus's vocabulary (`synthetic.py`:
invented city and river names, numbers), and follow rules that a tiny model can learn from a few hundred examples
and apply to prompts it never saw; Chinese and English are mixed about 80/20, as in Steel-LLM's SFT mix:

- `sft`: conversations (OpenAI `messages`, some with a system prompt, some multi-turn) for four families whose
  answers follow a rule: who the model is, whether a name is a city or a river, whether a number is odd, its
  remainder by 2, its last digit;
- `dpo`: preference pairs on the same families: the correct answer against a wrong one or an unhelpful reply;
- `grpo`: remainder-by-2 prompts with a verifiable numeric `answer`, for an outcome reward;
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

from steelforge.clean.synthetic import _EN_KIDS, _ZH_KIDS, _ZH_SYLLABLES
from steelforge.config_base import StrictModel
from steelforge.reporting import StageReport

Example = dict[str, Any]

SYSTEM_ZH = "你是一个乐于助人的助手。"
SYSTEM_EN = "You are a helpful assistant."
ZH_SHARE = 0.8

# Eval subjects in the CMMLU/C-Eval layouts: handle -> Chinese name (what the official prompts put in).
EVAL_SUBJECTS: dict[str, str] = {"demo_parity": "数的奇偶", "demo_places": "地名"}


# ---- task families --------------------------------------------------------------------------------
# Each family's answer follows from a rule a small model can pick up from a few hundred examples and apply to
# prompts it never saw: who it is (a fixed answer to many phrasings), what a name denotes (its last character:
# 市/城 a city, 河/江 a river, as in the corpus), whether a number is odd (its last digit), and a number's last
# digit. Each returns (question, answer, value), `value` being what a verifier checks.
IDENTITY_ZH = "我是钢铁炉演示模型，一个在CPU上训练的小模型。"
IDENTITY_EN = "I am the steelforge demo model, a small model trained on a CPU."
_ASK_ZH = ("你是谁", "你叫什么名字", "介绍一下你自己", "你是什么模型", "说说你是谁", "你是哪个模型")
_ASK_EN = (
    "Who are you",
    "What is your name",
    "Introduce yourself",
    "What model are you",
    "Tell me who you are",
)
_LEAD_ZH = ("", "请问", "你好，", "能告诉我", "我想知道", "打扰一下，")
_LEAD_EN = ("", "Hello! ", "Please, ", "Quick question: ", "Hi, ")


def _identity(rng: random.Random, zh: bool) -> tuple[str, str, str]:
    if zh:
        return rng.choice(_LEAD_ZH) + rng.choice(_ASK_ZH) + rng.choice("？?。"), IDENTITY_ZH, "identity"
    return rng.choice(_LEAD_EN) + rng.choice(_ASK_EN) + rng.choice("?."), IDENTITY_EN, "identity"


def _category(rng: random.Random, zh: bool) -> tuple[str, str, str]:
    city = rng.random() < 0.5
    name = "".join(rng.choice(_ZH_SYLLABLES) for _ in range(2)) + rng.choice("市城" if city else "河江")
    if zh:
        question = rng.choice((f"{name}是城市还是河流？", f"{name}是一座城市还是一条河？"))
        return question, "城市。" if city else "河流。", "city" if city else "river"
    return f"Is {name} a city or a river?", "A city." if city else "A river.", "city" if city else "river"


def _parity(rng: random.Random, zh: bool) -> tuple[str, str, str]:
    n = rng.randint(10, 9999)
    odd = n % 2 == 1
    if zh:
        return (
            rng.choice((f"{n}是奇数还是偶数？", f"{n}是单数还是双数？")),
            "奇数。" if odd else "偶数。",
            "odd" if odd else "even",
        )
    return f"Is {n} odd or even?", "Odd." if odd else "Even.", "odd" if odd else "even"


def _last_digit(rng: random.Random, zh: bool) -> tuple[str, str, int]:
    n = rng.randint(10, 99999)
    d = n % 10
    if zh:
        return rng.choice((f"{n}的个位数是几？", f"{n}的个位是多少？")), f"个位数是{d}。", d
    return (
        rng.choice((f"What is the last digit of {n}?", f"Which digit does {n} end with?")),
        f"The last digit is {d}.",
        d,
    )


def _remainder(rng: random.Random, zh: bool) -> tuple[str, str, int]:
    n = rng.randint(10, 9999)
    r = n % 2
    if zh:
        return rng.choice((f"{n}除以2的余数是几？", f"{n}除以2余几？")), f"余数是{r}。", r
    return f"What is the remainder of {n} divided by 2?", f"The remainder is {r}.", r


_FAMILIES: tuple[Callable[[random.Random, bool], tuple[str, str, Any]], ...] = (
    _identity,
    _category,
    _parity,
    _last_digit,
    _remainder,
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
_WRONG = {
    "city": ("河流。", "A river."), "river": ("城市。", "A city."), "odd": ("偶数。", "Even."), "even": ("奇数。", "Odd."),
}  # fmt: skip


def _rejected(rng: random.Random, question: str, answer: str, value: Any, zh: bool) -> str:
    """A wrong answer (the other category, the other parity, another digit, a wrong identity) or an unhelpful one."""
    if rng.random() < 0.25:
        return "我不知道。" if zh else "I don't know."
    if isinstance(value, int):
        modulus = 2 if ("余" in question or "remainder" in question) else 10
        return answer.replace(str(value), str((value + rng.randint(1, modulus - 1)) % modulus))
    if value in _WRONG:
        return _WRONG[value][0 if zh else 1]
    return "我是一个人类。" if zh else "I am a human."


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
    """Remainder-by-2 prompts with a verifiable numeric `answer`, for an outcome reward."""
    out: list[Example] = []
    while len(out) < n:
        item = _draw(rng, unique, families=(_remainder,))
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
_MC = {
    "demo_parity": ("奇数", "偶数", "质数", "分数"),
    "demo_places": ("城市", "河流", "山峰", "人物"),
}


def mc_items(subject: str, n: int, rng: random.Random, unique: _Unique) -> list[dict[str, str]]:
    """Multiple-choice items (Question, A–D, Answer) for one demo subject, options in a shuffled order."""
    items: list[dict[str, str]] = []
    while len(items) < n and len(unique.seen) < 100_000:
        if subject == "demo_parity":
            number = rng.randint(10, 9999)
            question, correct = f"{number}是奇数还是偶数？", _MC[subject][number % 2 == 0]
        else:
            city = rng.random() < 0.5
            name = "".join(rng.choice(_ZH_SYLLABLES) for _ in range(2)) + rng.choice(
                "市城" if city else "河江"
            )
            question, correct = f"{name}是什么地方？", _MC[subject][0 if city else 1]
        if question in unique.seen:
            continue
        unique.seen.add(question)
        options = list(_MC[subject])
        rng.shuffle(options)
        items.append(
            {
                "Question": question,
                **dict(zip("ABCD", options, strict=True)),
                "Answer": "ABCD"[options.index(correct)],
            }
        )
    return items


def word_problems(n: int, rng: random.Random, unique: _Unique) -> list[Example]:
    """GSM8K-layout items: `question` and an `answer` with the working and a final `#### n` line."""
    out: list[Example] = []
    while len(out) < n:
        zh = rng.random() < ZH_SHARE
        number = rng.randint(10, 99999)
        digit = number % 10
        if zh:
            kid = rng.choice(_ZH_KIDS)
            question = f"{kid}家的门牌号是{number}，门牌号的个位数是几？"
            answer = f"{number}的个位数是{digit}。\n#### {digit}"
        else:
            kid = rng.choice(_EN_KIDS)
            question = f"{kid} lives at number {number}. What is the last digit of the house number?"
            answer = f"The last digit of {number} is {digit}.\n#### {digit}"
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
