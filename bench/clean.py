"""Cleaning throughput of Steel-LLM's text recipe against Data-Juicer and against the I/O floor, in one run.

    .venv/bin/python bench/clean.py [--executor local|ray] [--workers 1 2] [--repeat 3]
        [--semantics data_juicer language_aware] [--shards 16 --copies 4]

Runs `recipes/steel-1b/clean_text.yaml` (without `perplexity_filter`, which needs a model) on
Steel-LLM's text samples in ../shared/data/steel_samples (SkyPile web, Chinese Wikipedia, Baidu
Baike) in both semantics, and a plain read + write of the same documents (the recipe's field
mapping, `.jsonl.zst` shards: the I/O floor) in the same run. Prints docs/s and MB/s per core,
chars/s, per-operator time shares, and the ratios the goals are stated in:

- >= 3x Data-Juicer's docs/s per core on this recipe (301 docs/s, 188 k chars/s on 1 process for
  8,250 docs / 5.15 M chars, ../shared/BENCH_ANCHORS.md; the corpora differ, so chars/s too);
- within 3x of the I/O floor.

It also times rjieba alone cutting every document (`language_aware`'s word filters segment Chinese
with it): a cost that semantics cannot go below, shown against the I/O floor.

With `--executor ray` only the wall-clock rates count: Ray's workers are not this process's children, so
their CPU time is missing from the per-core rates. Each Ray run gets a fresh instance with `--workers`
CPUs, started before its timing.

Rates are per CPU-second (user + system time of this process and its workers), so "per core" means
what one busy core does and a machine shared with other jobs distorts them less; the wall-clock
rates are printed beside them. The measurements run in `--repeat` rounds (floor, segmentation, every
configuration in turn): rates are the best round's, and each ratio to the I/O floor is the median
[range] of the per-round ratios, since the machine's speed drifts between rounds. Quote ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "steel_samples"
DJ_DOCS_PER_S = 301.0  # Data-Juicer 1.x, Steel text recipe, 1 process (BENCH_ANCHORS.md)
DJ_CHARS_PER_S = 188_000.0


def text_config(samples: Path):
    """The Steel text recipe's `data:` section with its inputs pointed at `samples`."""
    from steelforge.recipe import load_recipe

    config = load_recipe("steel-1b/clean_text").data
    assert config is not None
    process = [e for e in config.process if "perplexity_filter" not in e]
    inputs = [s.model_copy(update={"path": str(samples / Path(str(s.path)).name)}) for s in config.inputs]
    return config.model_copy(update={"inputs": inputs, "process": process})


def sharded_config(config, out_dir: Path, shards: int, copies: int):
    """The same sources rewritten as `shards` JSON-lines files each (round-robin), every document `copies` times.

    The executors parallelise over input files, so three sample files cap any run at three busy workers;
    real corpora come in many shards. Copy k > 0 of a document gets a line ` (k)` appended, so copies are
    near-duplicates (the dedup operators group them) rather than exact ones.
    """
    import json

    from steelforge.clean.io import BadRecord, iter_documents
    from steelforge.clean.pipeline import resolve_inputs

    inputs = []
    for spec in config.inputs:
        folder = out_dir / spec.name
        folder.mkdir(parents=True)
        handles = [(folder / f"part-{i:04d}.jsonl").open("w", encoding="utf-8") for i in range(shards)]
        n = 0
        for f in resolve_inputs(config.model_copy(update={"inputs": [spec]}), out_dir):
            for doc in iter_documents(f.path, f.spec):
                if isinstance(doc, BadRecord):
                    continue
                for k in range(copies):
                    text = doc["text"] if k == 0 else f"{doc['text']}\n({k})"
                    handles[n % shards].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    n += 1
        for h in handles:
            h.close()
        inputs.append(spec.model_copy(update={"path": str(folder / "part-*.jsonl"), "text_field": "text",
                                              "format": None, "template": None}))
    return config.model_copy(update={"inputs": inputs})


def cpu_seconds() -> float:
    """CPU time of this process (high resolution) plus that of its finished child processes (the workers)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def io_floor(config, out_dir: Path) -> tuple[float, int, int, float]:
    """Read every input document (field mapping included) and write it to `.jsonl.zst` shards."""
    from steelforge.clean.io import BadRecord, ShardWriter, iter_documents
    from steelforge.clean.pipeline import resolve_inputs

    start = cpu_seconds()
    docs = chars = size = 0
    with ShardWriter(out_dir, "kept") as writer:
        for f in resolve_inputs(config, out_dir):
            for doc in iter_documents(f.path, f.spec):
                if isinstance(doc, BadRecord):
                    continue
                writer.write(doc)
                docs += 1
                chars += len(doc["text"])
                size += len(doc["text"].encode("utf-8"))
    return cpu_seconds() - start, docs, chars, size / 1e6


def segmentation_only(config, out_dir: Path) -> float:
    """CPU seconds of rjieba cutting every input document: what `language_aware`'s word filters cannot go below."""
    from steelforge.clean.io import BadRecord, iter_documents
    from steelforge.clean.ops._text import jieba_tokens
    from steelforge.clean.pipeline import resolve_inputs

    texts = [
        doc["text"]
        for f in resolve_inputs(config, out_dir)
        for doc in iter_documents(f.path, f.spec)
        if not isinstance(doc, BadRecord)
    ]
    jieba_tokens(texts[0])
    start = cpu_seconds()
    for text in texts:
        jieba_tokens(text)
    return cpu_seconds() - start


