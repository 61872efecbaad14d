"""Where batches of documents are processed: in-process, a local process pool, or Ray Data tasks.

Every executor takes a picklable `runner` (a callable holding the operators of one pipeline
segment) and an iterator of batches, and yields the runner's results **in input order** with a
bounded number of batches in flight, so memory stays flat however large the input is and the
output does not depend on the number of workers.

- `serial`: the runner in this process (one worker; simplest to debug).
- `local`: `concurrent.futures.ProcessPoolExecutor`; the runner reaches each worker once through
  the pool initializer (inherited when the platform forks, pickled otherwise).
- `ray`: each batch is a row of a Ray Data dataset mapped by `map_batches` with the same runner, in
  windows of batches with `preserve_order`; `ray.init()` joins the cluster named by `RAY_ADDRESS`,
  or starts a local instance with `num_workers` CPUs.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

Runner = Callable[[Any], Any]


class Executor(Protocol):
    name: str
    num_workers: int

    def run(self, runner: Runner, batches: Iterable[Any]) -> Iterator[Any]:
        """Results of `runner(batch)` for each batch, in input order."""
        ...


class SerialExecutor:
    name = "serial"

    def __init__(self) -> None:
        self.num_workers = 1

    def run(self, runner: Runner, batches: Iterable[Any]) -> Iterator[Any]:
        for batch in batches:
            yield runner(batch)


_WORKER_RUNNER: Runner | None = None


def _init_worker(runner: Runner) -> None:
    global _WORKER_RUNNER
    _WORKER_RUNNER = runner


def _call_worker(batch: Any) -> Any:
    assert _WORKER_RUNNER is not None, "worker started without a runner"
    return _WORKER_RUNNER(batch)


class LocalExecutor:
    """A process pool per `run` call; at most `2 * num_workers` batches in flight."""

    name = "local"

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers

    def run(self, runner: Runner, batches: Iterable[Any]) -> Iterator[Any]:
        window = 2 * self.num_workers
        with ProcessPoolExecutor(self.num_workers, initializer=_init_worker, initargs=(runner,)) as pool:
            pending: deque[Future[Any]] = deque()
            try:
                for batch in batches:
                    pending.append(pool.submit(_call_worker, batch))
                    if len(pending) >= window:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()


class _UserError:
    """A user error raised in a Ray task, sent back as a result so it is raised as itself, not wrapped."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _ray_map(rows: dict[str, Any], runner: Runner) -> dict[str, Any]:
    """Ray Data batch function: each row carries one pickled batch of documents."""
    import numpy as np

    from steelforge.errors import SteelforgeError

    results = []
    for payload in rows["payload"]:
        try:
            result: Any = runner(pickle.loads(payload))
        except SteelforgeError as exc:
            result = _UserError(exc)
        results.append(pickle.dumps(result, protocol=5))
    return {"payload": np.array(results, dtype=object)}


class RayExecutor:
    """The same runner as Ray Data tasks, `window` batches per dataset, results in input order."""

    name = "ray"

    def __init__(self, num_workers: int, window: int | None = None) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not os.environ.get("RAY_ADDRESS"):
                kwargs["num_cpus"] = num_workers
            ray.init(**kwargs)
        self.num_workers = num_workers
        self.window = window or max(8, 8 * num_workers)

    def run(self, runner: Runner, batches: Iterable[Any]) -> Iterator[Any]:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        iterator = iter(batches)
        while window := list(itertools.islice(iterator, self.window)):
            items = [{"payload": pickle.dumps(batch, protocol=5)} for batch in window]
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _ray_map, fn_kwargs={"runner": runner}, batch_size=1, batch_format="numpy"
            )
            for row in dataset.iter_rows():
                result = pickle.loads(row["payload"])
                if isinstance(result, _UserError):
                    raise result.error
                yield result


EXECUTORS: tuple[str, ...] = ("local", "ray")


def make_executor(kind: str, num_workers: int) -> Executor:
    """`local` with one worker runs in-process; `ray` uses Ray Data whatever the worker count."""
    if kind == "ray":
        try:
            return RayExecutor(num_workers)
        except ImportError as exc:
            from steelforge.errors import RecipeError

            raise RecipeError(
                "data.executor is 'ray' but ray is not installed; pip install 'steelforge[ray]'"
            ) from exc
    if kind != "local":
        from steelforge.errors import RecipeError

        raise RecipeError(f"data.executor '{kind}' is unknown; use one of: {', '.join(EXECUTORS)}")
    return SerialExecutor() if num_workers <= 1 else LocalExecutor(num_workers)
