"""GRPO stage: REINFORCE equivalence through the whole train step, learning on CPU, prompt data, resume."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from steelforge.posttrain.grpo import RewardScorer, RolloutBatches, build_micro_batch, grpo_objective
from steelforge.posttrain.grpo_config import GRPOConfig, RewardSpec
from steelforge.posttrain.prompts import load_prompts
from steelforge.posttrain.rollout import HFRollout
from steelforge.train.engine import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[2]
CHARS = list("0123456789+=! ")
PAD, EOS = 0, 1
VOCAB = 16


def char_tokenizer():
    """A character-level fast tokenizer (pad 0, EOS 1, digits, + = ! and space)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "</s>": EOS, **{c: i + 2 for i, c in enumerate(CHARS)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>")


def tiny_model(seed: int = 0, **overrides):
    from steelforge.models.loading import load_model

    torch.manual_seed(seed)
    fields = {
        "vocab_size": VOCAB, "hidden_size": 64, "head_dim": 16, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 64, "bos_token_id": EOS,
        "eos_token_id": EOS, "pad_token_id": PAD, **overrides,
    }  # fmt: skip
    return load_model({"preset": "tiny-moxin", "overrides": fields})


def write_prompts(path: Path, pairs: list[tuple[int, int]], extra: list[dict] | None = None) -> Path:
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs] + (extra or [])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


ALL_PAIRS = [(a, b) for a in range(10) for b in range(10)]


def make_cfg(tmp_path: Path, **kw) -> GRPOConfig:
    base = {
        "prompts": tmp_path / "p.jsonl",
        "chat_template": False,
        "max_completion_length": 4,
        "clip_grad_norm": None,
    }
    return GRPOConfig(**{**base, **kw})


def make_batches(model, tok, cfg: GRPOConfig, prompt_path: Path, seed: int = 0) -> RolloutBatches:
    names = [r.name for r in cfg.rewards]
    prompts = load_prompts(prompt_path, tok, reward_names=names, chat_template=False)
    return RolloutBatches(
        model, HFRollout(model), prompts, tok, RewardScorer(cfg.rewards, cfg.reward_errors), cfg, seed=seed,
        device=torch.device("cpu"), stop_token_ids=[EOS], pad_token_id=PAD,
    )  # fmt: skip


