"""GRPO on the shared `Trainer`: rollouts between optimizer steps, verifiable rewards, TRL-equal losses.

The batch iterator (`RolloutBatches`) is where reinforcement learning happens: when the trainer asks for a
micro-batch and the current rollout batch is used up, it samples the next prompts, generates G completions
each with the CURRENT weights, scores them, computes group advantages (and old-policy / reference log-probs
when needed) once, shuffles the rows and serves them as `steps_per_generation` micro-batches, `num_iterations`
times over. This is TRL 1.16's buffering: a rollout batch covers `steps_per_generation` micro-batches
(default: `grad_accum`, i.e. one optimizer step), and is reused for μ = `num_iterations` passes. The iterator
is checkpointed (prompt cursor, RNG stream and the buffered rollouts), so a resumed run continues with the
same prompts and the same losses.

`grpo_objective` turns a micro-batch into the engine's `LossOutput` such that the step's gradient equals TRL's:
the loss formulas are `steelforge.posttrain.losses.grpo_loss` (shared with the TRL parity tests).
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from steelforge.errors import RecipeError
from steelforge.posttrain.grpo_config import GRPOConfig, RewardSpec
from steelforge.posttrain.losses import group_advantages, grpo_loss
from steelforge.posttrain.prompts import PromptExample, PromptSet
from steelforge.posttrain.rewards import resolve_reward
from steelforge.posttrain.rollout import RolloutBackend, SamplingSettings
from steelforge.reporting import StageReport, console
from steelforge.stage import atomic_write_json
from steelforge.train.engine import LossOutput

logger = logging.getLogger("steelforge.grpo")
DONE_FILE = "grpo_done.json"
PREVIOUS_STAGES = ("pretrain", "sft", "dpo")


# ---- rewards -------------------------------------------------------------------------------------
class RewardScorer:
    """Weighted sum of reward functions; failures (raise / NaN / non-number) are logged, counted and
    either scored 0 or mark the prompt to be skipped (`on_error`)."""

    def __init__(self, specs: list[RewardSpec], on_error: str = "zero", max_logged: int = 5) -> None:
        self.names = [s.name.split(":")[-1] for s in specs]
        self.weights = [s.weight for s in specs]
        self.fns = []
        for spec in specs:
            fn = resolve_reward(spec.name)
            self.fns.append(functools.partial(fn, **spec.kwargs) if spec.kwargs else fn)
        self.on_error = on_error
        self.errors: Counter = Counter()
        self.max_logged = max_logged

    def score(self, prompt: str, completion: str, row: dict[str, Any]) -> tuple[list[float], bool]:
        """Per-function values and whether they are all usable (False: skip this prompt's group)."""
        values, ok = [], True
        for name, fn in zip(self.names, self.fns, strict=True):
            try:
                value = float(fn(prompt, completion, row))
                if math.isnan(value):
                    raise ValueError("returned NaN")
            except Exception as exc:
                self.errors[name] += 1
                if self.errors[name] <= self.max_logged:
                    logger.warning(
                        "reward %s failed (%s: %s) on prompt line %s; completion %r",
                        name, type(exc).__name__, exc, row.get("_line"), completion[:200],
                    )  # fmt: skip
                value = 0.0
                ok = ok and self.on_error != "skip"
            values.append(value)
        return values, ok

    def total(self, values: list[float]) -> float:
        return sum(w * v for w, v in zip(self.weights, values, strict=True))


# ---- rollouts as a checkpointable batch iterator -------------------------------------------------
def _pad_rows(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, out.shape[1] - len(r) :] = torch.tensor(r)
            else:
                out[i, : len(r)] = torch.tensor(r)
    return out


def build_micro_batch(
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_token_id: int,
    truncated: list[bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded prompt + right-padded completion per row, with attention/completion masks and positions."""
    p = _pad_rows(prompts, pad_token_id, left=True)
    c = _pad_rows(completions, pad_token_id, left=False)
    pm = _pad_rows([[1] * len(x) for x in prompts], 0, left=True)
    cm = _pad_rows([[1] * len(x) for x in completions], 0, left=False)
    input_ids = torch.cat([p, c], dim=1)
    attention_mask = torch.cat([pm, cm], dim=1)
    completion_mask = torch.cat([torch.zeros_like(pm), cm], dim=1)
    if truncated is not None:  # mask_truncated_completions: the loss ignores cut-off completions
        keep = torch.tensor([not t for t in truncated], dtype=torch.long).unsqueeze(1)
        completion_mask = completion_mask * keep
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "position_ids": position_ids,
    }


class RolloutBatches:
    """Checkpointable iterator of GRPO micro-batches; generates a new rollout batch whenever the last one
    has been served `num_iterations` times (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        backend: RolloutBackend,
        prompts: PromptSet,
        tokenizer: Any,
        scorer: RewardScorer,
        cfg: GRPOConfig,
        *,
        seed: int,
        device: torch.device,
        stop_token_ids: list[int],
        pad_token_id: int,
        ref_model: nn.Module | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.model, self.backend, self.prompts, self.tokenizer = model, backend, prompts, tokenizer
        self.scorer, self.cfg, self.seed, self.device = scorer, cfg, seed, device
        self.ref_model, self.rank, self.world_size = ref_model, rank, world_size
        self.pad_token_id = pad_token_id
        self.settings = SamplingSettings(
            max_new_tokens=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            stop_token_ids=stop_token_ids,
            pad_token_id=pad_token_id,
        )
        rows = cfg.per_device_batch_size * cfg.generation_steps
        self.prompts_per_rank = rows // cfg.num_generations
        if self.prompts_per_rank * world_size > len(prompts):
            raise RecipeError(
                f"a rollout batch needs {self.prompts_per_rank * world_size} distinct prompts but grpo.prompts has "
                f"only {len(prompts)} usable; lower grpo.per_device_batch_size or add prompts"
            )
        self.generator = torch.Generator().manual_seed(seed + 7919 * rank)
        self.epoch, self.cursor = 0, 0
        self.buffer: list[dict[str, Any]] | None = None
        self.served = 0
        self.rollouts = 0
        self.last_rollout: dict[str, Any] = {}
        self.tokens_per_micro_batch = 0.0

    def tokens_per_step(self) -> int:
        """Prompt + completion tokens one optimizer step trains on, over all ranks (from the latest rollout)."""
        return round(self.tokens_per_micro_batch * self.cfg.grad_accum * self.world_size)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "generator": self.generator.get_state(),
            "buffer": self.buffer,
            "served": self.served,
            "rollouts": self.rollouts,
            "reward_errors": dict(self.scorer.errors),
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.generator.set_state(state["generator"])
        self.buffer, self.served = state["buffer"], int(state["served"])
        self.rollouts = int(state["rollouts"])
        self.scorer.errors = Counter(state.get("reward_errors", {}))
        self.tokens_per_micro_batch = float(state.get("tokens_per_micro_batch", 0.0))

    # -- prompt order
    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next_prompts(self) -> list[PromptExample]:
        """This rank's next prompts: a fresh seeded permutation per epoch, ranks take disjoint slices."""
        need = self.prompts_per_rank * self.world_size
        if self.cursor + need > len(self.prompts):
            self.epoch, self.cursor = self.epoch + 1, 0
        order = self._order(self.epoch)
        start = self.cursor + self.rank * self.prompts_per_rank
        picked = [self.prompts.examples[i] for i in order[start : start + self.prompts_per_rank]]
        self.cursor += need
        return picked

    # -- one rollout batch
    @torch.no_grad()
    def make_rollout(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        G = cfg.num_generations
        examples = self.next_prompts()
        prompt_ids = [ex.prompt_ids for ex in examples for _ in range(G)]
        self.backend.sync_weights(self.model)
        result = self.backend.generate(prompt_ids, self.settings, self.generator)
        completions = result.sequences
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        per_fn, totals, usable = [], [], []
        for i, text in enumerate(texts):
            ex = examples[i // G]
            values, ok = self.scorer.score(ex.prompt_text, text, ex.row)
            per_fn.append(values)
            totals.append(self.scorer.total(values))
            usable.append(ok)
        rewards = torch.tensor(totals, dtype=torch.float32)
        group_ok = torch.tensor(usable).view(-1, G).all(dim=1)
        rewards_for_adv = torch.where(group_ok.repeat_interleave(G), rewards, torch.nan)
        advantages = group_advantages(rewards_for_adv, G, cfg.scale_rewards)
        truncated = [r == "length" for r in result.finish_reasons]
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
        groups = rewards.view(-1, G)
        stats = {
            "reward": float(rewards.mean()),
            "reward_std": float(groups.std(dim=1).mean()) if G > 1 else 0.0,
            "frac_reward_zero_std": float((groups.std(dim=1) < 1e-8).float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(sum(truncated) / len(truncated)),
            "rollout_tokens_per_s": result.tokens_per_second,
            "skipped_groups": float((~group_ok).sum()),
        }
        values = torch.tensor(per_fn, dtype=torch.float32)
        for j, name in enumerate(self.scorer.names):
            stats[f"rewards/{name}/mean"] = float(values[:, j].mean())
            stats[f"rewards/{name}/std"] = float(values[:, j].std()) if len(values) > 1 else 0.0
        self.last_rollout = {
            "prompts": [ex.prompt_text for ex in examples],
            "prompt_ids": prompt_ids,
            "completions": texts,
            "completion_ids": completions,
            "rewards": rewards,
            "advantages": advantages,
            "stats": stats,
        }

        # TRL shuffles the rollout batch before splitting it into micro-batches
        perm = torch.randperm(len(completions), generator=self.generator).tolist()
        mask_trunc = truncated if cfg.mask_truncated_completions else None
        num_items = torch.tensor(
            float(sum(len(c) for c, t in zip(completions, truncated, strict=True) if not (mask_trunc and t))),
            dtype=torch.float64,
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_items)
        size = cfg.per_device_batch_size
        chunks = [perm[k * size : (k + 1) * size] for k in range(cfg.generation_steps)]
        batches = []
        for rows in chunks:
            mb = build_micro_batch(
                [prompt_ids[i] for i in rows],
                [completions[i] for i in rows],
                self.pad_token_id,
                [mask_trunc[i] for i in rows] if mask_trunc else None,
            )
            mb["advantages"] = advantages[rows]
            mb["num_items"] = num_items / self.world_size
            batches.append(mb)
        self._extra_logps(batches)
        self.tokens_per_micro_batch = sum(int(mb["attention_mask"].sum()) for mb in batches) / len(batches)
        for mb in batches:
            mb["stats"] = stats
        self.rollouts += 1
        return batches

    def _extra_logps(self, batches: list[dict[str, Any]]) -> None:
        """Old-policy (when a rollout outlives one optimizer step) and reference log-probs, once per rollout."""
        from steelforge.posttrain.logprobs import token_logps

        temp = self.cfg.temperature if self.cfg.temperature > 0 else 1.0
        for mb in batches:
            args = (mb["input_ids"].to(self.device), mb["attention_mask"].to(self.device))
            cm, pos = mb["completion_mask"].to(self.device), mb["position_ids"].to(self.device)
            if self.cfg.needs_old_logps:
                mb["old_logps"] = token_logps(self.model, *args, cm, pos, temperature=temp).detach().cpu()
            if self.cfg.beta != 0.0 and self.ref_model is not None:
                mb["ref_logps"] = token_logps(self.ref_model, *args, cm, pos, temperature=temp).detach().cpu()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        per_rollout = self.cfg.generation_steps * self.cfg.num_iterations
        while True:
            if self.buffer is None or self.served >= per_rollout:
                self.buffer = self.make_rollout()
                self.served = 0
            mb = self.buffer[self.served % self.cfg.generation_steps]
            self.served += 1
            yield {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in mb.items()}


# ---- objective -----------------------------------------------------------------------------------
def grpo_objective(cfg: GRPOConfig) -> Callable[[nn.Module, dict[str, Any]], LossOutput]:
    """One micro-batch's GRPO loss as a `LossOutput` whose engine normalisation reproduces TRL's step.

    TRL divides `grpo`/`bnpo`/`dr_grpo` micro-batch losses by grad_accum (here: each counts as 1 of the step's
    grad_accum "tokens"); `dapo` divides the summed token losses by the rollout batch's completion-token count
    and is not divided by grad_accum (here: each micro-batch counts 1/grad_accum).
    """
    from steelforge.posttrain.logprobs import token_logps

    temperature = cfg.temperature if cfg.temperature > 0 else 1.0

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        cm = batch["completion_mask"]
        logps, entropy = token_logps(
            model, batch["input_ids"], batch["attention_mask"], cm, batch["position_ids"],
            return_entropy=True, temperature=temperature,
        )  # fmt: skip
        loss, metrics = grpo_loss(
            logps,
            batch.get("old_logps"),
            batch.get("ref_logps"),
            batch["advantages"],
            cm,
            loss_type=cfg.loss_type,
            epsilon_low=cfg.epsilon,
            epsilon_high=cfg.epsilon_upper,
            beta=cfg.beta,
            bias_corrected_kl=cfg.use_bias_correction_kl,
            max_completion_length=cfg.max_completion_length,
            num_items_in_batch=batch["num_items"] if cfg.loss_type == "dapo" else None,
        )
        weight = 1.0 / cfg.grad_accum if cfg.loss_type == "dapo" else 1.0
        mask = cm.float()
        with torch.no_grad():
            metrics["entropy"] = float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1.0))
        # every micro-batch (and rank) reports the same keys; an undefined value (no tokens) counts as 0
        metrics = {k: (v if math.isfinite(v) else 0.0) for k, v in metrics.items()}
        metrics.update(batch.get("stats", {}))
        return LossOutput(loss, torch.tensor(weight, dtype=torch.float64, device=loss.device), metrics)

    return loss_fn


# ---- held-out reward -----------------------------------------------------------------------------
def make_reward_eval(
    prompts: PromptSet, tokenizer: Any, scorer: RewardScorer, cfg: GRPOConfig, stop_token_ids: list[int],
    pad_token_id: int, limit: int,
) -> Callable[[nn.Module], dict[str, float]]:  # fmt: skip
    """Mean reward of greedy completions on the first `limit` held-out prompts."""
    from steelforge.models.generate import generate

    examples = prompts.examples[:limit]

    def evaluate(model: nn.Module) -> dict[str, float]:
        was = model.training
        model.eval()
        try:
            res = generate(
                model, [e.prompt_ids for e in examples], max_new_tokens=cfg.max_completion_length,
                stop_token_ids=stop_token_ids, pad_token_id=pad_token_id,
            )  # fmt: skip
        finally:
            model.train(was)
        total = 0.0
        for ex, seq in zip(examples, res.sequences, strict=True):
            values, _ = scorer.score(ex.prompt_text, tokenizer.decode(seq, skip_special_tokens=True), ex.row)
            total += scorer.total(values)
        return {"eval_reward": total / max(len(examples), 1)}

    return evaluate


def plot_rewards(records: list[dict[str, float]], path: Path) -> Path | None:
    """reward.png: training reward (mean over rollouts) and held-out reward over optimizer steps."""
    pts = [(r["step"], r["reward"]) for r in records if "reward" in r]
    evals = [(r["step"], r["eval_reward"]) for r in records if "eval_reward" in r]
    if not pts and not evals:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if pts:
        ax.plot(*zip(*pts, strict=True), label="train reward", marker="." if len(pts) < 50 else None)
    if evals:
        ax.plot(*zip(*evals, strict=True), label="held-out reward", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


# ---- stage API -----------------------------------------------------------------------------------
def grpo_complete(recipe: Any) -> bool:
    """True when this recipe's GRPO already ran to its end (marker written after the final export)."""
    from steelforge.stage import trained_stage_complete

    return trained_stage_complete(recipe, "grpo", DONE_FILE)


def model_source(recipe: Any, cfg: GRPOConfig) -> tuple[Any, str | None]:
    """(what load_model takes, the HF folder when there is one) for grpo.model (see GRPOConfig.model)."""
    if cfg.model is None:
        if recipe.model is None:
            raise RecipeError(
                "the grpo stage needs grpo.model (a preset, an HF folder or a stage name) or a 'model:' section"
            )
        path = getattr(recipe.model, "path", None)
        return recipe.model, str(path) if path else None
    if cfg.model in PREVIOUS_STAGES:
        folder = recipe.stage_dir(cfg.model) / "hf"
        if not (folder / "config.json").is_file():
            raise RecipeError(
                f"grpo.model = '{cfg.model}' but {folder} has no exported model; run `steelforge {cfg.model}` first"
            )
        return str(folder), str(folder)
    return cfg.model, cfg.model if Path(cfg.model).is_dir() else None


def stop_ids(tokenizer: Any, extra: list[int]) -> list[int]:
    """EOS, the chat template's end-of-turn (`<|im_end|>`, `</s>`) when the vocabulary has it, and `extra`."""
    ids = set(extra)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"):
        if token in vocab:
            ids.add(int(vocab[token]))
    return sorted(ids)


def run_grpo(recipe: Any) -> StageReport:
    """GRPO from the recipe's `grpo:` section; resumes from the newest checkpoint automatically."""
    from steelforge.models.loading import load_model
    from steelforge.posttrain.prompts import load_prompts
    from steelforge.posttrain.rollout import choose_backend
    from steelforge.tokenizers import load_tokenizer
    from steelforge.train.checkpoint import Checkpointer
    from steelforge.train.distributed import init_distributed, parallelize
    from steelforge.train.engine import TrainerConfig
    from steelforge.train.metrics import MetricsLogger
    from steelforge.train.optim import build_optimizer, build_scheduler
    from steelforge.train.trainer import fit_until_stopped

    cfg: GRPOConfig = recipe.grpo
    out = recipe.stage_dir("grpo")
    env = init_distributed(cfg.parallel)
    if not env.is_main:
        console.quiet = True
    source, model_dir = model_source(recipe, cfg)
    tok_source = cfg.tokenizer or (
        model_dir if model_dir and any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        else recipe.tokenizer
    )  # fmt: skip
    tokenizer = load_tokenizer(str(tok_source))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(tokenizer, cfg.stop_token_ids)
    reward_names = [r.name for r in cfg.rewards]
    load_kw = {
        "reward_names": reward_names,
        "chat_template": cfg.chat_template,
        "system_prompt": cfg.system_prompt,
    }
    prompts = load_prompts(cfg.prompts, tokenizer, max_prompt_length=cfg.max_prompt_length, **load_kw)
    scorer = RewardScorer(cfg.rewards, cfg.reward_errors)

    torch.manual_seed(recipe.seed)
    model = load_model(source, dtype=torch.float32, device=env.device)
    ref_model = None
    if cfg.beta != 0.0:  # frozen reference: an eval-mode copy without gradients
        ref_model = load_model(source, dtype=torch.float32, device=env.device).eval().requires_grad_(False)
    model = parallelize(model, env.mesh, cfg.speed, cfg.parallel)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=cfg.max_steps, peak_lr=cfg.optim.lr)
    backend = choose_backend(
        cfg.backend, model, model_dir=model_dir, batch_rows=cfg.rollout_batch_size,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=recipe.seed,
    )  # fmt: skip
    batches = RolloutBatches(
        model, backend, prompts, tokenizer, scorer, cfg, seed=recipe.seed, device=env.device,
        stop_token_ids=stops, pad_token_id=pad_id, ref_model=ref_model, rank=env.rank, world_size=env.world_size,
    )  # fmt: skip
    eval_fn = None
    if cfg.eval_prompts is not None and cfg.val_every:
        held_out = load_prompts(
            cfg.eval_prompts, tokenizer, max_prompt_length=cfg.max_prompt_length, **load_kw
        )
        eval_fn = make_reward_eval(held_out, tokenizer, scorer, cfg, stops, pad_id, cfg.val_prompts)

    checkpointer = Checkpointer(
        out / "checkpoints",
        keep_last=cfg.checkpoint.keep_last,
        keep_every=cfg.checkpoint.keep_every,
        recipe_yaml=recipe.to_yaml(),
        recipe_hash=recipe.stage_fingerprint("grpo"),
    )
    rows_per_step = cfg.per_device_batch_size * cfg.grad_accum * env.world_size
    trainer_cfg = TrainerConfig(
        max_steps=cfg.max_steps,
        grad_accum=cfg.grad_accum,
        clip_grad_norm=cfg.clip_grad_norm,
        max_nonfinite_steps=cfg.max_nonfinite_steps,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint.every,
        export_steps=list(cfg.checkpoint.export_steps),
        export_final=cfg.checkpoint.export_final,
        val_every=cfg.val_every,
        precision=cfg.speed.precision,
        tokens_per_step=rows_per_step * cfg.max_completion_length,  # upper bound; the real count comes below
        resume=cfg.checkpoint.resume,
        device=env.device,
    )

    def export(step: int, final: bool) -> None:
        target = out / "hf" if final else out / f"hf-step_{step:09d}"
        checkpointer.export_hf(model, tokenizer, target)

    metrics = MetricsLogger(out, total_steps=cfg.max_steps, is_main=env.is_main, tensorboard=cfg.tensorboard)
    console.print(
        f"grpo: {len(prompts):,} prompts ({sum(prompts.dropped.values()):,} dropped: "
        f"{dict(prompts.dropped) or 'none'}), G={cfg.num_generations}, backend {backend.name}"
    )
    summary = fit_until_stopped(
        model,
        grpo_objective(cfg),
        batches,
        trainer_cfg,
        metrics=metrics,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpointer=checkpointer,
        state_objects={"rollouts": batches},
        eval_fn=eval_fn,
        export_fn=export,
        tokens_per_step=batches.tokens_per_step,
    )
    if env.is_main:
        plot_rewards(metrics.history(), out / "reward.png")
    if summary["stopped_by"] == "max_steps" and env.is_main:
        atomic_write_json(out / DONE_FILE, {"recipe_hash": recipe.stage_fingerprint("grpo"), "steps": summary["steps"]})
    elif env.is_main:
        console.print(
            f"stopped by a signal at step {summary['steps']:,}; the checkpoint is saved, rerun to resume"
        )

    report = StageReport(stage="grpo")
    report.rows.extend(metrics.summary_rows())
    recs = metrics.history()
    rewards = [r["reward"] for r in recs if "reward" in r]
    if rewards:
        report.add("first / last train reward", f"{rewards[0]:.3f} / {rewards[-1]:.3f}")
    evals = [r["eval_reward"] for r in recs if "eval_reward" in r]
    if evals:
        report.add("last held-out reward", round(evals[-1], 4))
    report.add("prompts used / dropped", f"{len(prompts):,} / {sum(prompts.dropped.values()):,}")
    for reason, n in sorted(prompts.dropped.items()):
        report.add(f"  dropped: {reason}", n)
    if scorer.errors:
        report.add("reward failures", dict(scorer.errors))
    report.add("rollout backend", backend.name)
    report.add("stopped by", summary["stopped_by"])
    if summary["resumed_from"]:
        report.add("resumed from", summary["resumed_from"])
    report.outputs["checkpoints"] = out / "checkpoints"
    if (out / "hf").is_dir():
        report.outputs["hf"] = out / "hf"
    report.outputs["metrics"] = out / "metrics.jsonl"
    if (out / "reward.png").is_file():
        report.outputs["reward plot"] = out / "reward.png"
    return report
