"""Direct preference optimisation: the objective over ptcore's `token_logps`/`dpo_loss` and the stage.

The reference is a frozen, eval-mode copy of the starting policy. Sequence log-prob = sum over completion
tokens, the first completion token scored from the last prompt token (TRL's convention). With
`precompute_ref_logps` the reference scores every pair once before training (stored as
`<stage>/ref_logps.pt`) and is freed. Outputs otherwise as `steelforge sft`; marker `dpo_done.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from steelforge.posttrain.chat_data import PairData, PairLoader, prepare_pairs
from steelforge.posttrain.config import DPOConfig
from steelforge.posttrain.logprobs import token_logps
from steelforge.posttrain.losses import dpo_loss, dpo_metrics, sequence_logps
from steelforge.reporting import StageReport, console, track
from steelforge.train.engine import LossOutput

DONE_FILE = "dpo_done.json"
REF_FILE = "ref_logps.pt"


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence log-probs [2B], completion lengths [2B]) of a batch of chosen rows then rejected rows.

    Rows are right-padded and attention is causal, so padding cannot reach the scored tokens: the decoder runs
    without a mask (positions 0..T-1, as TRL numbers them), which keeps FSDP's root hooks on the path.
    """
    logps = token_logps(model, batch["input_ids"], None, batch["completion_mask"])
    return sequence_logps(logps, batch["completion_mask"])


