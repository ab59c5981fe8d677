"""`bundler submit [--version N] [--wait]`: submit a pushed notebook version to the code competition.

What `kaggle competitions submit -c SLUG -k OWNER/KERNEL -v N -f submission.csv -m MSG` does,
through the package's API: the version defaults to the last one `bundler push` recorded, the
file is the notebook's `submission.csv` (the file name Kaggle scores on the rerun), the
message names the bundle and the version. Kaggle refuses a version that has not completed: the
version's state is asked first; with `wait` a queued or running version is waited for (as `bundler
status --wait` does), then submitted, then the submission is polled until it is scored and the
public score printed; without `wait`, one line says which version is in which state and which one
can be submitted. A scoring failure ends in one line naming the likely error class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from bundler.config import BundleConfig
from bundler.errors import RemoteError
from bundler.remote.client import Kaggle, Submission, connect, poll_interval
from bundler.remote.diagnose import classify
from bundler.remote.kernel import ENDED, kernel_status, resolve_version
from bundler.remote.state import load_state
from bundler.remote.wait import wait_for
from kernel_src.paths import SUBMISSION_FILE

DEFAULT_POLL_S = 30.0
DEFAULT_TIMEOUT_S = 12 * 3600.0  # the longest a scored rerun may take


@dataclass(frozen=True)
class SubmitResult:
    version: int
    ref: int | None
    status: str  # "submitted" without --wait, else the final scoring state
    public_score: str


COMPLETE = "complete"


def _completed(
    cfg: BundleConfig,
    kaggle: Kaggle,
    number: int,
    *,
    wait: bool,
    poll_s: float | None,
    timeout_s: float | None,
    console: Console,
) -> None:
    """Return once kernel version `number` has completed on Kaggle (waiting for it with `wait`);
    else raise, naming its state and the version that can be submitted."""
    status, _ = kaggle.kernel_status(cfg.kernel.id, number)
    if status == COMPLETE:
        return
    if wait and status not in ENDED:
        console.print(f"v{number} is {status} on Kaggle: waiting for it to complete before submitting")
        done = kernel_status(cfg, console=console, version=number, wait=True, poll_s=poll_s, timeout_s=timeout_s,
                             kaggle=kaggle)  # fmt: skip
        status = done.status
        if status == COMPLETE:
            return
    state = load_state(cfg)
    completed = [int(v) for v, r in state.kernels.items() if r.get("status") == COMPLETE and int(v) != number]
    other = (
        f"; v{max(completed)} completed and can be submitted (`bundler submit --version {max(completed)}`)"
        if completed
        else ""
    )
    how = "" if wait or status in ENDED else "; `bundler submit --wait` waits for it, then submits"
    raise RemoteError(
        f"{cfg.kernel.id} v{number} is {status} on Kaggle, and only a version that completed can be submitted"
        f"{how}{other}"
    )


def submit(
    cfg: BundleConfig,
    *,
    console: Console,
    version: int | None = None,
    message: str | None = None,
    wait: bool = False,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    kaggle: Kaggle | None = None,
) -> SubmitResult:
    """Submit kernel version `version` (default: the last pushed); see the module doc."""
    state = load_state(cfg)
    number = resolve_version(state, version)
    interval = poll_interval(poll_s, DEFAULT_POLL_S)
    record = state.kernels.get(str(number), {})
    if record.get("status") == "error":
        console.print(f"[yellow]warning:[/] v{number} ended in error on its last check: its rerun will likely fail too")
    bundle = str(record.get("bundle_hash", ""))[:12]
    text = message or f"bundler v{number}" + (f", bundle {bundle}" if bundle else "")
    kaggle = kaggle or connect(say=lambda line: console.print(escape(line)))
    _completed(cfg, kaggle, number, wait=wait, poll_s=poll_s, timeout_s=timeout_s, console=console)
    console.print(f"submitting {cfg.kernel.id} v{number} to {cfg.competition.slug} ({SUBMISSION_FILE}): {text}")
    ref = kaggle.submit_code(
        competition=cfg.competition.slug, kernel=cfg.kernel.id, version=number, file_name=SUBMISSION_FILE, message=text
    )
    state.submissions.append(
        {"ref": ref, "version": number, "message": text, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )
    state.save()
    console.print(f"[green]submitted[/] v{number}" + (f" (submission {ref})" if ref else ""))
    if not wait:
        return SubmitResult(number, ref, "submitted", "")
    if ref is None:
        raise RemoteError(
            f"submission of v{number}: Kaggle returned no submission ref to wait on; see the competition's page"
        )
    last: Submission | None = None

    def poll() -> str:
        nonlocal last
        last = kaggle.submission(ref)
        return last.status

    status, _ = wait_for(
        poll,
        lambda s: s in ("complete", "error"),
        what=f"submission {ref}",
        interval=interval,
        timeout_s=timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S,
        resume="see it on the competition's 'My Submissions' page",
        console=console,
    )
    assert last is not None
    state.submissions[-1].update(status=status, public_score=last.public_score, error=last.error)
    state.save()
    if status == "error":
        cls = classify(last.error)
        raise RemoteError(
            f"submission {ref} (v{number}) failed to score ({last.error or 'no message'}): likely {cls.name}; {cls.fix}"
        )
    console.print(f"[bold green]public score[/] {last.public_score or '(not published)'} (submission {ref}, v{number})")
    return SubmitResult(number, ref, status, last.public_score)
