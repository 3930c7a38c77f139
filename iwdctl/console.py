"""Rich output for the CLI: progress bars fed by the core's callbacks, and tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from iwdctl.runtime import ProgressCallback

console = Console()
error_console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '3.2 pairs/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"- {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(quiet: bool = False, unit: str = "items") -> Iterator[ProgressCallback]:
    """A callback for the core that draws one bar per description (on a terminal, unless quiet)."""
    if quiet or not error_console.is_terminal:
        yield lambda completed, total, description="": None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=error_console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def update(completed: int, total: int, description: str = "") -> None:
            if description not in tasks:
                tasks[description] = progress.add_task(description or "working", total=total)
            progress.update(tasks[description], completed=completed, total=total)

        yield update


def text_histogram(values: list[float], low: float, high: float, bins: int = 8, width: int = 28) -> list[str]:
    """Rows of a terminal histogram over [low, high] (shared by the methods compared): 'start  ████ count'."""
    span = (high - low) or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / span * bins))] += 1
    peak = max(counts)
    rows = []
    for index, count in enumerate(counts):
        start = low + span * index / bins
        bar = "█" * round(width * count / peak) if peak else ""
        rows.append(f"{start:>10.4g}  {bar:<{width}} {count}")
    return rows