def dpo_objective(
    reference: nn.Module | None, *, loss_type: str, beta: float, label_smoothing: float = 0.0
) -> Callable[[nn.Module, dict[str, torch.Tensor]], LossOutput]:
    """Sum of per-pair DPO losses and the number of pairs (the engine divides by the global count), with
    TRL's metric names. Reference log-probs come from the batch (`ref_logps`, precomputed) or `reference`."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        seq, lengths = pair_logps(model, batch)
        b = seq.shape[0] // 2
        if "ref_logps" in batch:
            ref_c, ref_r = batch["ref_logps"][:, 0], batch["ref_logps"][:, 1]
        else:
            with torch.no_grad():
                ref_seq, _ = pair_logps(reference, batch)  # type: ignore[arg-type]
            ref_c, ref_r = ref_seq[:b], ref_seq[b:]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            seq[:b], seq[b:], ref_c, ref_r, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
            chosen_lengths=lengths[:b], rejected_lengths=lengths[b:],
        )  # fmt: skip
        metrics = dpo_metrics(losses, chosen_rewards, rejected_rewards, seq[:b], seq[b:])
        metrics.pop("loss")  # the engine reports the step's loss itself
        return LossOutput(losses.sum(), torch.tensor(float(b), device=seq.device), metrics)

    return loss_fn


@torch.no_grad()
def score_pairs(model: nn.Module, loader: PairLoader, indices: list[int], device: torch.device,
                batch_size: int) -> torch.Tensor:  # fmt: skip
    """[len(indices), 2] summed completion log-probs (chosen, rejected) of the given pairs under `model`."""
    out = torch.zeros(len(indices), 2, dtype=torch.float32)
    was_training = model.training
    model.eval()
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        batch = {k: v.to(device) for k, v in loader.collate(chunk).items() if k != "ref_logps"}
        seq, _ = pair_logps(model, batch)
        out[start : start + len(chunk), 0] = seq[: len(chunk)].float().cpu()
        out[start : start + len(chunk), 1] = seq[len(chunk) :].float().cpu()
    model.train(was_training)
    return out


def reward_accuracy(policy: nn.Module, reference: nn.Module, loader: PairLoader, device: torch.device,
                    batch_size: int = 8) -> float:  # fmt: skip
    """Share of pairs whose implicit reward (policy − reference log-prob) is higher for chosen than rejected."""
    indices = list(range(len(loader.data)))
    pol = score_pairs(policy, loader, indices, device, batch_size)
    ref = score_pairs(reference, loader, indices, device, batch_size)
    margin = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
    return float((margin > 0).float().mean())


def _ref_key(spec: Any, data: PairData, folder: Path) -> str:
    marker = (folder / "prepared.json").read_text(encoding="utf-8")
    blob = json.dumps({"model": spec.model_dump(mode="json"), "data": marker}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def precompute_reference(spec: Any, cfg: DPOConfig, data: PairData, loader: PairLoader, out: Path, env: Any,
                         seed: int) -> None:
    """Score every pair with the reference once (ranks split the pairs), store it, then free the reference."""
    from steelforge.posttrain.stage import load_frozen

    path = out / REF_FILE
    key = _ref_key(spec, data, out / "data")
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            loader.ref_logps = saved["logps"]
            return
    reference = load_frozen(spec, cfg, env, seed)
    mine = list(range(env.rank, len(data), env.world_size))
    logps = torch.zeros(len(data), 2, dtype=torch.float64)
    step = max(1, cfg.micro_batch_size)
    for start in track(range(0, len(mine), step), "reference log-probs", total=-(-len(mine) // step)):
        chunk = mine[start : start + step]
        logps[chunk] = score_pairs(reference, loader, chunk, env.device, step).double()
    if dist.is_available() and dist.is_initialized():
        logps = logps.to(env.device)
        dist.all_reduce(logps)
        logps = logps.cpu()
    logps = logps.float()
    if env.is_main:
        tmp = path.with_name(f".{REF_FILE}.tmp")
        torch.save({"key": key, "logps": logps}, tmp)
        os.replace(tmp, path)
    del reference
    loader.ref_logps = logps


def dpo_complete(recipe: Any) -> bool:
    from steelforge.posttrain.stage import stage_complete

    return stage_complete(recipe, "dpo", DONE_FILE)


def prepare(recipe: Any, cfg: DPOConfig, tokenizer: Any, fingerprint: str, template: str, env: Any) -> PairData:
    folder = recipe.stage_dir("dpo") / "data"
    kwargs = dict(cutoff_len=cfg.cutoff_len, overflow=cfg.overflow, max_prompt_len=cfg.max_prompt_len)
    if env.is_main:
        data = prepare_pairs(cfg.datasets, tokenizer, fingerprint, template, folder, **kwargs)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if not env.is_main:
        data = prepare_pairs(cfg.datasets, tokenizer, fingerprint, template, folder, **kwargs)
    return data


def run_dpo(recipe: Any) -> StageReport:
    """Optimise the policy on preference pairs against the frozen reference; resumes automatically."""
    from steelforge.posttrain.stage import (
        check_source_exists,
        data_report_rows,
        load_frozen,
        load_policy,
        load_tokenizer_and_template,
        model_source,
        run_engine,
    )  # fmt: skip
    from steelforge.tokenizers.registry import check_vocab_compat
    from steelforge.train.distributed import init_distributed

    cfg: DPOConfig = recipe.dpo
    out = recipe.stage_dir("dpo")
    env = init_distributed(cfg.parallel)
    if not env.is_main:
        console.quiet = True
    grad_accum, pairs_per_step = cfg.resolve_batch(env.world_size, "dpo")
    tokenizer, fingerprint, template_label, template = load_tokenizer_and_template(recipe, cfg)
    data = prepare(recipe, cfg, tokenizer, fingerprint, template, env)
    spec = model_source(recipe, "dpo")
    check_source_exists(spec, "dpo")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = PairLoader(data, micro_batch_size=cfg.micro_batch_size, rank=env.rank, world_size=env.world_size,
                        seed=recipe.seed, epochs=cfg.epochs, pad_id=pad_id)  # fmt: skip
    reference = None
    if cfg.precompute_ref_logps:
        precompute_reference(spec, cfg, data, loader, out, env, recipe.seed)
    else:
        reference = load_frozen(spec, cfg, env, recipe.seed)
    model, peft_model = load_policy(spec, cfg, env, recipe.seed)
    check_vocab_compat(tokenizer, model.config.vocab_size)
    max_steps = cfg.max_steps or max(1, loader.stream.total_rows() // pairs_per_step)
    loss_fn = dpo_objective(reference, loss_type=cfg.loss_type, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    report, _ = run_engine(
        stage="dpo", recipe=recipe, section=cfg, env=env, model=model, peft_model=peft_model, tokenizer=tokenizer,
        loss_fn=loss_fn, loader=loader, grad_accum=grad_accum, max_steps=max_steps,
        tokens_per_step=lambda: loader.tokens_ahead(grad_accum), done_file=DONE_FILE,
    )  # fmt: skip
    report.add("model source", spec.path or spec.preset)
    report.add("chat template", template_label)
    report.add("loss", f"{cfg.loss_type} (beta {cfg.beta})")
    report.add("pairs per step", pairs_per_step)
    report.add("reference", "precomputed" if cfg.precompute_ref_logps else "frozen copy")
    report.rows.extend(data_report_rows(data.stats))
    report.outputs["errors"] = out / "data" / "errors.jsonl"
    return report
