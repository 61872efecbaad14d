"""What one tiny-steel checkpoint stores (bench/RESULTS.md).

    PYTHONPATH=. python bench/checkpoint_size.py /tmp/ckd
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from steelforge.models.loading import load_model
from steelforge.train.checkpoint import Checkpointer
from steelforge.train.config import OptimConfig
from steelforge.train.optim import build_optimizer


def main(out: Path) -> None:
    model = load_model({"preset": "tiny-steel"}, dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    print(f"parameters {n:,}; fp32 weights {n * 4 / 1e6:.1f} MB")
    optimizer = build_optimizer(model, OptimConfig())
    ids = torch.randint(0, 1000, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # AdamW moments exist only after a step
    saved = Checkpointer(out).save(1, {"model": model, "optimizer": optimizer})
    for f in sorted(saved.iterdir()):
        print(f"{f.name}: {f.stat().st_size / 1e6:.2f} MB")
    total = sum(f.stat().st_size for f in saved.iterdir())
    print(f"total {total / 1e6:.1f} MB; weights + two AdamW moments = {3 * n * 4 / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
