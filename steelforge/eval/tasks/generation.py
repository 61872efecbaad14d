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
    require_file,
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
            train = require_file(
                data_dir / "train.jsonl", task, f"train split (for {num_fewshot} shots; or --num-fewshot 0)"
            )
            shots = read_jsonl(train, task)[:num_fewshot]
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

    Runs `steelforge.models.generate.generate` (batched, one KV cache); stop strings that are single special
    tokens of the tokenizer (`<|im_end|>`, `</s>`) and EOS end a row early, the others cut the decoded text.
    """
    from steelforge.models.generate import generate

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    stop_ids |= {int(tokenizer.convert_tokens_to_ids(s)) for s in stop if s in special}
    generator = torch.Generator(device=device).manual_seed(seed)
    result = generate(
        model, [tokenizer(p)["input_ids"] for p in prompts], max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, stop_token_ids=sorted(stop_ids), pad_token_id=int(pad), generator=generator,
    )  # fmt: skip
    texts = tokenizer.batch_decode(result.sequences, skip_special_tokens=True)
    return [cut_at_stop(t, stop) for t in texts]
