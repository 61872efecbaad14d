"""`steelforge sft`: a tiny model learns a synthetic bilingual chat task, LoRA merges on export, the dry run
shows the trained spans, a SIGKILLed run resumes to the uninterrupted run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ._chat_helpers import (
    char_tokenizer,
    cli,
    kill_after_checkpoint,
    recipe_dict,
    run_in_process,
    same_weights,
    sft_records,
    split_task,
    write_jsonl,
    write_recipe,
)  # fmt: skip


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tok = char_tokenizer(root / "tokenizer")
    train, test = split_task(1500, 40)
    return root, tok, write_jsonl(root / "train.jsonl", sft_records(train)), test


def exact_match(model_dir: Path | None, model, tokenizer, prompts: list[tuple[str, str]]) -> float:
    """Greedy answers to held-out prompts, compared with the expected answer as strings."""
    hits = 0
    for prompt, answer in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        hits += tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == answer
    return hits / len(prompts)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sft_learns_a_synthetic_chat_task(task) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steelforge.models.loading import load_model
    from steelforge.posttrain.sft import run_sft
    from steelforge.posttrain.templates import TEMPLATES, apply_template
    from steelforge.recipe import recipe_from_dict

    root, tok_dir, train, test = task
    recipe = recipe_from_dict(recipe_dict(root / "learn", tok_dir, "sft", {
        "datasets": [{"path": str(train)}], "cutoff_len": 128, "micro_batch_size": 8, "epochs": 10,
        "optim": {"lr": 6e-3, "weight_decay": 0.0}, "warmup_ratio": 0.05, "checkpoint": {"every": None},
        "log_every": 50, "tensorboard": False,
    }))  # fmt: skip
    tokenizer = apply_template(AutoTokenizer.from_pretrained(tok_dir), TEMPLATES["tulu"])
    torch.manual_seed(recipe.seed)
    before = exact_match(None, load_model(recipe.sft.model).eval(), tokenizer, test)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_sft(recipe)
    finally:
        torch.set_num_threads(threads)
    hf = root / "learn" / "sft" / "hf"
    after = exact_match(hf, AutoModelForCausalLM.from_pretrained(hf).eval(), AutoTokenizer.from_pretrained(hf), test)
    assert before < 0.1
    assert after > 0.8, f"exact match {after:.2f} after SFT ({dict(report.rows)})"
    assert (root / "learn" / "sft" / "sft_done.json").is_file()


def test_lora_trains_adapters_only_and_exports_merged(task) -> None:
    from transformers import AutoModelForCausalLM

    from steelforge.models.loading import load_model
    from steelforge.posttrain.sft import run_sft
    from steelforge.recipe import recipe_from_dict

    root, tok_dir, train, _ = task
    recipe = recipe_from_dict(recipe_dict(root / "lora", tok_dir, "sft", {
        "datasets": [{"path": str(train), "max_samples": 64}], "cutoff_len": 128, "micro_batch_size": 4,
        "max_steps": 4, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "optim": {"lr": 1e-2},
        "checkpoint": {"every": None}, "tensorboard": False,
    }))  # fmt: skip
    run_sft(recipe)
    torch.manual_seed(recipe.seed)
    base = load_model(recipe.sft.model)
    merged = AutoModelForCausalLM.from_pretrained(root / "lora" / "sft" / "hf")
    base_state, merged_state = base.state_dict(), merged.state_dict()
    assert base_state.keys() == merged_state.keys()  # a plain HF folder: no adapter or base_layer keys
    changed = {k for k in base_state if not torch.equal(base_state[k], merged_state[k])}
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj")) for k in changed)  # fmt: skip
    assert not any("embed" in k or "norm" in k or "lm_head" in k for k in changed)


def test_dry_run_prints_statistics_and_trained_spans(task) -> None:
    """`steelforge sft RECIPE --dry-run` (the typer app, in-process) tokenizes and shows, never trains."""
    from typer.testing import CliRunner

    from steelforge.cli import app
    from steelforge.reporting import console

    root, tok_dir, train, _ = task
    recipe = write_recipe(root / "dry.yaml", recipe_dict(root / "dry", tok_dir, "sft", {
        "datasets": [{"path": str(train), "max_samples": 50}], "cutoff_len": 64}))  # fmt: skip
    with console.capture() as captured:
        result = CliRunner().invoke(app, ["sft", str(recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = captured.get()
    assert "example 3" in text and "trained tokens" in text and "records kept" in text
    assert (root / "dry" / "sft" / "data" / "prepared.json").is_file()
    assert not (root / "dry" / "sft" / "checkpoints").exists()


def test_recipe_errors_are_one_sentence(task, tmp_path: Path) -> None:
    from steelforge.errors import RecipeError
    from steelforge.recipe import load_recipe

    _, tok_dir, _, _ = task
    recipe = write_recipe(tmp_path / "bad.yaml", recipe_dict(tmp_path, tok_dir, "sft", {"datasets": [], "cutoff_len": 64}))
    with pytest.raises(RecipeError, match="the sft stage needs datasets"):
        load_recipe(recipe)
    recipe = write_recipe(tmp_path / "bad2.yaml", {"sft": {"datasets": [{"path": "x.jsonl"}]}})
    with pytest.raises(RecipeError, match="no model source"):
        load_recipe(recipe)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sft_resumes_after_sigkill_to_the_uninterrupted_weights(task) -> None:
    root, tok_dir, train, _ = task
    paths = {}
    for name in ("killed", "reference"):
        paths[name] = write_recipe(root / f"{name}.yaml", recipe_dict(root / name, tok_dir, "sft", {
            "datasets": [{"path": str(train), "max_samples": 300}], "cutoff_len": 64, "micro_batch_size": 4,
            "max_steps": 10, "optim": {"lr": 3e-3}, "checkpoint": {"every": 3, "keep_last": 2},
            "tensorboard": False,
        }))  # fmt: skip
    proc = cli("sft", paths["killed"])
    kill_after_checkpoint(proc, root / "killed" / "sft" / "checkpoints")
    assert not (root / "killed" / "sft" / "hf").exists()
    report = run_in_process("sft", paths["killed"])
    assert any(k == "resumed from" for k, _ in report.rows)
    run_in_process("sft", paths["reference"])
    same_weights(root / "killed" / "sft" / "hf", root / "reference" / "sft" / "hf")


@pytest.mark.parametrize("name", ["steel-1b/sft", "steel-1b/dpo", "moxin-7b/sft", "moxin-7b/dpo"])
def test_embedded_recipes_validate(name: str) -> None:
    from steelforge.recipe import load_recipe

    recipe = load_recipe(name)
    section = recipe.sft or recipe.dpo
    assert section is not None and section.datasets
    if recipe.dpo is not None:
        assert recipe.dpo.loss_type == ("sigmoid_norm" if name.startswith("moxin") else "sigmoid")
