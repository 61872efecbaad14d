"""The `report` stage: one page a person reads, saying what every stage of a run did and whether it helped.

Each stage's own summary says what it did; this one measures each stage's *effect* on data it never trained on,
the metric before and after, side by side: cleaning (injected noise removed, per kind and operator), pretraining
(held-out loss against the unigram baseline), SFT (exact match on held-out chat prompts), DPO (reward accuracy and
preference accuracy on held-out pairs), GRPO (mean reward on held-out prompts), evaluation (every model against
chance), export (loads with plain `transformers` in a process where steelforge cannot be imported) and chat
(answers through `steelforge chat --prompt`). It writes `<out_dir>/REPORT.md`, `report.json` and PNG figures.

It lives beside `cli.py` and `recipe.py` because it reads every stage's outputs.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from steelforge.config_base import StrictModel
from steelforge.errors import SteelforgeError
from steelforge.reporting import StageReport, console

if TYPE_CHECKING:
    import torch

DONE_FILE = "report_done.json"
STAGE_DONE_FILES = {
    "tasks": "tasks_done.json",
    "data": "_SUCCESS",
    "pretrain": "pretrain_done.json",
    "sft": "sft_done.json",
    "dpo": "dpo_done.json",
    "grpo": "grpo_done.json",
    "eval": "eval_done.json",
}


class ReportConfig(StrictModel):
    """The recipe's `report:` section."""

    heldout_docs: int = Field(
        200, ge=10, description="Fresh corpus documents for the held-out pretraining loss."
    )
    max_new_tokens: int = Field(32, ge=1, description="Greedy answer length for exact match and rewards.")
    export: bool = Field(
        True, description="Export the last trained model to <out_dir>/release and load it plainly."
    )
    chat_prompts: list[str] = Field(
        default_factory=lambda: ["你是谁？", "青云河是城市还是河流？", "Is 37 odd or even?"],
        description="Prompts answered through `steelforge chat --prompt` with the released model.",
    )


# ---- helpers --------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_zst_jsonl(path: Path) -> list[dict[str, Any]]:
    import zstandard

    with path.open("rb") as handle:
        text = zstandard.ZstdDecompressor().stream_reader(handle).read().decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _load(path: Path) -> Any:
    from steelforge.infer.generation import load_for_inference

    return load_for_inference(path)


def _greedy(loaded: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    from steelforge.models.generate import generate

    out: list[str] = []
    stops = set(loaded.stop_token_ids)
    for start in range(0, len(prompts), 32):
        result = generate(
            loaded.model, prompts[start : start + 32], max_new_tokens=max_new_tokens,
            stop_token_ids=loaded.stop_token_ids, pad_token_id=loaded.pad_token_id,
        )  # fmt: skip
        out += [
            loaded.tokenizer.decode([t for t in seq if t not in stops], skip_special_tokens=True)
            for seq in result.sequences
        ]
    return out


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    )


# ---- per-stage effects ----------------------------------------------------------------------------
# What an injected noise leaves in a kept document if its mapper missed it (tags, not any '<': code compares).
_NOISE_MARKERS = {
    "html": re.compile(r"</?\s*(?:html|head|body|div|p|span|script|style|title)\b", re.IGNORECASE),
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
    "link": re.compile(r"https?://|www\."),
}