def constant_scheduler(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


# ---- REINFORCE with a group-mean baseline, through the whole train step -------------------------------
@pytest.mark.parametrize(("loss_type", "grad_accum"), [("dapo", 1), ("dapo", 2), ("grpo", 2), ("dr_grpo", 2)])
def test_mu1_unclipped_beta0_update_is_reinforce_with_group_mean_baseline(tmp_path, loss_type, grad_accum):
    tok = char_tokenizer()
    path = write_prompts(tmp_path / "p.jsonl", ALL_PAIRS[:12])
    cfg = make_cfg(
        tmp_path, num_generations=4, per_device_batch_size=4, grad_accum=grad_accum, loss_type=loss_type,
        scale_rewards="none", epsilon=1e6, beta=0.0, num_iterations=1, temperature=1.0,
        rewards=[RewardSpec(name="format", kwargs={"pattern": r"[0-6+=].*"})],
    )  # fmt: skip
    model = tiny_model(seed=3)
    start = copy.deepcopy(model)
    batches = make_batches(model, tok, cfg, path, seed=5)
    lr = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    trainer = Trainer(
        model, grpo_objective(cfg), batches, TrainerConfig(max_steps=1, grad_accum=grad_accum, clip_grad_norm=None),
        optimizer=opt, scheduler=constant_scheduler(opt),
    )  # fmt: skip
    trainer.train_step()
    roll = batches.last_rollout
    rewards = roll["rewards"]
    assert 0 < float(rewards.mean()) < 1, "rewards must vary for the baseline to matter"

    # hand computation: every row alone (no padding), plain log-softmax, A_i = r_i - mean of its group
    G = cfg.num_generations
    adv = (rewards.view(-1, G) - rewards.view(-1, G).mean(1, keepdim=True)).view(-1)
    prompts = roll["prompt_ids"]
    start.train()
    objective = torch.zeros(())
    n_tokens = sum(len(c) for c in roll["completion_ids"])
    for i, (prompt, comp) in enumerate(zip(prompts, roll["completion_ids"], strict=True)):
        ids = torch.tensor([prompt + comp])
        logp = (
            start(ids)
            .logits[0, :-1]
            .log_softmax(-1)
            .gather(1, ids[0, 1:, None])
            .squeeze(1)[len(prompt) - 1 :]
        )
        if loss_type == "dapo":
            objective = objective + adv[i] * logp.sum() / n_tokens
        elif loss_type == "grpo":
            objective = objective + adv[i] * logp.sum() / len(comp) / len(prompts)
        else:  # dr_grpo: Σ / (B * max_completion_length) per micro-batch, averaged over grad_accum
            objective = (
                objective
                + adv[i] * logp.sum() / (cfg.per_device_batch_size * cfg.max_completion_length) / grad_accum
            )
    (-objective).backward()
    for (name, p_new), p_old in zip(model.named_parameters(), start.parameters(), strict=True):
        expected = p_old.detach() - lr * p_old.grad
        torch.testing.assert_close(p_new.detach(), expected, atol=2e-6, rtol=1e-4, msg=name)
    moved = sum(
        float((p_new - p_old).detach().abs().sum())
        for p_new, p_old in zip(model.parameters(), start.parameters(), strict=True)
    )
    assert moved > 1e-3


def test_micro_batch_layout_and_masks():
    mb = build_micro_batch([[5, 6, 7], [8]], [[3, 1], [4, 4, 4]], PAD, truncated=[False, True])
    assert mb["input_ids"].tolist() == [[5, 6, 7, 3, 1, 0], [0, 0, 8, 4, 4, 4]]
    assert mb["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert mb["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]]
    assert mb["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]


def test_buffering_matches_trl_steps_per_generation_and_num_iterations(tmp_path):
    """One rollout per steps_per_generation x num_iterations micro-batches; old log-probs only when needed."""
    tok = char_tokenizer()
    path = write_prompts(tmp_path / "p.jsonl", ALL_PAIRS[:40])
    cfg = make_cfg(tmp_path, num_generations=4, per_device_batch_size=4, grad_accum=1, steps_per_generation=2,
                   num_iterations=2, rewards=[RewardSpec(name="math_verify")])  # fmt: skip
    assert cfg.needs_old_logps
    assert not make_cfg(tmp_path, num_generations=4, per_device_batch_size=4, grad_accum=2).needs_old_logps
    batches = make_batches(tiny_model(), tok, cfg, path)
    it = iter(batches)
    got = [next(it) for _ in range(8)]
    assert batches.rollouts == 2
    assert torch.equal(got[0]["input_ids"], got[2]["input_ids"])  # μ=2: the same micro-batches again
    assert "old_logps" in got[0] and "ref_logps" not in got[0]
    assert not torch.equal(got[0]["input_ids"], got[4]["input_ids"])


def test_iterator_state_round_trip_gives_same_prompts_and_batches(tmp_path):
    tok = char_tokenizer()
    path = write_prompts(tmp_path / "p.jsonl", ALL_PAIRS[:30])
    cfg = make_cfg(tmp_path, num_generations=4, per_device_batch_size=8, grad_accum=1)
    a = make_batches(tiny_model(), tok, cfg, path, seed=9)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = copy.deepcopy(a.state_dict())
    expected = [next(it) for _ in range(10)]  # crosses an epoch boundary (30 prompts, 2 per rollout)
    b = make_batches(tiny_model(), tok, cfg, path, seed=9)
    b.load_state_dict(state)
    it_b = iter(b)
    for want in expected:
        got = next(it_b)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["advantages"], want["advantages"])


