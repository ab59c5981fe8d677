"""Why a Kaggle run failed: the log's text, the likely Kaggle error class.

A Kaggle session log (`<slug>.log`, what `kaggle kernels output` downloads) is a JSON list of
`{"stream_name", "time", "data"}` records; `log_text` joins their data (plain text is taken as
it is). The failing cell is the dry-run's `CellFailure`, found by `bundler.notebook.failure`
(the executed notebook among the outputs first, else the log's last traceback). `classify`
names the error Kaggle shows for it, with the fix:

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


def read_log(files: Sequence[Path]) -> str:
    """The text of the downloaded `.log` file among `files` ('' when there is none)."""
    for path in files:
        if path.suffix == ".log" and path.is_file():
            return log_text(path.read_text(encoding="utf-8", errors="replace"))
    return ""
