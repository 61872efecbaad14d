"""The Ray executor runs one task per input file and writes the same bytes as local execution.

One module, one local Ray instance (`ray.init(num_cpus=2)`, start-up paid once); an attached cluster is
tested in test_executors_ray_cluster.py. Slow on a 2-core machine: marked `slow`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from steelforge.clean.clean_config import CleanConfig  # noqa: E402
from steelforge.clean.io import ShardWriter, iter_records  # noqa: E402
from steelforge.clean.ops.base import Filter, Mapper, register_op  # noqa: E402
from steelforge.clean.pipeline import run_pipeline  # noqa: E402


@register_op("test_ray_collapse_spaces_mapper")
class CollapseSpaces(Mapper):
    def map_text(self, text: str) -> str:
        return " ".join(text.split())


@register_op("test_ray_no_digits_filter")
class NoDigits(Filter):
    def compute_stats(self, text: str) -> dict[str, Any]:
        return {"digits": sum(c.isdigit() for c in text)}

    def keep(self, stats: dict[str, Any]) -> bool:
        return stats["digits"] == 0

    def explain(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {"stat": "digits", "value": stats["digits"], "max": 0}


pytestmark = pytest.mark.slow


@register_op("test_ray_kill_once_mapper")
class KillOnce(Mapper):
    """Kills the worker process running it the first time it sees `flag` (a file), as a crash would."""

    def __init__(self, flag: str = "", semantics: str = "language_aware") -> None:
        super().__init__(semantics)  # type: ignore[arg-type]
        self.flag = flag

    def map_text(self, text: str) -> str:
        if self.flag and "lazy" in text and os.path.exists(self.flag):
            os.unlink(self.flag)
            os._exit(1)
        return text


@pytest.fixture(scope="module")
def local_ray() -> Any:
    from ray import cloudpickle

    # Ray workers do not import this test module: ship the operators defined here by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _corpus(root: Path) -> str:
    texts = [
        "the quick  brown fox jumps over the lazy dog",
        "天气  很好，我们去公园散步。",
        "call 555 0100 now",
        "the quick brown fox jumps over the lazy dog",
        "a   completely different sentence about ray data tasks",
        "数据清洗 不应该 丢失 任何 文档",
    ]
    for f in range(2):
        with ShardWriter(root / f"s{f}", "part") as writer:
            for i in range(30):
                writer.write(
                    {
                        "id": f"{f}-{i}",
                        "text": texts[(i * (f + 1)) % len(texts)] + ("" if i % 4 else f" v{i % 3}x"),
                    }
                )
    return str(root / "s*" / "*.jsonl.zst")


def _outputs(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = {p.name: p.read_bytes() for p in sorted((out / "kept").glob("*"))}
    data["rejected"] = sorted(
        tuple(sorted(r.items())) for p in (out / "rejected").glob("*") for r in iter_records(p)
    )
    return data


def test_ray_executor_matches_local(local_ray: Any, tmp_path: Path) -> None:
    glob = _corpus(tmp_path / "in")
    config = CleanConfig(
        inputs=[{"name": "mix", "path": glob, "id_field": "id"}],
        process=[
            {"test_ray_collapse_spaces_mapper": {}},
            {"test_ray_no_digits_filter": {}},
            {"document_minhash_deduplicator": {"window_size": 2}},
        ],
        batch_size=8,
    )
    local = run_pipeline(config, tmp_path / "local", num_workers=1)
    on_ray = run_pipeline(config, tmp_path / "ray", num_workers=2, executor="ray")
    run_pipeline(config, tmp_path / "two", num_workers=2)
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "local")
    assert local.kept > 0 and local.rejected > 0
    assert (on_ray.kept, on_ray.rejected, on_ray.errors) == (local.kept, local.rejected, local.errors)
    assert [(o.docs_in, o.docs_out) for o in on_ray.ops] == [(o.docs_in, o.docs_out) for o in local.ops]
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")


@register_op("test_ray_failing_mapper")
class Failing(Mapper):
    def map_text(self, text: str) -> str:
        if "fox" in text:
            raise ValueError("cannot map a fox")
        return text


def test_operator_error_on_ray_reaches_the_caller(local_ray: Any, tmp_path: Path) -> None:
    from steelforge.clean.pipeline import OperatorError

    config = CleanConfig(
        inputs=[{"name": "mix", "path": _corpus(tmp_path / "in"), "id_field": "id"}],
        process=[{"test_ray_failing_mapper": {}}],
    )
    with pytest.raises(OperatorError, match="test_ray_failing_mapper' failed on document '0-0'"):
        run_pipeline(config, tmp_path / "out", num_workers=2, executor="ray")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_killed_ray_worker_loses_and_duplicates_nothing(local_ray: Any, tmp_path: Path) -> None:
    glob = _corpus(tmp_path / "in")
    flag = tmp_path / "kill-flag"
    flag.touch()
    process = [
        {"test_ray_kill_once_mapper": {"flag": str(flag)}},
        {"test_ray_no_digits_filter": {}},
        {"document_simhash_deduplicator": {}},
    ]
    config = CleanConfig(
        inputs=[{"name": "mix", "path": glob, "id_field": "id"}], process=process, batch_size=8
    )
    on_ray = run_pipeline(config, tmp_path / "ray", num_workers=2, executor="ray")
    assert not flag.exists(), "a worker was killed mid-run"
    local = run_pipeline(config, tmp_path / "local", num_workers=1)  # flag gone: nothing killed here
    assert (on_ray.kept, on_ray.rejected, on_ray.errors) == (local.kept, local.rejected, local.errors)
    assert on_ray.kept + on_ray.rejected == 60
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
