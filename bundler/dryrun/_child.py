"""Execute one notebook with nbclient in a child process, and follow it from the parent.

Child side, the entry point:
    python -m bundler.dryrun._child NOTEBOOK_IN NOTEBOOK_OUT RESULT_JSON --cwd DIR [--timeout S]
        [--engine nbclient|papermill]

`--engine papermill` runs it the way Kaggle runs a pushed notebook: papermill's engine with the
kernel the notebook's kernelspec names (found through JUPYTER_PATH: the dry-run's runtime puts
its own kernelspec there); `nbclient` (the default) is the quick local mode.

Runs in its own process so that the dry-run can put it (and the kernel it starts) in a
network namespace. Progress goes to stdout as lines `@@bundler-event {json}`: `start`
(cells), `cell_start` / `cell_executed` (index, elapsed) and `stream` (the kernel's printed
lines). The executed notebook and RESULT_JSON are written in every case, failure included:
    {"status": "ok" | "cell_failed" | "kernel_died" | "timeout" | "interrupted" | "error",
     "seconds": wall time, "cell": index or null, "ename", "evalue", "traceback": text}

Parent side: `run_notebook(...)` starts the child (wrapped by `bundler.sandbox` when the network
is to be cut), shows progress on a rich console and returns an `Execution`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from rich.console import Console
from rich.markup import escape

from bundler.display import strip_ansi
from bundler.sandbox import Isolation, isolated_argv

EVENT_PREFIX = "@@bundler-event "


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _StreamingClient(NotebookClient):  # type: ignore[misc]
    """A NotebookClient that reports each cell and each printed line as it happens."""

    def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int) -> Any:
        if msg.get("msg_type") == "stream":
            text = str(msg.get("content", {}).get("text", ""))
            for line in text.splitlines():
                if line.strip():
                    emit("stream", cell=cell_index, text=strip_ansi(line)[-300:])
        return super().output(outs, msg, display_id, cell_index)


def _error_of(nb: Any) -> tuple[int | None, str, str, str]:
    """(cell index, ename, evalue, traceback) of the first error output in `nb`."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = strip_ansi("\n".join(out.get("traceback", [])))
                return i, str(out.get("ename", "")), str(out.get("evalue", "")), tb
    return None, "", "", ""


class _CellEvents:
    """The cell callbacks both engines take: each start and finish emitted for the parent, and the
    cell running now (the one a timeout, a dead kernel or an interrupt is charged to)."""

    def __init__(self, nb: Any) -> None:
        self.code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self.current = -1
        self._started: dict[int, float] = {}
        emit("start", cells=len(nb.cells), code_cells=len(self.code_cells))

    def on_start(self, cell: Any, cell_index: int) -> None:
        self.current = cell_index
        self._started[cell_index] = time.monotonic()
        first = next((ln for ln in str(cell.source).splitlines() if ln.strip()), "")
        emit("cell_start", cell=cell_index, code_cells=self.code_cells, first_line=first[:120])

    def on_executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        # nbclient calls on_cell_complete as soon as the request is sent; on_cell_executed
        # comes with the reply, when the cell has really finished.
        t = time.monotonic()
        emit("cell_executed", cell=cell_index, seconds=round(t - self._started.get(cell_index, t), 3))

    def running(self) -> int | None:
        return self.current if self.current >= 0 else None


def execute(src: Path, dest: Path, result_path: Path, cwd: Path, timeout: float | None) -> int:
    nb = nbformat.read(src, as_version=4)  # type: ignore[no-untyped-call]
    cells = _CellEvents(nb)
    started = time.monotonic()
    client = _StreamingClient(
        nb,
        timeout=int(timeout) if timeout else None,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
        on_cell_start=cells.on_start,
        on_cell_executed=cells.on_executed,
    )
    result: dict[str, Any] = {"status": "ok", "cell": None, "ename": "", "evalue": "", "traceback": ""}
    try:
        client.execute()
    except CellTimeoutError as e:
        result.update(status="timeout", evalue=str(e).strip().splitlines()[0] if str(e).strip() else "timeout")
    except DeadKernelError as e:
        result.update(status="kernel_died", evalue=str(e).strip() or "the kernel died")
    except CellExecutionError as e:
        result.update(status="cell_failed", ename=e.ename, evalue=e.evalue, traceback=strip_ansi(e.traceback))
    except KeyboardInterrupt as e:
        result.update(status="interrupted", evalue=str(e) or "interrupted")
    except Exception as e:  # the kernel never started, a broken notebook, ...: reported, not raised
        result.update(status="error", ename=type(e).__name__, evalue=str(e).strip())
    finally:
        result["seconds"] = round(time.monotonic() - started, 3)
        if result["status"] != "ok":
            cell, ename, evalue, tb = _error_of(nb)
            if cell is not None:
                result["cell"] = cell
                result["ename"] = result["ename"] or ename
                result["evalue"] = result["evalue"] or evalue
                result["traceback"] = result["traceback"] or tb
            elif result["status"] in ("timeout", "kernel_died", "interrupted"):
                result["cell"] = cells.running()
        nbformat.write(nb, dest)  # type: ignore[no-untyped-call]
        result_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
        emit("done", status=result["status"], seconds=result["seconds"])
    return 0 if result["status"] == "ok" else 1