FLOOR_PASSES = 5  # one floor measurement reads and writes the corpus this many times (~1 s of CPU)


def median_range(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.2f} [{ordered[0]:.2f}-{ordered[-1]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="clean/executors.py")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each: floor, segmentation, every run)")
    parser.add_argument("--semantics", nargs="+", default=["data_juicer", "language_aware"])
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder of Steel-LLM's sample files")
    parser.add_argument("--shards", type=int, default=0,
                        help="rewrite each source as N JSON-lines shards first (file-parallel executors need many files)")
    parser.add_argument("--copies", type=int, default=1, help="with --shards: each document this many times")
    args = parser.parse_args()
    if not args.samples.is_dir():
        sys.exit(f"{args.samples} is absent (it ships beside the repository as ../shared)")

    from steelforge.clean.pipeline import run_pipeline
    from steelforge.reporting import print_table

    config = text_config(args.samples)
    tmp = Path(tempfile.mkdtemp(prefix="bench-clean-"))
    try:
        if args.shards:
            config = sharded_config(config, tmp / "shards", args.shards, args.copies)
        # warm-up: jieba's dictionary, OpenCC and regex compilation are paid once per process
        run_pipeline(config.model_copy(update={"semantics": "language_aware"}), tmp / "warm", force=True)

        def floor_run() -> tuple[float, int, int, float]:
            """CPU seconds of one read + write pass (the mean of FLOOR_PASSES passes) and the corpus size."""
            total = 0.0
            for _ in range(FLOOR_PASSES):
                shutil.rmtree(tmp / "floor", ignore_errors=True)
                seconds, n_docs, n_chars, n_mb = io_floor(config, tmp / "floor")
                total += seconds
            return total / FLOOR_PASSES, n_docs, n_chars, n_mb

        def clean_run(semantics: str, workers: int, index: int):
            if args.executor == "ray":  # a Ray instance with `workers` CPUs, started outside the timing
                import ray

                ray.shutdown()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            start, wall = cpu_seconds(), time.perf_counter()
            if semantics in ("data_juicer", "language_aware"):
                run_config = config.model_copy(update={"semantics": semantics})
            else:
                run_config = config.model_copy(update={"process": []})
            result = run_pipeline(
                run_config, tmp / f"run-{index}", num_workers=workers, executor=args.executor, force=True
            )
            return cpu_seconds() - start, time.perf_counter() - wall, result

        runs = [("no operators (pipeline overhead)", 1)]
        runs += [(semantics, workers) for semantics in args.semantics for workers in args.workers]
        # Rounds: the floor, segmentation and every run in turn, so each ratio compares measurements
        # taken minutes apart at most (the machine's speed drifts); rates are the best round's.
        floors: list[float] = []
        segs: list[float] = []
        measured: list[list[tuple[float, float, object]]] = [[] for _ in runs]
        for _ in range(args.repeat):
            floor_s, n_docs, n_chars, n_mb = floor_run()
            floors.append(floor_s)
            segs.append(segmentation_only(config, tmp))
            for index, (semantics, workers) in enumerate(runs):
                measured[index].append(clean_run(semantics, workers, index))
        floor_s = min(floors)
        seg_s = min(segs)
        rows: list[tuple] = [
            ("read + write (I/O floor)", 1, "", n_docs / floor_s, n_mb / floor_s, n_chars / floor_s, "1", "", ""),
            (
                "Chinese word segmentation alone (rjieba, every doc)", 1, "", n_docs / seg_s, n_mb / seg_s,
                n_chars / seg_s, median_range([s / f for s, f in zip(segs, floors, strict=True)]), "", "",
            ),
        ]  # fmt: skip
        shares: dict[str, list[tuple[str, float]]] = {}
        for (semantics, workers), results in zip(runs, measured, strict=True):
            seconds, wall, result = min(results, key=lambda r: r[0])
            assert result.kept + result.rejected == n_docs, "counts do not reconcile"
            per_core_docs = n_docs / seconds
            per_core_chars = n_chars / seconds
            rows.append(
                (
                    f"{semantics}, {workers} worker(s), kept {result.kept:,}" if result.ops else semantics,
                    workers,
                    n_docs / wall,
                    per_core_docs,
                    n_mb / seconds,
                    per_core_chars,
                    median_range([r[0] / f for r, f in zip(results, floors, strict=True)]),
                    per_core_docs / DJ_DOCS_PER_S,
                    per_core_chars / DJ_CHARS_PER_S,
                )
            )
            if result.ops and workers == args.workers[0]:
                total = sum(op.seconds for op in result.ops) or 1.0
                shares[semantics] = sorted(
                    ((op.op, op.seconds / total) for op in result.ops), key=lambda x: -x[1]
                )
        print_table(
            f"Steel text recipe on {n_docs:,} docs / {n_chars / 1e6:.2f} M chars / {n_mb:.2f} MB "
            f"({args.samples.name}); rates: best of {args.repeat} rounds, x I/O floor: median [range] per round",
            [
                "run",
                "workers",
                "docs/s wall",
                "docs/s/core",
                "MB/s/core",
                "chars/s/core",
                "x I/O floor CPU (goal <= 3)",
                "x DJ docs/s",
                "x DJ chars/s",
            ],
            rows,
        )
        for semantics, items in shares.items():
            print_table(
                f"operator time shares, {semantics} ({args.workers[0]} worker(s))",
                ["operator", "share"],
                [(name, f"{share:.1%}") for name, share in items],
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
