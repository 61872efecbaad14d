"""The README.md model card of an export, built only from what the run wrote to disk.

Every number comes from a stage's own report file, so the card can be checked against them:
cleaning `stats.json` (documents in/kept/rejected), token store `manifest.json` (documents and tokens per
source), each training stage's `metrics.jsonl` (steps, tokens) with its recipe section (hyperparameters),
`eval/**/results.json` (accuracy, n, per subject), and the checkpoints left on disk. Missing reports leave
their section saying so instead of failing the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from steelforge.export.hf import ExportSource

TRAINING_STAGES: tuple[str, ...] = ("pretrain", "sft", "dpo", "grpo")
CODE_LICENSE = "Apache-2.0"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out += _flatten(value, f"{prefix}{key}.")
        return out
    if isinstance(data, list) and any(isinstance(v, dict) for v in data):
        out = []
        for i, value in enumerate(data):
            out += _flatten(value, f"{prefix}{i}.")
        return out
    return [(prefix.rstrip("."), data)]


# ---- facts ------------------------------------------------------------------------------------------
def architecture_facts(model: Any) -> dict[str, Any]:
    """Family, shape and parameter counts of the exported model."""
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None and head.weight is not model.get_input_embeddings().weight else 0
    facts = {
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", None),
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "parameters": total,
        "non_embedding_parameters": total - embed - head_params,
    }
    for key in ("FFN_type", "n_experts", "slots_per_expert", "softmoe_dispatch", "sliding_window"):
        if getattr(config, key, None) is not None:
            facts[key] = getattr(config, key)
    return facts


def clean_reports(run_dir: Path) -> list[dict[str, Any]]:
    """Every cleaning `stats.json` under the run (one per `data:` run), with its folder."""
    found = []
    for path in sorted(run_dir.rglob("stats.json")):
        data = _read_json(path)
        if isinstance(data, dict) and "kept" in data and "ops" in data:
            found.append({"folder": str(path.parent.relative_to(run_dir)), **data})
    return found


def store_reports(run_dir: Path) -> list[dict[str, Any]]:
    """Every token store manifest under the run, summed per source."""
    found = []
    for path in sorted(run_dir.rglob("manifest.json")):
        data = _read_json(path)
        if not isinstance(data, dict) or "shards" not in data or "tokenizer" not in data:
            continue
        per_source: dict[str, dict[str, int]] = {}
        for shard in data["shards"]:
            row = per_source.setdefault(shard.get("source", "?"), {"documents": 0, "tokens": 0})
            row["documents"] += int(shard.get("documents", 0))
            row["tokens"] += int(shard.get("tokens", 0))
        found.append({
            "folder": str(path.parent.relative_to(run_dir)),
            "tokenizer": data["tokenizer"].get("name"),
            "sources": per_source,
            "documents": sum(r["documents"] for r in per_source.values()),
            "tokens": sum(r["tokens"] for r in per_source.values()),
        })
    return found


def _stage_recipe(stage_dir: Path) -> dict[str, Any]:
    """The recipe a stage ran with: its newest checkpoint's or export's recipe.yaml."""
    candidates = sorted((stage_dir / "checkpoints").glob("step_*/recipe.yaml")) + sorted(stage_dir.glob("hf*/recipe.yaml"))
    for path in reversed(candidates):
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
    return {}


def _section_from_run(recipe: dict[str, Any], run_dir: Path | None, section: str) -> dict[str, Any]:
    """A recipe section from the exported checkpoint's recipe, else from any stage's recipe in the run."""
    if recipe.get(section):
        return recipe[section]
    if run_dir is not None:
        for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            found = _stage_recipe(stage_dir).get(section)
            if found:
                return found
    return {}


def training_reports(run_dir: Path, model_config: Any) -> list[dict[str, Any]]:
    """Per training stage: steps, tokens seen (from metrics.jsonl), hyperparameters and training FLOPs."""
    from steelforge.models.flops import flops_per_token

    found = []
    for stage in TRAINING_STAGES:
        stage_dir = run_dir / stage
        metrics = stage_dir / "metrics.jsonl"
        if not metrics.is_file():
            continue
        last: dict[str, Any] = {}
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in record and "step" in record:
                last = record
        recipe = _stage_recipe(stage_dir)
        section = recipe.get(stage) or {}
        tokens = int(last.get("tokens", 0))
        seq_len = section.get("seq_len")
        flops = flops_per_token(model_config, int(seq_len), training=True) * tokens if seq_len and tokens else None
        found.append({
            "stage": stage,
            "steps": int(last.get("step", 0)),
            "tokens": tokens,
            "final_loss": last.get("loss"),
            "flops": flops,
            "hyperparameters": section,
        })
    return found


def eval_reports(run_dir: Path) -> list[dict[str, Any]]:
    """Every `results.json` under the run's eval/ folder, read tolerantly (missing keys become blanks)."""
    found = []
    eval_dir = run_dir / "eval"
    if not eval_dir.is_dir():
        return found
    for path in sorted(eval_dir.rglob("results.json")):
        data = _read_json(path)
        if not isinstance(data, dict):
            continue
        subjects = data.get("per_subject") or data.get("subjects") or {}
        rows = []
        if isinstance(subjects, dict):
            for name, value in subjects.items():
                if isinstance(value, dict):
                    rows.append((name, value.get("accuracy", value.get("acc")), value.get("n")))
                elif isinstance(value, int | float):
                    rows.append((name, value, None))
        found.append({
            "task": data.get("task") or path.parent.name,
            "accuracy": data.get("accuracy", data.get("acc")),
            "n": data.get("n", data.get("num_samples")),
            "subjects": rows,
        })
    return found


