"""Supervised fine-tuning: the masked cross-entropy objective and the `steelforge sft` stage.

Outputs under `recipe.stage_dir("sft")`: `data/` (tokenized conversations, `errors.jsonl`), `checkpoints/`,
`hf/` (export, LoRA merged), `metrics.jsonl`, `sft_done.json` (completion marker). Works alone and under
`torchrun` (every rank runs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from steelforge.posttrain.chat_data import IGNORE, SFTData, SFTLoader, prepare_sft, token_statistics
from steelforge.posttrain.config import SFTConfig
from steelforge.reporting import StageReport, console, print_table
from steelforge.train.engine import LossOutput
from steelforge.train.losses import linear_cross_entropy
from steelforge.train.pretrain import final_hidden

DONE_FILE = "sft_done.json"


def sft_loss(
    *, label_smoothing: float = 0.0, mode: str = "chunked", chunk_tokens: int = 4096, use_liger: bool = False
) -> Callable[[nn.Module, dict[str, torch.Tensor]], LossOutput]:
    """Summed next-token cross-entropy over trained (assistant) labels and their count.

    Packed rows are fed with their restarting `position_ids` and no attention mask, so attention stays inside
    each conversation. With label smoothing the trained positions' logits are built explicitly (they are a
    small share of the row in chat data).
    """

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        hidden = final_hidden(model, batch["input_ids"], batch.get("position_ids"))
        labels = batch["labels"]
        if label_smoothing == 0.0:
            loss_sum, count = linear_cross_entropy(hidden, model.lm_head.weight, labels, ignore_index=IGNORE,
                                                   mode=mode, chunk_tokens=chunk_tokens,  # type: ignore[arg-type]
                                                   use_liger=use_liger)  # fmt: skip
            return LossOutput(loss_sum, count)
        valid = labels != IGNORE
        logits = (hidden[valid] @ model.lm_head.weight.t()).float()
        loss_sum = F.cross_entropy(logits, labels[valid], label_smoothing=label_smoothing, reduction="sum")
        return LossOutput(loss_sum, valid.sum())

    return loss_fn


def sft_complete(recipe: Any) -> bool:
    from steelforge.posttrain.stage import stage_complete

    return stage_complete(recipe, "sft", DONE_FILE)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def prepare(recipe: Any, cfg: SFTConfig, tokenizer: Any, fingerprint: str, template: str, env: Any,
            val: bool = False) -> SFTData:  # fmt: skip
    """Tokenize on rank 0 (others wait, then read the same folder)."""
    datasets = cfg.val_datasets if val else cfg.datasets
    folder = recipe.stage_dir("sft") / ("data_val" if val else "data")
    kwargs = dict(cutoff_len=cfg.cutoff_len, overflow=cfg.overflow)
    if env is None or env.is_main:
        data = prepare_sft(datasets, tokenizer, fingerprint, template, folder, **kwargs)
    _barrier()
    if env is not None and not env.is_main:
        data = prepare_sft(datasets, tokenizer, fingerprint, template, folder, **kwargs)
    return data


def total_steps(cfg: SFTConfig, loader: SFTLoader, rows_per_step: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, loader.stream.total_rows() // rows_per_step)


def run_sft(recipe: Any) -> StageReport:
    """Fine-tune the starting model on the recipe's conversations; resumes from the newest checkpoint."""
    from steelforge.posttrain.stage import (
        check_source_exists,
        data_report_rows,
        load_policy,
        load_tokenizer_and_template,
        model_source,
        run_engine,
    )  # fmt: skip
    from steelforge.tokenizers.registry import check_vocab_compat
    from steelforge.train.distributed import init_distributed
    from steelforge.train.pretrain import DeviceBatches, make_validation

    cfg: SFTConfig = recipe.sft
    env = init_distributed(cfg.parallel)
    if not env.is_main:
        console.quiet = True
    grad_accum, rows_per_step = cfg.resolve_batch(env.world_size, "sft")
    tokenizer, fingerprint, template_label, template = load_tokenizer_and_template(recipe, cfg)
    data = prepare(recipe, cfg, tokenizer, fingerprint, template, env)
    spec = model_source(recipe, "sft")
    check_source_exists(spec, "sft")
    model, peft_model = load_policy(spec, cfg, env, recipe.seed)
    check_vocab_compat(tokenizer, model.config.vocab_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = SFTLoader(data, micro_batch_size=cfg.micro_batch_size, rank=env.rank, world_size=env.world_size,
                       seed=recipe.seed, epochs=cfg.epochs, cutoff_len=cfg.cutoff_len, packing=cfg.packing,
                       pad_id=pad_id)  # fmt: skip
    max_steps = total_steps(cfg, loader, rows_per_step)
    loss_fn = sft_loss(label_smoothing=cfg.label_smoothing, mode=cfg.speed.loss,
                       chunk_tokens=cfg.speed.loss_chunk_tokens, use_liger=cfg.speed.liger != "off")  # fmt: skip
    eval_fn = None
    if cfg.val_every:
        val_data = prepare(recipe, cfg, tokenizer, fingerprint, template, env, val=True)
        val_loader = SFTLoader(val_data, micro_batch_size=cfg.micro_batch_size, rank=env.rank,
                               world_size=env.world_size, seed=recipe.seed, epochs=1.0, cutoff_len=cfg.cutoff_len,
                               packing=cfg.packing, pad_id=pad_id)  # fmt: skip
        n_batches = max(1, math.ceil(val_loader.stream.total_rows() / val_loader.rows_per_micro_step()))
        eval_fn = make_validation(loss_fn, DeviceBatches(val_loader, env.device), n_batches, cfg, env)  # type: ignore[arg-type]
    report, _summary = run_engine(
        stage="sft", recipe=recipe, section=cfg, env=env, model=model, peft_model=peft_model, tokenizer=tokenizer,
        loss_fn=loss_fn, loader=loader, grad_accum=grad_accum, max_steps=max_steps,
        tokens_per_step=lambda: loader.tokens_ahead(grad_accum), done_file=DONE_FILE, eval_fn=eval_fn,
        val_every=cfg.val_every,
    )  # fmt: skip
    report.add("model source", spec.path or spec.preset)
    report.add("chat template", template_label)
    report.add("rows per step", rows_per_step)
    report.add("LoRA", f"r={cfg.lora.r}" if cfg.lora else "off")
    report.rows.extend(data_report_rows(data.stats))
    report.outputs["errors"] = recipe.stage_dir("sft") / "data" / "errors.jsonl"
    return report


# ---- dry run -----------------------------------------------------------------------------------------
def highlighted(tokenizer: Any, ids: np.ndarray, mask: np.ndarray) -> Any:
    """A rich Text of one conversation: trained tokens bold green on a dark background, the rest dim."""
    from rich.text import Text

    text = Text()
    ids_list, flags = ids.tolist(), mask.tolist()
    start = 0
    for end in range(1, len(ids_list) + 1):  # decode runs, so multi-byte characters split over tokens stay whole
        if end == len(ids_list) or flags[end] != flags[start]:
            piece = tokenizer.decode(ids_list[start:end])
            text.append(piece, style="bold green on grey15" if flags[start] else "dim")
            start = end
    return text


def dry_run_sft(recipe: Any) -> StageReport:
    """Tokenize (into the stage's data folder) and show statistics and three rendered examples; no training."""
    from steelforge.posttrain.stage import data_report_rows, load_tokenizer_and_template

    cfg: SFTConfig = recipe.sft
    tokenizer, fingerprint, label, template = load_tokenizer_and_template(recipe, cfg)
    data = prepare(recipe, cfg, tokenizer, fingerprint, template, None)
    lengths = data.ids.lengths()
    trained = np.asarray([int(data.mask[i].sum()) for i in range(len(data))])
    for d, name in enumerate(data.names):
        sel = data.dataset_of == d
        print_table(f"sft data: {name}", ["", ""], token_statistics(lengths[sel], trained[sel]))
    rng = np.random.default_rng(recipe.seed)
    for n, i in enumerate(rng.choice(len(data), size=min(3, len(data)), replace=False).tolist(), start=1):
        console.rule(f"example {n} ({data.names[int(data.dataset_of[i])]}, {lengths[i]} tokens; trained in green)")
        console.print(highlighted(tokenizer, data.ids[i], data.mask[i]))
    report = StageReport(stage="sft (dry run)")
    report.add("chat template", label)
    report.rows.extend(data_report_rows(data.stats))
    report.outputs["errors"] = recipe.stage_dir("sft") / "data" / "errors.jsonl"
    return report
