"""`steelforge eval`: read the tasks, score them in batches, write results.json (+ samples), print a table.

Results are deterministic (no timings or dates inside results.json; sorted keys), written atomically. Bad input
is a `TaskDataError` naming the file and the fix: with `on_error="skip"` the task is left out with a warning and
listed under `skipped` in results.json, with `"stop"` the run ends; a task never scores a silent zero.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelforge.errors import SteelforgeError
from steelforge.eval import scoring
from steelforge.eval.tasks import ceval, cmmlu, completion, generation, mmlu
from steelforge.eval.tasks.base import ChoiceItem, CompletionItem, GenerationItem, TaskDataError

LETTER_TASKS = {"cmmlu": cmmlu, "ceval": ceval, "mmlu": mmlu}
COMPLETION_TASKS = tuple(completion.SPECS)
GENERATION_TASKS = ("gsm8k", "math500")
ALL_TASKS = (*LETTER_TASKS, *COMPLETION_TASKS, *GENERATION_TASKS)
# Shots per task when --num-fewshot is not given (Steel-LLM / Moxin report settings).
DEFAULT_FEWSHOT = {"cmmlu": 5, "ceval": 5, "mmlu": 5, "gsm8k": 5}


@dataclass
class EvalOptions:
    """How to evaluate; one object shared by the CLI, the recipe stage, sweeps and the training probe."""

    tasks: Sequence[str]
    data_dir: Path
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 16
    max_length: int = 2048
    chat: bool = False
    on_error: str = "skip"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    unknown = [t for t in names if t not in ALL_TASKS]
    if unknown or not names:
        raise SteelforgeError(
            f"--tasks {','.join(unknown) or '(empty)'} is unknown; choose from {', '.join(ALL_TASKS)}"
        )
    return names


def task_dir(data_dir: Path, task: str) -> Path:
    """DATA/<task> when it exists (several tasks under one root), else DATA itself (one task)."""
    sub = Path(data_dir) / task
    return sub if sub.is_dir() else Path(data_dir)


def load_items(task: str, opts: EvalOptions, tokenizer: Any) -> list[Any]:
    shots = opts.num_fewshot if opts.num_fewshot is not None else DEFAULT_FEWSHOT.get(task, 0)
    folder = task_dir(opts.data_dir, task)
    if task in LETTER_TASKS:
        return LETTER_TASKS[task].load(
            folder, num_fewshot=shots, tokenizer=tokenizer, max_length=opts.max_length, limit=opts.limit,
            chat=opts.chat,
        )  # fmt: skip
    if task in COMPLETION_TASKS:
        return completion.load(task, folder, num_fewshot=shots, limit=opts.limit)
    return generation.load(
        task, folder, num_fewshot=shots, limit=opts.limit, tokenizer=tokenizer, chat=opts.chat
    )


# ---- scoring + aggregation --------------------------------------------------------------------------------
def _per_subject(samples: list[dict[str, Any]], key: str = "correct") -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = {}
    for s in samples:
        out.setdefault(s["subject"], []).append(float(s[key]))
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(out.items())}


def run_letters(task: str, items: list[ChoiceItem], model: nn.Module, tokenizer: Any, opts: EvalOptions,
                progress: scoring.Progress | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    logits = scoring.score_choices(model, tokenizer, items, batch_size=opts.batch_size, progress=progress)
    samples = []
    for it, row in zip(items, logits, strict=True):
        pred = "ABCD"[scoring.argmax_first(row)]
        samples.append({
            "task": task, "subject": it.subject, "index": it.index, "prompt": it.prompt,
            "scores": dict(zip("ABCD", row, strict=True)), "pred": pred, "gold": it.gold, "correct": pred == it.gold,
        })  # fmt: skip
    subjects = _per_subject(samples)
    n = len(samples)
    accuracy = sum(s["correct"] for s in samples) / n
    if task == "mmlu":
        counts = {k: (round(v["accuracy"] * v["n"]), int(v["n"])) for k, v in subjects.items()}
        categories = mmlu.aggregate(counts)
        average = accuracy  # the original reports item-weighted accuracy
    else:
        per = {k: v["accuracy"] for k, v in subjects.items()}
        categories = LETTER_TASKS[task].aggregate(per, task_dir(opts.data_dir, task))
        average = sum(per.values()) / len(per)  # official: mean over subjects
    return {"metric": "acc", "accuracy": accuracy, "n": n, "average": average, "subjects": subjects,
            "categories": categories}, samples  # fmt: skip


def run_completions(task: str, items: list[CompletionItem], model: nn.Module, tokenizer: Any, opts: EvalOptions,
                    progress: scoring.Progress | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    lls = scoring.score_completions(
        model, tokenizer, items, max_length=opts.max_length, batch_size=opts.batch_size, progress=progress
    )
    samples = []
    for it, row in zip(items, lls, strict=True):
        m = scoring.completion_metrics(row, it.choices, it.gold)
        samples.append({
            "task": task, "subject": it.subject, "index": it.index, "prompt": it.contexts[it.gold],
            "continuations": list(it.continuations), "scores": row, "pred": m["pred"], "pred_norm": m["pred_norm"],
            "gold": it.gold, "correct": bool(m["acc"]), "acc_norm": m["acc_norm"], "acc_bytes": m["acc_bytes"],
        })  # fmt: skip
    n = len(samples)
    acc = sum(s["correct"] for s in samples) / n
    return {
        "metric": "acc", "accuracy": acc, "n": n, "average": acc,
        "acc_norm": sum(s["acc_norm"] for s in samples) / n, "acc_bytes": sum(s["acc_bytes"] for s in samples) / n,
        "subjects": {}, "categories": {},
    }, samples  # fmt: skip


def run_generation(task: str, items: list[GenerationItem], model: nn.Module, tokenizer: Any, opts: EvalOptions,
                   progress: scoring.Progress | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    k = max(1, opts.num_samples)
    if k > 1 and opts.temperature <= 0:
        raise SteelforgeError(f"--num-samples {k} needs --temperature > 0 (greedy samples are identical)")
    samples = []
    for start in range(0, len(items), opts.batch_size):
        chunk = items[start : start + opts.batch_size]
        outs: list[list[str]] = [[] for _ in chunk]
        for r in range(k):
            texts = generation.generate_texts(
                model, tokenizer, [it.prompt for it in chunk], max_new_tokens=opts.max_new_tokens,
                temperature=opts.temperature, top_p=opts.top_p, stop=chunk[0].stop, seed=opts.seed + 1000 * r + start,
            )  # fmt: skip
            for j, t in enumerate(texts):
                outs[j].append(t)
        for it, texts in zip(chunk, outs, strict=True):
            flags = [generation.is_correct(t, it.answer) for t in texts]
            samples.append({
                "task": task, "subject": it.subject, "index": it.index, "prompt": it.prompt, "completions": texts,
                "scores": [float(f) for f in flags], "pred": texts[0], "gold": it.answer, "correct": flags[0],
                "num_correct": sum(flags),
            })  # fmt: skip
        if progress is not None:
            progress(len(chunk))
    n = len(samples)
    result: dict[str, Any] = {"metric": "pass@1", "n": n, "subjects": _per_subject(samples), "categories": {}}
    for kk in sorted({1, k}):
        result[f"pass@{kk}"] = sum(generation.pass_at_k(k, s["num_correct"], kk) for s in samples) / n
    result["accuracy"] = result["average"] = result["pass@1"]
    return result, samples


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    opts: EvalOptions,
    *,
    out_dir: Path | None = None,
    log_samples: bool = False,
    model_name: str = "",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Score `opts.tasks`; return (and write to out_dir/results.json) the per-task results."""
    from steelforge.reporting import make_progress, quiet

    if opts.on_error not in ("skip", "stop"):
        raise SteelforgeError(f"--on-error {opts.on_error!r} is unknown; use skip or stop")
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {"model": model_name, "num_fewshot": opts.num_fewshot, "limit": opts.limit,
                               "tasks": {}, "skipped": {}}  # fmt: skip
    timings: dict[str, float] = {}
    try:
        for task in opts.tasks:
            try:
                items = load_items(task, opts, tokenizer)
                if not items:
                    raise TaskDataError(f"{task}: no items to score (empty split or --limit 0)")
                if task in LETTER_TASKS:
                    scoring.letter_token_ids(tokenizer, items[0].letters, task)
            except TaskDataError as exc:
                if opts.on_error == "stop":
                    raise
                warnings.warn(f"{exc} (task '{task}' skipped)", stacklevel=2)
                results["skipped"][task] = str(exc)
                continue
            runner = (
                run_letters
                if task in LETTER_TASKS
                else run_completions
                if task in COMPLETION_TASKS
                else run_generation
            )
            t0 = time.perf_counter()
            if show_progress and not quiet():
                with make_progress() as bar:
                    tid = bar.add_task(
                        f"eval {task}",
                        total=sum(len(it.continuations) for it in items)
                        if task in COMPLETION_TASKS
                        else len(items),
                    )
                    res, samples = runner(
                        task, items, model, tokenizer, opts, lambda n, t=tid: bar.advance(t, n)
                    )
            else:
                res, samples = runner(task, items, model, tokenizer, opts, None)
            timings[task] = time.perf_counter() - t0
            results["tasks"][task] = res
            if out_dir is not None and log_samples:
                lines = "".join(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n" for s in samples)
                _write_atomic(Path(out_dir) / "samples" / f"{task}.jsonl", lines)
    finally:
        model.train(was_training)
    if out_dir is not None:
        _write_atomic(
            Path(out_dir) / "results.json",
            json.dumps(results, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
        )
    results["_seconds"] = timings
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """The console summary: one row per task (accuracy %, the official average, n, extra metrics)."""
    lines = ["| task | accuracy | average | n | notes |", "|---|---:|---:|---:|---|"]
    for task, r in results["tasks"].items():
        extra = []
        for key in ("acc_norm", "pass@1"):
            if key in r and key != r.get("metric"):
                extra.append(f"{key} {100 * r[key]:.2f}")
        extra += [f"{k} {100 * v:.2f}" for k, v in r.get("categories", {}).items()]
        extra += [f"{k} {100 * v:.2f}" for k, v in r.items() if k.startswith("pass@") and k != "pass@1"]
        lines.append(
            f"| {task} | {100 * r['accuracy']:.2f} | {100 * r['average']:.2f} | {r['n']} | {'; '.join(extra)} |"
        )
    for task, why in results.get("skipped", {}).items():
        lines.append(f"| {task} | skipped | | | {why} |")
    return "\n".join(lines)


def load_for_eval(
    model_dir: str | Path, dtype: str = "float32", device: str | None = None
) -> tuple[nn.Module, Any]:
    """An HF/Steel folder and its tokenizer (the folder's own, else the recipe default qwen1.5)."""
    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise SteelforgeError(
            f"model folder {path} has no config.json; pass an exported HF folder (e.g. runs/x/pretrain/hf)"
        )
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SteelforgeError(f"--dtype {dtype} is unknown; use float32 or bfloat16")
    model = load_model(
        str(path), dtype=dtype, device=device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    tok_src = (
        str(path)
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
        else "qwen1.5"
    )
    return model.eval(), load_tokenizer(tok_src)


def make_eval_probe(
    tokenizer: Any, tasks: Sequence[str], data_dir: Path, *, num_fewshot: int | None = None, limit: int | None = 50,
    batch_size: int = 16, prefix: str = "eval/",
) -> Callable[[nn.Module], dict[str, float]]:  # fmt: skip
    """A pretrain/SFT `eval_fn`: the same small eval set each call, returning {"eval/<task>": accuracy}.

    Items are read and prompts built once; each call only runs the forward passes (no files written).
    """
    opts = EvalOptions(tasks=parse_tasks(list(tasks)), data_dir=Path(data_dir), num_fewshot=num_fewshot, limit=limit,
                       batch_size=batch_size, on_error="stop")  # fmt: skip
    if any(t in GENERATION_TASKS for t in opts.tasks):
        raise SteelforgeError(
            "the training probe scores likelihood tasks only; drop gsm8k/math500 from its tasks"
        )
    prepared = {t: load_items(t, opts, tokenizer) for t in opts.tasks}

    def probe(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        try:
            for task, items in prepared.items():
                runner = run_letters if task in LETTER_TASKS else run_completions
                res, _ = runner(task, items, model, tokenizer, opts, None)
                out[f"{prefix}{task}"] = float(res["accuracy"])
        finally:
            model.train(was_training)
        return out

    return probe
