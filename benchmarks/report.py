"""What a benchmark returns, and how results are printed: rich tables, then `key=value` lines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported when a table is printed: the GPU check runs without it
    from rich.console import Console


HIDDEN_IMAGES = 5506  # Severstal's hidden test set: what a ratio is projected to


@dataclass(frozen=True)
class Target:
    """A goal for one figure: `value <= bound` when `at_most`, else `value >= bound`."""

    bound: float
    at_most: bool

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """One headline number (`key=value` in the last lines of the output)."""

    key: str
    value: float
    target: Target | None = None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "met" if self.target.met(self.value) else "MISSED"


@dataclass(frozen=True)
class Load:
    """The machine's 1-minute load average when a benchmark started and ended, on `cores` cores.

    A ratio taken while other work competes for the cores says little: it is marked "under load"
    when the machine was busy before the benchmark began (start > half the cores) or busier at its
    end than the benchmark's own threads explain (end > 1.5 x the cores)."""

    start: float
    end: float
    cores: int

    @property
    def under_load(self) -> bool:
        return self.start > 0.5 * self.cores or self.end > 1.5 * self.cores

    def describe(self) -> str:
        verdict = "UNDER LOAD: its ratios are marked" if self.under_load else "quiet"
        return f"load average {self.start:.2f} at the start, {self.end:.2f} at the end, {self.cores} cores: {verdict}"


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


@dataclass
class BenchResult:
    """A benchmark's detail rows (label, value, note), its figures, and free-form notes."""

    name: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""  # why the benchmark did not run ("" when it ran)
    load: Load | None = None  # the machine's load around the run (set by `python -m benchmarks`)

    def row(self, label: str, value: str, note: str = "") -> None:
        self.rows.append((label, value, note))


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def print_result(console: Console, result: BenchResult) -> None:
    """A table of `result`'s rows and figures."""
    from rich.table import Table

    if result.skipped:
        console.print(f"[bold]{result.name}[/]: skipped - {result.skipped}")
        return
    table = Table(title=result.name, title_justify="left", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("note")
    for label, value, note in result.rows:
        table.add_row(label, value, note)
    loaded = result.load is not None and result.load.under_load
    for fig in result.figures:
        target = f"target {fig.target}: {fig.verdict}" if fig.target else ""
        if loaded:
            target = f"{target} (taken under load)".strip()
        table.add_row(f"[bold]{fig.key}[/]", f"[bold]{fig.value:.3g}[/]", target)
    console.print(table)
    for note in result.notes:
        console.print(f"  note: {note}", soft_wrap=True)
    if result.load is not None:
        console.print(f"  machine: {result.load.describe()}", soft_wrap=True)


def figure_lines(results: Sequence[BenchResult]) -> list[str]:
    """The closing `key=value` lines: every figure, `<name>=skipped` for a skipped benchmark, and
    `<name>_load=quiet|under_load` after the figures of a benchmark whose load was taken."""
    lines: list[str] = []
    for result in results:
        if result.skipped:
            lines.append(f"{result.name}=skipped")
        for fig in result.figures:
            lines.append(f"{fig.key}={fig.value:.4g}")
        if result.load is not None and result.figures:
            lines.append(f"{result.name}_load={'under_load' if result.load.under_load else 'quiet'}")
    return lines