def clean_effect(root: Path) -> dict[str, Any] | None:
    """Per injected noise kind: documents in, kept, rejected (by operator) and, for mapper noise, whether it remains."""
    raw_files = sorted((root / "raw").glob("*.jsonl"))
    if not raw_files or not (root / "clean" / "kept").is_dir():
        return None
    noise_of: dict[str, str] = {}
    for path in raw_files:
        for row in _jsonl(path):
            noise_of[str(row["id"])] = row.get("noise") or "clean"
    kept = [r for f in sorted((root / "clean" / "kept").glob("*.jsonl.zst")) for r in _read_zst_jsonl(f)]
    rejected = [
        r for f in sorted((root / "clean" / "rejected").glob("*.jsonl.zst")) for r in _read_zst_jsonl(f)
    ]
    rows: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(noise_of.values())):
        rows[kind] = {"in": 0, "kept": 0, "rejected": 0, "by": {}, "residue": 0}
    for _doc_id, kind in noise_of.items():
        rows[kind]["in"] += 1
    for doc in kept:
        kind = noise_of.get(str(doc["id"]), "clean")
        rows[kind]["kept"] += 1
        marker = _NOISE_MARKERS.get(kind)
        if marker is not None and marker.search(doc["text"]):
            rows[kind]["residue"] += 1
    for doc in rejected:
        kind = noise_of.get(str(doc["id"]), "clean")
        rows[kind]["rejected"] += 1
        rows[kind]["by"][doc["op"]] = rows[kind]["by"].get(doc["op"], 0) + 1
    return {"kinds": rows, "documents": len(noise_of), "kept": len(kept), "rejected": len(rejected)}


def pretrain_effect(recipe: Any, cfg: ReportConfig) -> dict[str, Any] | None:
    """Mean per-token loss of the pretrained model on fresh corpus documents against the unigram baseline."""
    import numpy as np
    import torch

    from steelforge.clean.synthetic import generate_documents
    from steelforge.posttrain.logprobs import token_logps
    from steelforge.tokens.store import TokenStore

    hf = recipe.stage_dir("pretrain") / "hf"
    store_dir = recipe.stage_dir("pack")
    if not (hf / "config.json").is_file() or not store_dir.is_dir():
        return None
    store = TokenStore(store_dir)
    loaded = _load(hf)
    vocab = int(loaded.model.config.vocab_size)
    counts = np.zeros(vocab, dtype=np.float64)
    for shard in store.shards:
        counts += np.bincount(store.tokens(shard), minlength=vocab)[:vocab]
    unigram = (counts + 1.0) / (counts.sum() + vocab)  # add-one: a held-out token never seen still has a cost
    seed = int(recipe.seed) + 10_007
    docs = [d["text"] for d in generate_documents(cfg.heldout_docs * 2, seed=seed) if not d.get("noise")][
        : cfg.heldout_docs
    ]
    sep = loaded.stop_token_ids[0]
    losses, uni, n_tokens = [], [], 0
    for text in docs:
        ids = [*loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:256], sep]
        x = torch.tensor([ids])
        mask = torch.ones_like(x)
        completion = torch.ones_like(x)
        completion[:, 0] = 0
        with torch.no_grad():
            lp = token_logps(loaded.model, x, mask, completion)
        losses.append(-float(lp.sum()))
        uni.append(-float(np.log(unigram[ids[1:]]).sum()))
        n_tokens += len(ids) - 1
    return {
        "heldout_documents": len(docs),
        "heldout_tokens": n_tokens,
        "loss": sum(losses) / n_tokens,
        "unigram_loss": sum(uni) / n_tokens,
        "uniform_loss": math.log(vocab),
    }


def _exact_match(loaded: Any, examples: list[tuple[list[dict[str, str]], str]], max_new_tokens: int) -> float:
    prompts = [_chat_ids(loaded.tokenizer, messages) for messages, _ in examples]
    answers = _greedy(loaded, prompts, max_new_tokens)
    return sum(a.strip() == ref.strip() for a, (_, ref) in zip(answers, examples, strict=True)) / max(
        len(examples), 1
    )


def sft_effect(recipe: Any, cfg: ReportConfig, heldout: Path) -> dict[str, Any] | None:
    """Exact match of greedy answers on held-out conversations (first user turn), before and after SFT."""
    before, after = recipe.stage_dir("pretrain") / "hf", recipe.stage_dir("sft") / "hf"
    if not heldout.is_file() or not (after / "config.json").is_file():
        return None
    examples = []
    for row in _jsonl(heldout):
        messages = row["messages"]
        cut = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        examples.append((messages[:cut], messages[cut]["content"]))
    out = {
        "heldout_prompts": len(examples),
        "after": _exact_match(_load(after), examples, cfg.max_new_tokens),
    }
    if (before / "config.json").is_file():
        out["before"] = _exact_match(_load(before), examples, cfg.max_new_tokens)
    return out


