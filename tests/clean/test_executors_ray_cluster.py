"""The Ray executor attached by address to a real local cluster (`ray start --head`, 2 CPUs, in a subprocess):
same bytes as the local executor. Slow on a 2-core machine: marked `slow`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from steelforge.clean.clean_config import CleanConfig  # noqa: E402
from steelforge.clean.io import ShardWriter, read_shards  # noqa: E402
from steelforge.clean.pipeline import run_pipeline  # noqa: E402

pytestmark = pytest.mark.slow
PORT = "6397"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`ray start --head --block` in its own process group (stopped by signalling that group only: other
    Ray instances on the machine are left alone), token auth off for this local test cluster."""
    if ray.is_initialized():
        ray.shutdown()
    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # workers import this checkout
    temp = tmp_path_factory.mktemp("ray")
    log = temp / "head.log"
    start = [exe, "start", "--head", "--block", "--num-cpus", "2", "--port", PORT, "--node-ip-address",
             "127.0.0.1", "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats"]  # fmt: skip
    with open(log, "wb") as out:
        head = subprocess.Popen(start, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in log.read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up: {log.read_text()[-2000:]}")
            time.sleep(1)
        ray.init(address=f"127.0.0.1:{PORT}", log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_attached_cluster_writes_the_same_bytes_as_local(cluster: Any, tmp_path: Path) -> None:
    texts = [
        "the quick brown fox jumps over the lazy dog today",
        "数据清洗不应该丢失任何文档，也不应该重复。",
        "call 555 0100",
    ]
    for f in range(3):
        with ShardWriter(tmp_path / "in" / f"s{f}", "part") as writer:
            for i in range(20):
                writer.write({"id": f"{f}-{i}", "text": texts[(i + f) % 3] + f" {i % 4}"})
    config = CleanConfig(
        inputs=[{"name": "mix", "path": str(tmp_path / "in" / "s*" / "*.jsonl.zst"), "id_field": "id"}],
        process=[{"words_num_filter": {"min_num": 3}}, {"document_simhash_deduplicator": {}}],
        batch_size=7,
    )
    on_ray = run_pipeline(config, tmp_path / "ray", num_workers=2, executor="ray")
    local = run_pipeline(config, tmp_path / "local", num_workers=2)
    assert on_ray.kept + on_ray.rejected == 60 and on_ray.kept > 0
    for name in ("kept", "rejected"):
        ours = {p.name: p.read_bytes() for p in sorted((tmp_path / "ray" / name).glob("*"))}
        assert ours == {p.name: p.read_bytes() for p in sorted((tmp_path / "local" / name).glob("*"))}
    assert [d["id"] for d in read_shards(on_ray.kept_paths)] == [
        d["id"] for d in read_shards(local.kept_paths)
    ]