def intermediate_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoint and intermediate export folders left in the run, relative to it."""
    found = [p for p in run_dir.glob("*/checkpoints/step_*") if p.is_dir()]
    found += [p for p in run_dir.glob("*/hf-step_*") if p.is_dir()]
    return sorted(str(p.relative_to(run_dir)) for p in found)


# ---- rendering --------------------------------------------------------------------------------------
def build_model_card(
    model: Any, tokenizer: Any, source: ExportSource, *, generation: dict[str, Any], license_id: str = "apache-2.0"
) -> str:
    """Markdown model card (with HF front matter) from the model and the run folder's reports."""
    recipe = source.recipe
    run_dir = source.run_dir
    name = recipe.get("name", source.path.name)
    arch = architecture_facts(model)
    cleans = clean_reports(run_dir) if run_dir else []
    stores = store_reports(run_dir) if run_dir else []
    trains = training_reports(run_dir, model.config) if run_dir else []
    evals = eval_reports(run_dir) if run_dir else []
    ckpts = intermediate_checkpoints(run_dir) if run_dir else []
    custom_code = bool(getattr(model.config, "auto_map", None)) or arch["model_type"] == "steel"
    parts = [
        "---",
        f"license: {license_id}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [steelforge]",
        "---",
        f"# {name}",
        "",
        f"Exported by `steelforge export` from `{source.path}` ({source.kind}"
        + (f", step {source.step:,}" if source.step is not None else "")
        + "). Every number below is read from the run's own reports.",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        f"model = AutoModelForCausalLM.from_pretrained(PATH{', trust_remote_code=True' if custom_code else ''})",
        "```",
        "",
        "## Architecture",
        "",
        _table(["field", "value"], [[k, v] for k, v in arch.items()]),
        "",
        f"Tokenizer: `{recipe.get('tokenizer') or Path(getattr(tokenizer, 'name_or_path', '?')).name}` "
        f"({len(tokenizer):,} tokens); stop tokens {generation['eos_token_id']}, pad {generation['pad_token_id']}.",
        "",
        "## Training data",
        "",
    ]
    if cleans:
        parts += ["Cleaning (per `stats.json`):", "", _table(
            ["folder", "documents in", "kept", "rejected", "errors", "chars in", "chars out"],
            [[c["folder"], c.get("docs_in"), c.get("kept"), c.get("rejected"), c.get("errors"), c.get("chars_in"),
              c.get("chars_out")] for c in cleans],
        ), ""]
    if stores:
        rows = [[s["folder"], src, r["documents"], r["tokens"]] for s in stores for src, r in s["sources"].items()]
        parts += ["Token stores (per `manifest.json`):", "", _table(["store", "source", "documents", "tokens"], rows), ""]
    inputs = (recipe.get("data") or {}).get("inputs") or []
    if inputs:
        parts += ["Data sources named by the recipe: " + ", ".join(f"`{i.get('name', '?')}`" for i in inputs), ""]
    if not (cleans or stores):
        parts += ["No cleaning or packing report was found in the run folder.", ""]
    for section, title in (("data", "Cleaning settings"), ("pack", "Packing settings")):
        settings = _section_from_run(recipe, run_dir, section)
        if settings:
            parts += [f"### {title} (`{section}:`)", "", _table(["key", "value"], _flatten(settings)), ""]
    parts += ["## Training", ""]
    if trains:
        parts += [_table(
            ["stage", "steps", "tokens", "final loss", "training FLOPs"],
            [[t["stage"], t["steps"], t["tokens"], t["final_loss"], f"{t['flops']:.3e}" if t["flops"] else "?"]
             for t in trains],
        ), ""]
        total_tokens = sum(t["tokens"] for t in trains)
        total_flops = sum(t["flops"] or 0 for t in trains)
        parts += [f"Total: {total_tokens:,} training tokens, {total_flops:.3e} FLOPs "
                  "(matmul FLOPs, forward + backward, `steelforge.models.flops`).", ""]
        for t in trains:
            parts += [f"### {t['stage']} hyperparameters", "", _table(["key", "value"], _flatten(t["hyperparameters"])), ""]
    else:
        parts += ["No training metrics were found in the run folder.", ""]
    parts += ["## Evaluation", ""]
    if evals:
        parts += [_table(["task", "accuracy", "n"], [[e["task"], e["accuracy"], e["n"]] for e in evals]), ""]
        for e in evals:
            if e["subjects"]:
                parts += [f"### {e['task']} per subject", "", _table(["subject", "accuracy", "n"], e["subjects"]), ""]
    else:
        parts += ["No evaluation results (`eval/**/results.json`) were found in the run folder.", ""]
    parts += ["## Intermediate checkpoints", ""]
    parts += [f"- `{c}`" for c in ckpts] if ckpts else ["None kept in the run folder."]
    parts += ["", "## Recipe", "", "The recipe this checkpoint was trained with (also in `recipe.yaml`):", "",
              "```yaml", source.recipe_yaml.strip() or "# not recorded", "```", ""]
    parts += ["## Licenses", "",
              f"- Weights: {license_id}", f"- Code (steelforge, modeling files): {CODE_LICENSE}",
              "- Data: under the licenses of the sources listed above.", ""]
    parts += ["## Model Openness Framework checklist", "", _table(["component", "released", "where"], mof_rows(
        custom_code=custom_code, has_data=bool(cleans or stores), has_evals=bool(evals), checkpoints=ckpts,
        has_recipe=bool(source.recipe_yaml.strip()),
    )), ""]
    return "\n".join(parts)


