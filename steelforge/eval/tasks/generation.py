"""GSM8K and MATH-500 by generation: prompts, decoding, answer checking, pass@1 and pass@k.

GSM8K (`test.jsonl`/`train.jsonl`: question, answer ending in `#### n`) uses lm-eval's `gsm8k` wording
(`Question: ...\nAnswer:`, shots = first k train rows with their worked answers, stop at "Question:");
MATH-500 (`test.jsonl`: problem, answer) asks for a `\\boxed{}` answer. Equivalence is decided by math-verify
through the GRPO reward `steelforge.posttrain.rewards.math_verify`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelforge.eval.tasks.base import (
    GenerationItem,
    TaskDataError,
    chat_wrap,
    limited,
    need_keys,
    read_jsonl,
)
from steelforge.posttrain.rewards import extract_gsm8k_gold, math_verify

GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")
MATH_STOP = ("Problem:", "</s>", "<|im_end|>")
MATH_CHAT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def gsm8k_gold(solution: str) -> str:
    """The number after `####` in a GSM8K solution, commas removed (the GRPO rewards' `extract_gsm8k_gold`)."""
    if "####" not in solution:
        raise TaskDataError(
            f"gsm8k: solution has no '#### answer' line: {solution[-80:]!r}; use GSM8K's published jsonl"
        )
    return extract_gsm8k_gold(solution)


def is_correct(completion: str, answer: str) -> bool:
    """math-verify equivalence of the completion's final answer (last \\boxed{}, else last number) and the gold."""
    return math_verify(completion, answer) > 0.5


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def load(
    task: str, data_dir: Path, *, num_fewshot: int = 0, limit: int | None = None, tokenizer: Any = None,
    chat: bool = False, **_: Any,
) -> list[GenerationItem]:  # fmt: skip
    data_dir = Path(data_dir)
    test = data_dir / "test.jsonl"
    rows = read_jsonl(test, task)
    items = []
    if task == "gsm8k":
        prefix = ""
        if num_fewshot > 0:
            shots = read_jsonl(data_dir / "train.jsonl", task)[:num_fewshot]
            prefix = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
        for i, row in enumerate(limited(rows, limit)):
            need_keys(row, ("question", "answer"), test, i, task)
            prompt = prefix + f"Question: {row['question']}\nAnswer:"
            if chat:
                prompt = chat_wrap(tokenizer, prompt)
            items.append(GenerationItem(task, task, i, prompt, gsm8k_gold(row["answer"]), GSM8K_STOP))
    elif task == "math500":
        for i, row in enumerate(limited(rows, limit)):
            need_keys(row, ("problem", "answer"), test, i, task)
            if chat:
                prompt = chat_wrap(tokenizer, row["problem"] + MATH_CHAT_SUFFIX)
            else:
                prompt = f"Problem:\n{row['problem']}\n\nSolution:"
            items.append(
                GenerationItem(task, str(row.get("subject", task)), i, prompt, str(row["answer"]), MATH_STOP)
            )
    else:
        raise TaskDataError(f"unknown generation task '{task}'; use gsm8k or math500")
    return items


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


@torch.no_grad()
def generate_texts(
    model: nn.Module, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
    top_p: float = 1.0, stop: tuple[str, ...] = (), seed: int = 0,
) -> list[str]:  # fmt: skip
    """Decode one continuation per prompt (greedy at temperature 0), cut at the first stop string.

    The one place that calls a decoder: HF `generate` (left padding) until the project's own
    `steelforge.models.generate.generate` is merged.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    finally:
        tokenizer.padding_side = side
    torch.manual_seed(seed)
    sample = temperature > 0
    out = model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=pad,
        **({"temperature": temperature, "top_p": top_p} if sample else {"temperature": None, "top_p": None, "top_k": None}),
    )  # fmt: skip
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [cut_at_stop(t, stop) for t in texts]
