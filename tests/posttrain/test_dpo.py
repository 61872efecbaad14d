"""`steelforge dpo`: the objective equals TRL 1.16 on its fixture batch, precomputed reference log-probs equal
live ones, DPO raises held-out reward accuracy, SIGKILL resume, and 2 gloo processes equal 1 (SFT and DPO)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from steelforge.errors import RecipeError
from steelforge.posttrain.chat_data import PairData, PairLoader, Ragged
from steelforge.posttrain.dpo import dpo_objective, reward_accuracy, score_pairs

from ._chat_helpers import (
    char_tokenizer,
    cli,
    kill_after_checkpoint,
    pair_records,
    recipe_dict,
    run_in_process,
    same_weights,
    sft_records,
    split_task,
    write_jsonl,
    write_recipe,
)  # fmt: skip
from .conftest import load_tiny


def _fixture_pairs(inputs: dict) -> PairData:
    cols: dict[str, list[list[int]]] = {"ci": [], "cm": [], "ri": [], "rm": []}
    for ex in inputs["examples"]:
        p, c, r = ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]
        cols["ci"].append(p + c)
        cols["cm"].append([0] * len(p) + [1] * len(c))
        cols["ri"].append(p + r)
        cols["rm"].append([0] * len(p) + [1] * len(r))
    n = len(inputs["examples"])
    return PairData(Ragged.build(cols["ci"], np.int32), Ragged.build(cols["cm"], np.uint8),
                    Ragged.build(cols["ri"], np.int32), Ragged.build(cols["rm"], np.uint8),
                    np.zeros(n, dtype=np.int32), ["fixture"], [None], {})  # fmt: skip


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid_norm"])
def test_objective_matches_trl_on_its_fixture_batch(trl_dir, dpo_data, loss_type: str) -> None:
    """Our collation gives TRL's batch, and the stage's objective its loss, metrics and policy gradient."""
    inputs, reference = dpo_data
    expected = reference["results"][loss_type]
    loader = PairLoader(_fixture_pairs(inputs), micro_batch_size=len(inputs["examples"]), pad_id=inputs["pad_token_id"])
    batch = loader.collate(list(range(len(inputs["examples"]))))
    width = len(inputs["input_ids"][0])
    for key in ("input_ids", "attention_mask", "completion_mask"):
        got = torch.nn.functional.pad(batch[key], (0, width - batch[key].shape[1]), value=0)
        assert got.tolist() == inputs[key], key
    policy, ref = load_tiny(trl_dir / "tiny_policy"), load_tiny(trl_dir / "tiny_reference")
    out = dpo_objective(ref, loss_type=loss_type, beta=reference["beta"])(policy, batch)
    torch.testing.assert_close(float(out.loss_sum.detach() / out.num_tokens), expected["loss_mean__trl"], rtol=1e-5, atol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):  # fmt: skip
        assert out.metrics[key] == pytest.approx(expected["metrics__trl"][key], rel=1e-5, abs=1e-6), key
    (out.loss_sum / out.num_tokens).backward()
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in policy.parameters() if p.grad is not None))
    assert norm == pytest.approx(expected["grad_norm_policy__trl"], rel=1e-5)


def test_precomputed_reference_equals_the_live_reference(trl_dir, dpo_data) -> None:
    inputs, _ = dpo_data
    loader = PairLoader(_fixture_pairs(inputs), micro_batch_size=4, pad_id=0)
    ref = load_tiny(trl_dir / "tiny_reference")
    loader.ref_logps = score_pairs(ref, loader, list(range(4)), torch.device("cpu"), batch_size=3)
    policy = load_tiny(trl_dir / "tiny_policy")
    pre = dpo_objective(None, loss_type="sigmoid", beta=0.1)(policy, loader.collate([2, 0, 3]))
    live_batch = {k: v for k, v in loader.collate([2, 0, 3]).items() if k != "ref_logps"}
    live = dpo_objective(ref, loss_type="sigmoid", beta=0.1)(policy, live_batch)
    torch.testing.assert_close(pre.loss_sum, live.loss_sum, rtol=1e-6, atol=1e-6)
    assert pre.metrics == pytest.approx(live.metrics, rel=1e-5, abs=1e-6)


def test_sigmoid_with_label_smoothing_is_refused_at_validation() -> None:
    from steelforge.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match="cdpo"):
        recipe_from_dict({"model": {"preset": "tiny-steel"},
                          "dpo": {"datasets": [{"path": "p.jsonl"}], "loss_type": "sigmoid", "label_smoothing": 0.1}})
    recipe_from_dict({"model": {"preset": "tiny-steel"},
                      "dpo": {"datasets": [{"path": "p.jsonl"}], "loss_type": "cdpo", "label_smoothing": 0.1}})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = char_tokenizer(root / "tokenizer")
    train, test = split_task(1000, 40, seed=1)
    return (root, tok, write_jsonl(root / "train.jsonl", pair_records(train, seed=1)),
            write_jsonl(root / "test.jsonl", pair_records(test, seed=2)), write_jsonl(root / "sft.jsonl",
                                                                                      sft_records(train)))  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dpo_after_sft_raises_held_out_reward_accuracy(pairs) -> None:
    """SFT briefly (the policy learns to copy digits), then DPO from its export (the default source) on pairs
    whose rejected answer has one wrong digit: held-out reward accuracy goes from 0 to > 0.8."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steelforge.posttrain.chat_data import prepare_pairs
    from steelforge.posttrain.config import ChatDataset
    from steelforge.posttrain.dpo import run_dpo
    from steelforge.posttrain.sft import run_sft
    from steelforge.posttrain.templates import TEMPLATES, apply_template
    from steelforge.recipe import recipe_from_dict

    root, tok_dir, train, test, sft_data = pairs
    raw = recipe_dict(root / "learn", tok_dir, "sft", {
        "datasets": [{"path": str(sft_data)}], "cutoff_len": 128, "micro_batch_size": 8, "epochs": 4,
        "optim": {"lr": 6e-3, "weight_decay": 0.0}, "warmup_ratio": 0.05, "checkpoint": {"every": None},
        "log_every": 50, "tensorboard": False,
    })  # fmt: skip
    raw["model"] = raw["sft"]["model"]
    raw["dpo"] = {"datasets": [{"path": str(train)}], "chat_template": "tulu", "cutoff_len": 64,
                  "micro_batch_size": 16, "epochs": 2, "beta": 0.1, "optim": {"lr": 2e-3, "weight_decay": 0.0},
                  "checkpoint": {"every": None}, "log_every": 10, "tensorboard": False}  # fmt: skip
    recipe = recipe_from_dict(raw)
    tokenizer = apply_template(AutoTokenizer.from_pretrained(tok_dir), TEMPLATES["tulu"])
    held_out = prepare_pairs([ChatDataset(path=test)], tokenizer, "fp", "tulu", root / "held_out", cutoff_len=64,
                             overflow="truncate", max_prompt_len=None)  # fmt: skip
    loader = PairLoader(held_out, micro_batch_size=8, pad_id=tokenizer.pad_token_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sft(recipe)
        reference = AutoModelForCausalLM.from_pretrained(root / "learn" / "sft" / "hf").eval()
        before = reward_accuracy(reference, reference, loader, torch.device("cpu"))
        report = run_dpo(recipe)
    finally:
        torch.set_num_threads(threads)
    assert dict(report.rows)["model source"] == str(root / "learn" / "sft" / "hf")
    policy = AutoModelForCausalLM.from_pretrained(root / "learn" / "dpo" / "hf").eval()
    after = reward_accuracy(policy, reference, loader, torch.device("cpu"))
    rows = [json.loads(x) for x in (root / "learn" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/accuracies" in r and "rewards/margins" in r for r in rows)
    assert before == 0.0  # policy == reference: every margin is exactly 0
    assert after > 0.8, f"held-out reward accuracy {after:.2f}"


def _dpo_section(train: Path, **extra) -> dict:
    return {"datasets": [{"path": str(train), "max_samples": 200}], "cutoff_len": 64, "micro_batch_size": 4,
            "max_steps": 8, "optim": {"lr": 3e-3}, "checkpoint": {"every": 3, "keep_last": 2},
            "tensorboard": False, **extra}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dpo_resumes_after_sigkill_to_the_uninterrupted_weights(pairs) -> None:
    root, tok_dir, train, _, _ = pairs
    paths = {name: write_recipe(root / f"{name}.yaml", recipe_dict(root / name, tok_dir, "dpo",
                                                                   _dpo_section(train, precompute_ref_logps=True)))
             for name in ("killed", "reference")}  # fmt: skip
    proc = cli("dpo", paths["killed"])
    kill_after_checkpoint(proc, root / "killed" / "dpo" / "checkpoints")
    assert not (root / "killed" / "dpo" / "hf").exists()
    report = run_in_process("dpo", paths["killed"])
    assert any(k == "resumed from" for k, _ in report.rows)
    run_in_process("dpo", paths["reference"])
    same_weights(root / "killed" / "dpo" / "hf", root / "reference" / "dpo" / "hf")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_processes_equal_one(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from _dist_helpers import run_distributed

    tok_dir = char_tokenizer(tmp_path / "tokenizer")
    train, _ = split_task(120, 0, seed=3)
    sft_data = write_jsonl(tmp_path / "sft.jsonl", sft_records(train))
    dpo_data = write_jsonl(tmp_path / "dpo.jsonl", pair_records(train, seed=3))
    for world in (1, 2):
        micro = 4 // world
        sft = {"datasets": [{"path": str(sft_data)}], "cutoff_len": 64, "micro_batch_size": micro, "max_steps": 4,
               "optim": {"lr": 3e-3}, "checkpoint": {"every": None}, "tensorboard": False}  # fmt: skip
        write_recipe(tmp_path / f"sft_{world}.yaml", recipe_dict(tmp_path / f"w{world}", tok_dir, "sft", sft))
        dpo = {**_dpo_section(dpo_data), "micro_batch_size": micro, "max_steps": 4, "checkpoint": {"every": None}}
        write_recipe(tmp_path / f"dpo_{world}.yaml", recipe_dict(tmp_path / f"w{world}", tok_dir, "dpo", dpo))
    run_in_process("sft", tmp_path / "sft_1.yaml")
    run_in_process("dpo", tmp_path / "dpo_1.yaml")
    run_distributed(Path(__file__).with_name("_dist_worker.py"), nproc=2, timeout=240, env={"STEELFORGE_TEST_OUT": str(tmp_path)})
    for stage in ("sft", "dpo"):
        same_weights(tmp_path / "w2" / stage / "hf", tmp_path / "w1" / stage / "hf", atol=2e-5)
