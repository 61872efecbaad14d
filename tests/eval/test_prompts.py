"""Golden prompt strings, written out literally, for C-Eval, MMLU, CMMLU and the completion/generation tasks."""

from __future__ import annotations

import csv
import json

import pytest

from steelforge.eval.tasks import ceval, cmmlu, completion, generation, mmlu
from steelforge.eval.tasks.base import TaskDataError

from .helpers import write_cmmlu


def _csv(path, rows, header=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(header)
        w.writerows(rows)


def test_ceval_prompt_uses_the_subject_handle(tmp_path):
    head = ["id", "question", "A", "B", "C", "D", "answer"]
    _csv(
        tmp_path / "dev" / "computer_network_dev.csv",
        [[0, "TCP属于哪一层？", "应用层", "传输层", "网络层", "链路层", "B"]],
        head,
    )
    _csv(
        tmp_path / "val" / "computer_network_val.csv",
        [[0, "IP属于哪一层？", "应用层", "传输层", "网络层", "链路层", "C"]],
        head,
    )
    items = ceval.load(tmp_path, num_fewshot=1)
    assert items[0].prompt == (
        "以下是中国关于computer_network考试的单项选择题，请选出其中的正确答案。\n\n"
        "TCP属于哪一层？\nA. 应用层\nB. 传输层\nC. 网络层\nD. 链路层\n答案：B\n\n"
        "IP属于哪一层？\nA. 应用层\nB. 传输层\nC. 网络层\nD. 链路层\n答案："
    )
    assert items[0].gold == "C" and items[0].letters == ("A", "B", "C", "D")
    zero = ceval.load(tmp_path, num_fewshot=0)
    assert zero[0].prompt == (
        "以下是中国关于computer_network考试的单项选择题，请选出其中的正确答案。\n\n"
        "IP属于哪一层？\nA. 应用层\nB. 传输层\nC. 网络层\nD. 链路层\n答案："
    )


def test_mmlu_prompt_two_spaces_and_spaced_letters(tmp_path):
    _csv(tmp_path / "dev" / "abstract_algebra_dev.csv", [["Find 1+1.", "1", "2", "3", "4", "B"]])
    _csv(tmp_path / "test" / "abstract_algebra_test.csv", [["Find 2+2.", "2", "3", "4", "5", "C"]])
    items = mmlu.load(tmp_path, num_fewshot=1)
    assert items[0].prompt == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find 1+1.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "Find 2+2.\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
    )
    assert items[0].letters == (" A", " B", " C", " D")


def test_cmmlu_prompt(tmp_path):
    write_cmmlu(
        tmp_path,
        {
            "anatomy": [
                ("心脏有几个腔？", "2", "3", "4", "5", "C"),
                ("肺属于？", "呼吸系统", "消化系统", "神经系统", "循环系统", "A"),
            ]
        },
        dev_rows=1,
    )
    items = cmmlu.load(tmp_path, num_fewshot=1)
    assert items[1].prompt == (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：心脏有几个腔？\nA. 2\nB. 3\nC. 4\nD. 5\n答案是：C\n\n"
        "题目：肺属于？\nA. 呼吸系统\nB. 消化系统\nC. 神经系统\nD. 循环系统\n答案是："
    )


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_arc_requests(tmp_path):
    row = {
        "id": "x",
        "question": {
            "stem": "Which is a gas?",
            "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}],
        },
        "answerKey": "B",
    }
    _jsonl(tmp_path / "ARC-Easy-Test.jsonl", [row])
    (it,) = completion.load("arc_easy", tmp_path)
    assert it.contexts == ("Question: Which is a gas?\nAnswer:",) * 2
    assert it.continuations == (" ice", " steam") and it.gold == 1


def test_hellaswag_requests_preprocessed(tmp_path):
    row = {
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
        "ctx_b": "then",
        "endings": [
            ", the man adds wax to the windshield and cuts it.",
            ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
            ", the man puts on a christmas coat, knitted with netting.",
            ", the man continues removing the snow on his car.",
        ],
        "label": "3",
    }
    _jsonl(tmp_path / "hellaswag_val.jsonl", [row])
    (it,) = completion.load("hellaswag", tmp_path)
    assert it.contexts[0] == (
        "Removing ice from car: Then, the man writes over the snow covering the window of a car, "
        "and a woman wearing winter clothes smiles. Then"
    )
    assert it.continuations[3] == " , the man continues removing the snow on his car." and it.gold == 3
    assert (
        completion.hellaswag_preprocess("How to cook [title] Boil water. [step] Stir.")
        == "How to cook. Boil water. Stir."
    )


def test_piqa_requests(tmp_path):
    _jsonl(
        tmp_path / "valid.jsonl",
        [{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Freeze the jar."}],
    )
    (tmp_path / "valid-labels.lst").write_text("0\n")
    (it,) = completion.load("piqa", tmp_path)
    assert it.contexts[0] == "Question: Open a jar\nAnswer:"
    assert it.continuations == (" Twist the lid.", " Freeze the jar.") and it.gold == 0


def test_winogrande_requests(tmp_path):
    row = {
        "sentence": "The trophy doesn't fit into the suitcase because the _ is too small.",
        "option1": "trophy",
        "option2": "suitcase",
        "answer": "2",
    }
    _jsonl(tmp_path / "dev.jsonl", [row])
    (it,) = completion.load("winogrande", tmp_path)
    assert it.contexts == (
        "The trophy doesn't fit into the suitcase because the trophy",
        "The trophy doesn't fit into the suitcase because the suitcase",
    )
    assert it.continuations == (" is too small.",) * 2 and it.gold == 1


def test_gsm8k_prompt(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}])
    _jsonl(tmp_path / "test.jsonl", [{"question": "What is 4+4?", "answer": "4+4=8\n#### 8"}])
    (it,) = generation.load("gsm8k", tmp_path, num_fewshot=1)
    assert (
        it.prompt
        == "Question: What is 2+3?\nAnswer: 2+3=<<2+3=5>>5\n#### 5\n\nQuestion: What is 4+4?\nAnswer:"
    )
    assert it.answer == "8"


@pytest.mark.parametrize(
    ("bad", "message"),
    [("answer", "answers must be one of A, B, C, D"), ("columns", "has columns"), ("empty", "has no rows"),
     ("missing_dev", "dev split of 'anatomy'")],
)  # fmt: skip
def test_bad_input_is_named(tmp_path, bad, message):
    write_cmmlu(
        tmp_path, {"anatomy": [("q", "a", "b", "c", "d", "E" if bad == "answer" else "A")]}, dev_rows=1
    )
    if bad == "columns":
        (tmp_path / "test" / "anatomy.csv").write_text(
            ",Question,A,B,C,Answer\n0,q,a,b,c,A\n", encoding="utf-8"
        )
    if bad == "empty":
        (tmp_path / "test" / "anatomy.csv").write_text(",Question,A,B,C,D,Answer\n", encoding="utf-8")
    if bad == "missing_dev":
        (tmp_path / "dev" / "anatomy.csv").unlink()
    with pytest.raises(TaskDataError, match=message):
        cmmlu.load(tmp_path, num_fewshot=1)
