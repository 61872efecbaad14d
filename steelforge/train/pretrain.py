"""Causal-LM pretraining over token stores: the objective, the model/loader construction, the stage API.

`run_pretrain(recipe)` works alone and under `torchrun` (every rank runs it). Outputs under
`recipe.stage_dir("pretrain")`: `checkpoints/` (DCP, resumable at any world size), `hf/` (consolidated
export at the end), `metrics.jsonl`, `curves.png`, `pretrain_done.json` (completion marker).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from steelforge.errors import DataError
from steelforge.reporting import StageReport, console
from steelforge.train.config import PretrainConfig
from steelforge.train.distributed import DistEnv, init_distributed, materialize, parallelize
from steelforge.train.engine import LossOutput, Trainer, TrainerConfig
from steelforge.train.losses import linear_cross_entropy

DONE_FILE = "pretrain_done.json"


# ---- objective -----------------------------------------------------------------------------------
def final_hidden(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The last decoder hidden states (after the final norm), through FSDP's hooks when sharded."""
    forward_hidden = getattr(model, "forward_hidden", None)
    if forward_hidden is not None:
        return forward_hidden(input_ids, position_ids)
    return model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state


def causal_lm_loss(
    *, ignore_index: int = -100, mode: str = "chunked", chunk_tokens: int = 4096, use_liger: bool = False
) -> Callable[[nn.Module, dict[str, torch.Tensor]], LossOutput]:
    """Next-token cross-entropy; `labels[:, t]` is the target of position t (already shifted by the loader).

    Labels equal to `ignore_index` (e.g. Steel-LLM's `<|endoftext|>` padding) are left out of the sum
    and of the token count the engine normalises by.
    """

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        hidden = final_hidden(model, batch["input_ids"], batch.get("position_ids"))
        loss_sum, count = linear_cross_entropy(
            hidden,
            model.lm_head.weight,
            batch["labels"],
            ignore_index=ignore_index,
            mode=mode,  # type: ignore[arg-type]
            chunk_tokens=chunk_tokens,
            use_liger=use_liger,
        )
        return LossOutput(loss_sum, count)

    return loss_fn


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class DeviceBatches:
    """Moves each micro-batch of a loader to the training device; state passes through to the loader."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader = loader
        self.device = device

    def __iter__(self):
        for batch in self.loader:
            yield _to_device(batch, self.device)


# ---- construction --------------------------------------------------------------------------------
def build_model(recipe: Any, cfg: PretrainConfig, env: DistEnv) -> nn.Module:
    """Model from the recipe's `model:` section, parallelised; meta-initialised and materialised shard by
    shard when `parallel.meta_init` is set (every rank then holds only its shards)."""
    from steelforge.models.loading import load_model

    spec = model_spec_with_attention(recipe.model, cfg)
    if cfg.parallel.meta_init:
        model = load_model(spec, dtype=torch.float32, on_meta=True)
        parallelize(model, env.mesh, cfg.speed, cfg.parallel)
        materialize(model, env.device, recipe.seed)
        return model
    torch.manual_seed(recipe.seed)
    model = load_model(spec, dtype=torch.float32, device=env.device)
    return parallelize(model, env.mesh, cfg.speed, cfg.parallel)


def model_spec_with_attention(spec: Any, cfg: PretrainConfig) -> Any:
    """The model spec with the one attention setting: `pretrain.speed.attention` when given, else the
    model's `attn_implementation`; both given and different is refused instead of one silently winning."""
    from steelforge.errors import RecipeError
    from steelforge.train.distributed import check_attention

    chosen = cfg.speed.attention
    if chosen is None:
        return spec
    if "attn_implementation" in spec.model_fields_set and spec.attn_implementation != chosen:
        raise RecipeError(
            f"'model.attn_implementation' = '{spec.attn_implementation}' and 'pretrain.speed.attention' = "
            f"'{chosen}' disagree; set only one of them"
        )
    check_attention(chosen)
    return spec.model_copy(update={"attn_implementation": chosen})


