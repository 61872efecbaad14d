"""Evaluate every (k-th) exported checkpoint of a training run; one results file, one accuracy-vs-tokens PNG.

A run's stage folder holds `hf-step_NNNNNNNNN/` exports (and `hf/`, the final one) beside `metrics.jsonl`,
whose records map a step to the training tokens seen. Each evaluated checkpoint appends one JSON line to
`OUT/sweep.jsonl`; checkpoints already there (same tasks and shots) are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from steelforge.errors import SteelforgeError
from steelforge.eval.runner import EvalOptions, evaluate, load_for_eval

STEP_RE = re.compile(r"^hf-step_(\d+)$")


def _tokens_by_step(folder: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    path = folder / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "tokens" in rec and "step" in rec:
                out[int(rec["step"])] = float(rec["tokens"])
    return out


def find_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Exported checkpoints under run_dir (itself or one level of stage folders), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SteelforgeError(
            f"run folder {run_dir} does not exist; pass a run's output folder (e.g. runs/demo)"
        )
    folders = [run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())]
    found = []
    for folder in folders:
        tokens = _tokens_by_step(folder)
        last_step = max(tokens) if tokens else None
        for p in sorted(folder.iterdir()):
            m = STEP_RE.match(p.name)
            if m and (p / "config.json").is_file():
                step = int(m.group(1))
                found.append({"path": p, "step": step, "tokens": tokens.get(step)})
        if (folder / "hf" / "config.json").is_file():
            found.append(
                {
                    "path": folder / "hf",
                    "step": last_step,
                    "tokens": tokens.get(last_step or -1),
                    "final": True,
                }
            )
    found.sort(key=lambda c: (c["step"] is None, c["step"] or 0, str(c["path"])))
    if not found:
        raise SteelforgeError(
            f"{run_dir} holds no exported checkpoints (hf-step_*/ or hf/); set pretrain.checkpoint.export_steps"
        )
    return found


def run_sweep(
    run_dir: Path, opts: EvalOptions, out_dir: Path, *, every: int = 1, dtype: str = "float32"
) -> list[dict[str, Any]]:
    """Evaluate the checkpoints (every `every`-th, the last one always), append, plot; return all records."""
    from steelforge.reporting import console

    if every < 1:
        raise SteelforgeError(f"--every {every} must be at least 1")
    ckpts = find_checkpoints(run_dir)
    chosen = [c for i, c in enumerate(ckpts) if i % every == 0 or i == len(ckpts) - 1]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "sweep.jsonl"
    key = {"tasks": list(opts.tasks), "num_fewshot": opts.num_fewshot, "limit": opts.limit}
    done = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("key") == key:
                done[rec["checkpoint"]] = rec
    for c in chosen:
        name = str(Path(c["path"]).resolve().relative_to(Path(run_dir).resolve()))
        if name in done:
            continue
        console.print(f"sweep: evaluating {name}")
        model, tokenizer = load_for_eval(c["path"], dtype=dtype)
        res = evaluate(model, tokenizer, opts, out_dir=out_dir / name.replace("/", "__"), model_name=name,
                       show_progress=False)  # fmt: skip
        rec = {"checkpoint": name, "step": c["step"], "tokens": c["tokens"], "key": key,
               "accuracy": {t: r["accuracy"] for t, r in res["tasks"].items()},
               "average": {t: r["average"] for t, r in res["tasks"].items()}}  # fmt: skip
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        done[name] = rec
    records = sorted(done.values(), key=lambda r: (r["step"] is None, r["step"] or 0))
    plot_sweep(records, out_dir / "sweep.png")
    return records


def sweep_table(records: list[dict[str, Any]]) -> str:
    tasks = sorted({t for r in records for t in r["accuracy"]})
    lines = [
        "| checkpoint | step | tokens | " + " | ".join(tasks) + " |",
        "|---|---:|---:|" + "---:|" * len(tasks),
    ]
    for r in records:
        accs = " | ".join(f"{100 * r['accuracy'][t]:.2f}" if t in r["accuracy"] else "" for t in tasks)
        tokens = f"{r['tokens']:,.0f}" if r["tokens"] is not None else ""
        lines.append(
            f"| {r['checkpoint']} | {r['step'] if r['step'] is not None else ''} | {tokens} | {accs} |"
        )
    return "\n".join(lines)


def plot_sweep(records: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy (%) against training tokens (steps when the run logged no token counts), one line per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_tokens = all(r["tokens"] is not None for r in records)
    fig, ax = plt.subplots(figsize=(6, 4))
    for task in sorted({t for r in records for t in r["accuracy"]}):
        pts = [((r["tokens"] if use_tokens else r["step"]) or 0, 100 * r["accuracy"][task]) for r in records
               if task in r["accuracy"]]  # fmt: skip
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=task)
    ax.set_xlabel("training tokens" if use_tokens else "step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
