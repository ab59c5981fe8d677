"""Wait for something on Kaggle: poll a status, show it with a spinner and the elapsed time.

`wait_for(poll, done, what=..., ...)` calls `poll()` every `interval` seconds until `done(status)`;
each new status is printed as a line (so a log shows the sequence) and the spinner shows the
current one with the time waited, ticking between polls (`spinner`, also used around uploads).
Past `timeout_s` it raises `RemoteError` naming what it waited for, the last status and how to
resume; Ctrl-C stops waiting the same way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from bundler.errors import RemoteError


@contextlib.contextmanager
def spinner(console: Console, description: str) -> Iterator[tuple[Progress, TaskID]]:
    """A spinner with `description` and the time elapsed, ticking on its own while the caller blocks."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    # Drawn on the terminal as it is now: the kaggle client's own prints are captured while it runs
    # (`client._silenced` swaps sys.stdout), and the spinner must keep ticking through an upload.
    # `console.print` meanwhile reaches the terminal through the Live display's stdout redirect.
    # Off where the output is no terminal (a log, a pipe): the status lines are printed anyway.
    live = Console(file=console.file, force_terminal=console.is_terminal, width=console.width, highlight=False)
    with Progress(*columns, console=live, transient=True, disable=not console.is_terminal) as progress:
        yield progress, progress.add_task(description, total=None)


def wait_for(
    poll: Callable[[], str],
    done: Callable[[str], bool],
    *,
    what: str,
    interval: float,
    timeout_s: float,
    resume: str,
    console: Console,
) -> tuple[str, float]:
    """Poll until `done(status)`; (the final status, seconds waited)."""
    started = time.monotonic()
    last = ""
    with spinner(console, f"{what}: asking Kaggle") as (progress, task):
        while True:
            status = poll()
            elapsed = time.monotonic() - started
            if status != last:
                console.print(f"  {escape(what)}: {escape(status or '?')} after {elapsed:.0f} s")
                last = status
            if done(status):
                return status, elapsed
            if elapsed > timeout_s:
                raise RemoteError(
                    f"{what}: still {status or 'unknown'} after {elapsed:.0f} s (timeout {timeout_s:.0f} s); "
                    f"{resume}, or give a longer --timeout"
                )
            progress.update(task, description=f"{what}: {status}")
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                raise RemoteError(f"{what}: stopped waiting at {status} after {elapsed:.0f} s; {resume}") from None
