"""Console output shared by every stage: progress bars with ETA and end-of-stage summary tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")

# Other libraries' bars ("Writing model shards", downloads) would interleave with ours and fill cluster logs;
# huggingface_hub and transformers read this when first imported (steelforge imports this module first).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# stderr carries progress and tables so that stdout stays clean for data a user may pipe.
console = Console(stderr=True, highlight=False)


def plain_every_s() -> float:
    """Seconds between plain progress lines when stderr is not a terminal (cluster logs); default 30."""
    return float(os.environ.get("STEELFORGE_PROGRESS_EVERY_S", "30") or 30)


def silenced() -> bool:
    """True when no progress at all should be printed (STEELFORGE_QUIET=1: tests)."""
    return os.environ.get("STEELFORGE_QUIET", "") not in ("", "0")


def quiet() -> bool:
    """True when progress bars should be hidden (tests, CI logs, STEELFORGE_QUIET=1)."""
    return silenced() or not sys.stderr.isatty()


class PlainProgress(Progress):
    """No bar: one plain line per task every `plain_every_s()` seconds and at its end (for log files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})
        self._last_line: dict[Any, float] = {}
        self._every = plain_every_s()

    def _line(self, task_id: Any, force: bool = False) -> None:
        import time

        task = self._tasks.get(task_id)
        if task is None:
            return
        now = time.monotonic()
        if not force and now - self._last_line.get(task_id, task.start_time or now) < self._every:
            return
        self._last_line[task_id] = now
        done = f"{task.completed:,.0f}" + (f"/{task.total:,.0f} ({task.percentage:.0f}%)" if task.total else "")
        eta = f", ETA {task.time_remaining:,.0f} s" if task.time_remaining is not None and task.total else ""
        extra = "".join(f", {v}" for v in task.fields.values() if v)
        console.print(f"{task.description}: {done}, {task.elapsed or 0:,.0f} s{eta}{extra}", markup=False)

    def update(self, task_id: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._line(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def stop(self) -> None:
        for task_id in list(self._tasks):
            if self._tasks[task_id].completed:
                self._line(task_id, force=True)
        super().stop()


def make_progress(*extra_columns: Any, transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA; `extra_columns` add e.g. tokens/s.

    When stderr is not a terminal it prints plain periodic lines instead (see `PlainProgress`).
    """
    if not silenced() and not sys.stderr.isatty():
        return PlainProgress(TextColumn("{task.description}"), console=console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=quiet(),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar and ETA (a no-op wrapper when output is not a terminal)."""
    if total is None and isinstance(items, Sequence):
        total = len(items)
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


@dataclass
class StageReport:
    """What a stage did: shown as a table at the end and kept by `steelforge run`."""

    stage: str
    rows: list[tuple[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    skipped: bool = False
    seconds: float | None = None

    def add(self, key: str, value: Any) -> None:
        self.rows.append((key, value))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:,.4g}"
        return f"{value:.3e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, text_columns: bool = False
) -> None:
    """Print a summary table; numbers are right-aligned (all columns left-aligned with `text_columns`)."""
    table = Table(title=title, title_justify="left", show_lines=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 or text_columns else "right")
    for row in rows:
        table.add_row(*(escape(format_value(v)) for v in row))  # "[ray]" is text here, not markup
    console.print(table)


def print_report(report: StageReport) -> None:
    title = f"{report.stage}: " + ("skipped (outputs complete)" if report.skipped else "done")
    if report.seconds is not None and not report.skipped:
        title += f" in {report.seconds:,.1f} s"
    rows = list(report.rows) + [(f"output: {k}", str(v)) for k, v in report.outputs.items()]
    print_table(title, ["", "value"], rows)
