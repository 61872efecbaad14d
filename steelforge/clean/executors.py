"""Where the pipeline's work items (one input file of one piece) run: in-process, a local pool, or Ray tasks.

Every executor takes a picklable `runner` (the pipeline's `FileTask`: one piece's operators, which
reads, cleans and writes one input file) and an iterator of items (input files), and yields the
runner's results (small per-file summaries) **in input order** with a bounded number in flight.

- `serial`: the runner in this process (one worker; simplest to debug).
- `local`: `concurrent.futures.ProcessPoolExecutor`; the runner reaches each worker once through
  the pool initializer (inherited when the platform forks, pickled otherwise).
- `ray`: one Ray task per item (the pipeline's items are whole input files: each task reads, cleans and
  writes its file itself), retried when its worker dies; `ray.init()` joins the cluster named by
  `RAY_ADDRESS`, or starts a local instance with `num_workers` CPUs.
"""

from __future__ import annotations

import os
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


def ordered_pool_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    num_workers: int,
    *,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    mp_context: Any = None,
) -> Iterator[Any]:
    """`fn(item)` for each item on a process pool, yielded **in input order**, at most `2 * num_workers`
    in flight (memory stays flat however long `items` is). The one ordered pool of the project: cleaning's
    local executor and packing's tokenizer workers both run on it."""
    window = 2 * num_workers
    with ProcessPoolExecutor(
        num_workers, mp_context=mp_context, initializer=initializer, initargs=initargs
    ) as pool:
        pending: deque[Future[Any]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class LocalExecutor:
    """A process pool per `run` call (`ordered_pool_map`); the runner reaches each worker once."""

    name = "local"

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers

    def run(self, runner: Runner, batches: Iterable[Any]) -> Iterator[Any]:
        yield from ordered_pool_map(
            _call_worker, batches, self.num_workers, initializer=_init_worker, initargs=(runner,)
        )


def _ray_call(runner: Runner, item: Any) -> Any:
    """A Ray task: the runner on one item (the pipeline's items are whole input files)."""
    return runner(item)


class RayExecutor:
    """The same runner as Ray tasks (one per item), results in input order, at most `window` in flight.

    A task whose worker dies (killed, out of memory) is retried by Ray (`max_retries`); the pipeline's file
    tasks remove a failed attempt's outputs before writing, so a retry neither loses nor duplicates a
    document. An error raised by the runner itself (e.g. `OperatorError`) is not retried and is raised here
    as itself.
    """

    name = "ray"

    def __init__(self, num_workers: int, window: int | None = None, max_retries: int = 3) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not os.environ.get("RAY_ADDRESS"):
                kwargs["num_cpus"] = num_workers
            ray.init(**kwargs)
        self.num_workers = num_workers
        self.window = window or max(4, 2 * num_workers)
        self.max_retries = max_retries

    def run(self, runner: Runner, batches: Iterable[Any]) -> Iterator[Any]:
        import ray

        task = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(_ray_call)
        runner_ref = ray.put(runner)
        pending: deque[Any] = deque()
        try:
            for item in batches:
                pending.append(task.remote(runner_ref, item))
                if len(pending) >= self.window:
                    yield _ray_result(pending.popleft())
            while pending:
                yield _ray_result(pending.popleft())
        finally:
            for ref in pending:
                ray.cancel(ref)


def _ray_result(ref: Any) -> Any:
    import ray
    from ray.exceptions import RayTaskError

    from steelforge.errors import SteelforgeError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        if isinstance(exc.cause, SteelforgeError):
            raise exc.cause from None
        raise


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
