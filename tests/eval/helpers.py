"""Eval test helpers: tiny benchmark folders in the published layouts and a stub LM with hand-set logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn


def write_cmmlu(
    root: Path, subjects: dict[str, list[tuple[str, str, str, str, str, str]]], dev_rows: int = 2
) -> Path:
    """A CMMLU folder in the published layout: dev/ and test/ <subject>.csv with an unnamed index column."""
    import csv

    for split in ("dev", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for subject, rows in subjects.items():
        for split, part in (("dev", rows[:dev_rows]), ("test", rows)):
            with open(root / split / f"{subject}.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
                for i, r in enumerate(part):
                    w.writerow([i, *r])
    return root


class _TableDecoder(nn.Module):
    def __init__(self, table: dict[tuple[int, ...], list[float]]) -> None:
        super().__init__()
        self.table = table
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        b, t = input_ids.shape
        hidden = torch.zeros(b, t, 4)
        for i in range(b):
            n = int(attention_mask[i].sum()) if attention_mask is not None else t
            ids = tuple(input_ids[i, :n].tolist())
            if ids in self.table:
                hidden[i, n - 1] = torch.tensor(self.table[ids])
        return SimpleNamespace(last_hidden_state=hidden)


class StubLM(nn.Module):
    """A "model" whose next-token logits for A-D after a given prompt are set by hand (0 elsewhere)."""

    def __init__(
        self, tokenizer, prompts_to_logits: dict[str, list[float]], letters=("A", "B", "C", "D")
    ) -> None:
        super().__init__()
        table = {tuple(tokenizer(p)["input_ids"]): v for p, v in prompts_to_logits.items()}
        self.model = _TableDecoder(table)
        vocab = len(tokenizer)
        self.lm_head = nn.Linear(4, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.zero_()
            for j, letter in enumerate(letters):
                self.lm_head.weight[tokenizer.encode(letter, add_special_tokens=False)[0], j] = 1.0

    def get_output_embeddings(self):
        return self.lm_head
