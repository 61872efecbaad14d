"""What the SFT and DPO stages share: model source, tokenizer and template, LoRA, the engine's construction.

The structure follows `steelforge.train.pretrain` (distributed init, parallelise, checkpointer, metrics,
export); the training loop itself is the shared `Trainer`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelforge.errors import DataError, RecipeError
from steelforge.models.config import ModelSpec
from steelforge.posttrain.config import PosttrainBase
from steelforge.reporting import StageReport, console
from steelforge.stage import atomic_write_json
from steelforge.train.distributed import DistEnv, parallelize
from steelforge.train.engine import LossOutput, TrainerConfig
from steelforge.train.trainer import fit_until_stopped

# The stage whose hf/ export each stage starts from by default, in order of preference.
PREVIOUS = {"sft": ("pretrain",), "dpo": ("sft", "pretrain")}


def model_source(recipe: Any, stage: str) -> ModelSpec:
    """The section's `model:`, else the previous stage's export, else the recipe's top-level `model:`."""
    section = getattr(recipe, stage)
    if section.model is not None:
        return section.model
    for previous in PREVIOUS[stage]:
        if getattr(recipe, previous, None) is not None:
            return ModelSpec(path=str(recipe.stage_dir(previous) / "hf"))
    if recipe.model is not None:
        return recipe.model
    raise RecipeError(f"the {stage} stage has no model: set {stage}.model (a preset or a model folder)")


def check_source_exists(spec: ModelSpec, stage: str) -> None:
    if spec.path is not None and not Path(spec.path).is_dir():
        raise DataError(
            f"{stage} starts from '{spec.path}', which does not exist yet; run the previous stage first or set "
            f"{stage}.model to a preset or a model folder"
        )


def load_tokenizer_and_template(recipe: Any, section: PosttrainBase) -> tuple[Any, str, str, str]:
    """(tokenizer with the chat template installed, its fingerprint, template label, template text)."""
    from steelforge.posttrain.templates import apply_template, resolve_template
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint

    tokenizer = load_tokenizer(recipe.tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    label, template = resolve_template(section.chat_template, tokenizer)
    apply_template(tokenizer, template)
    return tokenizer, fingerprint, label, template


def load_policy(spec: ModelSpec, section: PosttrainBase, env: DistEnv, seed: int) -> tuple[nn.Module, Any]:
    """(trainable model, peft wrapper or None); LoRA adapters are injected before parallelising."""
    from steelforge.models.loading import load_model

    torch.manual_seed(seed)
    model = load_model(spec, dtype=torch.float32, device=env.device)
    peft_model = None
    if section.lora is not None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise RecipeError("the lora: setting needs peft; install it with pip install 'steelforge[lora]'") from None

        lora = section.lora
        targets: Any = lora.target_modules[0] if lora.target_modules == ["all-linear"] else lora.target_modules
        peft_model = get_peft_model(
            model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                       task_type="CAUSAL_LM"),
        )
        model = peft_model.get_base_model()  # the same modules, adapters injected; trained directly
    parallelize(model, env.mesh, section.speed, section.parallel)
    return model, peft_model


def load_frozen(spec: ModelSpec, section: PosttrainBase, env: DistEnv, seed: int) -> nn.Module:
    """A frozen, eval-mode copy of the starting weights (DPO's reference); a preset is initialised with the
    policy's seed so that both start from the same weights."""
    from steelforge.models.loading import load_model

    torch.manual_seed(seed)
    model = load_model(spec, dtype=torch.float32, device=env.device)
    model.requires_grad_(False)
    parallelize(model, env.mesh, section.speed, section.parallel)
    return model.eval()


