"""The dry-run's notebook engines, a registry as papermill's engines are.

`Engine.execute_notebook(src, dest, result, cwd=, timeout=)` owns what every engine shares:

- the events the parent follows, one JSON line each on stdout (`@@bundler-event {json}`), named
  with nbclient's hook vocabulary: `start` (cells), then per cell `cell_start` (index, first
  line), `cell_executed` (index, seconds from its start to the kernel's reply), `cell_error`
  (index, ename, evalue) and `stream` (a line the kernel printed); `done` (status, seconds);
- the cell running now, the one a timeout, a dead kernel or an interrupt is charged to;
- the mapping of what the engine raised to a status (`ok`, `cell_failed`, `timeout`,
  `kernel_died`, `interrupted`, `error`) and to one `CellFailure`, found in the executed notebook by
  `bundler.notebook.failure`;
- the executed notebook saved in every case, its failed cell marked as papermill marks one, and
  RESULT_JSON: `{"status", "seconds", "failure": CellFailure.to_dict() or null}`.

A subclass implements `execute_managed_notebook` only: run the notebook in `cwd` with the hooks
(`self.hooks`) and `self.stream`, leave the executed cells in the `nb` it is given, and raise
nbclient's exceptions. Registered:

- `nbclient` (the `local` runtime): nbclient's NotebookClient with the kernel the notebook names;
- `papermill` (the `image` runtime): papermill's engine, as Kaggle runs a pushed notebook, with
  the kernel the notebook's kernelspec names (found through JUPYTER_PATH).

`get_engine(name)` fails naming the registered engines.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

from bundler.display import strip_ansi
from bundler.errors import DryRunError
from bundler.notebook.failure import CellFailure, cell_id, failure_in_notebook, mark_failure, unmarked

EVENT_PREFIX = "@@bundler-event "
START_TIMEOUT_S = 120
STREAM_CHARS = 300  # a printed line is cut to its last characters in a `stream` event
CHARGED_TO_RUNNING = ("timeout", "kernel_died", "interrupted")  # statuses charged to the cell running then


def emit(event: str, **fields: Any) -> None:
    """One event line for the parent."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def outcome(error: BaseException) -> tuple[str, str, str]:
    """(status, ename, evalue) of what an engine raised."""
    text = str(error).strip()
    if isinstance(error, CellTimeoutError):
        return "timeout", "", text.splitlines()[0] if text else "timeout"
    if isinstance(error, DeadKernelError):
        return "kernel_died", "", text or "the kernel died"
    if isinstance(error, CellExecutionError):
        return "cell_failed", error.ename, error.evalue
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "", str(error) or "interrupted"
    return "error", type(error).__name__, text  # the kernel never started, a broken notebook, ...


