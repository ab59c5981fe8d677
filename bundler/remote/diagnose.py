"""Why a Kaggle run failed: the failing cell's traceback, the log's tail, the likely Kaggle error class.

A Kaggle session log (`<slug>.log`, what `kaggle kernels output` downloads) is a JSON list of
`{"stream_name", "time", "data"}` records; `log_text` joins their data (plain text is taken as
it is). The failing cell comes from the executed notebook when the outputs carry one (the first
code cell with an `error` output: its id, ename, evalue and traceback), else from the last
`Traceback` block of the log. `error_class` names the error Kaggle shows for it, with the fix:

- timeout ("Notebook Timeout"): the run outlived the competition's limit;
- out of memory or disk ("Notebook Exceeded Allowed Compute"): RAM, GPU memory or disk ran out;
- submission CSV not found ("Submission CSV Not Found"): the run ended without /kaggle/working/submission.csv;
- scoring error ("Submission Scoring Error"): the CSV is there but its rows or values are wrong;
- notebook error ("Notebook Threw Exception"): any other exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler.display import strip_ansi

_ENCOUNTERED = re.compile(r'Exception encountered at "(In \[\d+\])"')
TAIL_LINES = 20


@dataclass(frozen=True)
class ErrorClass:
    name: str  # as Kaggle shows it
    fix: str


TIMEOUT = ErrorClass(
    "Notebook Timeout",
    "the run outlived the time limit: check the dry-run's projection, lower inference.time_budget_s or drop TTA views",
)
OUT_OF_RESOURCES = ErrorClass(
    "Notebook Exceeded Allowed Compute (out of memory or disk)",
    "lower inference.batch_size or images_per_call, use fewer models at once, write less to /kaggle/working",
)
NO_SUBMISSION = ErrorClass(
    "Submission CSV Not Found",
    "the run must write /kaggle/working/submission.csv: read the traceback above and dry-run again",
)
SCORING = ErrorClass(
    "Submission Scoring Error",
    "submission.csv has wrong rows or values: dry-run with --labels to check it against the sample submission",
)
EXCEPTION = ErrorClass("Notebook Threw Exception", "read the traceback above, fix it, dry-run, then push again")

_PATTERNS: list[tuple[ErrorClass, re.Pattern[str]]] = [
    (TIMEOUT, re.compile(r"timeout|timed out|time limit|exceeded the maximum (run|execution) time", re.I)),
    (
        OUT_OF_RESOURCES,
        re.compile(
            r"out of memory|OutOfMemoryError|MemoryError|No space left on device|exceeded allowed compute|"
            r"Killed|more memory than is available|disk quota",
            re.I,
        ),
    ),
    (SCORING, re.compile(r"scoring error|could not be scored|submission.*(rows|columns).*(expected|wrong)", re.I)),
    (NO_SUBMISSION, re.compile(r"submission\.csv.*(not found|no such file)|submission csv not found", re.I)),
]


def classify(*texts: str) -> ErrorClass:
    """The first class whose pattern matches the failure message or the log, else a notebook exception."""
    joined = "\n".join(texts)
    for cls, pattern in _PATTERNS:
        if pattern.search(joined):
            return cls
    return EXCEPTION


def log_text(raw: str) -> str:
    """The log's text: the data of each record of a Kaggle JSON log, or `raw` itself."""
    try:
        records = json.loads(raw)
    except ValueError:
        return strip_ansi(raw)
    if isinstance(records, list) and all(isinstance(r, Mapping) for r in records):
        return strip_ansi("".join(str(r.get("data", "")) for r in records))
    return strip_ansi(raw)


def tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    return text.rstrip().splitlines()[-lines:]


@dataclass(frozen=True)
class CellFailure:
    cell: str  # the cell's id (e.g. "setup", "run"), or "log" when taken from the log
    ename: str
    evalue: str
    traceback: list[str]


def _from_notebook(path: Path) -> CellFailure | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []) if isinstance(nb, Mapping) else []:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                trace = [strip_ansi(str(t)) for t in out.get("traceback", [])]
                lines = [line for t in trace for line in t.splitlines()]
                return CellFailure(str(cell.get("id", "?")), str(out.get("ename")), str(out.get("evalue")), lines)
    return None


def _from_log(text: str) -> CellFailure | None:
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    if not starts:
        return None
    cell = "log"
    for line in reversed(lines[: starts[-1] + 1]):
        found = _ENCOUNTERED.search(line)  # papermill names the cell: Exception encountered at "In [5]"
        if found:
            cell = found.group(1)
            break
    block = lines[starts[-1] :]
    end = next(
        (i for i, line in enumerate(block[1:], 1) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line)), None
    )
    block = block[: end + 1] if end is not None else block[:40]
    last = block[-1]
    ename, _, evalue = last.partition(":")
    return CellFailure(cell, ename.split()[0] if ename.strip() else "", evalue.strip(), block)


def failing_cell(files: Sequence[Path], log: str) -> CellFailure | None:
    """The failure from an executed notebook among `files`, else from the log's last traceback."""
    for path in files:
        if path.suffix == ".ipynb":
            found = _from_notebook(path)
            if found:
                return found
    return _from_log(log)


def read_log(files: Sequence[Path]) -> str:
    """The text of the downloaded `.log` file among `files` ('' when there is none)."""
    for path in files:
        if path.suffix == ".log" and path.is_file():
            return log_text(path.read_text(encoding="utf-8", errors="replace"))
    return ""
