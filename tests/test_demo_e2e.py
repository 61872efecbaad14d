"""The demo recipe end to end, shortened: every stage runs, the report measures each one, the release loads.

`make demo` runs the same recipe with its full step counts (minutes); this test keeps the recipe and cuts the
steps and the data so that it fits the test budget, and checks the effects that show at this length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHORT = [
    "data.inputs.0.synthetic.num_docs=1000",
    "pretrain.max_steps=60",
    "pretrain.checkpoint.every=60",
    "tasks.sft=[400,30]",
    "tasks.dpo=[96,30]",
    "tasks.grpo=[16,16]",
    "tasks.eval_items=12",
    "tasks.word_problem_items=6",
    "sft.max_steps=20",
    "dpo.max_steps=6",
    "grpo.max_steps=2",
    "grpo.val_every=2",
    "grpo.val_prompts=16",
    "eval.tasks=[cmmlu,gsm8k]",
    "report.heldout_docs=60",
]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # every stage of the lifecycle, twice: above the suite-wide 300 s
def test_demo_runs_every_stage_and_reports_their_effects(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "steelforge.cli", "run", "demo", "--set", f"out_dir={out}"]
    for override in SHORT:
        cmd += ["--set", override]
    env = {**os.environ, "STEELFORGE_QUIET": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    text = (out / "REPORT.md").read_text(encoding="utf-8")
    for section in ("## Summary", "## Cleaning", "## Pretraining", "## SFT", "## DPO", "## GRPO", "## Evaluation",
                    "## Export", "## Chat"):  # fmt: skip
        assert section in text

    # cleaning: every injected duplicate, spam, short and symbol document is rejected by the operator meant for
    # it, and no kept document still holds the HTML, e-mail or link noise a mapper was meant to remove
    kinds = report["clean"]["kinds"]
    meant = {"exact_dup": "document_deduplicator", "near_dup": "document_minhash_deduplicator",
             "too_short": "text_length_filter", "special_chars": "special_characters_filter"}  # fmt: skip
    for kind, op in meant.items():
        assert kinds[kind]["kept"] == 0 and kinds[kind]["by"].get(op) == kinds[kind]["in"] > 0
    assert kinds["spam"]["kept"] == 0
    assert all(kinds[k]["residue"] == 0 and kinds[k]["rejected"] == 0 for k in ("html", "email", "link"))
    assert kinds["clean"]["rejected"] == 0

    # pretraining: held-out loss below the unigram baseline (the full demo ends far below it)
    assert report["pretrain"]["loss"] < report["pretrain"]["unigram_loss"]

    # DPO: on held-out pairs the policy moved towards the chosen answers relative to its reference
    assert report["dpo"]["reward_margin_after"] > 0

    # every later stage measured something, and the four models were evaluated side by side
    assert {"before", "after"} <= set(report["sft"]) and {"before", "after"} <= set(report["grpo"])
    assert list(report["eval"]) == ["base", "sft", "dpo", "grpo"]
    assert (out / "eval_bars.png").stat().st_size > 0

    # the release loads with plain transformers (steelforge blocked) and stops at a stop token
    assert report["export"]["plain_transformers_loads"] is True
    assert report["export"]["stopped_at_stop_token"] in (True, False)
    assert len(report["chat"]) == 3 and all("answer" in c for c in report["chat"])

    # a second run reuses every completed stage
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "done in" not in again.stderr.split("summary")[-1]