def export_merged_lora(peft_model: Any, tokenizer: Any, out_dir: Path, recipe_yaml: str) -> None:
    """An HF folder with the adapters merged into the weights (training can continue afterwards)."""
    import shutil

    base = peft_model.get_base_model()
    peft_model.merge_adapter()
    try:
        state = {k.replace(".base_layer", ""): v.detach().cpu().contiguous()
                 for k, v in base.state_dict().items() if "lora_" not in k}  # fmt: skip
        tmp = out_dir.with_name(f".tmp-{out_dir.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        base.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        peft_model.unmerge_adapter()


def stage_complete(recipe: Any, stage: str, done_file: str) -> bool:
    """True when the stage ran to its end for this very recipe (marker written after the final export)."""
    from steelforge.stage import trained_stage_complete

    return trained_stage_complete(recipe, stage, done_file)


def warmup_steps(section: PosttrainBase, total_steps: int) -> Any:
    """The schedule config with `warmup_ratio` turned into steps and the length set to the run's."""
    update: dict[str, Any] = {"total_steps": section.schedule.total_steps or total_steps}
    if section.warmup_ratio is not None:
        update["warmup_steps"] = math.ceil(section.warmup_ratio * total_steps)
    return section.schedule.model_copy(update=update)


def run_engine(
    *,
    stage: str,
    recipe: Any,
    section: PosttrainBase,
    env: DistEnv,
    model: nn.Module,
    peft_model: Any,
    tokenizer: Any,
    loss_fn: Callable[[nn.Module, Any], LossOutput],
    loader: Any,
    grad_accum: int,
    max_steps: int,
    tokens_per_step: Callable[[], int],
    done_file: str,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    val_every: int | None = None,
) -> tuple[StageReport, dict[str, Any]]:
    """Optimizer, schedule, checkpointer, metrics, export; then `Trainer.fit()` and the completion marker."""
    from steelforge.train.checkpoint import Checkpointer
    from steelforge.train.metrics import MetricsLogger
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.pretrain import DeviceBatches

    out = recipe.stage_dir(stage)
    optimizer = build_optimizer(model, section.optim)
    scheduler = build_scheduler(optimizer, warmup_steps(section, max_steps), total_steps=max_steps,
                                peak_lr=section.optim.lr)  # fmt: skip
    checkpointer = Checkpointer(
        out / "checkpoints",
        keep_last=section.checkpoint.keep_last,
        keep_every=section.checkpoint.keep_every,
        recipe_yaml=recipe.to_yaml(),
        recipe_hash=recipe.stage_fingerprint(stage),
    )
    trainer_cfg = TrainerConfig(
        max_steps=max_steps,
        grad_accum=grad_accum,
        clip_grad_norm=section.clip_grad_norm,
        max_nonfinite_steps=section.max_nonfinite_steps,
        log_every=section.log_every,
        checkpoint_every=section.checkpoint.every,
        export_steps=list(section.checkpoint.export_steps),
        export_final=section.checkpoint.export_final,
        val_every=val_every,
        precision=section.speed.precision,
        resume=section.checkpoint.resume,
        device=env.device,
    )

    def export(step: int, final: bool) -> None:
        target = out / "hf" if final else out / f"hf-step_{step:09d}"
        if peft_model is not None:
            if env.is_main:
                export_merged_lora(peft_model, tokenizer, target, recipe.to_yaml())
        else:
            checkpointer.export_hf(model, tokenizer, target)

    metrics = MetricsLogger(out, total_steps=max_steps, is_main=env.is_main, tensorboard=section.tensorboard)
    summary = fit_until_stopped(
        model,
        loss_fn,
        DeviceBatches(loader, env.device),
        trainer_cfg,
        metrics=metrics,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpointer=checkpointer,
        state_objects={"loader": loader},
        eval_fn=eval_fn,
        export_fn=export,
        tokens_per_step=tokens_per_step,
    )
    if summary["stopped_by"] == "max_steps" and env.is_main:
        atomic_write_json(out / done_file, {"recipe_hash": recipe.stage_fingerprint(stage), "steps": summary["steps"]})
    elif env.is_main:
        console.print(f"stopped by a signal at step {summary['steps']:,}; the checkpoint is saved, rerun to resume")

    report = StageReport(stage=stage)
    report.rows.extend(metrics.summary_rows())
    report.add("world size", env.world_size)
    report.add("grad accumulation", grad_accum)
    report.add("stopped by", summary["stopped_by"])
    if summary["resumed_from"]:
        report.add("resumed from", summary["resumed_from"])
    report.outputs["checkpoints"] = out / "checkpoints"
    if (out / "hf").is_dir():
        report.outputs["hf"] = out / "hf"
    report.outputs["metrics"] = out / "metrics.jsonl"
    return report, summary


def data_report_rows(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("records kept", stats.get("records", 0)), ("bad records", stats.get("bad_records", 0))]
    for kind, count in sorted(stats.get("bad_by_kind", {}).items()):
        rows.append((f"  {kind}", count))
    return rows