def store_dirs(recipe: Any, cfg: PretrainConfig) -> list[Path]:
    stores = [Path(p) for p in cfg.stores] if cfg.stores else [recipe.stage_dir("pack")]
    for store in stores:
        if not (store / "manifest.json").is_file():
            raise DataError(
                f"token store '{store}' has no manifest.json; run `steelforge pack` first or set pretrain.stores"
            )
    return stores


def _phases(cfg: PretrainConfig) -> list[Any] | None:
    if not cfg.phases:
        return None
    from steelforge.tokens.sampler import Phase

    return [Phase(until_tokens=p.until_tokens, seq_len=p.seq_len, mixture=p.mixture) for p in cfg.phases]


def build_loader(
    stores: list[Path], cfg: PretrainConfig, env: DistEnv, seed: int, grad_accum: int, tokenizer_fingerprint: str
) -> Any:
    """This rank's `TokenLoader`; it refuses stores packed with another tokenizer than the recipe's."""
    from steelforge.tokens.loader import TokenLoader

    return TokenLoader(
        stores,
        seq_len=cfg.seq_len,
        micro_batch_size=cfg.micro_batch_size,
        grad_accum=grad_accum,
        rank=env.rank,
        world_size=env.world_size,
        seed=seed,
        mixture=cfg.mixture,
        phases=_phases(cfg),
        return_position_ids=cfg.return_position_ids,
        loss_masks=cfg.loss_masks,
        num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda",
        tokenizer_fingerprint=tokenizer_fingerprint,
    )


