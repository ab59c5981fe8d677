"""Output folders the user names (`--out`, `dataset.out`, `[dryrun] out`): checked before any work.

Every command that replaces a folder checks it first, so a mistaken `--out .` or `--out build` is
one line naming the folder and the fix, never a deleted project:
- `check_out_folder`: the path is not under a file, its parent can be written (probed by creating a
  file, which also catches read-only mounts that permission bits do not show, for root too), it is
  not a file, and a folder that is not empty must be one this tool wrote (`owned`).
- `replace_contents`: where a finished output cannot be renamed into place (a mount point such as
  a Docker volume answers EBUSY), the folder's contents are replaced instead.
- `remove_stale_temp`: temporary folders named `<prefix><pid>-...` whose process is gone (a
  SIGKILL during the wheel stage leaves one in $TMPDIR).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from bundler.errors import BundlerError
from bundler.sandbox import pid_alive


def write_problem(folder: Path) -> str:
    """Why nothing can be written into the existing `folder` ('' when a file can be created there)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".bundler-write-probe-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    with contextlib.suppress(OSError):
        Path(probe).unlink()
    return ""


def check_parent(path: Path, *, what: str, error: type[BundlerError], fix: str) -> None:
    """Refuse a `path` under a file, or whose nearest existing parent cannot be written (tried by
    writing a file, so a read-only mount is found for root too)."""
    above = next(p for p in path.parents if p.exists() or p == p.parent)
    if not above.is_dir():
        raise error(f"{what}: {above} is a file, so no folder can be made under it; {fix}")
    problem = write_problem(above)
    if problem:
        raise error(f"{what}: {above} cannot be written ({problem}); {fix}, in a folder you can write to")


def check_out_folder(
    out: Path, *, what: str, owned: Callable[[Path], bool], error: type[BundlerError], fix: str
) -> None:
    """Refuse `out` (named `what` in the message, e.g. "dry-run output folder build/dryrun ([dryrun]
    out, or --out)") when it cannot become this tool's output: a path under a file, a parent that
    cannot be written, a file, or a folder that holds something `owned` does not recognise as ours.
    `fix` says what to change ("choose another [dryrun] out (or --out)")."""
    check_parent(out, what=what, error=error, fix=fix)
    if not out.exists():
        return
    if not out.is_dir():
        raise error(f"{what} is a file; {fix}")
    if any(out.iterdir()) and not owned(out):
        raise error(
            f"{what} is not empty and was not written by bundler, so it is not replaced; {fix}, or empty the folder"
        )


def stale_pattern(prefix: str) -> re.Pattern[str]:
    """The names `<prefix><pid>-<anything>` that `remove_stale_temp` looks for."""
    return re.compile(re.escape(prefix) + r"(\d+)-.*")


def remove_stale_temp(prefix: str, folder: Path | None = None) -> list[Path]:
    """Delete the folders `<prefix><pid>-...` in `folder` (default: the temporary folder) whose
    process is gone; the ones removed."""
    folder = Path(folder or tempfile.gettempdir())
    pattern = stale_pattern(prefix)
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            m = pattern.fullmatch(path.name)
            if m and path.is_dir() and not path.is_symlink() and not pid_alive(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def remove_all(path: Path) -> None:
    """Delete a file or a folder tree, read-only folders inside it included."""
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, _files in os.walk(path):
            for d in dirs:
                if not (Path(folder) / d).is_symlink():
                    (Path(folder) / d).chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRWXU)
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_contents(stage: Path, dest: Path) -> None:
    """`dest`'s entries set aside inside `dest` (the same filesystem), `stage`'s moved in (copied across
    filesystems where needed), then the old ones and `stage` deleted; on a failure the old ones come back."""
    aside = Path(tempfile.mkdtemp(prefix=f".old-{os.getpid()}-", dir=dest))
    for entry in [e for e in dest.iterdir() if e != aside]:
        entry.replace(aside / entry.name)
    try:
        for entry in list(stage.iterdir()):
            shutil.move(str(entry), str(dest / entry.name))
    except BaseException:
        for entry in [e for e in dest.iterdir() if e != aside]:
            remove_all(entry)
        for entry in list(aside.iterdir()):
            entry.replace(dest / entry.name)
        aside.rmdir()
        raise
    remove_all(aside)
    remove_all(stage)
