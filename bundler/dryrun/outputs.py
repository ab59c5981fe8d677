"""Where a dry-run's results go: staged beside the last good run, swapped in only when it passes.

A run writes everything into `<parent>/.<out>.new-<pid>-<random>/` next to `out` (default
`build/dryrun/`). At the end:
- a passing run is swapped into `out` (the previous run set aside, the new one renamed in, the old
  one deleted; on a failed rename the old one comes back), and an older `<out>.failed/` is removed;
- a failing run is swapped into `<out>.failed/` instead, so `out` keeps the last good submission,
  summary and report;
- a run stopped by Ctrl-C, SIGTERM or an error in bundler is discarded.
A run killed outright (SIGKILL) leaves its staging folder behind; the next dry-run deletes every
staging folder whose process is gone.

`check_out` runs before anything else: `out` (and `<out>.failed`) must be empty, missing, or a
previous dry-run's outputs (its `summary.json`), in a folder that can be written; `--out .` in a
project is refused, never replaced. A folder that cannot be renamed (a mount point, such as a
Docker volume) gets its contents replaced instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from bundler.display import shown_path
from bundler.dryrun.tree import remove_tree
from bundler.errors import DryRunError
from bundler.outdir import check_out_folder, replace_contents
from bundler.sandbox import pid_alive

SUMMARY = "summary.json"
_SUMMARY_KEYS = {"ok", "reason"}  # what every dry-run's summary.json carries


def failed_dir(out: Path) -> Path:
    """Where a failing run's outputs land: `<out>.failed` beside `out`."""
    return out.with_name(out.name + ".failed")


def is_dryrun_output(folder: Path) -> bool:
    """Whether `folder` holds a dry-run's outputs (its summary.json), so replacing it loses nothing of the user's."""
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.keys() >= _SUMMARY_KEYS


def check_out(out: Path) -> None:
    """Refuse an `out` whose swap would destroy what the user keeps there, or that cannot be written."""
    for folder in (out, failed_dir(out)):
        check_out_folder(
            folder,
            what=f"dry-run output folder {shown_path(folder)} ([dryrun] out, or --out)",
            owned=is_dryrun_output,
            error=DryRunError,
            fix="choose another [dryrun] out (or --out), such as build/dryrun",
        )


def _stage_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(r"\." + re.escape(out.name) + r"(?:\.failed)?\.(?:new|old)-(\d+)-\w+")


def remove_stale(out: Path) -> list[Path]:
    """Delete the staging folders of `out` left by dry-runs that no longer run; the ones removed."""
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    pattern = _stage_pattern(out)
    for path in out.parent.iterdir():
        m = pattern.fullmatch(path.name)
        if m and path.is_dir() and not pid_alive(int(m.group(1))):
            remove_tree(path)  # it may hold a read-only Kaggle-like tree
            removed.append(path)
    return removed


def new_stage(out: Path) -> Path:
    """A fresh, empty staging folder beside `out` (stale ones of dead runs removed first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.new-{os.getpid()}-", dir=out.parent))


def _swap_into(stage: Path, dest: Path) -> None:
    """`stage` renamed to `dest`: the old `dest` set aside first, deleted after, restored on failure."""
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
    had_old = dest.exists()
    if had_old:
        try:
            dest.replace(old)  # onto the empty folder just made: an atomic rename
        except OSError:  # a mount point (EBUSY) or a folder that cannot be renamed: replace what it holds
            old.rmdir()
            replace_contents(stage, dest)
            return
    try:
        stage.rename(dest)
    except BaseException:
        if had_old:
            old.replace(dest)
        else:
            old.rmdir()
        raise
    remove_tree(old)


def keep(stage: Path, out: Path, *, ok: bool) -> Path:
    """Put a finished run's `stage` in place: `out` when it passed, `<out>.failed` when not. Returns where."""
    if ok:
        _swap_into(stage, out)
        failed = failed_dir(out)
        if failed.exists():
            remove_tree(failed)  # older than the run that just passed
        return out
    dest = failed_dir(out)
    _swap_into(stage, dest)
    return dest


def discard(stage: Path) -> None:
    """Delete an unfinished run's staging folder (nothing of it is kept)."""
    with contextlib.suppress(OSError):
        remove_tree(stage)
