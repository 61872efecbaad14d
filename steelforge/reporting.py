"""Console output shared by every stage: progress bars with ETA and end-of-stage summary tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
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

# stderr carries progress and tables so that stdout stays clean for data a user may pipe.
console = Console(stderr=True, highlight=False)


def quiet() -> bool:
    """True when progress bars should be hidden (tests, CI logs, STEELFORGE_QUIET=1)."""
    return os.environ.get("STEELFORGE_QUIET", "") not in ("", "0") or not sys.stderr.isatty()


def make_progress(*extra_columns: Any, transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA; `extra_columns` add e.g. tokens/s."""
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
        table.add_row(*(format_value(v) for v in row))
    console.print(table)


def print_report(report: StageReport) -> None:
    title = f"{report.stage}: " + ("skipped (outputs complete)" if report.skipped else "done")
    if report.seconds is not None and not report.skipped:
        title += f" in {report.seconds:,.1f} s"
    rows = list(report.rows) + [(f"output: {k}", str(v)) for k, v in report.outputs.items()]
    print_table(title, ["", "value"], rows)