class Engine:
    """The bookkeeping of one notebook run (see the module docstring); one instance per run."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.current = -1
        self._started: dict[int, float] = {}
        self._code_cells: list[int] = []

    # --- what a subclass implements -------------------------------------------------------

    def execute_managed_notebook(
        self, nb: NotebookNode, *, src: Path, dest: Path, cwd: Path, timeout: float | None
    ) -> None:
        """Run `nb` (read from `src`) in `cwd`; the executed cells end up in `nb`."""
        raise NotImplementedError(f"engine {self.name!r} does not implement execute_managed_notebook")

    # --- nbclient's hooks, given to the engine's client -------------------------------------

    @property
    def hooks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_cell_start": self.on_cell_start,
            "on_cell_executed": self.on_cell_executed,
            "on_cell_error": self.on_cell_error,
        }

    def on_cell_start(self, cell: Any, cell_index: int) -> None:
        self.current = cell_index
        self._started[cell_index] = time.monotonic()
        first = next((ln for ln in str(cell.source).splitlines() if ln.strip()), "")
        emit("cell_start", cell=cell_index, code_cells=self._code_cells, first_line=first[:120])

    def on_cell_executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        # nbclient calls on_cell_complete as soon as the request is sent; on_cell_executed
        # comes with the reply, when the cell has really finished.
        t = time.monotonic()
        emit("cell_executed", cell=cell_index, seconds=round(t - self._started.get(cell_index, t), 3))

    def on_cell_error(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        content = execute_reply.get("content", {}) if isinstance(execute_reply, dict) else {}
        emit("cell_error", cell=cell_index, ename=str(content.get("ename", "")), evalue=str(content.get("evalue", "")))

    def stream(self, text: str, cell: int | None = None) -> None:
        """Each non-blank line the kernel printed, as a `stream` event of `cell` (default: the running one)."""
        for line in text.splitlines():
            if line.strip():
                emit("stream", cell=self.current if cell is None else cell, text=strip_ansi(line)[-STREAM_CHARS:])

    def running(self) -> int | None:
        """The index of the cell running now (or last started); None before the first."""
        return self.current if self.current >= 0 else None

    # --- the run --------------------------------------------------------------------------

    def execute_notebook(self, src: Path, dest: Path, result_path: Path, *, cwd: Path, timeout: float | None) -> int:
        """Run `src`, save it executed to `dest` (in every case, its failure marked) and the result to
        `result_path`; 0 when it ran through."""
        nb = unmarked(nbformat.read(src, as_version=4))  # type: ignore[no-untyped-call]
        dest.unlink(missing_ok=True)  # what is there after the run is this run's
        self._code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        emit("start", cells=len(nb.cells), code_cells=len(self._code_cells))
        started = time.monotonic()
        status, ename, evalue = "ok", "", ""
        failure: CellFailure | None = None
        try:
            self.execute_managed_notebook(nb, src=src, dest=dest, cwd=cwd, timeout=timeout)
        except (Exception, KeyboardInterrupt) as e:
            status, ename, evalue = outcome(e)
        finally:
            seconds = round(time.monotonic() - started, 3)
            if status != "ok":
                failure = self.failure(nb, status, ename, evalue)
                mark_failure(nb, failure)
            nbformat.write(nb, dest)  # type: ignore[no-untyped-call]
            result = {"status": status, "seconds": seconds, "failure": None if failure is None else failure.to_dict()}
            result_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
            emit("done", status=status, seconds=seconds)
        return 0 if status == "ok" else 1

    def failure(self, nb: NotebookNode, status: str, ename: str, evalue: str) -> CellFailure:
        """The failure of a run that ended with `status`: the executed notebook's first error, else the
        cell running then (a timeout, a dead kernel, an interrupt), else no cell."""
        found = failure_in_notebook(nb)
        if found is not None:
            ename, evalue = ename or found.ename, evalue or found.evalue
            return CellFailure(found.cell, ename, evalue, traceback=found.traceback, index=found.index)
        index = self.running() if status in CHARGED_TO_RUNNING else None
        cell = cell_id(nb.cells[index]) if index is not None and index < len(nb.cells) else None
        return CellFailure(cell, ename, evalue, index=index)


ENGINES: dict[str, type[Engine]] = {}


def register(cls: type[Engine]) -> type[Engine]:
    """Register an engine under its `name` (a class decorator)."""
    ENGINES[cls.name] = cls
    return cls


def get_engine(name: str) -> type[Engine]:
    """The engine registered as `name`."""
    try:
        return ENGINES[name]
    except KeyError:
        raise DryRunError(f"no dry-run engine {name!r}: the engines are {', '.join(sorted(ENGINES))}") from None


class _StreamingClient(NotebookClient):  # type: ignore[misc]
    """A NotebookClient that hands each printed line to its engine as it happens."""

    def __init__(self, nb: NotebookNode, engine: Engine, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self._engine = engine

    def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int) -> Any:
        if msg.get("msg_type") == "stream":
            self._engine.stream(str(msg.get("content", {}).get("text", "")), cell=cell_index)
        return super().output(outs, msg, display_id, cell_index)


@register
class NbclientEngine(Engine):
    """nbclient's NotebookClient: the quick local mode."""

    name = "nbclient"

    def execute_managed_notebook(
        self, nb: NotebookNode, *, src: Path, dest: Path, cwd: Path, timeout: float | None
    ) -> None:
        client = _StreamingClient(
            nb,
            self,
            timeout=int(timeout) if timeout else None,
            startup_timeout=START_TIMEOUT_S,
            allow_errors=False,
            resources={"metadata": {"path": str(cwd)}},
            **self.hooks,
        )
        client.execute()


class _StreamLines:
    """A file-like sink for papermill's stdout_file/stderr_file: each printed line becomes a `stream` event."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def write(self, text: str) -> int:
        self._engine.stream(str(text))
        return len(text)

    def flush(self) -> None:
        return None


@register
class PapermillEngine(Engine):
    """papermill's engine with the kernel named by the notebook's kernelspec, as Kaggle runs a notebook."""

    name = "papermill"

    def execute_managed_notebook(
        self, nb: NotebookNode, *, src: Path, dest: Path, cwd: Path, timeout: float | None
    ) -> None:
        import papermill  # type: ignore[import-untyped]
        from papermill.exceptions import PapermillExecutionError  # type: ignore[import-untyped]

        try:
            papermill.execute_notebook(
                str(src),
                str(dest),
                engine_name="nbclient",
                cwd=str(cwd),
                progress_bar=False,
                log_output=False,
                stdout_file=_StreamLines(self),
                stderr_file=_StreamLines(self),
                start_timeout=START_TIMEOUT_S,
                execution_timeout=int(timeout) if timeout else None,
                **self.hooks,
            )
        except PapermillExecutionError as e:  # said in nbclient's words, as the other engine says it
            tb = "\n".join(e.traceback) if isinstance(e.traceback, list) else str(e.traceback)
            raise CellExecutionError(strip_ansi(tb), e.ename, e.evalue) from None
        finally:
            # papermill saves as it goes; a run that never started (or a half-written save) leaves `nb` as read
            try:
                done = unmarked(nbformat.read(dest, as_version=4))  # type: ignore[no-untyped-call]
            except (OSError, ValueError):
                pass
            else:
                nb.cells, nb.metadata = done.cells, done.metadata
