"""Helpers for the training tests: tiny models, deterministic batches, and a torchrun launcher (gloo)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_qwen2(vocab: int = 96, hidden: int = 32, layers: int = 2, seed: int = 0, **overrides):
    """A 2-block Qwen2 causal LM (the HF layout the engine trains), fp32, deterministic."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**fields)).float()


def patterned_batches(
    *, vocab: int = 96, seq: int = 16, micro: int = 4, seed: int = 0, rank: int = 0, world: int = 1,
    ignore_frac: float = 0.0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite learnable micro-batches (arithmetic token sequences, labels shifted by one).

    Each global micro-step draws `micro * world` rows from one generator; rank r takes its slice, so a
    run on `world` ranks with micro `m` sees exactly the rows of a single process with micro `m * world`.
    `ignore_frac` sets that share of labels to -100 at random (uneven valid-token counts per row/rank).
    """
    gen = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, vocab, (micro * world, 1), generator=gen)
        stride = torch.randint(1, 4, (micro * world, 1), generator=gen)
        rows = (start + stride * torch.arange(seq + 1)) % vocab
        labels = rows[:, 1:].clone()
        if ignore_frac > 0:
            drop = torch.rand(labels.shape, generator=gen) < ignore_frac * torch.rand((micro * world, 1), generator=gen) * 2
            labels[drop] = -100
        sl = slice(rank * micro, (rank + 1) * micro)
        yield {"input_ids": rows[sl, :-1].contiguous(), "labels": labels[sl].contiguous()}


def run_distributed(script_or_fn: str | Path | Callable[[], None], nproc: int = 2, timeout: float = 90.0,
                    args: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a script (path) or a module-level function under `python -m torch.distributed.run` with gloo.

    A function is written out as a small script that imports its module and calls it; it must be
    importable (defined at module level of a test file). Raises with both outputs when a rank fails.
    """
    if callable(script_or_fn):
        module = inspect.getmodule(script_or_fn)
        assert module is not None and module.__file__ is not None
        path = Path(module.__file__).resolve()
        code = textwrap.dedent(
            f"""
            import importlib.util, sys
            sys.path.insert(0, {str(path.parent)!r})
            spec = importlib.util.spec_from_file_location({path.stem!r}, {str(path)!r})
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mod.{script_or_fn.__name__}()
            """
        )
        script_dir = Path(os.environ.get("TMPDIR", "/tmp"))
        script = script_dir / f"_steelforge_dist_{os.getpid()}_{script_or_fn.__name__}.py"
        script.write_text(code, encoding="utf-8")
    else:
        script = Path(script_or_fn)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        str(script), *(args or []),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "STEELFORGE_QUIET": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def train_tiny(
    *,
    steps: int = 4,
    world: int = 1,
    rank: int = 0,
    mesh=None,
    grad_accum: int = 2,
    global_micro: int = 4,
    precision: str = "fp32",
    data_parallel: str = "auto",
    ignore_frac: float = 0.3,
    **speed: object,
):
    """Train `tiny_qwen2` for `steps` with the engine (same global batch for any world size)."""
    from steelforge.train.config import OptimConfig, ParallelConfig, ScheduleConfig, SpeedConfig
    from steelforge.train.distributed import parallelize
    from steelforge.train.engine import Trainer, TrainerConfig
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.pretrain import causal_lm_loss

    model = tiny_qwen2()
    speed_cfg = SpeedConfig(precision=precision, **speed)  # type: ignore[arg-type]
    parallelize(model, mesh, speed_cfg, ParallelConfig(data_parallel=data_parallel))  # type: ignore[arg-type]
    optim_cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(model, optim_cfg)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=1), total_steps=steps, peak_lr=optim_cfg.lr)
    batches = patterned_batches(micro=global_micro // world, rank=rank, world=world, ignore_frac=ignore_frac)
    cfg = TrainerConfig(max_steps=steps, grad_accum=grad_accum, clip_grad_norm=0.5, precision=precision)
    summary = Trainer(model, causal_lm_loss(), batches, cfg, optimizer=opt, scheduler=sched).fit()
    return model, summary


def full_state(model) -> dict[str, torch.Tensor]:
    """Consolidated fp32 parameters (FSDP2 shards gathered) on CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().float().clone() for k, v in sd.items()}
