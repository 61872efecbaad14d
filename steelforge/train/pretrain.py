"""Causal-LM pretraining over token stores: the objective, the model/loader construction, the stage API.

`run_pretrain(recipe)` works alone and under `torchrun` (every rank runs it). Outputs under
`recipe.stage_dir("pretrain")`: `checkpoints/` (DCP, resumable at any world size), `hf/` (consolidated
export at the end), `metrics.jsonl`, `curves.png`, `pretrain_done.json` (completion marker).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from steelforge.errors import DataError, SteelforgeError
from steelforge.reporting import StageReport, console
from steelforge.stage import atomic_write_json
from steelforge.train.config import PretrainConfig
from steelforge.train.distributed import DistEnv, init_distributed, materialize, parallelize
from steelforge.train.engine import LossOutput, TrainerConfig
from steelforge.train.losses import linear_cross_entropy
from steelforge.train.trainer import fit_until_stopped

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


def check_stores(stores: list[Path], mode: str, env: DistEnv) -> None:
    """`pretrain.verify_store`: quick = sizes and manifest (ids are range-checked as shards are first read);
    full = also every shard's md5. One sentence naming the shard on failure, before the model is built."""
    from steelforge.tokens.store import TokenStore

    if mode == "off":
        return
    for path in stores:
        store = TokenStore(path)  # manifest format, completeness and every file's size
        if mode == "full":
            # rank 0 hashes, every rank learns the verdict (no rank waits in a collective for a failed one)
            problems = _broadcast(store.verify() if env.is_main else None, env)
            if problems:
                raise DataError(
                    f"token store '{path}' fails verification: {problems[0]}; restore that shard or re-run "
                    "`steelforge pack` (pretrain.verify_store: full)"
                )


def _phases(cfg: PretrainConfig) -> list[Any] | None:
    if not cfg.phases:
        return None
    from steelforge.tokens.sampler import Phase

    return [Phase(until_tokens=p.until_tokens, seq_len=p.seq_len, mixture=p.mixture) for p in cfg.phases]