def mof_rows(*, custom_code: bool, has_data: bool, has_evals: bool, checkpoints: list[str], has_recipe: bool) -> list[list[str]]:
    """Model Openness Framework components and whether this release carries them."""
    yes, no = "yes", "no"
    return [
        ["Model architecture", yes, "modeling_steel.py in this folder" if custom_code else "transformers' MistralForCausalLM"],
        ["Model parameters (final)", yes, "*.safetensors"],
        ["Tokenizer", yes, "tokenizer.json, tokenizer_config.json (chat template)"],
        ["Model card", yes, "README.md"],
        ["Training code", yes, "steelforge (train/)"],
        ["Inference code", yes, "steelforge chat / serve; plain transformers"],
        ["Evaluation code", yes, "steelforge (eval/)"],
        ["Data preprocessing code", yes, "steelforge (clean/, tokens/)"],
        ["Data recipes", yes if has_recipe else no, "recipe.yaml"],
        ["Data statistics (data card)", yes if has_data else no, "Training data section"],
        ["Training datasets", no, "not bundled; rebuilt from the recipe's sources"],
        ["Intermediate checkpoints", yes if checkpoints else no, f"{len(checkpoints)} in the run folder"],
        ["Evaluation results", yes if has_evals else no, "Evaluation section"],
        ["Technical report", no, ""],
    ]