def make_validation(
    model_loss: Callable[[nn.Module, Any], LossOutput], batches: Any, n_batches: int, cfg: PretrainConfig, env: DistEnv
) -> Callable[[nn.Module], dict[str, float]]:
    """Mean loss and perplexity over the same `n_batches` held-out micro-batches per rank at every call
    (the loader is rewound), reduced over all ranks, so validation curves compare like with like."""
    from steelforge.train.distributed import autocast_context

    loader = getattr(batches, "loader", None)
    start = loader.state_dict() if loader is not None and hasattr(loader, "state_dict") else None

    def evaluate(model: nn.Module) -> dict[str, float]:
        if start is not None:
            loader.load_state_dict(start)
        iterator = iter(batches)
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=env.device)
        with torch.no_grad():
            for _ in range(n_batches):
                with autocast_context(model, cfg.speed.precision, env.device):
                    out = model_loss(model, next(iterator))
                totals += torch.stack([out.loss_sum.double(), out.num_tokens.double()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        model.train()
        loss = float(totals[0] / totals[1].clamp_min(1))
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    return evaluate


# ---- stage API -----------------------------------------------------------------------------------
def pretrain_complete(recipe: Any) -> bool:
    """True when this recipe's pretraining already ran to its end (marker written after the final export)."""
    marker = recipe.stage_dir("pretrain") / DONE_FILE
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return done.get("recipe_hash") == recipe.fingerprint() and (recipe.stage_dir("pretrain") / "hf").is_dir()


def run_pretrain(recipe: Any) -> StageReport:
    """Train the recipe's model on its token stores; resumes from the newest checkpoint automatically."""
    from steelforge.models.flops import flops_per_token
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint
    from steelforge.train.checkpoint import Checkpointer, StopSignal
    from steelforge.train.metrics import MetricsLogger, resolve_peak_flops

    cfg: PretrainConfig = recipe.pretrain
    out = recipe.stage_dir("pretrain")
    env = init_distributed(cfg.parallel)
    from steelforge.train.distributed import configure_precision

    configure_precision(cfg.speed.precision, env.device, tf32=cfg.speed.tf32)
    if not env.is_main:
        console.quiet = True  # one console under torchrun: rank 0 speaks for every rank
    grad_accum, global_batch = cfg.resolve_batch(env.world_size)
    tokenizer = load_tokenizer(recipe.tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    stores = store_dirs(recipe, cfg)
    model = build_model(recipe, cfg, env)
    use_liger = cfg.speed.liger != "off"  # the fused loss falls back to PyTorch without CUDA/Liger

    from steelforge.train.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=cfg.max_steps, peak_lr=cfg.optim.lr)
    loader = build_loader(stores, cfg, env, recipe.seed, grad_accum, fingerprint)
    loss_fn = causal_lm_loss(
        ignore_index=cfg.ignore_index, mode=cfg.speed.loss, chunk_tokens=cfg.speed.loss_chunk_tokens, use_liger=use_liger
    )
    eval_fn = None
    if cfg.val_store is not None and cfg.val_every:
        val_cfg = cfg.model_copy(update={"mixture": None, "phases": None, "stores": [cfg.val_store]})
        val_loader = build_loader(store_dirs(recipe, val_cfg), val_cfg, env, recipe.seed + 1, 1, fingerprint)
        eval_fn = make_validation(loss_fn, DeviceBatches(val_loader, env.device), cfg.val_batches, cfg, env)

    checkpointer = Checkpointer(
        out / "checkpoints",
        keep_last=cfg.checkpoint.keep_last,
        keep_every=cfg.checkpoint.keep_every,
        recipe_yaml=recipe.to_yaml(),
        recipe_hash=recipe.fingerprint(),
    )
    compute_dtype = torch.bfloat16 if cfg.speed.precision == "bf16" else torch.float32
    peak, peak_source = resolve_peak_flops(env.device, compute_dtype, cfg.peak_tflops)
    model_config = getattr(model, "config", None)
    trainer_cfg = TrainerConfig(
        max_steps=cfg.max_steps,
        grad_accum=grad_accum,
        clip_grad_norm=cfg.clip_grad_norm,
        max_nonfinite_steps=cfg.max_nonfinite_steps,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint.every,
        export_steps=list(cfg.checkpoint.export_steps),
        export_final=cfg.checkpoint.export_final,
        val_every=cfg.val_every,
        precision=cfg.speed.precision,
        tokens_per_step=global_batch * cfg.seq_len,
        flops_per_token=flops_per_token(model_config, cfg.seq_len, training=True) if model_config is not None else 0.0,
        peak_flops=peak,
        resume=cfg.checkpoint.resume,
        device=env.device,
        grad_sync_last_micro_batch=cfg.parallel.grad_sync_last_micro_batch,
    )

    def export(step: int, final: bool) -> None:
        target = out / "hf" if final else out / f"hf-step_{step:09d}"
        checkpointer.export_hf(model, tokenizer, target)

    metrics = MetricsLogger(
        out,
        total_steps=cfg.max_steps,
        is_main=env.is_main,
        tensorboard=cfg.tensorboard,
        wandb=cfg.wandb.model_dump() | {"config": {"recipe": recipe.name}} if cfg.wandb is not None else None,
    )
    try:
        with StopSignal() as stop:
            trainer = Trainer(
                model,
                loss_fn,
                DeviceBatches(loader, env.device),
                trainer_cfg,
                optimizer=optimizer,
                scheduler=scheduler,
                checkpointer=checkpointer,
                metrics=metrics,
                state_objects={"loader": loader},
                eval_fn=eval_fn,
                export_fn=export,
                stop_signal=stop,
                tokens_per_step=lambda: loader.tokens_per_step,
            )
            summary = trainer.fit()
        metrics.plot()
    finally:
        metrics.close()
    if summary["stopped_by"] == "max_steps" and env.is_main:
        (out / DONE_FILE).write_text(
            json.dumps({"recipe_hash": recipe.fingerprint(), "steps": summary["steps"]}), encoding="utf-8"
        )
    elif env.is_main:
        console.print(f"stopped by a signal at step {summary['steps']:,}; the checkpoint is saved, rerun to resume")

    report = StageReport(stage="pretrain")
    report.rows.extend(metrics.summary_rows())
    report.add("MFU peak", f"{peak / 1e12:.3g} TFLOP/s ({peak_source})")
    report.add("world size", env.world_size)
    report.add("grad accumulation", grad_accum)
    report.add("global batch (samples)", global_batch)
    report.add("stopped by", summary["stopped_by"])
    if summary["resumed_from"]:
        report.add("resumed from", summary["resumed_from"])
    report.outputs["checkpoints"] = out / "checkpoints"
    if (out / "hf").is_dir():
        report.outputs["hf"] = out / "hf"
    report.outputs["metrics"] = out / "metrics.jsonl"
    return report
