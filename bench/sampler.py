"""Loader throughput and resume time, against what training consumes and a raw memmap read.

    .venv/bin/python bench/sampler.py [--tokens 16000000] [--seconds 5]

1. Throughput: a synthetic 2-source store (80/20 mixture) read by `TokenLoader` at Steel-LLM's
   shape (seq 2048, micro-batch 8), with 0 and 2 worker processes. Printed as tokens/s, as a
   multiple of what a 1B model consumes per GPU (~15k tokens/s in Steel-LLM's runs; goal >= 50x)
   and as a fraction of a bare sequential memmap read of the same shards (the ceiling).
2. Resume: a store of ~1e9 samples of 2048 tokens (sparse shard files: the manifest is real, the
   bytes are holes), state taken deep into the epoch; time to build the loader, load the state
   and yield the next batch (goal < 1 s), and the state's size in bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CONSUMED_PER_GPU = 15_000  # tokens/s/GPU, Steel-LLM paper Table 2 (1B-class model on A100)


def synthetic_store(path: Path, tokens: int) -> Path:
    from steelforge.tokens.pack import write_token_store

    rng = np.random.default_rng(0)

    def docs():
        made = 0
        while made < tokens:
            n = int(rng.integers(200, 4000))
            made += n
            yield ("zh" if rng.random() < 0.7 else "en"), rng.integers(0, 151_643, n, dtype=np.uint32)

    write_token_store(
        path, docs(), tokenizer_name="synthetic", tokenizer_fingerprint="synthetic", shard_tokens=1 << 22
    )
    return path


def throughput(store: Path, workers: int, seconds: float) -> float:
    from steelforge.tokens.loader import TokenLoader

    loader = TokenLoader(
        store,
        seq_len=2048,
        micro_batch_size=8,
        grad_accum=8,
        num_workers=workers,
        mixture={"zh": 0.8, "en": 0.2},
        return_position_ids=True,
    )
    it = iter(loader)
    next(it)  # start-up (worker processes) is not throughput
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += next(it)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def memmap_ceiling(store: Path) -> float:
    from steelforge.tokens.store import TokenStore

    opened = TokenStore(store)
    start, total = time.perf_counter(), 0
    for shard in opened.shards:
        total += int(np.asarray(opened.tokens(shard), dtype=np.int64).size)
    return total / (time.perf_counter() - start)


def sparse_store(path: Path, samples: float, seq_len: int) -> Path:
    """A store whose manifest lists ~`samples` samples in sparse shard files (holes, no disk)."""
    from steelforge.tokens.store import Manifest, ShardInfo

    path.mkdir(parents=True)
    shard_tokens = 1 << 31
    n_shards = int(samples * seq_len // shard_tokens) + 1
    shards = []
    for i in range(n_shards):
        stem = f"web-{i:05d}"
        with open(path / f"{stem}.u32", "wb") as fh:
            fh.truncate(shard_tokens * 4)
        (path / f"{stem}.docs").write_bytes(np.zeros(1, dtype="<u8").tobytes())
        shards.append(ShardInfo(f"{stem}.u32", f"{stem}.docs", f"{i:032x}", "0" * 32, shard_tokens, 1, "web"))
    Manifest("synthetic", "synthetic", None, None, shard_tokens, shards).save(path)
    return path


def resume_time(store: Path) -> tuple[float, int, int]:
    from steelforge.tokens.loader import TokenLoader
    from steelforge.tokens.sampler import GlobalSampler, Phase

    kw = {"seq_len": 2048, "micro_batch_size": 8, "grad_accum": 8}
    loader = TokenLoader(store, **kw)
    n_samples = next(iter(loader._streams.values())).tokens // 2048
    # a state ~600k steps into the epoch, built without iterating there: the sampler's fields are integers
    sampler = GlobalSampler(
        {"web": next(iter(loader._streams.values())).tokens}, global_batch_size=64, phases=[Phase(None, 2048)]
    )
    state = loader.state_dict()
    deep = sampler.state_dict()
    deep["step"], deep["tokens"] = 600_000, 600_000 * 64 * 2048
    deep["sources"]["web"]["cursor"] = 600_000 * 64
    deep["mixture"]["drawn"]["web"] = deep["mixture"]["count"] = 600_000 * 64
    state["sampler"], state["micro"] = deep, 3
    blob = json.dumps(state)
    start = time.perf_counter()
    resumed = TokenLoader(store, **kw)
    resumed.load_state_dict(json.loads(blob))
    next(iter(resumed))
    return time.perf_counter() - start, n_samples, len(blob)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=16_000_000, help="size of the synthetic store")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per loader setting")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sampler_"))
    try:
        store = synthetic_store(tmp / "store", args.tokens)
        ceiling = memmap_ceiling(store)
        print(f"raw memmap read of the shards      : {ceiling:>14,.0f} tokens/s")
        for workers in (0, 2):
            tps = throughput(store, workers, args.seconds)
            print(
                f"TokenLoader, {workers} worker(s)           : {tps:>14,.0f} tokens/s = {tps / 2048:,.0f} samples/s = "
                f"{tps / CONSUMED_PER_GPU:,.0f}x a 1B model's 15k tokens/s/GPU (goal 50x); {tps / ceiling:.2f} of raw read"
            )
        seconds, n_samples, size = resume_time(sparse_store(tmp / "huge", 1e9, 2048))
        print(
            f"resume on a {n_samples:.2e}-sample store : {seconds:.3f} s (goal < 1 s); state {size} bytes of JSON"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
