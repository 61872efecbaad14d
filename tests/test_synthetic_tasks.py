"""The demo's post-training and evaluation data: deterministic, correct answers, no held-out prompt trained on."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from steelforge.clean.synthetic_tasks import EVAL_SUBJECTS, write_task_files

SMALL = {"sft": (300, 40), "dpo": (120, 30), "grpo": (60, 20), "eval_items": 20, "word_problem_items": 10}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _user_prompts(rows: list[dict]) -> set[str]:
    out = set()
    for row in rows:
        messages = row.get("messages") or row["prompt"]
        out |= {m["content"] for m in messages if m["role"] == "user"}
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_task_files(tmp_path / "a", seed=3, **SMALL)
    b = write_task_files(tmp_path / "b", seed=3, **SMALL)
    c = write_task_files(tmp_path / "c", seed=4, **SMALL)
    assert a.keys() == b.keys() == c.keys()
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert a["sft_train"].read_bytes() != c["sft_train"].read_bytes()


def test_sizes_and_no_heldout_prompt_in_training(tmp_path: Path) -> None:
    paths = write_task_files(tmp_path, **SMALL)
    sft_train, sft_held = _jsonl(paths["sft_train"]), _jsonl(paths["sft_heldout"])
    dpo_train, dpo_held = _jsonl(paths["dpo_train"]), _jsonl(paths["dpo_heldout"])
    assert (len(sft_train), len(sft_held), len(dpo_train), len(dpo_held)) == (300, 40, 120, 30)
    trained = _user_prompts(sft_train) | _user_prompts(dpo_train)
    assert not trained & (_user_prompts(sft_held) | _user_prompts(dpo_held))
    grpo_train, grpo_held = _jsonl(paths["grpo_train"]), _jsonl(paths["grpo_heldout"])
    assert not _user_prompts(grpo_train) & _user_prompts(grpo_held)


def test_answers_are_correct(tmp_path: Path) -> None:
    paths = write_task_files(tmp_path, **SMALL)
    for row in _jsonl(paths["grpo_train"]):
        number = int(re.findall(r"\d+", row["messages"][0]["content"])[0])
        assert int(row["answer"]) == number % 2
    for row in _jsonl(paths["dpo_train"]):
        assert row["chosen"] != row["rejected"]
        prompt, chosen = row["prompt"][0]["content"], row["chosen"][0]["content"]
        if "奇数" in prompt or "odd" in prompt:
            odd = int(re.findall(r"\d+", prompt)[0]) % 2 == 1
            assert chosen in (("奇数。", "Odd.") if odd else ("偶数。", "Even."))
        if "个位" in prompt or "digit" in prompt:
            assert str(int(re.findall(r"\d+", prompt)[0]) % 10) in chosen
        if "city or a river" in prompt or "城市还是" in prompt:
            name = prompt.split("是")[0] if "城市还是" in prompt else prompt.split()[1]
            city = name[-1] in "市城"
            assert chosen in (("城市。", "A city.") if city else ("河流。", "A river."))
    for row in _jsonl(paths["gsm8k_test"]):
        number = int(re.findall(r"\d+", row["question"])[0])
        assert row["answer"].endswith(f"#### {number % 10}")


def test_eval_files_follow_the_published_layouts(tmp_path: Path) -> None:
    paths = write_task_files(tmp_path, **SMALL)
    for subject in EVAL_SUBJECTS:
        with paths[f"cmmlu_test_{subject}"].open(encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["", "Question", "A", "B", "C", "D", "Answer"]
        assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(rows) - 1)]
        for row in rows[1:]:
            options, answer = row[2:6], row[6]
            assert len(set(options)) == 4 and answer in "ABCD"
            if subject == "demo_parity":
                number = int(re.findall(r"\d+", row[1])[0])
                assert options["ABCD".index(answer)] == ("偶数" if number % 2 == 0 else "奇数")
        with paths[f"ceval_val_{subject}"].open(encoding="utf-8") as handle:
            header = next(csv.reader(handle))
        assert header == ["id", "question", "A", "B", "C", "D", "answer"]
    assert json.loads(paths["cmmlu_subjects"].read_text(encoding="utf-8"))["name_en2zh"] == EVAL_SUBJECTS
