"""Local execution: identical output with 1 and 2 workers; a killed worker process, then a clean resume."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from steelforge.clean.clean_config import CleanConfig
from steelforge.clean.executors import LocalExecutor, SerialExecutor, make_executor
from steelforge.clean.io import ShardWriter, iter_records, read_shards
from steelforge.clean.ops.base import Filter, Mapper, register_op
from steelforge.clean.pipeline import run_pipeline

PARENT = os.getpid()
KILL_FLAG = "STEELFORGE_TEST_KILL_FLAG"


@register_op("test_executors_lower_mapper")
class Lower(Mapper):
    def map_text(self, text: str) -> str:
        flag = os.environ.get(KILL_FLAG)
        if flag and os.getpid() != PARENT and "kill-me" in text and Path(flag).exists():
            os._exit(17)  # a worker dies mid-run, as under the OOM killer
        return text.lower()


@register_op("test_executors_words_filter")
class MinWords(Filter):
    def compute_stats(self, text: str) -> dict[str, Any]:
        return {"words": len(text.split())}

    def keep(self, stats: dict[str, Any]) -> bool:
        return stats["words"] >= 4

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"stat": "words", "value": stats["words"], "min": 4}


PROCESS = [
    {"test_executors_lower_mapper": {}},
    {"test_executors_words_filter": {}},
    {"document_deduplicator": {}},
    {"document_minhash_deduplicator": {"window_size": 3, "jaccard_threshold": 0.7}},
    {"document_simhash_deduplicator": {"window_size": 3}},
]


def make_corpus(root: Path, files: int = 3, per_file: int = 40, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    bases = [" ".join(rng.choices(vocab, k=30)) for _ in range(20)]
    for f in range(files):
        with ShardWriter(root / f"src{f}", "part", max_docs=per_file // 2) as writer:
            for i in range(per_file):
                kind = rng.random()
                if kind < 0.2:
                    text = rng.choice(bases)  # exact duplicate (up to case)
                elif kind < 0.4:
                    words = rng.choice(bases).split()
                    words[rng.randrange(len(words))] = "changed"
                    text = " ".join(words)  # near duplicate
                elif kind < 0.5:
                    text = "too short"
                else:
                    text = " ".join(rng.choices(vocab, k=rng.randint(5, 40)))
                writer.write({"id": f"f{f}-{i}", "text": text.upper() if i % 7 == 0 else text})
    return str(root / "src*" / "*.jsonl.zst")


def config(glob: str, **kw: Any) -> CleanConfig:
    return CleanConfig(
        inputs=[{"name": "web", "path": glob, "id_field": "id"}],
        process=PROCESS,
        batch_size=7,
        shard_max_docs=25,
        **kw,
    )


def outputs(out: Path) -> dict[str, Any]:
    result = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "kept").glob("*"))}
    result["rejected"] = sorted(
        (r["id"], r["op_index"], r.get("duplicate_of"))
        for p in sorted((out / "rejected").glob("*"))
        for r in iter_records(p)
    )
    return result


def test_make_executor_kinds() -> None:
    assert isinstance(make_executor("local", 1), SerialExecutor)
    assert isinstance(make_executor("local", 2), LocalExecutor)
    assert list(LocalExecutor(2).run(abs, iter([-3, 2, -1, 0, -5]))) == [3, 2, 1, 0, 5]


def test_one_and_two_workers_write_identical_bytes(tmp_path: Path) -> None:
    glob = make_corpus(tmp_path / "in")
    one = run_pipeline(config(glob), tmp_path / "one", num_workers=1)
    two = run_pipeline(config(glob), tmp_path / "two", num_workers=2)
    assert one.kept > 20 and one.rejected > 20
    assert [o.docs_out for o in one.ops] == [o.docs_out for o in two.ops]
    ops = {o.op: o.docs_in - o.docs_out for o in one.ops}
    assert ops["document_deduplicator"] > 0 and ops["document_minhash_deduplicator"] > 0
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")
    kept_ids = [d["id"] for d in read_shards(one.kept_paths)]
    assert kept_ids == sorted(kept_ids, key=lambda i: (int(i[1]), int(i.split("-")[1]))), "input order"


def test_killed_worker_then_resume_gives_the_same_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    glob = make_corpus(tmp_path / "in")
    # One document of the last file makes its worker process exit abruptly.
    victim = tmp_path / "in" / "src2" / "part-00001.jsonl.zst"
    rows = list(iter_records(victim))
    rows[3]["text"] = "kill-me " + rows[3]["text"]
    with ShardWriter(tmp_path / "fixed", "part") as writer:
        for row in rows:
            writer.write(row)
    os.replace(writer.paths[0], victim)
    reference = run_pipeline(config(glob), tmp_path / "ref", num_workers=2)

    flag = tmp_path / "armed"
    flag.touch()
    monkeypatch.setenv(KILL_FLAG, str(flag))
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        run_pipeline(config(glob), tmp_path / "out", num_workers=2)
    work = tmp_path / "out" / "work" / "piece0"
    done = sorted(p.name for p in work.glob("*.done"))
    assert "00000-web.done" in done and "00005-web.done" not in done  # results in flight died with the pool
    flag.unlink()
    resumed = run_pipeline(config(glob), tmp_path / "out", num_workers=2)
    assert (resumed.kept, resumed.rejected) == (reference.kept, reference.rejected)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")


def test_driver_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    """The driver's peak Python memory (tracemalloc) does not grow with the number of documents: 10x more
    documents stay within +10%, because file tasks read, clean and write them in the workers and return only
    a summary. 10x more files cost only the per-file bookkeeping (paths, summaries, stats), under 3 KB a file.
    """
    import json
    import tracemalloc

    def corpus(root: Path, files: int, docs: int) -> str:
        root.mkdir(parents=True)
        filler = "words that make the document about a kilobyte long " * 20
        for f in range(files):
            lines = [json.dumps({"id": f"{f}-{i}", "text": f"document {f} {i} {filler}"}) for i in range(docs)]
            (root / f"f{f:03d}.jsonl").write_text("\n".join(lines) + "\n")
        return str(root / "*.jsonl")

    def peak(glob: str, out: Path) -> tuple[int, int]:
        cfg = CleanConfig(
            inputs=[{"name": "web", "path": glob, "id_field": "id"}],
            process=[{"words_num_filter": {"min_num": 5}}, {"text_length_filter": {"min_len": 20}}],
            batch_size=100,
        )
        tracemalloc.start()
        try:
            result = run_pipeline(cfg, out, num_workers=2)
            return tracemalloc.get_traced_memory()[1], result.kept
        finally:
            tracemalloc.stop()

    base = corpus(tmp_path / "base", 3, 200)
    peak(base, tmp_path / "warm")  # operator tables and imports, built once per process
    base_peak, base_kept = peak(base, tmp_path / "a")
    more_docs_peak, more_docs_kept = peak(corpus(tmp_path / "docs", 3, 2000), tmp_path / "b")
    more_files_peak, more_files_kept = peak(corpus(tmp_path / "files", 30, 200), tmp_path / "c")
    assert (base_kept, more_docs_kept, more_files_kept) == (600, 6000, 6000)
    assert more_docs_peak <= 1.10 * base_peak, (base_peak, more_docs_peak)  # 10x the documents (~6 MB more text)
    assert more_files_peak - base_peak <= 27 * 3000, (base_peak, more_files_peak)
