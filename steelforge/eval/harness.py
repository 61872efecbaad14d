"""lm-evaluation-harness on the project's model object (the `[eval]` extra): `steelforge eval MODEL --harness T`.

`SteelforgeLM` is an `lm_eval.api.model.LM` whose requests run through this package's batched scorers
(`loglikelihood`: lm-eval's `_encode_pair` tokenization, fp32 log-probs via `token_logps`; `generate_until`:
`generation.generate_texts`), so Steel models and anything `load_model` builds are evaluated in memory, with no
export step. Tasks come from lm-eval's registry (their data must already be in the local datasets cache) or from
`include_path` YAMLs over local files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steelforge.errors import SteelforgeError
from steelforge.eval import scoring
from steelforge.eval.tasks.generation import generate_texts

try:
    from lm_eval.api.model import LM
except ImportError:  # the [eval] extra is optional; run_harness names the fix
    LM = object  # type: ignore[assignment,misc]


class SteelforgeLM(LM):  # type: ignore[misc,valid-type]
    """An lm-eval model backed by an in-memory causal LM and its tokenizer."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, batch_size: int = 16, max_length: int = 2048
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        lls = scoring.loglikelihoods(self.model, self.tokenizer, pairs, max_length=self.max_length,
                                     batch_size=self.batch_size)  # fmt: skip
        greedy = self._is_greedy(pairs)
        return list(zip(lls, greedy, strict=True))

    @torch.no_grad()
    def _is_greedy(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Whether each continuation is the model's greedy choice token by token (lm-eval's second value)."""
        out = []
        for context, continuation in pairs:
            ctx, cont = scoring.encode_pair(self.tokenizer, context, continuation)
            full = (ctx + cont)[-(self.max_length + 1) :]
            ids = torch.tensor([full[:-1]], device=next(self.model.parameters()).device)
            logits = self.model(input_ids=ids).logits[0, -len(cont) :]
            out.append(bool((logits.argmax(-1).tolist()) == full[-len(cont) :]))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in requests:
            (text,) = r.args
            out.append(
                scoring.loglikelihoods(self.model, self.tokenizer, [("", text)], max_length=self.max_length)[
                    0
                ]
            )
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until", [])
            until = (until,) if isinstance(until, str) else tuple(until)
            text = generate_texts(
                self.model, self.tokenizer, [context], max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                temperature=float(kwargs.get("temperature", 0.0)), top_p=float(kwargs.get("top_p", 1.0)), stop=until,
            )[0]  # fmt: skip
            out.append(text)
        return out


def run_harness(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    out_dir: Path | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    include_path: Path | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on the model; return {"results": ..., "table": markdown}."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError:
        raise SteelforgeError(
            "--harness needs lm-evaluation-harness; install the extra: pip install 'steelforge[eval]'"
        ) from None
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SteelforgeError(
            f"lm-eval knows no task {', '.join(unknown)}; check the name or pass --include-path"
        )
    lm = SteelforgeLM(model, tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                  log_samples=False, bootstrap_iters=0)  # fmt: skip
    if res is None:
        raise SteelforgeError("lm-eval returned no results (non-main rank)")
    results = {"results": res["results"], "n-samples": res.get("n-samples", {})}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(out_dir) / ".harness_results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, Path(out_dir) / "harness_results.json")
    return {**results, "table": make_table(res)}
