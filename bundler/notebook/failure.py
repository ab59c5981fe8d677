"""Where and why a notebook run stopped: the one `CellFailure` of the dry-run and `bundler status`.

A failure names its cell by the stable id the renderer gives it ("setup", "run", "src-predict"),
which injected parameters do not shift, and keeps its index among the notebook's own cells for the
messages that count cells. Found by one scanner, read the same way from a dry-run's executed
notebook and from the one Kaggle returns:

- `failure_in_notebook(nb)`: the first code cell with an `error` output (its id, index, ename,
  evalue and traceback, colour codes stripped);
- `failure_in_log(text)`: else the log's last `Traceback` block (papermill's
  `Exception encountered at "In [N]"` line names the cell, otherwise the cell is "log");
- `failing_cell(files, log)`: an executed notebook among downloaded files first, then the log,
  with the log's tail.

`mark_failure(nb, failure)` marks the saved notebook as papermill's `raise_for_execution_errors`
does: a tagged markdown cell at the top and one just before the failing cell, saying which cell
stopped the run and why. `unmarked(nb)` drops those markers (bundler's and papermill's), so that
indexes count the notebook's own cells only.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat import NotebookNode
from nbformat.v4 import new_markdown_cell

from bundler.display import strip_ansi

TAIL_LINES = 20
MARKER_TAG = "bundler-failure"  # the tag of the marker cells bundler inserts
PAPERMILL_MARKER_TAG = "papermill-error-cell-tag"  # papermill's (papermill.execute.ERROR_MARKER_TAG)
MARKER_TAGS = frozenset({MARKER_TAG, PAPERMILL_MARKER_TAG})
ANCHOR = "bundler-failed-cell"  # the HTML id of the marker before the failing cell
FROM_LOG = "log"  # the cell of a failure read from a log that does not name its cell
_ENCOUNTERED = re.compile(r'Exception encountered at "(In \[\d+\])"')
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")


def tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of `text`."""
    return text.rstrip().splitlines()[-lines:]


@dataclass(frozen=True)
class CellFailure:
    """Where a notebook run stopped and why."""

    cell: str | None  # the cell's stable id; from a log: "In [7]" or "log"; None: no cell is known
    ename: str  # the exception's class name ("" for a timeout or a dead kernel)
    evalue: str  # its message
    traceback: list[str] = field(default_factory=list)  # its lines, colour codes stripped
    log_tail: list[str] = field(default_factory=list)  # the run's log, its last lines
    index: int | None = None  # the cell's position among the notebook's own cells (markers not counted)

    @property
    def message(self) -> str:
        """`ename: evalue`, or the one of them there is."""
        return f"{self.ename}: {self.evalue}".strip(": ")

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "index": self.index,
            "ename": self.ename,
            "evalue": self.evalue,
            "traceback": list(self.traceback),
            "log_tail": list(self.log_tail),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellFailure:
        cell, index = data.get("cell"), data.get("index")
        return cls(
            cell=None if cell is None else str(cell),
            ename=str(data.get("ename") or ""),
            evalue=str(data.get("evalue") or ""),
            traceback=[str(line) for line in data.get("traceback") or []],
            log_tail=[str(line) for line in data.get("log_tail") or []],
            index=index if isinstance(index, int) else None,
        )


def _tags(cell: Mapping[str, Any]) -> set[str]:
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, Mapping) else None
    return {str(t) for t in tags} if isinstance(tags, list) else set()


def own_cells(nb: Mapping[str, Any]) -> list[Any]:
    """The notebook's cells without failure markers (bundler's or papermill's)."""
    cells = nb.get("cells")
    if not isinstance(cells, list):
        return []
    return [c for c in cells if isinstance(c, Mapping) and not _tags(c) & MARKER_TAGS]


def cell_id(cell: Mapping[str, Any]) -> str | None:
    """The stable id of `cell` (nbformat 4.5's `id`); None when it has none."""
    value = cell.get("id")
    return str(value) if value else None


