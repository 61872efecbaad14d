"""Items/s of `steelforge eval` against lm-evaluation-harness on the same model and items, in one run.

    STEELFORGE_SHARED=../shared .venv/bin/python bench/eval.py [--limit 40] [--batch-size 16] [--harness-batch-size 4]

Model: the tiny random Qwen2 of ../shared/fixtures/eval_reference (built with its script; Qwen1.5 vocabulary of
151,936 tokens, fp32, CPU). Tasks, identical on both sides:

- CMMLU 5-shot on the fixture's two subjects (`--limit` items each): ours through `steelforge.eval` (official
  prompts); lm-eval through a local custom task per subject written to reproduce the same prompt (description =
  the CMMLU header, first-n dev shots, target delimiter "", letters A-D as continuations).
- HellaSwag-style completion: the same CMMLU rows recast as HellaSwag documents (activity_label = subject,
  ctx = question, 4 endings), through our `hellaswag` reader (lm-eval's preprocessing) and an lm-eval task over the
  preprocessed query/choices, as lm-eval's own hellaswag.yaml consumes them.

Both sides run the model object in memory (lm-eval's HFLM wrapping it). The script checks that predictions agree
(CMMLU) and that acc/acc_norm agree (HellaSwag-style), then prints items/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEELFORGE_SHARED", ROOT.parent / "shared"))
REF = SHARED / "fixtures" / "eval_reference"
SUBJECTS = {"chinese_history": "中国历史", "machine_learning": "机器学习"}


def _cmmlu_yaml(task_dir: Path, subject: str, shots: int) -> str:
    name = f"bench_cmmlu_{subject}"
    header = f"以下是关于{SUBJECTS[subject]}的单项选择题，请直接给出正确答案的选项。\n\n"
    (task_dir / f"{name}.yaml").write_text(
        json.dumps(
            {
                "task": name,
                "dataset_path": "csv",
                "dataset_kwargs": {
                    "data_files": {
                        "test": str(REF / "cmmlu" / "test" / f"{subject}.csv"),
                        "dev": str(REF / "cmmlu" / "dev" / f"{subject}.csv"),
                    }
                },
                "test_split": "test",
                "fewshot_split": "dev",
                "fewshot_config": {"sampler": "first_n"},
                "num_fewshot": shots,
                "output_type": "multiple_choice",
                "description": header,
                "doc_to_text": "题目：{{Question}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案是：",
                "doc_to_choice": ["A", "B", "C", "D"],
                "doc_to_target": "{{['A', 'B', 'C', 'D'].index(Answer)}}",
                "target_delimiter": "",
                "fewshot_delimiter": "\n\n",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            },
            ensure_ascii=False,
            indent=1,
        ),
        encoding="utf-8",
    )
    return name


def _hellaswag_files(root: Path, limit: int) -> Path:
    """CMMLU rows as HellaSwag documents (raw fields for our reader, preprocessed ones for lm-eval's YAML)."""
    import pandas as pd

    from steelforge.eval.tasks.completion import hellaswag_doc

    rows = []
    for subject in SUBJECTS:
        df = pd.read_csv(REF / "cmmlu" / "test" / f"{subject}.csv", header=0, index_col=0)
        for i in range(min(limit, len(df))):
            r = df.iloc[i]
            doc = {"activity_label": subject.replace("_", " "), "ctx_a": str(r["Question"]), "ctx_b": "",
                   "endings": [str(r[c]) for c in "ABCD"], "label": "ABCD".index(r["Answer"])}  # fmt: skip
            query, choices, gold = hellaswag_doc(doc)
            rows.append({**doc, "query": query, "choices": choices, "gold": gold})
    folder = root / "hellaswag"
    folder.mkdir()
    (folder / "hellaswag_val.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    return folder


def _hellaswag_yaml(task_dir: Path, data: Path) -> str:
    (task_dir / "bench_hellaswag.yaml").write_text(
        json.dumps(
            {
                "task": "bench_hellaswag",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"validation": str(data / "hellaswag_val.jsonl")}},
                "validation_split": "validation",
                "output_type": "multiple_choice",
                "doc_to_text": "{{query}}",
                "doc_to_target": "{{gold}}",
                "doc_to_choice": "choices",
                "metric_list": [
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                ],
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    return "bench_hellaswag"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--limit", type=int, default=40, help="items per CMMLU subject (and HellaSwag-style docs each)"
    )
    ap.add_argument("--batch-size", type=int, default=16, help="steelforge prompts per forward pass")
    ap.add_argument(
        "--harness-batch-size", type=int, default=4, help="lm-eval HFLM batch size (full [B,T,V] logits)"
    )
    args = ap.parse_args()
    if not REF.is_dir():
        sys.exit(f"{REF} is absent; set STEELFORGE_SHARED to the shared folder")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from steelforge.eval.runner import EvalOptions, evaluate
    from steelforge.tokenizers import load_tokenizer

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp / "hf_cache"))
    subprocess.run(
        [sys.executable, str(REF / "build_tiny_qwen2.py"), str(tmp / "model")],
        check=True,
        capture_output=True,
    )
    model = AutoModelForCausalLM.from_pretrained(tmp / "model", dtype=torch.float32).eval()
    tok = load_tokenizer("qwen1.5")
    task_dir = tmp / "tasks"
    task_dir.mkdir()
    cmmlu_tasks = [_cmmlu_yaml(task_dir, s, 5) for s in SUBJECTS]
    hs_data = _hellaswag_files(tmp, args.limit)
    hs_task = _hellaswag_yaml(task_dir, hs_data)
    manager = TaskManager(include_path=str(task_dir))
    hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.harness_batch_size)

    rows = []
    # CMMLU 5-shot
    n = args.limit * len(SUBJECTS)
    t0 = time.perf_counter()
    ours = evaluate(model, tok, EvalOptions(tasks=["cmmlu"], data_dir=REF / "cmmlu", num_fewshot=5, limit=args.limit,
                                            batch_size=args.batch_size), show_progress=False)  # fmt: skip
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = simple_evaluate(model=hflm, tasks=cmmlu_tasks, limit=args.limit, task_manager=manager, bootstrap_iters=0,
                          log_samples=False)  # fmt: skip
    t_ref = time.perf_counter() - t0
    ref_acc = sum(ref["results"][t]["acc,none"] for t in cmmlu_tasks) / len(cmmlu_tasks)
    our_acc = ours["tasks"]["cmmlu"]["average"]
    rows.append(("CMMLU 5-shot", n, t_ours, t_ref, our_acc, ref_acc))
    # HellaSwag-style completion
    t0 = time.perf_counter()
    ours = evaluate(model, tok, EvalOptions(tasks=["hellaswag"], data_dir=hs_data, batch_size=args.batch_size),
                    show_progress=False)  # fmt: skip
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = simple_evaluate(
        model=hflm, tasks=[hs_task], task_manager=manager, bootstrap_iters=0, log_samples=False
    )
    t_ref = time.perf_counter() - t0
    r = ours["tasks"]["hellaswag"]
    rows.append(
        ("HellaSwag-style (acc)", r["n"], t_ours, t_ref, r["accuracy"], ref["results"][hs_task]["acc,none"])
    )
    rows.append(
        (
            "HellaSwag-style (acc_norm)",
            r["n"],
            None,
            None,
            r["acc_norm"],
            ref["results"][hs_task]["acc_norm,none"],
        )
    )

    print(f"torch threads {torch.get_num_threads()}; steelforge batch {args.batch_size}; lm-eval HFLM batch "
          f"{args.harness_batch_size}")  # fmt: skip
    print("| task | items | steelforge items/s | lm-eval items/s | speed-up | steelforge acc | lm-eval acc |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, items, a, b, acc_a, acc_b in rows:
        speed = f"{items / a:.2f} | {items / b:.2f} | {b / a:.2f}x" if a else " | | "
        print(f"| {name} | {items} | {speed} | {100 * acc_a:.2f} | {100 * acc_b:.2f} |")


if __name__ == "__main__":
    main()