# ---- prompt data and bad input -----------------------------------------------------------------
def test_prompt_file_dedup_drops_and_counts(tmp_path):
    tok = char_tokenizer()
    extra = [
        {"prompt": "1+1=", "answer": "2"},  # duplicate
        {"prompt": "2+2="},  # no answer
        {"prompt": "3+3=", "answer": "\\frac{"},  # unparsable for math_verify
        {
            "messages": [{"role": "user", "content": "x"}],
            "answer": "1",
        },  # chat row while chat_template is off
    ]
    path = write_prompts(tmp_path / "p.jsonl", [(1, 1), (2, 3)], extra)
    with path.open("a") as f:
        f.write("{not json\n")
    ps = load_prompts(path, tok, reward_names=["math_verify"], chat_template=False)
    assert len(ps) == 2 and ps.total_rows == 7
    assert ps.dropped == {
        "duplicate": 1,
        "no answer": 1,
        "answer not parsable": 1,
        "no prompt": 1,
        "invalid json": 1,
    }
    assert ps.examples[0].prompt_ids == tok("1+1=")["input_ids"]


def test_chat_template_rendering(tmp_path):
    from steelforge.tokenizers import load_tokenizer

    tok = load_tokenizer("qwen1.5")
    path = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "1+1=?", "answer": "2"},
        {"messages": [{"role": "user", "content": "选哪个？"}], "answer": "C"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ps = load_prompts(path, tok, reward_names=["choice"], system_prompt="Be brief.")
    assert len(ps) == 1 and ps.dropped == {"answer not parsable": 1}  # "2" is no choice letter
    text = ps.examples[0].prompt_text
    assert text.endswith("<|im_start|>assistant\n") and "Be brief." in text and "选哪个？" in text


def _boom(prompt, completion, example):
    raise RuntimeError("broken reward")


def _nan(prompt, completion, example):
    return float("nan")


@pytest.mark.parametrize("mode", ["zero", "skip"])
def test_failing_rewards_are_counted_and_zeroed_or_skipped(tmp_path, mode, caplog):
    tok = char_tokenizer()
    path = write_prompts(tmp_path / "p.jsonl", ALL_PAIRS[:8])
    cfg = make_cfg(tmp_path, num_generations=4, per_device_batch_size=8, reward_errors=mode,
                   rewards=[RewardSpec(name=f"{__name__}:_boom"), RewardSpec(name=f"{__name__}:_nan")])  # fmt: skip
    batches = make_batches(tiny_model(), tok, cfg, path)
    with caplog.at_level("WARNING", logger="steelforge.grpo"):
        mb = next(iter(batches))
    assert batches.scorer.errors == {"_boom": 8, "_nan": 8}
    assert "broken reward" in caplog.text and "returned NaN" in caplog.text
    assert torch.all(mb["advantages"] == 0)
    assert batches.last_rollout["stats"]["skipped_groups"] == (2.0 if mode == "skip" else 0.0)


# ---- learning: single-digit addition with a required answer format -----------------------------
def _sft(model, tok, pairs, steps: int, good_share: float, seed: int = 0) -> None:
    """Warm start with plain cross-entropy: the right sums, in the required format only `good_share` of the time."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts = []
        for a, b in pairs:
            bad = float(torch.rand((), generator=g)) >= good_share
            texts.append(f"{a}+{b}={a + b}" + ("!" if bad else ""))
        rows = [tok(t)["input_ids"] + [EOS] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        labels = ids.clone()
        labels[ids == PAD] = -100
        labels[:, :4] = -100  # the prompt "a+b="
        loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_model_learns_the_answer_format_on_cpu(tmp_path):
    """After an SFT warm start that knows the sums but mostly writes 'c!', GRPO on 70 training prompts raises
    the greedy reward on 30 held-out prompts (format + math_verify correctness)."""
    from steelforge.posttrain.grpo import make_reward_eval

    torch.set_num_threads(1)
    tok = char_tokenizer()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(100, generator=g).tolist()
    train_pairs = [ALL_PAIRS[i] for i in order[:70]]
    held_pairs = [ALL_PAIRS[i] for i in order[70:]]
    train_path = write_prompts(tmp_path / "p.jsonl", train_pairs)
    held_path = write_prompts(tmp_path / "h.jsonl", held_pairs)
    rewards = [
        RewardSpec(name="math_verify", weight=0.5),
        RewardSpec(name="format", weight=0.5, kwargs={"pattern": r"\d+"}),
    ]
    cfg = make_cfg(tmp_path, num_generations=8, per_device_batch_size=64, grad_accum=1, rewards=rewards,
                   max_steps=30, temperature=1.0, loss_type="dapo")  # fmt: skip
    model = tiny_model(seed=1)
    _sft(model, tok, ALL_PAIRS, steps=250, good_share=0.3)
    held = load_prompts(held_path, tok, reward_names=["math_verify"], chat_template=False)
    evaluate = make_reward_eval(held, tok, RewardScorer(rewards), cfg, [EOS], PAD, limit=30)
    before = evaluate(model)["eval_reward"]

    batches = make_batches(model, tok, cfg, train_path, seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    trainer = Trainer(model, grpo_objective(cfg), batches, TrainerConfig(max_steps=cfg.max_steps, clip_grad_norm=1.0),
                      optimizer=opt, scheduler=constant_scheduler(opt))  # fmt: skip
    t0 = time.perf_counter()
    train_rewards = []
    for _ in range(cfg.max_steps):
        trainer.train_step()
        train_rewards.append(batches.last_rollout["stats"]["reward"])
    after = evaluate(model)["eval_reward"]
    elapsed = time.perf_counter() - t0
    print(f"held-out reward {before:.3f} -> {after:.3f}; train reward {train_rewards[0]:.3f} -> "
          f"{train_rewards[-1]:.3f}; {elapsed:.1f} s")  # fmt: skip
    assert before < 0.8, "the warm start must leave room to learn"
    assert after >= before + 0.2
    assert sum(train_rewards[-5:]) / 5 > sum(train_rewards[:5]) / 5
    assert elapsed < 90


# ---- the stage: CLI, SIGKILL, resume -------------------------------------------------------------
def _stage_recipe(root: Path, name: str, steps: int = 6, every: int = 2) -> Path:
    tok_dir = root / "tokenizer"
    if not tok_dir.exists():
        char_tokenizer().save_pretrained(tok_dir)
    prompts = root / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts, ALL_PAIRS)
    recipe = {
        "name": name,
        "out_dir": str(root / name),
        "seed": 3,
        "tokenizer": str(tok_dir),
        "model": {
            "preset": "tiny-moxin",
            "overrides": {
                "vocab_size": VOCAB,
                "hidden_size": 32,
                "head_dim": 8,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "sliding_window": 32,
                "bos_token_id": EOS,
                "eos_token_id": EOS,
            },
        },
        "grpo": {
            "prompts": str(prompts),
            "eval_prompts": str(prompts),
            "val_every": 3,
            "val_prompts": 8,
            "chat_template": False,
            "max_steps": steps,
            "num_generations": 4,
            "per_device_batch_size": 8,
            "steps_per_generation": 2,
            "num_iterations": 2,
            "max_completion_length": 4,
            "beta": 0.04,
            "rewards": [{"name": "math_verify"}, {"name": "format", "kwargs": {"pattern": "[0-9]+"}}],
            "tensorboard": False,
            "optim": {"lr": 1e-3},
            "checkpoint": {"every": every, "keep_last": 2, "export_final": True},
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(recipe: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", STEELFORGE_QUIET="1")
    code = "import sys, torch; torch.set_num_threads(1); from steelforge.cli import main; sys.argv[0]='steelforge'; main()"
    return subprocess.Popen([sys.executable, "-c", code, "grpo", str(recipe)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {int(r["step"]): r["loss"] for r in recs if "loss" in r}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grpo_cli_resumes_after_sigkill_with_same_prompts_and_losses(tmp_path):
    from safetensors.torch import load_file

    killed, reference = _stage_recipe(tmp_path, "killed"), _stage_recipe(tmp_path, "reference")
    proc = _cli(killed)
    metrics = tmp_path / "killed" / "grpo" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while True:  # kill once step 3 is logged (a checkpoint exists at step 2, a rollout is half-used)
        if metrics.is_file() and max(_losses(metrics.parent) or {0: 0}) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        if proc.poll() is not None:
            pytest.fail(f"grpo ended early: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert not (tmp_path / "killed" / "grpo" / "hf").exists()
    for recipe in (killed, reference):
        p = _cli(recipe)
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    got, ref = _losses(tmp_path / "killed" / "grpo"), _losses(tmp_path / "reference" / "grpo")
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    for step in ref:
        assert got[step] == ref[step], f"loss differs at step {step}"
    a = load_file(tmp_path / "killed" / "grpo" / "hf" / "model.safetensors")
    b = load_file(tmp_path / "reference" / "grpo" / "hf" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    out = tmp_path / "reference" / "grpo"
    assert (out / "reward.png").is_file() and (out / "grpo_done.json").is_file()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*recs)
    for key in ("reward", "rewards/math_verify/mean", "frac_reward_zero_std", "completions/clipped_ratio",
                "clip_ratio/region_mean", "kl", "entropy", "rollout_tokens_per_s", "eval_reward"):  # fmt: skip
        assert key in keys, key
    # a second run is skipped as complete
    p = _cli(reference)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]


# ---- recipe and CLI ------------------------------------------------------------------------------
def test_recipe_section_validates_with_one_sentence_errors(tmp_path):
    from steelforge.errors import RecipeError
    from steelforge.recipe import STAGES, recipe_from_dict

    assert STAGES.index("grpo") > STAGES.index("pretrain")
    ok = recipe_from_dict({"model": {"preset": "tiny-steel"}, "grpo": {"prompts": "p.jsonl"}})
    assert ok.stages() == ["grpo"] and ok.grpo.loss_type == "dapo" and ok.grpo.beta == 0.0
    with pytest.raises(RecipeError, match="not a multiple of num_generations"):
        recipe_from_dict(
            {"model": {"preset": "tiny-steel"}, "grpo": {"prompts": "p", "per_device_batch_size": 6}}
        )
    with pytest.raises(RecipeError, match=r"grpo stage needs grpo\.model"):
        recipe_from_dict({"grpo": {"prompts": "p.jsonl"}})
    with pytest.raises(RecipeError, match=r"unknown key 'grpo\.epsilonn'"):
        recipe_from_dict({"model": {"preset": "tiny-steel"}, "grpo": {"prompts": "p", "epsilonn": 0.2}})


def test_unknown_reward_is_a_clear_error():
    from steelforge.posttrain.errors import RewardError

    with pytest.raises(RewardError, match="unknown reward 'mathverify'"):
        RewardScorer([RewardSpec(name="mathverify")])


def test_cli_help_has_examples():
    from typer.testing import CliRunner

    from steelforge.cli import app

    result = CliRunner().invoke(app, ["grpo", "--help"])
    assert result.exit_code == 0 and "steelforge grpo recipes/moxin-7b/grpo.yaml" in result.output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stage_on_steel_with_chat_template_and_choice_reward(tmp_path):
    """The stage end to end on Steel's causal Soft-MoE with Qwen's ChatML template, `<|im_end|>` stops and the
    choice reward (beta > 0: a frozen reference)."""
    from steelforge.posttrain.grpo import run_grpo
    from steelforge.recipe import recipe_from_dict

    rows = [
        {
            "messages": [{"role": "user", "content": f"第{i}题：选哪个？A. 1 B. 2 C. 3 D. 4"}],
            "answer": "ABCD"[i % 4],
        }
        for i in range(6)
    ]
    path = tmp_path / "choice.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = recipe_from_dict(
        {
            "out_dir": str(tmp_path / "run"),
            "tokenizer": "qwen1.5",
            "model": {
                "preset": "tiny-steel",
                "overrides": {
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 1,
                },
            },
            "grpo": {
                "prompts": str(path),
                "rewards": [{"name": "choice"}],
                "num_generations": 4,
                "per_device_batch_size": 8,
                "max_completion_length": 6,
                "beta": 0.001,
                "max_steps": 2,
                "tensorboard": False,
                "checkpoint": {"every": 1},
            },
        }
    )
    report = run_grpo(recipe)
    out = tmp_path / "run" / "grpo"
    assert (out / "hf" / "config.json").is_file() and (out / "reward.png").is_file()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["kl"] >= 0 and r["rewards/choice/mean"] >= 0 for r in recs)
    assert recs[1]["tokens_per_s"] > 0
    assert dict(report.rows)["rollout backend"] == "hf"