def failure_in_notebook(nb: Mapping[str, Any]) -> CellFailure | None:
    """The first code cell of an executed notebook (an nbformat node or its JSON) with an error output."""
    for index, cell in enumerate(own_cells(nb)):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs") or []:
            if isinstance(out, Mapping) and out.get("output_type") == "error":
                lines = [line for t in out.get("traceback") or [] for line in strip_ansi(str(t)).splitlines()]
                ename, evalue = str(out.get("ename") or ""), str(out.get("evalue") or "")
                return CellFailure(cell_id(cell), ename, evalue, traceback=lines, index=index)
    return None


def failure_in_log(text: str) -> CellFailure | None:
    """The log's last traceback, its cell named where papermill logged it."""
    lines = strip_ansi(text).splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    if not starts:
        return None
    cell = FROM_LOG
    for line in reversed(lines[: starts[-1] + 1]):
        found = _ENCOUNTERED.search(line)  # papermill names the cell: Exception encountered at "In [5]"
        if found:
            cell = found.group(1)
            break
    block = lines[starts[-1] :]
    end = next((i for i, line in enumerate(block[1:], 1) if _EXCEPTION_LINE.match(line)), None)
    block = block[: end + 1] if end is not None else block[:40]
    ename, _, evalue = block[-1].partition(":")
    return CellFailure(cell, ename.split()[0] if ename.strip() else "", evalue.strip(), traceback=block)


def _read_notebook(path: Path) -> Mapping[str, Any] | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return nb if isinstance(nb, Mapping) else None


def failing_cell(files: Sequence[Path], log: str) -> CellFailure | None:
    """The failure from an executed notebook among `files`, else from the log's last traceback;
    with the log's tail."""
    for path in files:
        nb = _read_notebook(path) if path.suffix == ".ipynb" else None
        found = failure_in_notebook(nb) if nb is not None else None
        if found is not None:
            return CellFailure(found.cell, found.ename, found.evalue, found.traceback, tail(log), found.index)
    found = failure_in_log(log)
    if found is None:
        return None
    return CellFailure(found.cell, found.ename, found.evalue, found.traceback, tail(log), found.index)


def unmarked(nb: NotebookNode) -> NotebookNode:
    """`nb` without failure markers, bundler's or papermill's (in place; returned for chaining)."""
    nb.cells = own_cells(nb)
    return nb


def _marker(cell: str, text: str) -> NotebookNode:
    marker: NotebookNode = new_markdown_cell(text)  # type: ignore[no-untyped-call]
    marker["id"] = cell  # fixed ids: the saved notebook stays deterministic
    marker.metadata["tags"] = [MARKER_TAG]
    return marker


def mark_failure(nb: NotebookNode, failure: CellFailure) -> NotebookNode:
    """Mark `failure` in `nb` (in place; returned for chaining), as papermill marks an error: a tagged
    markdown cell at the top, and one before the failing cell when the failure has one."""
    unmarked(nb)
    first = failure.message.splitlines()[0][:300] if failure.message else "no message"
    why = html.escape(first, quote=False)
    style = 'style="color:red"'
    index = failure.index if failure.index is not None and 0 <= failure.index < len(nb.cells) else None
    if index is None:
        nb.cells.insert(0, _marker(f"{MARKER_TAG}-top", f"<span {style}>**bundler:** the run stopped: {why}</span>"))
        return nb
    name = f" (`{failure.cell}`)" if failure.cell else ""
    here = f'<span id="{ANCHOR}" {style}>**bundler:** the run stopped in the next cell{name}: {why}</span>'
    nb.cells.insert(index, _marker(f"{MARKER_TAG}-cell", here))
    top = f'<span {style}>**bundler:** the run stopped in <a href="#{ANCHOR}">cell {index}</a>{name}: {why}</span>'
    nb.cells.insert(0, _marker(f"{MARKER_TAG}-top", top))
    return nb
