"""Under torchrun (see test_dpo.py): the SFT and DPO stages on every rank, from recipes in STEELFORGE_TEST_OUT."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from steelforge.cli import run_stage
from steelforge.recipe import load_recipe
from steelforge.train.distributed import destroy_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(os.environ["STEELFORGE_TEST_OUT"])
    run_stage("sft", load_recipe(out / "sft_2.yaml"), force=True)
    run_stage("dpo", load_recipe(out / "dpo_2.yaml"), force=True)
    destroy_distributed()