class _StreamLines:
    """A file-like sink for papermill's stdout_file/stderr_file: each printed line becomes a `stream` event."""

    def __init__(self, cells: _CellEvents) -> None:
        self._cells = cells

    def write(self, text: str) -> int:
        for line in str(text).splitlines():
            if line.strip():
                emit("stream", cell=self._cells.current, text=strip_ansi(line)[-300:])
        return len(text)

    def flush(self) -> None:
        return None


def execute_papermill(src: Path, dest: Path, result_path: Path, cwd: Path, timeout: float | None) -> int:
    """As `execute`, with papermill's engine and the kernel named by the notebook's kernelspec."""
    import papermill  # type: ignore[import-untyped]
    from papermill.exceptions import PapermillExecutionError  # type: ignore[import-untyped]

    nb = nbformat.read(src, as_version=4)  # type: ignore[no-untyped-call]
    cells = _CellEvents(nb)
    started = time.monotonic()
    result: dict[str, Any] = {"status": "ok", "cell": None, "ename": "", "evalue": "", "traceback": ""}
    try:
        papermill.execute_notebook(
            str(src),
            str(dest),
            engine_name="nbclient",
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
            stdout_file=_StreamLines(cells),
            stderr_file=_StreamLines(cells),
            start_timeout=120,
            execution_timeout=int(timeout) if timeout else None,
            on_cell_start=cells.on_start,
            on_cell_executed=cells.on_executed,
        )
    except PapermillExecutionError as e:
        tb = strip_ansi("\n".join(e.traceback)) if isinstance(e.traceback, list) else strip_ansi(str(e.traceback))
        result.update(status="cell_failed", cell=e.cell_index, ename=e.ename, evalue=e.evalue, traceback=tb)
    except CellTimeoutError as e:
        result.update(status="timeout", evalue=str(e).strip().splitlines()[0] if str(e).strip() else "timeout")
    except DeadKernelError as e:
        result.update(status="kernel_died", evalue=str(e).strip() or "the kernel died")
    except KeyboardInterrupt as e:
        result.update(status="interrupted", evalue=str(e) or "interrupted")
    except Exception as e:  # no such kernel, a broken notebook, ...: reported, not raised
        result.update(status="error", ename=type(e).__name__, evalue=str(e).strip())
    finally:
        result["seconds"] = round(time.monotonic() - started, 3)
        if result["status"] in ("timeout", "kernel_died", "interrupted") and result["cell"] is None:
            result["cell"] = cells.running()
        if not dest.is_file():  # papermill saves as it goes; a run that never started leaves the input
            nbformat.write(nb, dest)  # type: ignore[no-untyped-call]
        result_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
        emit("done", status=result["status"], seconds=result["seconds"])
    return 0 if result["status"] == "ok" else 1


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # so that `finally` writes the results and stops the kernel
    parser = argparse.ArgumentParser(prog="python -m bundler.dryrun._child")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("executed", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--cwd", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    parser.add_argument("--engine", choices=("nbclient", "papermill"), default="nbclient")
    args = parser.parse_args(argv)
    run = execute_papermill if args.engine == "papermill" else execute
    return run(args.notebook, args.executed, args.result, args.cwd, args.timeout)


if __name__ == "__main__":
    sys.exit(main())


# --- parent side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    status: str  # "ok" | "cell_failed" | "kernel_died" | "timeout" | "interrupted" | "error"
    seconds: float  # wall time of the notebook's execution (kernel start to last cell)
    cell: int | None  # index of the failed (or running, on timeout) cell
    ename: str
    evalue: str
    traceback: str
    log: Path  # everything the child printed that was not an event

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _follow(proc: subprocess.Popen[str], log: Path, console: Console, deadline: float | None) -> None:
    """Read the child's output: events drive the progress line, the rest goes to `log`."""
    started = time.monotonic()
    state = {"cell": "starting kernel", "line": ""}
    watchdog: threading.Timer | None = None
    if deadline is not None:
        watchdog = threading.Timer(deadline, _stop, args=(proc,))
        watchdog.daemon = True
        watchdog.start()
    try:
        with log.open("w", encoding="utf-8") as sink, console.status("notebook: starting kernel") as status:
            assert proc.stdout is not None
            for raw in proc.stdout:
                if not raw.startswith(EVENT_PREFIX):
                    sink.write(raw)
                    continue
                try:
                    ev = json.loads(raw[len(EVENT_PREFIX) :])
                except json.JSONDecodeError:
                    sink.write(raw)
                    continue
                kind = ev.get("event")
                if kind == "cell_start":
                    order = ev.get("code_cells", [])
                    pos = order.index(ev["cell"]) + 1 if ev["cell"] in order else ev["cell"]
                    state["cell"] = f"cell {ev['cell']} ({pos}/{len(order)} code cells): {ev.get('first_line', '')}"
                    state["line"] = ""
                elif kind == "cell_executed":
                    console.print(f"  cell {ev['cell']} done in {ev['seconds']:.1f} s", highlight=False)
                elif kind == "stream":
                    state["line"] = str(ev.get("text", ""))
                    sink.write(f"[cell {ev.get('cell')}] {state['line']}\n")
                elapsed = time.monotonic() - started
                tail = f"\n  {escape(state['line'][:150])}" if state["line"] else ""
                status.update(f"notebook {elapsed:6.1f} s  {escape(state['cell'][:100])}{tail}")
    except BaseException:
        _stop(proc)  # Ctrl-C (or an error) here: the child stops its kernel and exits, not left running
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        proc.wait()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> Callable[[], None]:
    """A `preexec_fn` tying the child's life to this process: when the parent dies (even by SIGKILL)
    the kernel sends the child SIGTERM, on which it stops its own kernel and exits. The signal
    survives the exec of `unshare`/`sh`/python; the kernel the child starts exits when its parent
    is gone (ipykernel's parent poller, armed by jupyter_client's JPY_PARENT_PID)."""

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
    except (OSError, AttributeError):  # not Linux: a parent killed outright can leave the child running
        prctl = None

    def arm() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def run_notebook(
    notebook: Path,
    executed: Path,
    *,
    cwd: Path,
    console: Console,
    isolation: Isolation,
    readonly: Sequence[Path] = (),
    timeout_s: float | None = None,
    engine: str = "nbclient",
    env: Mapping[str, str] | None = None,
) -> Execution:
    """Execute `notebook` with its kernel in `cwd`; write the executed copy to `executed`.

    `isolation` (from `bundler.sandbox.probe()`) decides whether the child and its kernel see
    the network. `engine`: "nbclient" or "papermill" (see the module docstring); `env` is added to
    the child's environment (e.g. JUPYTER_PATH). A failure inside the notebook is returned, never raised.
    """
    executed.parent.mkdir(parents=True, exist_ok=True)
    result_path = executed.with_name(executed.stem + ".result.json")
    log = executed.with_name(executed.stem + ".log")
    result_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "bundler.dryrun._child", str(notebook), str(executed), str(result_path)]
    argv += ["--cwd", str(cwd)]
    if timeout_s is not None:
        argv += ["--timeout", str(timeout_s)]
    argv += ["--engine", engine]
    proc = subprocess.Popen(
        isolated_argv(argv, isolation, readonly),
        cwd=cwd,
        env=_child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        preexec_fn=_die_with(os.getpid()) if sys.platform.startswith("linux") else None,
    )
    deadline = None if timeout_s is None else timeout_s + 120.0
    _follow(proc, log, console, deadline)
    if not result_path.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        return Execution(
            "error", 0.0, None, "", f"the notebook runner exited with status {proc.returncode}", "\n".join(tail), log
        )
    data = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    return Execution(
        status=str(data["status"]),
        seconds=float(data["seconds"]),
        cell=data.get("cell"),
        ename=str(data.get("ename", "")),
        evalue=str(data.get("evalue", "")),
        traceback=str(data.get("traceback", "")),
        log=log,
    )