def _pair_logps(loaded: Any, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    from steelforge.posttrain.logprobs import token_logps

    def seq_logp(prompt: list[dict[str, str]], reply: list[dict[str, str]]) -> float:
        head = _chat_ids(loaded.tokenizer, prompt)
        full = list(loaded.tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=False))
        x = torch.tensor([full])
        completion = torch.zeros_like(x)
        completion[:, len(head) :] = 1
        with torch.no_grad():
            return float(token_logps(loaded.model, x, torch.ones_like(x), completion).sum())

    chosen = torch.tensor([seq_logp(r["prompt"], r["chosen"]) for r in rows])
    rejected = torch.tensor([seq_logp(r["prompt"], r["rejected"]) for r in rows])
    return chosen, rejected


def dpo_effect(recipe: Any, heldout: Path) -> dict[str, Any] | None:
    """On held-out pairs: DPO's reward accuracy against its reference (the SFT model), and how often each model
    gives the chosen answer a higher log-probability than the rejected one."""
    ref_dir, pol_dir = recipe.stage_dir("sft") / "hf", recipe.stage_dir("dpo") / "hf"
    if (
        not heldout.is_file()
        or not (pol_dir / "config.json").is_file()
        or not (ref_dir / "config.json").is_file()
    ):
        return None
    rows = _jsonl(heldout)
    ref_c, ref_r = _pair_logps(_load(ref_dir), rows)
    pol_c, pol_r = _pair_logps(_load(pol_dir), rows)
    beta = float(getattr(recipe.dpo, "beta", 0.1))
    margins = beta * ((pol_c - ref_c) - (pol_r - ref_r))
    return {
        "heldout_pairs": len(rows),
        "reward_accuracy_before": 0.0,  # the policy starts equal to its reference: every margin is 0
        "reward_accuracy_after": float((margins > 0).float().mean()),
        "reward_margin_after": float(margins.mean()),
        "prefers_chosen_before": float((ref_c > ref_r).float().mean()),
        "prefers_chosen_after": float((pol_c > pol_r).float().mean()),
    }


def grpo_effect(recipe: Any, cfg: ReportConfig) -> dict[str, Any] | None:
    """Mean reward of greedy answers on the held-out prompts, for the GRPO start model and the GRPO model."""
    from steelforge.posttrain.rewards import math_verify

    grpo = recipe.grpo
    after = recipe.stage_dir("grpo") / "hf"
    if grpo is None or grpo.eval_prompts is None or not (after / "config.json").is_file():
        return None
    start = str(grpo.model or "")
    before = recipe.stage_dir(start) / "hf" if start in ("pretrain", "sft", "dpo") else Path(start)
    rows = _jsonl(Path(grpo.eval_prompts))

    def mean_reward(folder: Path) -> float:
        loaded = _load(folder)
        prompts = [_chat_ids(loaded.tokenizer, r["messages"]) for r in rows]
        answers = _greedy(loaded, prompts, grpo.max_completion_length)
        return sum(math_verify(a, r["answer"]) for a, r in zip(answers, rows, strict=True)) / len(rows)

    out = {"heldout_prompts": len(rows), "after": mean_reward(after)}
    if (before / "config.json").is_file():
        out["before"] = mean_reward(before)
    return out


def eval_effect(recipe: Any) -> dict[str, Any] | None:
    """Accuracy per model and task from the eval stage's results files."""
    folder = recipe.stage_dir("eval")
    table: dict[str, dict[str, float]] = {}
    names = list(recipe.eval.models) or sorted(p.parent.name for p in folder.glob("*/results.json"))
    for name in names:  # in the recipe's order: the first is the baseline, the last the final model
        path = folder / name / "results.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        table[name] = {
            task: float(r.get("accuracy", float("nan"))) for task, r in results.get("tasks", {}).items()
        }
    return table or None


