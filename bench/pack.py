"""Tokens/s of `pack` against a bare `tokenizers` `encode_batch` of the same texts, in one run.

    .venv/bin/python bench/pack.py [--workers 1 2] [--repeat 3]

Reads Steel-LLM's sample sources from ../shared/data/steel_samples (zh web, Baidu Baike, Python
code, zh Wikipedia), tokenizes them with the offline Qwen1.5 tokenizer and prints tokens/s of the
bare tokenizer (whole batch, Rust threads) and of `pack_documents` (tokenize + separator + shards
+ md5 + manifest), and their ratio (goal: pack >= 80% of the bare tokenizer).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "steel_samples"


def load_texts() -> list[tuple[str, str]]:
    from steelforge.clean.io import file_stem, iter_records

    docs = []
    for path in sorted(SAMPLES.iterdir()):
        for record in iter_records(path):
            text = record.get("text") or record.get("content") or record.get("completion")
            if text is None:
                text = "\n".join(str(record.get(k, "")) for k in ("title", "summary", "sections"))
            docs.append((file_stem(path), text))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for each measurement")
    args = parser.parse_args()
    if not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} is absent (it ships beside the repository as ../shared)")

    import torch

    torch.set_num_threads(2)
    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint
    from steelforge.tokens.pack import pack_documents

    docs = load_texts()
    texts = [t for _, t in docs]
    chars = sum(len(t) for t in texts)
    tokenizer = load_tokenizer("qwen1.5")
    fingerprint = tokenizer_fingerprint(tokenizer)
    backend = tokenizer.backend_tokenizer

    def best_of(fn) -> tuple[int, float]:
        tokens, seconds = 0, float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            tokens = fn()
            seconds = min(seconds, time.perf_counter() - start)
        return tokens, seconds

    bare_tokens, bare_s = best_of(
        lambda: sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
    )
    bare_tps = bare_tokens / bare_s
    fast_tokens, fast_s = best_of(
        lambda: sum(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    )
    print(
        f"{len(texts):,} docs, {chars:,} chars, {bare_tokens:,} tokens ({chars / bare_tokens:.2f} chars/token)"
    )
    print(f"bare tokenizers encode_batch          : {bare_tps:>12,.0f} tokens/s  ({bare_s:.2f} s)")
    print(
        f"bare tokenizers encode_batch_fast     : {fast_tokens / fast_s:>12,.0f} tokens/s  ({fast_s:.2f} s, no offsets)"
    )

    for workers in args.workers:
        best = float("inf")
        for _ in range(args.repeat):
            out = Path(tempfile.mkdtemp(prefix="bench_pack_"))
            start = time.perf_counter()
            manifest = pack_documents(
                docs,
                tokenizer,
                out,
                tokenizer_name="qwen1.5",
                tokenizer_fingerprint=fingerprint,
                shard_tokens=1 << 20,
                num_workers=workers,
                batch_docs=256,
            )
            best = min(best, time.perf_counter() - start)
            shutil.rmtree(out)
        tokens = sum(s.tokens for s in manifest.shards)
        print(
            f"pack_documents, {workers} worker(s)           : {tokens / best:>12,.0f} tokens/s  ({best:.2f} s, "
            f"{tokens:,} tokens incl. separators)  ratio to bare: {tokens / best / bare_tps:.2f}"
            f" (to encode_batch_fast: {tokens / best / (fast_tokens / fast_s):.2f})"
        )


if __name__ == "__main__":
    main()