def build_loader(
    stores: list[Path],
    cfg: PretrainConfig,
    env: DistEnv,
    seed: int,
    grad_accum: int,
    tokenizer_fingerprint: str,
    vocab_size: int | None = None,
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
        vocab_size=vocab_size if cfg.verify_store != "off" else None,
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


# ---- what a run is made from, and resuming only what the recipe describes --------------------------
# Keys of a model config that say nothing about the architecture (and differ between saves).
_CONFIG_NOISE = {
    "transformers_version", "torch_dtype", "dtype", "architectures", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "attn_implementation", "name_or_path", "auto_map",
}


def architecture_record(model: nn.Module) -> dict[str, Any]:
    """The model config's architecture fields (no dtype, version or attention-kernel choice)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    raw = config.to_dict()
    return {k: v for k, v in sorted(raw.items()) if not k.startswith("_") and k not in _CONFIG_NOISE}


def store_record(stores: list[Path], recorded: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each store's fingerprint over the shards a checkpoint saw (appended shards leave it unchanged)."""
    from steelforge.tokens.store import TokenStore

    out = []
    for i, path in enumerate(stores):
        store = TokenStore(path, check_sizes=False)
        seen = len(store.shards)
        if recorded is not None and i < len(recorded) and recorded[i].get("shards", seen) <= seen:
            seen = int(recorded[i]["shards"])
        out.append({"path": str(path), "shards": seen, "fingerprint": store.fingerprint(seen)})
    return out


def stores_made_from(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Store records keyed by position (the path may move; the shards read so far may not change)."""
    return {str(i): {"shards": r["shards"], "fingerprint": r["fingerprint"]} for i, r in enumerate(records)}


def made_from(
    recipe: Any, cfg: PretrainConfig, model: nn.Module, tokenizer_fp: str, stores: list[dict[str, Any]], global_batch: int
) -> dict[str, Any]:
    """Everything that changes what training produces; recorded in every checkpoint and compared on resume."""
    return {
        "model": architecture_record(model),
        "tokenizer": tokenizer_fp,
        "stores": stores_made_from(stores),
        "pretrain": {
            "seq_len": cfg.seq_len,
            "global_batch_samples": global_batch,
            "phases": [p.model_dump(mode="json") for p in cfg.phases] if cfg.phases else None,
            "mixture": cfg.mixture,
            "ignore_index": cfg.ignore_index,
            "seed": recipe.seed,
            "optim": cfg.optim.model_dump(mode="json", exclude={"implementation"}),
            "schedule": {
                **cfg.schedule.model_dump(mode="json", exclude={"total_steps"}),
                "total_steps": cfg.schedule.total_steps or cfg.max_steps,
            },
            "resume_from": str(cfg.resume.from_) if cfg.resume is not None else None,
        },
    }


def _broadcast(value: Any, env: DistEnv) -> Any:
    if env.world_size > 1 and dist.is_available() and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def choose_resume(
    checkpointer: Any, recipe: Any, cfg: PretrainConfig, current: dict[str, Any], stores: list[Path], env: DistEnv
) -> tuple[str, dict[str, Any]]:
    """The checkpoint to resume ("none" for a fresh start) and the made-from record to save with new ones.

    Rank 0 decides (checksums are verified once) and tells the others. Refuses, in one sentence, a checkpoint
    made from another architecture, tokenizer, store or result-changing setting, and a `max_steps` below it.
    """
    from steelforge.stage import ResumeMismatch, changed_keys, mismatch_sentence

    if cfg.checkpoint.resume == "none":
        return "none", current
    decision: tuple[str, dict[str, Any], str | None] = ("none", current, None)
    if env.is_main:
        if cfg.checkpoint.resume == "auto":
            path = checkpointer.verified_latest(warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
            if path is None and checkpointer.complete():
                decision = (
                    "none",
                    current,
                    f"every checkpoint in {checkpointer.root} is damaged (see the warnings above); restore one, "
                    "or pass --force-new-run to start over",
                )
        else:
            from steelforge.train.checkpoint import verify_checkpoint

            path = Path(cfg.checkpoint.resume)
            problem = verify_checkpoint(path) if path.is_dir() else "it does not exist"
            if problem:
                decision = ("none", current, f"pretrain.checkpoint.resume = {path} cannot be used: {problem}")
                path = None
        if path is not None:
            meta = checkpointer.read_meta(path)
            step, recorded = int(meta.get("step", 0)), meta.get("made_from")
            error = None
            if step > cfg.max_steps:
                error = (
                    f"pretrain.max_steps = {cfg.max_steps} is below the step {step} of checkpoint {path}; raise "
                    "max_steps to continue it, or pass --force-new-run or set a new out_dir to train a shorter run"
                )
            elif recorded is not None:
                seen = [v for _, v in sorted((recorded.get("stores") or {}).items(), key=lambda kv: int(kv[0]))]
                current = {**current, "stores": stores_made_from(store_record(stores, seen))}
                keys = changed_keys(recorded, current)
                if keys:
                    error = mismatch_sentence(f"checkpoint {path}", recorded, current, keys)
            decision = (str(path), current, error)
    path_text, current, error = _broadcast(decision, env)
    if error:
        raise ResumeMismatch(error)
    return path_text, current


def force_new_run_outputs(out: Path, env: DistEnv) -> Path | None:
    """Move this stage's checkpoints, exports and marker into `superseded-<UTC time>/` (nothing is deleted)."""
    import time as _time

    target = None
    if env.is_main:
        movable = [out / n for n in ("checkpoints", "hf", DONE_FILE, "metrics.jsonl", "curves.png") if (out / n).exists()]
        movable += sorted(out.glob("hf-step_*"))
        if movable:
            target = out / f"superseded-{_time.strftime('%Y%m%dT%H%M%SZ', _time.gmtime())}"
            target.mkdir(parents=True, exist_ok=True)
            for item in movable:
                item.rename(target / item.name)
            console.print(f"--force-new-run: the previous run's outputs were moved to {target}")
    if env.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    return target


def continue_from(cfg: PretrainConfig, checkpointer: Any, model: nn.Module, optimizer: Any, loader: Any,
                  current: dict[str, Any]) -> None:
    """`pretrain.resume.from`: load another run's weights (and, unless reset, its optimizer/data state)."""
    from steelforge.stage import ResumeMismatch, changed_keys
    from steelforge.train.checkpoint import verify_checkpoint

    assert cfg.resume is not None
    path = Path(cfg.resume.from_)
    problem = verify_checkpoint(path) if path.is_dir() else "it does not exist"
    if problem is None:
        try:
            meta = checkpointer.read_meta(path)
        except SteelforgeError as exc:
            problem = str(exc)
    if problem:
        raise ResumeMismatch(f"pretrain.resume.from = {path} cannot be used: {problem}; point it at a step_* checkpoint")
    recorded = (meta.get("made_from") or {})
    keys = [k for k in changed_keys({k: recorded.get(k) for k in ("model", "tokenizer")},
                                    {k: current[k] for k in ("model", "tokenizer")}) if recorded]
    if keys:
        raise ResumeMismatch(
            f"pretrain.resume.from = {path} holds another model or tokenizer ({', '.join(keys[:6])} differ); "
            "continued training needs the same architecture and tokenizer"
        )
    state: dict[str, Any] = {"model": model}
    if not cfg.resume.reset_optimizer:
        state["optimizer"] = optimizer
    if not cfg.resume.reset_data:
        state["loader"] = loader
    checkpointer.load(path, state)
    console.print(
        f"continuing from {path} (step {meta.get('step')}): weights"
        + ("" if cfg.resume.reset_optimizer else ", optimizer")
        + ("" if cfg.resume.reset_data else ", data position")
        + " loaded; step counter and schedule start at 0"
    )


# ---- stage API -----------------------------------------------------------------------------------
def pretrain_complete(recipe: Any) -> bool:
    """True when this recipe's pretraining already ran to its end (marker written after the final export)."""
    from steelforge.stage import trained_stage_complete

    return trained_stage_complete(recipe, "pretrain", DONE_FILE)


def run_pretrain(recipe: Any, *, force_new_run: bool = False) -> StageReport:
    """Train the recipe's model on its token stores; resumes from the newest checkpoint automatically.

    A checkpoint made from another model, tokenizer, store or result-changing setting is refused (see
    `choose_resume`); `force_new_run` moves the previous run's outputs aside and starts at step 0.
    """
    from steelforge.models.flops import flops_per_token
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint
    from steelforge.train.checkpoint import Checkpointer
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
    check_stores(stores, cfg.verify_store, env)
    model = build_model(recipe, cfg, env)
    use_liger = cfg.speed.liger != "off"  # the fused loss falls back to PyTorch without CUDA/Liger

    from steelforge.train.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=cfg.max_steps, peak_lr=cfg.optim.lr)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    loader = build_loader(stores, cfg, env, recipe.seed, grad_accum, fingerprint, vocab)
    loss_fn = causal_lm_loss(
        ignore_index=cfg.ignore_index, mode=cfg.speed.loss, chunk_tokens=cfg.speed.loss_chunk_tokens, use_liger=use_liger
    )
    eval_fn = None
    if cfg.val_store is not None and cfg.val_every:
        val_cfg = cfg.model_copy(update={"mixture": None, "phases": None, "stores": [cfg.val_store]})
        val_loader = build_loader(store_dirs(recipe, val_cfg), val_cfg, env, recipe.seed + 1, 1, fingerprint, vocab)
        eval_fn = make_validation(loss_fn, DeviceBatches(val_loader, env.device), cfg.val_batches, cfg, env)

    if force_new_run:
        force_new_run_outputs(out, env)
    current = made_from(recipe, cfg, model, fingerprint, store_record(stores), global_batch)
    checkpointer = Checkpointer(
        out / "checkpoints",
        keep_last=cfg.checkpoint.keep_last,
        keep_every=cfg.checkpoint.keep_every,
        recipe_yaml=recipe.to_yaml(),
        recipe_hash=recipe.stage_fingerprint("pretrain"),
    )
    resume_path, current = choose_resume(checkpointer, recipe, cfg, current, stores, env)
    checkpointer.made_from = current
    if resume_path != "none":
        done_step = int(checkpointer.read_meta(Path(resume_path)).get("step", 0))
        if done_step >= cfg.max_steps and (out / "hf").is_dir():
            # A finished run: a resume that trains 0 steps must not rewrite its export.
            if env.is_main:
                console.print(f"pretraining already reached step {done_step:,} in {resume_path}; nothing to train")
                atomic_write_json(out / DONE_FILE, {"recipe_hash": recipe.stage_fingerprint("pretrain"), "steps": done_step})
            report = StageReport(stage="pretrain", skipped=True)
            report.add("already trained to step", done_step)
            report.outputs["hf"] = out / "hf"
            return report
    elif cfg.resume is not None:
        continue_from(cfg, checkpointer, model, optimizer, loader, current)
    compute_dtype = torch.bfloat16 if cfg.speed.precision == "bf16" else torch.float32
    peak, peak_source = resolve_peak_flops(env.device, compute_dtype, cfg.peak_tflops)
    model_config = getattr(model, "config", None)
    trainer_cfg = TrainerConfig(
        max_steps=cfg.max_steps,
        grad_accum=grad_accum,
        clip_grad_norm=cfg.clip_grad_norm,
        max_nonfinite_steps=cfg.max_nonfinite_steps,
        log_every=1,  # the metrics logger keeps every `cfg.log_every`-th step plus the first one
        checkpoint_every=cfg.checkpoint.every,
        export_steps=list(cfg.checkpoint.export_steps),
        export_final=cfg.checkpoint.export_final,
        val_every=cfg.val_every,
        precision=cfg.speed.precision,
        tokens_per_step=global_batch * cfg.seq_len,
        flops_per_token=flops_per_token(model_config, cfg.seq_len, training=True) if model_config is not None else 0.0,
        peak_flops=peak,
        resume=resume_path,
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
        log_every=cfg.log_every,
        wandb=cfg.wandb.model_dump() | {"config": {"recipe": recipe.name}} if cfg.wandb is not None else None,
    )
    if env.is_main:
        warmup = "torch.compile of every block, then " if cfg.speed.compile else ""
        console.print(f"training: the first step includes warm-up ({warmup}allocator and kernel set-up)")
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
        tokens_per_step=lambda: loader.tokens_per_step,
    )
    if summary["stopped_by"] == "max_steps" and env.is_main:
        atomic_write_json(out / DONE_FILE, {"recipe_hash": recipe.stage_fingerprint("pretrain"), "steps": summary["steps"]})
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
    if metrics.plot_path.is_file():
        report.outputs["curves"] = metrics.plot_path
    tensorboard_dir = out / "tensorboard"
    if tensorboard_dir.is_dir():
        report.outputs["tensorboard"] = tensorboard_dir
    return report
