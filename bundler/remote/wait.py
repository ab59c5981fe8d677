"""Wait for something on Kaggle: poll a status, show it with a spinner and the elapsed time.

`wait_for(poll, done, what=..., ...)` calls `poll()` every `interval` seconds until `done(status)`;
each new status is printed as a line (so a log shows the sequence) and the spinner shows the
current one with the time waited. Past `timeout_s` it raises `RemoteError` naming what it
waited for, the last status and how to resume; Ctrl-C stops waiting the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

from bundler.errors import RemoteError


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
    with console.status(f"{what}: asking Kaggle") as spinner:
        while True:
            status = poll()
            elapsed = time.monotonic() - started
            if status != last:
                console.print(f"  {what}: {status or '?'} after {elapsed:.0f} s")
                last = status
            if done(status):
                return status, elapsed
            if elapsed > timeout_s:
                raise RemoteError(
                    f"{what}: still {status or 'unknown'} after {elapsed:.0f} s (timeout {timeout_s:.0f} s); "
                    f"{resume}, or give a longer --timeout"
                )
            spinner.update(f"{what}: {status} ({elapsed:.0f} s)")
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                raise RemoteError(f"{what}: stopped waiting at {status} after {elapsed:.0f} s; {resume}") from None
