"""The `steelforge eval` command (registered by steelforge/cli.py); heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from steelforge.errors import SteelforgeError


def eval_command(
    model: Annotated[str, typer.Argument(help="An exported model folder, or a run folder with --sweep.")],
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            "-t",
            help="Comma-separated: cmmlu, ceval, mmlu, arc_easy, "
            "arc_challenge, hellaswag, piqa, winogrande, gsm8k, math500.",
        ),
    ] = "cmmlu",
    num_fewshot: Annotated[
        int | None,
        typer.Option(
            "--num-fewshot", "-k", help="Shots (default: 5 for cmmlu/ceval/mmlu/gsm8k, 0 otherwise)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            help="Benchmark files: DIR/<task>/... for several tasks, or one task's folder.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (results.json, samples/).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most N items per subject (per task).")
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="float32 or bfloat16 (logits are fp32 either way).")
    ] = "float32",
    log_samples: Annotated[
        bool, typer.Option("--log-samples", help="Write OUT/samples/<task>.jsonl.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")] = 16,
    chat: Annotated[
        bool, typer.Option("--chat", help="Wrap prompts in the tokenizer's chat template.")
    ] = False,
    on_error: Annotated[str, typer.Option("--on-error", help="Bad task data: skip (warn) or stop.")] = "skip",
    max_new_tokens: Annotated[int, typer.Option(help="Generation tasks: tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="Generation tasks: 0 = greedy.")] = 0.0,
    num_samples: Annotated[int, typer.Option(help="Generation tasks: samples per problem (pass@k).")] = 1,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="MODEL is a run folder: evaluate its checkpoints.")
    ] = False,
    every: Annotated[
        int, typer.Option("--every", help="Sweep: every K-th checkpoint (the last always).")
    ] = 1,
    harness: Annotated[
        str | None,
        typer.Option(
            "--harness",
            help="Run these lm-evaluation-harness tasks "
            "instead (needs the [eval] extra and its cached data).",
        ),
    ] = None,
    include_path: Annotated[
        Path | None, typer.Option("--include-path", help="Harness: folder of custom task YAMLs.")
    ] = None,
) -> None:
    """Evaluate a model on C-Eval, CMMLU, MMLU, commonsense completion tasks, GSM8K and MATH-500.

    Examples:

      steelforge eval runs/demo/pretrain/hf --tasks ceval,cmmlu,mmlu --num-fewshot 5 --data-dir bench_data --out runs/demo/eval

      steelforge eval runs/demo/pretrain/hf --tasks hellaswag --data-dir data/hellaswag --limit 200 --out ev --log-samples

      steelforge eval runs/demo --sweep --every 2 --tasks cmmlu --data-dir data --out runs/demo/sweep

      steelforge eval runs/demo/pretrain/hf --harness arc_easy --out ev
    """
    from steelforge.reporting import console

    if out is None:
        raise SteelforgeError("--out is required: the folder that receives results.json")
    if harness:
        from steelforge.eval.harness import run_harness
        from steelforge.eval.runner import load_for_eval

        model_obj, tokenizer = load_for_eval(model, dtype=dtype)
        res = run_harness(model_obj, tokenizer, [t.strip() for t in harness.split(",") if t.strip()], out_dir=out,
                          num_fewshot=num_fewshot, limit=limit, include_path=include_path, batch_size=batch_size)  # fmt: skip
        console.print(res["table"])
        return
    if data_dir is None:
        raise SteelforgeError("--data-dir is required: the folder with the benchmark files (e.g. data/cmmlu)")
    from steelforge.eval.runner import EvalOptions, evaluate, load_for_eval, markdown_table, parse_tasks

    opts = EvalOptions(
        tasks=parse_tasks(tasks), data_dir=data_dir, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
        chat=chat, on_error=on_error, max_new_tokens=max_new_tokens, temperature=temperature, num_samples=num_samples,
    )  # fmt: skip
    if sweep:
        from steelforge.eval.sweep import run_sweep, sweep_table

        records = run_sweep(Path(model), opts, out, every=every, dtype=dtype)
        console.print(sweep_table(records), markup=False, soft_wrap=True)
        console.print(f"plot: {out / 'sweep.png'}  results: {out / 'sweep.jsonl'}")
        return
    model_obj, tokenizer = load_for_eval(model, dtype=dtype)
    results = evaluate(
        model_obj, tokenizer, opts, out_dir=out, log_samples=log_samples, model_name=str(model)
    )
    console.print(markdown_table(results), markup=False, soft_wrap=True)
    secs = results.get("_seconds", {})
    if secs:
        console.print("time: " + ", ".join(f"{t} {s:,.1f} s" for t, s in secs.items()))
    console.print(f"results: {out / 'results.json'}")
