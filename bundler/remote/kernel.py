"""`bundler status [--version N] [--wait]`: a pushed notebook version's state, its outputs, its failure.

`kernel_status(cfg, ...)` asks Kaggle for the session state of kernel version N (default: the
last one `bundler push` recorded): queued, running, complete, error, cancel_requested,
cancel_acknowledged. With `wait` it polls (spinner, elapsed time, timeout) until the session
ends. A completed version's outputs (submission.csv, profile.json, the log) are downloaded into
`build/kaggle/v<N>/`; its profile.json is then the default calibration of later dry-runs. An
errored version's log is downloaded too, then the failing cell's traceback, the log's tail and
the likely Kaggle error class are printed, and the command fails with one line naming the fix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bundler.config import BundleConfig
from bundler.display import shown_path
from bundler.errors import RemoteError
from bundler.notebook.failure import FROM_LOG, failing_cell, tail
from bundler.remote.client import Kaggle, connect, poll_interval
from bundler.remote.diagnose import classify, read_log
from bundler.remote.state import RemoteState, load_state, version_dir
from bundler.remote.wait import wait_for
from kernel_src.paths import PROFILE_FILE, SUBMISSION_FILE

ENDED = ("complete", "error", "cancel_acknowledged")
DEFAULT_POLL_S = 30.0


@dataclass(frozen=True)
class StatusResult:
    version: int
    status: str  # the session state Kaggle reported last
    outputs: tuple[Path, ...]  # files downloaded into build/kaggle/v<N>/ (empty while running)


def default_timeout(cfg: BundleConfig) -> float:
    """How long to wait for a session: the competition's limit, plus an hour of queueing."""
    return cfg.competition.time_limit_s + 3600.0


def resolve_version(state: RemoteState, version: int | None) -> int:
    if version is not None:
        if version < 1:
            raise RemoteError(f"--version {version}: kernel versions start at 1")
        return version
    if state.last_kernel_version is None:
        raise RemoteError(
            f"{state.path}: no notebook version pushed from this project yet; run `bundler push` or give --version N"
        )
    return state.last_kernel_version


def _download(cfg: BundleConfig, kaggle: Kaggle, version: int, console: Console) -> list[Path]:
    dest = version_dir(cfg, version)
    files = kaggle.kernel_output(cfg.kernel.id, version, dest)
    names = ", ".join(p.name for p in files) or "nothing"
    console.print(f"[green]downloaded[/] {escape(shown_path(dest))}: {escape(str(names))}")
    return files


def _report_failure(cfg: BundleConfig, version: int, message: str, files: list[Path], console: Console) -> RemoteError:
    log = read_log(files)
    failure = failing_cell(files, log)
    cls = classify(message, log, "\n".join(failure.traceback) if failure else "")
    if failure is not None:
        where = "from the log" if failure.cell == FROM_LOG else f"cell {failure.cell or '?'}"
        console.print(f"[bold red]failing cell[/] ({where}): {escape(failure.ename)}: {escape(failure.evalue)}")
        for line in failure.traceback[-30:]:
            console.print(f"  {escape(line)}", soft_wrap=True)
    lines = failure.log_tail if failure is not None else tail(log)
    if lines:
        console.print(f"[bold]log tail[/] ({len(lines)} lines of {escape(shown_path(version_dir(cfg, version)))}):")
        for line in lines:
            console.print(f"  {escape(line)}", soft_wrap=True)
    detail = f" ({message})" if message else ""
    return RemoteError(f"notebook {cfg.kernel.id} v{version} failed on Kaggle{detail}: likely {cls.name}; {cls.fix}")


def settle(
    cfg: BundleConfig, kaggle: Kaggle, state: RemoteState, version: int, status: str, message: str, console: Console
) -> StatusResult:
    """Record the state; download outputs of an ended session; raise on an error."""
    record = state.kernel(version)
    record.update(status=status, checked_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if message:
        record["failure_message"] = message
    files: list[Path] = []
    if status in ENDED:
        files = _download(cfg, kaggle, version, console)
        record["outputs"] = sorted(p.name for p in files)
    state.save()
    if status == "error":
        raise _report_failure(cfg, version, message, files, console)
    if status == "cancel_acknowledged":
        raise RemoteError(f"notebook {cfg.kernel.id} v{version} was cancelled on Kaggle; push it again")
    if status == "complete":
        profile = version_dir(cfg, version) / PROFILE_FILE
        if not (version_dir(cfg, version) / SUBMISSION_FILE).is_file():
            console.print(f"[yellow]warning:[/] v{version} completed without {SUBMISSION_FILE}: a submit would fail")
        if profile.is_file():
            console.print(f"  {escape(shown_path(profile))} is now the dry-run's default calibration")
        console.print(f"submit it with: [bold]bundler submit --version {version} --wait[/]")
    return StatusResult(version, status, tuple(files))


def kernel_status(
    cfg: BundleConfig,
    *,
    console: Console,
    version: int | None = None,
    wait: bool = False,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    kaggle: Kaggle | None = None,
) -> StatusResult:
    """The session state of kernel version `version` (default: the last pushed); see the module doc."""
    state = load_state(cfg)
    number = resolve_version(state, version)
    interval = poll_interval(poll_s, DEFAULT_POLL_S)
    kaggle = kaggle or connect(say=lambda line: console.print(escape(line)))
    ref = cfg.kernel.id
    last_message = ""
    for line in state.part_lines():
        console.print(f"  {escape(line)}")
    ran_on = state.kernel(number).get("parts")
    if isinstance(ran_on, dict) and ran_on:
        console.print("  v" + str(number) + " runs on " + ", ".join(f"{k} v{v}" for k, v in ran_on.items()))

    def poll() -> str:
        nonlocal last_message
        status, last_message = kaggle.kernel_status(ref, number)
        return status

    if wait:
        status, _ = wait_for(
            poll,
            lambda s: s in ENDED,
            what=f"notebook {ref} v{number}",
            interval=interval,
            timeout_s=timeout_s if timeout_s is not None else default_timeout(cfg),
            resume=f"see later with `bundler status --version {number} --wait`",
            console=console,
        )
    else:
        status = poll()
        console.print(f"notebook {ref} v{number}: [bold]{status}[/]")
    return settle(cfg, kaggle, state, number, status, last_message, console)
