"""The lm-eval bridge runs a local custom task end to end, and agrees with lm-eval's own HF model wrapper."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (the [eval] extra) is not installed")

DOCS = [
    {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Freeze the jar.", "label": 0},
    {"goal": "Dry wet hands", "sol1": "Use a towel.", "sol2": "Use a candle.", "label": 0},
    {"goal": "Cool hot soup", "sol1": "Heat it more.", "sol2": "Let it stand.", "label": 1},
    {"goal": "Light a room", "sol1": "Turn on the lamp.", "sol2": "Close the door.", "label": 0},
]


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    data = tmp_path / "valid.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    (tmp_path / "valid-labels.lst").write_text("".join(f"{d['label']}\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sf_piqa_local.yaml").write_text(
        "task: sf_piqa_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {data}\n"
        "output_type: multiple_choice\nvalidation_split: validation\n"
        'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\ndoc_to_choice: "{{[sol1, sol2]}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return tmp_path


def test_bridge_runs_local_task_and_matches_hflm_and_native(task_dir, tiny_qwen2, qwen_tok):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from steelforge.eval.harness import run_harness
    from steelforge.eval.runner import EvalOptions, evaluate

    ours = run_harness(
        tiny_qwen2, qwen_tok, ["sf_piqa_local"], include_path=task_dir / "tasks", out_dir=task_dir / "out"
    )
    got = ours["results"]["sf_piqa_local"]
    assert "sf_piqa_local" in ours["table"]
    assert (task_dir / "out" / "harness_results.json").is_file()
    ref = lm_eval.simple_evaluate(model=HFLM(pretrained=tiny_qwen2, tokenizer=qwen_tok, batch_size=1),
                                  tasks=["sf_piqa_local"], task_manager=TaskManager(include_path=str(task_dir / "tasks")),
                                  bootstrap_iters=0)["results"]["sf_piqa_local"]  # fmt: skip
    assert got["acc,none"] == ref["acc,none"] and got["acc_norm,none"] == ref["acc_norm,none"]
    native = evaluate(
        tiny_qwen2, qwen_tok, EvalOptions(tasks=["piqa"], data_dir=task_dir), show_progress=False
    )
    assert native["tasks"]["piqa"]["accuracy"] == ref["acc,none"]
    assert native["tasks"]["piqa"]["acc_norm"] == ref["acc_norm,none"]


def test_loglikelihoods_equal_hflm_per_request(tiny_qwen2, qwen_tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from steelforge.eval.harness import SteelforgeLM

    pairs = [("Question: Open a jar\nAnswer:", " Twist the lid."), ("天空是", "蓝色的"), ("Ends with space ", "next"),
             ("The trophy doesn't fit because the suitcase", " is too small.")]  # fmt: skip
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    ours = SteelforgeLM(tiny_qwen2, qwen_tok, batch_size=3).loglikelihood(reqs)
    ref = HFLM(pretrained=tiny_qwen2, tokenizer=qwen_tok, batch_size=2).loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-3)
        assert ga == gb


def test_cli_harness_flag(task_dir, tiny_qwen2_dir):
    from typer.testing import CliRunner

    from steelforge.cli import app

    out = task_dir / "cli_out"
    args = ["eval", str(tiny_qwen2_dir), "--harness", "sf_piqa_local", "--include-path", str(task_dir / "tasks"),
            "--out", str(out), "--limit", "2"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "harness_results.json").read_text())
    assert "acc,none" in saved["results"]["sf_piqa_local"]
