"""The parent's side of a dry-run's notebook execution: launch the child, follow it, collect the result.

`run_notebook(...)` starts `python -m bundler.dryrun._child` (wrapped by `bundler.sandbox` when
the network is to be cut), shows its events on a rich console while everything else it prints
goes to a log beside the executed notebook, and returns an `Execution`: the status, the wall
time and, when it failed, the `CellFailure` with the log's tail. The child dies with its parent
(PR_SET_PDEATHSIG), its kernel with it; a child that outlives the time limit is stopped.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bundler.dryrun.engines import EVENT_PREFIX, NbclientEngine, get_engine
from bundler.notebook.failure import CellFailure, tail
from bundler.sandbox import Isolation, isolated_argv

RUNNER_TAIL_LINES = 5  # the log's lines that stand for the traceback of a runner that died


@dataclass(frozen=True)
class Execution:
    status: str  # "ok" | "cell_failed" | "kernel_died" | "timeout" | "interrupted" | "error"
    seconds: float  # wall time of the notebook's execution (kernel start to last cell)
    failure: CellFailure | None  # where and why it stopped; None when it ran through
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
                event = ev.get("event")
                if event == "cell_start":
                    order = ev.get("code_cells", [])
                    pos = order.index(ev["cell"]) + 1 if ev["cell"] in order else ev["cell"]
                    state["cell"] = f"cell {ev['cell']} ({pos}/{len(order)} code cells): {ev.get('first_line', '')}"
                    state["line"] = ""
                elif event == "cell_executed":
                    console.print(f"  cell {ev['cell']} done in {ev['seconds']:.1f} s", highlight=False)
                elif event == "cell_error":
                    state["line"] = f"{ev.get('ename', '')}: {ev.get('evalue', '')}".strip(": ")
                elif event == "stream":
                    state["line"] = str(ev.get("text", ""))
                    sink.write(f"[cell {ev.get('cell')}] {state['line']}\n")
                elapsed = time.monotonic() - started
                line = f"\n  {escape(state['line'][:150])}" if state["line"] else ""
                status.update(f"notebook {elapsed:6.1f} s  {escape(state['cell'][:100])}{line}")
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
    engine: str = NbclientEngine.name,
    env: Mapping[str, str] | None = None,
) -> Execution:
    """Execute `notebook` with its kernel in `cwd`; write the executed copy to `executed`.

    `isolation` (from `bundler.sandbox.probe()`) decides whether the child and its kernel see
    the network. `engine`: a registered engine's name (`bundler.dryrun.engines`); `env` is added to
    the child's environment (e.g. JUPYTER_PATH). A failure inside the notebook is returned, never raised.
    """
    get_engine(engine)  # an unknown engine is refused here, naming the registered ones
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
        # its own session: a SIGINT sent to bundler's whole process group (a CI runner's or an editor's stop)
        # reaches bundler only, which stops the child as it does on Ctrl-C; the kernel is never interrupted
        # mid-cell into a failure that would be read as the notebook's
        start_new_session=True,
    )
    deadline = None if timeout_s is None else timeout_s + 120.0
    _follow(proc, log, console, deadline)
    log_tail = tail(log.read_text(encoding="utf-8", errors="replace"))
    if not result_path.is_file():
        stopped = f"the notebook runner exited with status {proc.returncode}"
        died = CellFailure(None, "", stopped, traceback=log_tail[-RUNNER_TAIL_LINES:], log_tail=log_tail)
        return Execution("error", 0.0, died, log)
    data = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    found = data.get("failure")
    failure = replace(CellFailure.from_dict(found), log_tail=log_tail) if isinstance(found, Mapping) else None
    return Execution(status=str(data["status"]), seconds=float(data["seconds"]), failure=failure, log=log)