def export_effect(recipe: Any, cfg: ReportConfig, last: Path) -> dict[str, Any] | None:
    """Export the last trained model and load it with plain transformers in a process without steelforge."""
    if not cfg.export or not (last / "config.json").is_file():
        return None
    from steelforge.export.hf import export_checkpoint

    release = recipe.root / "release"
    result = export_checkpoint(last, release, run_dir=recipe.root)
    script = (
        "import sys, json\n"
        "sys.modules['steelforge'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"path = {str(release)!r}\n"
        "tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
        "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': '你是谁？'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=24, do_sample=False)\n"
        "new = out[0, ids['input_ids'].shape[1]:].tolist()\n"
        "print(json.dumps({'answer': tok.decode(new, skip_special_tokens=True), 'stopped': new[-1] in "
        "model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list) else "
        "new[-1] == model.generation_config.eos_token_id}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    ok = proc.returncode == 0 and "{" in last
    answer = json.loads(last[last.index("{") :]) if ok else {}
    return {
        "release": str(release),
        "files": result.files,
        "parameters": result.parameters,
        "plain_transformers_loads": ok,
        "plain_answer": answer.get("answer"),
        "stopped_at_stop_token": answer.get("stopped"),
        "error": "" if ok else proc.stderr.strip().splitlines()[-1:],
    }


def chat_effect(release: Path, prompts: list[str]) -> list[dict[str, Any]] | None:
    """Answers through the real `steelforge chat --prompt` command (one process, one batch)."""
    if not (release / "config.json").is_file() or not prompts:
        return None
    cmd = [sys.executable, "-m", "steelforge.cli", "chat", str(release)]
    for prompt in prompts:
        cmd += ["--prompt", prompt]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "STEELFORGE_QUIET": "1"}
    )
    if proc.returncode != 0:
        raise SteelforgeError(f"`steelforge chat --prompt` failed on {release}: {proc.stderr.strip()[-300:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# ---- figures and the page ---------------------------------------------------------------------------
def plot_eval(table: dict[str, dict[str, float]], path: Path) -> Path:
    """Grouped bars: accuracy per task for every model, with the multiple-choice chance level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(table)
    tasks = sorted({t for r in table.values() for t in r})
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(len(models), 1)
    for i, name in enumerate(models):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [table[name].get(t, 0.0) for t in tasks], width, label=name)
    ax.axhline(0.25, color="grey", linestyle="--", linewidth=1, label="chance (4 choices)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _verdict(before: float | None, after: float | None, higher_is_better: bool = True) -> str:
    if before is None or after is None:
        return "—"
    better = after > before if higher_is_better else after < before
    return "improved" if better else "no improvement"


def _row(stage: str, metric: str, before: float | None, after: float | None) -> tuple[str, str, str, str, str]:
    """One summary row for a rate where higher is better."""
    return (stage, metric, _pct(before), _pct(after), _verdict(before, after))


def render(findings: dict[str, Any], root: Path) -> str:
    """REPORT.md text from the findings (and the figure files present in the run folder)."""
    lines = [
        f"# Run report: {root}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `steelforge run`.",
        "",
    ]
    summary: list[tuple[str, str, str, str, str]] = []
    clean = findings.get("clean")
    if clean:
        noisy = {k: v for k, v in clean["kinds"].items() if k != "clean"}
        handled = sum(v["rejected"] for v in noisy.values()) + sum(
            v["kept"] - v["residue"]
            for k, v in noisy.items()
            if k in ("html", "email", "link", "ip", "traditional")
        )
        summary.append(
            (
                "clean",
                "noisy documents dropped or repaired",
                "0",
                f"{handled}/{sum(v['in'] for v in noisy.values())}",
                "—",
            )
        )
        lines += ["## Cleaning", "", f"{clean['documents']:,} documents in, {clean['kept']:,} kept, {clean['rejected']:,} rejected.", "",
                  "| noise kind | in | kept | rejected | by operator | kept with noise left |", "|---|---:|---:|---:|---|---:|"]  # fmt: skip
        for kind, v in clean["kinds"].items():
            by = ", ".join(f"{op} {n}" for op, n in sorted(v["by"].items())) or "—"
            lines.append(f"| {kind} | {v['in']} | {v['kept']} | {v['rejected']} | {by} | {v['residue']} |")
        lines.append("")
    pre = findings.get("pretrain")
    if pre:
        summary.append(
            (
                "pretrain",
                "held-out loss (nats/token)",
                f"{pre['unigram_loss']:.3f} (unigram)",
                f"{pre['loss']:.3f}",
                _verdict(pre["unigram_loss"], pre["loss"], False),
            )
        )
        lines += ["## Pretraining", "", f"Held-out loss on {pre['heldout_documents']} fresh corpus documents ({pre['heldout_tokens']:,} tokens): "
                  f"**{pre['loss']:.3f}** nats/token; unigram baseline {pre['unigram_loss']:.3f}; uniform {pre['uniform_loss']:.3f}.", "",
                  "![pretraining curves](pretrain/curves.png)", ""]  # fmt: skip
    sft = findings.get("sft")
    if sft:
        summary.append(_row("sft", "exact match, held-out chat prompts", sft.get("before"), sft["after"]))
        lines += ["## SFT", "", f"Greedy exact match on {sft['heldout_prompts']} held-out prompts: before {_pct(sft.get('before'))}, "
                  f"after **{_pct(sft['after'])}**.", "", "![SFT curves](sft/curves.png)", ""]  # fmt: skip
    dpo = findings.get("dpo")
    if dpo:
        summary.append(_row("dpo", "reward accuracy, held-out pairs", dpo["reward_accuracy_before"], dpo["reward_accuracy_after"]))
        lines += ["## DPO", "", f"On {dpo['heldout_pairs']} held-out pairs: reward accuracy (β-scaled log-ratio margin > 0 against the SFT "
                  f"reference) **{_pct(dpo['reward_accuracy_after'])}** (mean margin {dpo['reward_margin_after']:.3f}); the model gives the chosen "
                  f"answer the higher log-probability in {_pct(dpo['prefers_chosen_before'])} of pairs before DPO and "
                  f"**{_pct(dpo['prefers_chosen_after'])}** after.", "", "![DPO curves](dpo/curves.png)", ""]  # fmt: skip
    grpo = findings.get("grpo")
    if grpo:
        summary.append(_row("grpo", "mean reward, held-out prompts", grpo.get("before"), grpo["after"]))
        lines += ["## GRPO", "", f"Mean reward of greedy answers on {grpo['heldout_prompts']} held-out prompts: before {_pct(grpo.get('before'))}, "
                  f"after **{_pct(grpo['after'])}**.", "", "![reward](grpo/reward.png)", ""]  # fmt: skip
    table = findings.get("eval")
    if table:
        tasks = sorted({t for r in table.values() for t in r})
        names = list(table)  # the recipe's order: the baseline first, the final model last
        first, last = names[0], names[-1]
        base, final = table[first], table[last]
        if len(table) > 1:
            summary += [_row("eval", f"{t} accuracy ({last} vs {first})", base.get(t), final.get(t)) for t in tasks]
        lines += [
            "## Evaluation",
            "",
            "| model | " + " | ".join(tasks) + " |",
            "|---|" + "---:|" * len(tasks),
        ]
        lines += [
            f"| {name} | " + " | ".join(_pct(r.get(t)) for t in tasks) + " |" for name, r in table.items()
        ]
        lines += [
            "",
            "Chance is 25% on the multiple-choice tasks (cmmlu, ceval).",
            "",
            "![evaluation](eval_bars.png)",
            "",
        ]
    export = findings.get("export")
    if export:
        ok = export["plain_transformers_loads"]
        summary.append(("export", "loads with plain transformers", "—", "yes" if ok else "no", "—"))
        lines += ["## Export", "", f"`{export['release']}`: {export['parameters']:,} parameters, files: {', '.join(export['files'])}.",
                  f"Loaded in a separate `python -I` process with steelforge blocked: **{'yes' if ok else 'no'}**; greedy answer to "
                  f"'你是谁？': {export.get('plain_answer')!r}, ended at a stop token: {export.get('stopped_at_stop_token')}.", ""]  # fmt: skip
    chat = findings.get("chat")
    if chat:
        lines += ["## Chat", "", "Answers through `steelforge chat --prompt` with the released model:", ""]
        lines += [f"- **{c['prompt']}** → {c['answer']!r}" for c in chat]
        lines.append("")
    head = ["## Summary", "", "| stage | metric | before | after | verdict |", "|---|---|---:|---:|---|"]
    head += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in summary]
    findings["summary"] = summary
    return "\n".join(lines[:4] + head + [""] + lines[4:]) + "\n"


# ---- the stage --------------------------------------------------------------------------------------
def _inputs_signature(recipe: Any) -> dict[str, Any]:
    """mtime of every earlier stage's completion marker (the report is stale when any stage ran again) and the
    report's own settings."""
    sig: dict[str, Any] = {"recipe": recipe.stage_fingerprint("report")}
    for stage, name in STAGE_DONE_FILES.items():
        if getattr(recipe, stage, None) is not None:
            marker = recipe.stage_dir(stage) / name
            sig[stage] = marker.stat().st_mtime_ns if marker.exists() else 0
    return sig


def report_complete(recipe: Any) -> bool:
    marker = recipe.root / DONE_FILE
    if not marker.is_file() or not (recipe.root / "REPORT.md").is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("inputs") == _inputs_signature(recipe)
    except ValueError:
        return False


def run_report(recipe: Any) -> StageReport:
    """Measure every configured stage's effect and write REPORT.md, report.json and the figures."""
    import torch

    from steelforge.stage import atomic_write_text

    cfg: ReportConfig = recipe.report
    root = recipe.root
    torch.manual_seed(recipe.seed)
    tasks_dir = recipe.stage_dir("tasks") if recipe.tasks is not None else None
    findings: dict[str, Any] = {}
    steps = [
        ("clean", lambda: clean_effect(root) if recipe.data is not None else None),
        ("pretrain", lambda: pretrain_effect(recipe, cfg) if recipe.pretrain is not None else None),
        (
            "sft",
            lambda: (
                sft_effect(recipe, cfg, tasks_dir / "sft" / "heldout.jsonl")
                if recipe.sft and tasks_dir
                else None
            ),
        ),
        (
            "dpo",
            lambda: (
                dpo_effect(recipe, tasks_dir / "dpo" / "heldout.jsonl") if recipe.dpo and tasks_dir else None
            ),
        ),
        ("grpo", lambda: grpo_effect(recipe, cfg) if recipe.grpo is not None else None),
        ("eval", lambda: eval_effect(recipe) if recipe.eval is not None else None),
    ]
    for name, measure in steps:
        console.print(f"report: measuring {name} …")
        value = measure()
        if value is not None:
            findings[name] = value
    last = next(
        (
            recipe.stage_dir(s) / "hf"
            for s in ("grpo", "dpo", "sft", "pretrain")
            if getattr(recipe, s, None) is not None
        ),
        None,
    )
    if last is not None:
        console.print("report: exporting and loading with plain transformers …")
        exported = export_effect(recipe, cfg, last)
        if exported:
            findings["export"] = exported
            console.print("report: chat answers …")
            chat = chat_effect(Path(exported["release"]), cfg.chat_prompts)
            if chat:
                findings["chat"] = chat
    if findings.get("eval"):
        plot_eval(findings["eval"], root / "eval_bars.png")
    text = render(findings, root)
    atomic_write_text(root / "REPORT.md", text)
    atomic_write_text(
        root / "report.json", json.dumps(findings, indent=1, ensure_ascii=False, default=str) + "\n"
    )
    atomic_write_text(root / DONE_FILE, json.dumps({"inputs": _inputs_signature(recipe)}) + "\n")
    report = StageReport(stage="report")
    for stage, metric, before, after, verdict in findings.get("summary", []):
        report.add(f"{stage}: {metric}", f"{before} → {after} ({verdict})")
    report.outputs["report"] = root / "REPORT.md"
    report.outputs.update(
        {p.stem: p for p in map(Path, sorted(glob.glob(str(root / "*" / "*.png")))) if p.exists()}
    )
    return report
