"""Tiny chat fixtures for the SFT/DPO tests: a character tokenizer, a synthetic bilingual task, recipes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHARS = sorted(set("0123456789 \n:+=abcdefghijklmnopqrstuvwxyz.,?!'ABCDEFGHIJKLMNOPQRSTUVWXYZ重复反转加倒序和是"))
TASKS_EN = {"repeat": lambda d: d, "reverse": lambda d: d[::-1]}
TASKS_ZH = {"重复": lambda d: d, "反转": lambda d: d[::-1]}


def char_tokenizer(folder: Path) -> Path:
    """A character-level fast tokenizer with ChatML and Tülu special tokens (offsets work like any fast one)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS[3:])  # fmt: skip
    tok.save_pretrained(folder)
    return folder


def task_example(rng: random.Random) -> tuple[str, str]:
    """(prompt, answer): repeat or reverse 3-4 digits, in English or Chinese (generalises to unseen prompts,
    unlike memorised sums)."""
    kind = rng.randrange(2)
    zh = rng.random() < 0.5
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(3, 5)))
    name = (list(TASKS_ZH) if zh else list(TASKS_EN))[kind]
    fn = (TASKS_ZH if zh else TASKS_EN)[name]
    return f"{name} {digits}", fn(digits)


def split_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    while len(seen) < n_train + n_test:
        p, a = task_example(rng)
        seen.setdefault(p, a)
    items = list(seen.items())
    rng.shuffle(items)
    return items[n_test:], items[:n_test]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def sft_records(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in pairs]


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: one digit changed (answers of one digit get another digit)."""
    i = rng.randrange(len(answer))
    new = rng.choice([d for d in "0123456789" if d != answer[i]])
    return answer[:i] + new + answer[i + 1 :]


def pair_records(pairs: list[tuple[str, str]], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"prompt": p, "chosen": a, "rejected": wrong_answer(a, rng)} for p, a in pairs]


TINY_MODEL = {
    "preset": "tiny-moxin",
    "overrides": {
        "vocab_size": len(SPECIALS) + len(CHARS),
        "hidden_size": 64,
        "head_dim": 16,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": 256,
        "max_position_embeddings": 256,
    },
}


def recipe_dict(root: Path, tokenizer: Path, stage: str, section: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    return {"name": stage, "out_dir": str(root), "seed": seed, "tokenizer": str(tokenizer),
            stage: {"model": TINY_MODEL, "chat_template": "tulu", **section}}  # fmt: skip


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def cli(stage: str, recipe_path: Path, *extra: str, quiet: bool = True) -> Any:
    """`steelforge <stage> RECIPE` in a subprocess with one thread (PYTHONPATH passed through)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH", "")])),
               OMP_NUM_THREADS="1", STEELFORGE_QUIET="1" if quiet else "0", COLUMNS="200")  # fmt: skip
    code = "import sys, torch; torch.set_num_threads(1); from steelforge.cli import main; sys.argv[0]='steelforge'; main()"
    return subprocess.Popen([sys.executable, "-c", code, stage, str(recipe_path), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def kill_after_checkpoint(proc: Any, checkpoints: Path, timeout: float = 120.0) -> None:
    """SIGKILL the process as soon as a complete checkpoint exists (mid-run, before the end)."""
    import signal
    import time

    from steelforge.train.checkpoint import Checkpointer

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checkpoints.is_dir() and Checkpointer(checkpoints).latest() is not None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: {proc.communicate()[1][-3000:]}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def run_in_process(stage: str, recipe_path: Path) -> Any:
    """The stage here with one thread, like the CLI subprocesses (same kernels, same bits)."""
    import torch

    from steelforge.cli import run_stage
    from steelforge.recipe import load_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_stage(stage, load_recipe(recipe_path), force=True)
    finally:
        torch.set_num_threads(threads)


def same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    import torch
    from safetensors.torch import load_file

    got, ref = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert got.keys() == ref.keys()
    for name in ref:
        if atol == 0.0:
            assert torch.equal(got[name], ref[name]), f"{name} differs"
        else:
            torch.testing.assert_close(got[name], ref[name], atol=atol, rtol=1e-4, msg=f"{name} differs")
