"""Rehearse the notebook's offline install on an interpreter of the target's Python version.

A fresh venv of that Python gets the baseline as installed metadata-only distributions (so
pip sees the image's packages at the image's versions without the gigabytes), then runs
what the notebook runs, `pip install --no-index --no-deps --find-links <bundle> <wheels>`,
with no network (`unshare -n`, where it can be had), then `pip check` for what `--no-deps`
skipped. A failure is raised with pip's message condensed.

Set BUNDLER_SKIP_REHEARSAL=1 to skip it, BUNDLER_TARGET_PYTHON=/path/to/python3.12 to choose
the interpreter (otherwise `python3.12` on PATH, then pyenv's, then uv's pythons are tried).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bundler.errors import TargetPythonError, WheelsError
from bundler.sandbox import isolated_argv, probe
from bundler.target import Baseline, TargetEnv, interpreter, is_protected

SKIP_ENV = "BUNDLER_SKIP_REHEARSAL"
PYTHON_ENV = interpreter.PYTHON_ENV
_CONFLICT = re.compile(r"^(\S+) (\S+) has requirement (.+), but you have (\S+) (\S+)\.$")


@dataclass(frozen=True)
class Rehearsal:
    ran: bool
    detail: str  # what was proved, or why it did not run


def find_target_python(version: str) -> tuple[str, str] | None:
    """(interpreter, its full version) for Python `version`, or None when there is none here
    (`bundler.target.interpreter` looks in BUNDLER_TARGET_PYTHON, PATH, pyenv and uv)."""
    try:
        found = interpreter.find_target_python(version)
    except TargetPythonError as e:
        raise WheelsError(f"{e} (or set {SKIP_ENV}=1 to skip the rehearsal)") from None
    return None if found is None else (found.path, found.version)


def _install_stubs(baseline: Baseline, site: Path) -> None:
    for pin in baseline.pins.values():
        dist = f"{re.sub(r'[-_.]+', '_', pin.name)}-{pin.version}.dist-info"
        folder = site / dist
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pin.name}\nVersion: {pin.version}\n")
        (folder / "INSTALLER").write_text("bundler-baseline\n")
        (folder / "RECORD").write_text(f"{dist}/METADATA,,\n{dist}/INSTALLER,,\n{dist}/RECORD,,\n")


def _condense(done: subprocess.CompletedProcess[str], lines: int = 10) -> str:
    text = (done.stderr or "") + "\n" + (done.stdout or "")
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip() and "[notice]" not in ln]
    return "\n".join(kept[-lines:])


def _check_problems(output: str) -> list[str]:
    """`pip check` lines that matter: torch/CUDA version conflicts were already warned about."""
    problems: list[str] = []
    for line in (ln.strip() for ln in output.splitlines()):
        if not line or line.startswith("No broken requirements"):
            continue
        conflict = _CONFLICT.match(line)
        if conflict and is_protected(conflict.group(4)):
            continue
        problems.append(line)
    return problems


def rehearse_install(
    wheels: list[Path], bundle_dir: Path, baseline: Baseline, env: TargetEnv, *, work: Path
) -> Rehearsal:
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return Rehearsal(False, f"skipped: {SKIP_ENV} is set")
    if not wheels:
        return Rehearsal(False, "nothing to install")
    if sys.platform != "linux" or platform.machine() != env.arch:
        return Rehearsal(False, f"skipped: this machine is not linux {env.arch} like the target")
    found = find_target_python(env.python)
    if found is None:
        return Rehearsal(
            False,
            f"skipped: no Python {env.python} here ({interpreter.how_to_get(env.python)})",
        )
    python, full = found
    venv = work / "rehearsal-venv"
    made = subprocess.run(
        [python, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        raise WheelsError(f"cannot create a Python {full} venv with {python} for the rehearsal:\n{_condense(made)}")
    venv_python = venv / "bin" / "python"
    _install_stubs(baseline, venv / "lib" / f"python{env.python}" / "site-packages")
    isolation = probe()
    pip = [sys.executable, "-m", "pip", "--python", str(venv_python), "--disable-pip-version-check"]
    environ = {**os.environ, "PIP_NO_INPUT": "1", "PIP_CONFIG_FILE": os.devnull}
    install = [*pip, "install", "--no-index", "--no-deps", "--no-compile", "--find-links", str(bundle_dir)]
    done = subprocess.run(
        isolated_argv([*install, *map(str, wheels)], isolation),
        capture_output=True,
        text=True,
        env=environ,
        check=False,
    )
    if done.returncode != 0:
        raise WheelsError(
            f"offline install rehearsal on Python {full} failed (pip install --no-index --no-deps):\n"
            f"{_condense(done)}\nFix the wheel named above (rebuild it for {env.describe}, or pin another version)"
        )
    checked = subprocess.run(
        isolated_argv([*pip, "check"], isolation), capture_output=True, text=True, env=environ, check=False
    )
    problems = _check_problems(checked.stdout)
    if checked.returncode != 0 and not problems and not checked.stdout.strip():
        problems = [_condense(checked)]
    if problems:
        raise WheelsError(
            f"offline install rehearsal on Python {full}: `pip check` finds the closure incomplete:\n- "
            + "\n- ".join(problems)
            + "\nFix: add the missing packages to target.requirements or target.find_links"
        )
    network = "no network" if isolation.isolated else f"network reachable ({isolation.reason})"
    return Rehearsal(
        True,
        f"{len(wheels)} wheel(s) installed offline into a fresh Python {full} venv holding the baseline "
        f"({network}); pip check is clean",
    )
