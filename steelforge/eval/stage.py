"""The `eval` stage of `steelforge run`: every model of the `eval:` section, then one side-by-side table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steelforge.errors import RecipeError
from steelforge.reporting import StageReport, console
from steelforge.stage import atomic_write_json, atomic_write_text

DONE_FILE = "eval_done.json"


def _models(recipe: Any) -> dict[str, Path]:
    cfg = recipe.eval
    if cfg.models:
        return {name: Path(path) for name, path in cfg.models.items()}
    if recipe.pretrain is None:
        raise RecipeError(
            "eval.models is empty and the recipe has no pretrain stage; add eval.models: {name: folder}"
        )
    return {"pretrain": recipe.stage_dir("pretrain") / "hf"}


def eval_complete(recipe: Any) -> bool:
    marker = recipe.stage_dir("eval") / DONE_FILE
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("recipe_hash") == recipe.stage_fingerprint("eval")
    except (OSError, json.JSONDecodeError):
        return False


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per task, one column per model (accuracy %, the official average in brackets)."""
    names = list(results)
    tasks = list(dict.fromkeys(t for r in results.values() for t in r["tasks"]))
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for task in tasks:
        cells = []
        for name in names:
            r = results[name]["tasks"].get(task)
            cells.append("" if r is None else f"{100 * r['accuracy']:.2f} ({100 * r['average']:.2f})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_eval_stage(recipe: Any) -> StageReport:
    from steelforge.eval.runner import EvalOptions, evaluate, load_for_eval, parse_tasks

    cfg = recipe.eval
    out = recipe.stage_dir("eval")
    opts = EvalOptions(tasks=parse_tasks(cfg.tasks), data_dir=cfg.data_dir, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                       batch_size=cfg.batch_size, chat=cfg.chat, on_error=cfg.on_error, seed=recipe.seed)  # fmt: skip
    results = {}
    for name, folder in _models(recipe).items():
        console.print(f"eval: {name} ({folder})")
        model, tokenizer = load_for_eval(folder, dtype=cfg.dtype)
        results[name] = evaluate(model, tokenizer, opts, out_dir=out / name, log_samples=cfg.log_samples,
                                 model_name=name)  # fmt: skip
        del model
    table = comparison_table(results)
    console.print(table, markup=False, soft_wrap=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.md", table + "\n")
    atomic_write_json(out / DONE_FILE, {"recipe_hash": recipe.stage_fingerprint("eval"), "models": list(results)})
    report = StageReport(stage="eval")
    for name, res in results.items():
        for task, r in res["tasks"].items():
            report.add(f"{name} {task}", f"{100 * r['accuracy']:.2f}")
    report.outputs["comparison"] = out / "comparison.md"
    return report
