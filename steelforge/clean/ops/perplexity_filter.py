"""`perplexity_filter`: drop documents a language model finds too surprising (perplexity above `max_ppl`).

Data-Juicer scores with a KenLM model it downloads from a hub; steelforge never downloads. Two scorers:

- `model: <preset | HF folder>` (+ `tokenizer`): any causal LM this project loads, e.g. a team's own
  small model. Documents are scored in batches of `batch_size`, truncated to `max_length` tokens;
  perplexity = exp(mean next-token negative log-likelihood over the document's tokens).
- `kenlm_model: <path>` (+ `sp_model`, a SentencePiece model): Data-Juicer's scorer, when the `kenlm`
  package is importable: pieces joined by spaces, per-line `score`, ppl = 10^(-sum log10 p / (words + lines)).

A document too short to score (fewer than 2 tokens, or no words) gets perplexity 0 and is kept, as in
Data-Juicer. Models load lazily in each worker process and are not pickled with the operator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steelforge.clean.ops.base import Filter, Semantics, register_op
from steelforge.clean.ops.quality_filters import require_model_file
from steelforge.errors import RecipeError


@register_op("perplexity_filter")
class PerplexityFilter(Filter):
    """Keep documents whose perplexity is at most `max_ppl` (and at least `min_ppl`)."""

    stat_key = "perplexity"

    def __init__(
        self,
        lang: str = "en",
        max_ppl: float = 1500.0,
        min_ppl: float = 0.0,
        model: str | None = None,
        tokenizer: str = "qwen1.5",
        batch_size: int = 8,
        max_length: int = 1024,
        device: str = "cpu",
        kenlm_model: str | None = None,
        sp_model: str | None = None,
        semantics: Semantics = "language_aware",
    ) -> None:
        super().__init__(semantics=semantics)
        if (model is None) == (kenlm_model is None):
            raise RecipeError(
                "operator 'perplexity_filter' needs exactly one scorer: 'model' (a preset or a causal-LM folder "
                "you supply) or 'kenlm_model' (a KenLM file you supply); nothing is downloaded"
            )
        if batch_size < 1 or max_length < 2:
            raise ValueError("batch_size must be >= 1 and max_length >= 2")
        self.lang = lang
        self.max_ppl = float(max_ppl)
        self.min_ppl = float(min_ppl)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.device = device
        self.kenlm_model = kenlm_model
        self.sp_model = sp_model
        if model is not None:
            from steelforge.models.presets import preset_names  # light: dataclasses only

            if model not in preset_names() and not Path(model).expanduser().is_dir():
                raise RecipeError(
                    f"operator 'perplexity_filter' parameter 'model' = '{model}' is neither a model folder nor "
                    f"a preset ({', '.join(preset_names())}); point it at your causal-LM folder"
                )
            from steelforge.tokenizers import TOKENIZER_NAMES

            if tokenizer not in TOKENIZER_NAMES and not Path(tokenizer).expanduser().is_dir():
                raise RecipeError(
                    f"operator 'perplexity_filter' parameter 'tokenizer' = '{tokenizer}' is neither a named "
                    f"tokenizer ({', '.join(TOKENIZER_NAMES)}) nor a tokenizer folder; point it at the folder "
                    "of your model's tokenizer"
                )
        else:
            require_model_file("perplexity_filter", "kenlm_model", kenlm_model)
            require_model_file("perplexity_filter", "sp_model", sp_model)
            try:
                import kenlm  # noqa: F401
            except ImportError as exc:
                raise RecipeError(
                    "operator 'perplexity_filter' with 'kenlm_model' needs the `kenlm` package "
                    "(pip install kenlm); or score with 'model' (a causal LM) instead"
                ) from exc

    # ---- lazy scorers (built in the process that scores) ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_lm", "_tok", "_kenlm", "_sp"):
            state.pop(key, None)
        return state

    def _causal_lm(self) -> tuple[Any, Any]:
        if "_lm" not in self.__dict__:
            from steelforge.models.loading import load_model
            from steelforge.tokenizers import load_tokenizer

            lm = load_model(self.model, device=self.device)  # type: ignore[arg-type]
            lm.eval()
            self.__dict__["_lm"] = lm
            self.__dict__["_tok"] = load_tokenizer(self.tokenizer)
        return self.__dict__["_lm"], self.__dict__["_tok"]

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        _, tok = self._causal_lm()
        encoded = tok(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length)
        return [list(ids) for ids in encoded["input_ids"]]

    def causal_lm_perplexities(self, texts: Sequence[str]) -> list[float]:
        """Perplexity of each text under the causal LM, computed in padded batches."""
        import torch

        lm, _ = self._causal_lm()
        all_ids = self._encode(texts)
        out: list[float] = [0.0] * len(texts)
        # Longest first, so each padded batch holds documents of similar length.
        order = sorted(range(len(texts)), key=lambda i: -len(all_ids[i]))
        order = [i for i in order if len(all_ids[i]) >= 2]
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = len(all_ids[chunk[0]])
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    seq = all_ids[i]
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = ids[:, 1:]
                valid = mask[:, 1:].bool()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
                mean_nll = (nll * valid).sum(dim=1) / valid.sum(dim=1)
                for row, i in enumerate(chunk):
                    out[i] = math.exp(min(float(mean_nll[row]), 700.0))
        return out

    def kenlm_perplexities(self, texts: Sequence[str]) -> list[float]:
        """Data-Juicer's KenLM perplexity: SentencePiece pieces, per-line log10 scores."""
        if "_kenlm" not in self.__dict__:
            import kenlm
            import sentencepiece

            self.__dict__["_kenlm"] = kenlm.Model(str(self.kenlm_model))
            self.__dict__["_sp"] = sentencepiece.SentencePieceProcessor(model_file=str(self.sp_model))
        lm, sp = self.__dict__["_kenlm"], self.__dict__["_sp"]
        out = []
        for text in texts:
            joined = " ".join(sp.encode_as_pieces(text))
            logits, length = 0.0, 0
            for line in joined.splitlines():
                logits += lm.score(line)
                length += len(line.split()) + 1
            out.append(10.0 ** (-logits / length) if length else 0.0)
        return out

    # ---- filter contract -----------------------------------------------------------------------------
    def compute_stats(self, text: str) -> dict[str, Any]:
        return self.compute_stats_batch([text])[0]

    def compute_stats_batch(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        if self.model is not None:
            ppls = self.causal_lm_perplexities(texts)
        else:
            ppls = self.kenlm_perplexities(texts)
        return [{self.stat_key: round(p, 4)} for p in ppls]

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.min_ppl <= stats[self.stat_key] <= self.max_ppl

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {
            "stat": self.stat_key,
            "value": stats[self.stat_key],
            "min": self.min_ppl,
            "max": self.max_ppl,
        }

    def describe(self) -> str:
        scorer = f"model={self.model}" if self.model is not None else "kenlm"
        return f"{self.name}[<= {self.max_ppl:g}, {scorer}]"
