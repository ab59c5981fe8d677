"""Find an interpreter of the target's Python version (e.g. 3.12) on this machine.

Looked for in this order, the first that runs and reports the right `major.minor` wins:
1. `BUNDLER_TARGET_PYTHON` (a path or a command name): when set it must work, or it is an error;
2. `python3.12` on PATH (a pyenv shim that has no such version is skipped, not fatal);
3. pyenv's versions, newest first (`$PYENV_ROOT` or `~/.pyenv`, `versions/3.12.*/bin/python3.12`);
4. uv's pythons (`uv python find 3.12`, downloads off: nothing is fetched here).

Used by the build's install rehearsal and by the dry-run's twin of the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from bundler.errors import TargetPythonError

PYTHON_ENV = "BUNDLER_TARGET_PYTHON"
SOURCES = ("BUNDLER_TARGET_PYTHON", "PATH", "pyenv", "uv")


@dataclass(frozen=True)
class TargetPython:
    path: str  # the interpreter, as found (a symlink is kept: venvs made from it follow it)
    version: str  # its full version, e.g. "3.12.1"
    source: str  # one of SOURCES: where it was found


def how_to_get(version: str) -> str:
    """One clause naming the ways to give bundler a Python `version`."""
    return (
        f"install one (`pyenv install {version}` or `uv python install {version}`) "
        f"or point {PYTHON_ENV} at a python{version}"
    )


def version_of(python: str) -> str | None:
    """The full version `python` reports, or None when it does not run."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _matches(full: str | None, version: str) -> bool:
    return full is not None and full.startswith(version + ".")


def pyenv_candidates(version: str, root: Path | None = None) -> list[str]:
    """pyenv's interpreters of `version`, newest patch release first."""
    root = root or Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found: list[tuple[Version, str]] = []
    for exe in root.glob(f"versions/{version}.*/bin/python{version}"):
        try:
            found.append((Version(exe.parent.parent.name), str(exe)))
        except InvalidVersion:
            continue
    return [exe for _, exe in sorted(found, reverse=True)]


def uv_candidate(version: str) -> str | None:
    """What `uv python find VERSION` reports with downloads off, or None (no uv, nothing found)."""
    try:
        from bundler.target.resolve import uv_command

        uv = uv_command()
    except Exception:  # no uv at all: this source simply has nothing
        return None
    environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    try:
        done = subprocess.run(
            [*uv, "python", "find", version, "--system", "--no-python-downloads"],
            capture_output=True,
            text=True,
            timeout=60,
            env=environ,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
    return path or None


def find_target_python(version: str) -> TargetPython | None:
    """A working interpreter of Python `version` ("3.12"), or None when this machine has none.

    Raises TargetPythonError when BUNDLER_TARGET_PYTHON is set but is not one.
    """
    chosen = os.environ.get(PYTHON_ENV, "").strip()
    if chosen:
        path = shutil.which(chosen) or chosen
        full = version_of(path)
        if not _matches(full, version):
            what = f"Python {full}" if full else "not a working Python"
            raise TargetPythonError(
                f"{PYTHON_ENV}={chosen} is {what}, not Python {version}; point it at a python{version}, or unset it"
            )
        assert full is not None
        return TargetPython(path, full, "BUNDLER_TARGET_PYTHON")
    on_path = shutil.which(f"python{version}")
    if on_path:
        full = version_of(on_path)
        if full is not None and _matches(full, version):
            return TargetPython(on_path, full, "PATH")
    for candidate in pyenv_candidates(version):
        full = version_of(candidate)
        if full is not None and _matches(full, version):
            return TargetPython(candidate, full, "pyenv")
    from_uv = uv_candidate(version)
    if from_uv:
        full = version_of(from_uv)
        if full is not None and _matches(full, version):
            return TargetPython(from_uv, full, "uv")
    return None
