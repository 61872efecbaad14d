"""`steelforge eval` end to end: results.json + samples + table; a 3-checkpoint sweep with its table and PNG;
the recipe's eval stage; the in-training probe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from steelforge.cli import app

from .helpers import write_cmmlu

ROWS = {
    "anatomy": [("心脏有几个腔？", "2", "3", "4", "5", "C"), ("肺属于？", "呼吸", "消化", "神经", "循环", "A"),
                ("骨头有几块？", "106", "206", "306", "406", "B")],
    "arts": [("谁画了蒙娜丽莎？", "达芬奇", "梵高", "毕加索", "莫奈", "A"), ("京剧起源于？", "北京", "安徽", "上海", "广州", "B")],
}  # fmt: skip


def _tiny_model(path, seed, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32)  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, qwen_tok):
    root = tmp_path_factory.mktemp("run")
    stage = root / "pretrain"
    stage.mkdir()
    for step, seed in ((2, 1), (4, 2)):
        _tiny_model(stage / f"hf-step_{step:09d}", seed, qwen_tok)
    _tiny_model(stage / "hf", 3, qwen_tok)
    (stage / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "tokens": 1024 * s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4, 6))
    )
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_cmmlu(root / "cmmlu", ROWS, dev_rows=1)
    return root


def test_eval_cli_writes_results_and_samples(run_dir, data_dir, tmp_path):
    out = tmp_path / "ev"
    args = ["eval", str(run_dir / "pretrain" / "hf"), "--tasks", "cmmlu", "--num-fewshot", "1", "--data-dir",
            str(data_dir), "--out", str(out), "--log-samples", "--limit", "2"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "| cmmlu |" in res.output
    results = json.loads((out / "results.json").read_text())
    r = results["tasks"]["cmmlu"]
    assert r["n"] == 4 and set(r["subjects"]) == {"anatomy", "arts"}
    lines = (out / "samples" / "cmmlu.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["index"] == 0
    before = (out / "results.json").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "results.json").read_bytes() == before


def test_eval_cli_user_errors_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "steelforge.cli", "eval", str(tmp_path), "--tasks", "nosuch",
                           "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "nosuch" in proc.stdout + proc.stderr


def test_sweep_three_checkpoints(run_dir, data_dir, tmp_path):
    out = tmp_path / "sweep"
    args = ["eval", str(run_dir), "--sweep", "--tasks", "cmmlu", "--num-fewshot", "0", "--data-dir", str(data_dir),
            "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert [r["tokens"] for r in recs] == [2048, 4096, 6144]
    assert all(0.0 <= r["accuracy"]["cmmlu"] <= 1.0 for r in recs)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pretrain/hf-step_000000004" in res.output
    res = CliRunner().invoke(app, args)  # resumes: nothing new evaluated, nothing appended
    assert "sweep: evaluating" not in res.output
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 3


def test_recipe_eval_stage_side_by_side(run_dir, data_dir, tmp_path):
    from steelforge.cli import run_stage
    from steelforge.recipe import load_recipe

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"name: cmp\nout_dir: {tmp_path / 'runs'}\neval:\n  models:\n    early: {run_dir / 'pretrain' / 'hf-step_000000002'}\n"
        f"    final: {run_dir / 'pretrain' / 'hf'}\n  tasks: [cmmlu]\n  num_fewshot: 0\n  data_dir: {data_dir}\n"
    )
    recipe = load_recipe(str(recipe_path), [])
    assert recipe.stages() == ["eval"]
    report = run_stage("eval", recipe)
    table = (tmp_path / "runs" / "eval" / "comparison.md").read_text()
    assert "| task | early | final |" in table and "| cmmlu |" in table
    assert not report.skipped
    assert run_stage("eval", recipe).skipped


def test_eval_probe_for_training(run_dir, data_dir, qwen_tok):
    from transformers import AutoModelForCausalLM

    from steelforge.eval.runner import make_eval_probe

    probe = make_eval_probe(qwen_tok, ["cmmlu"], data_dir, num_fewshot=0, limit=2)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "pretrain" / "hf")
    model.train()
    first = probe(model)
    assert set(first) == {"eval/cmmlu"} and 0.0 <= first["eval/cmmlu"] <= 1.0
    assert model.training
    assert probe(model) == first


def test_demo_task_files_evaluate(tmp_path, tiny_qwen2, qwen_tok):
    """The demo's CMMLU/C-Eval/GSM8K-layout sets (own subjects.json / subject_mapping.json) run end to end."""
    from steelforge.clean.synthetic_tasks import write_task_files
    from steelforge.eval.runner import EvalOptions, evaluate

    write_task_files(
        tmp_path / "demo", eval_items=3, word_problem_items=2, sft=(2, 1), dpo=(2, 1), grpo=(2, 1)
    )
    data = tmp_path / "demo" / "eval"
    opts = EvalOptions(tasks=["cmmlu", "ceval", "gsm8k"], data_dir=data, num_fewshot=2, max_new_tokens=4)
    with pytest.warns(UserWarning, match="train split"):  # GSM8K shots need train.jsonl, which the demo omits
        res = evaluate(
            tiny_qwen2, qwen_tok, opts, show_progress=False, out_dir=tmp_path / "o", log_samples=True
        )
    assert set(res["tasks"]) == {"cmmlu", "ceval"} and set(res["skipped"]) == {"gsm8k"}
    assert res["tasks"]["cmmlu"]["n"] == 6 and res["tasks"]["ceval"]["categories"].keys() == {"STEM"}
    opts = EvalOptions(tasks=["gsm8k"], data_dir=data, num_fewshot=0, max_new_tokens=4, on_error="stop")
    assert evaluate(tiny_qwen2, qwen_tok, opts, show_progress=False)["tasks"]["gsm8k"]["n"] == 2
    first = json.loads((tmp_path / "o" / "samples" / "cmmlu.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("以下是关于数的奇偶的单项选择题") or first["prompt"].startswith(
        "以下是关于地名的单项选择题"
    )
