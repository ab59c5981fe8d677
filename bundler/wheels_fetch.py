"""Get one wheel for the target into the cache: reuse, download a binary wheel, or build a pure sdist.

The cache is a flat folder of wheels (`cache_dir/*.whl`); a wheel found there for the right
name, version and tags is used as is, so a second build downloads and builds nothing.
Downloads go through pip (`pip download --no-deps --only-binary=:all:` with the target's
Python, ABI and every platform level), which honours the user's pip configuration and
verifies the index's hashes. A package with no wheel for the target is built from its sdist
here (`pip wheel --no-deps --no-build-isolation`, with this environment's setuptools/wheel,
so it also works offline); a build that is not pure Python (`*-none-any`) is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from .errors import WheelsError
from .wheels_target import TargetEnv

CACHED, DOWNLOADED, BUILT = "cached", "downloaded", "built from sdist"


@dataclass(frozen=True)
class Fetched:
    path: Path  # in the cache
    how: str  # CACHED | DOWNLOADED | BUILT


def wheel_tags(path: Path) -> frozenset[Tag]:
    try:
        return parse_wheel_filename(path.name)[3]
    except InvalidWheelFilename as e:
        raise WheelsError(f"{path}: not a valid wheel file name ({e}); remove it") from None


def find_cached(cache_dir: Path, name: str, version: str, env: TargetEnv) -> Path | None:
    """The best wheel in `cache_dir` for name==version on the target, if any."""
    key, wanted = canonicalize_name(name), Version(version)
    best: tuple[int, Path] | None = None
    for path in cache_dir.glob("*.whl"):
        try:
            wname, wversion, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if wname != key or wversion != wanted:
            continue
        rank = env.rank(tags)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, path)
    return best[1] if best else None


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=environ, check=False
    )


def _tail(done: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    text = (done.stderr or "") + (done.stdout or "")
    kept = [ln for ln in text.strip().splitlines() if ln.strip() and "[notice]" not in ln]
    return "\n".join(kept[-lines:])


def _index_args(find_links: tuple[Path, ...], no_index: bool) -> list[str]:
    args = ["--no-index"] if no_index else []
    for folder in find_links:
        args += ["--find-links", str(folder)]
    return args


def _store(built: Path, cache_dir: Path) -> Path:
    """Move a finished wheel into the cache atomically (a crash leaves no partial file)."""
    final = cache_dir / built.name
    partial = cache_dir / f".{built.name}.partial"
    shutil.copyfile(built, partial)
    partial.replace(final)
    return final


def _only_wheel(folder: Path, what: str) -> Path:
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelsError(f"{what}: expected one wheel from pip, got {[w.name for w in wheels]}")
    return wheels[0]


def fetch_wheel(
    name: str,
    version: str,
    env: TargetEnv,
    *,
    find_links: tuple[Path, ...],
    no_index: bool,
    cache_dir: Path,
    work: Path,
) -> Fetched:
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = find_cached(cache_dir, name, version, env)
    if cached:
        return Fetched(cached, CACHED)
    spec = f"{name}=={version}"
    index = _index_args(find_links, no_index)
    binary_dir = work / f"dl-{canonicalize_name(name)}"
    platforms = [arg for p in env.platforms for arg in ("--platform", p)]
    done = _pip(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            env.python,
            "--implementation",
            "cp",
            "--abi",
            env.interpreter,
            *platforms,
            "--dest",
            str(binary_dir),
            *index,
            spec,
        ]
    )
    if done.returncode == 0:
        wheel = _only_wheel(binary_dir, spec)
        if env.rank(wheel_tags(wheel)) is None:
            raise WheelsError(f"pip downloaded {wheel.name} for {spec}, which does not fit {env.describe}")
        return Fetched(_store(wheel, cache_dir), DOWNLOADED)
    binary_error = _tail(done, 4)
    build_dir = work / f"build-{canonicalize_name(name)}"
    built = _pip(
        [
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-binary=:all:",
            "--ignore-requires-python",
            "--wheel-dir",
            str(build_dir),
            *index,
            spec,
        ]
    )
    fix = (
        f"build a {env.interpreter} manylinux {env.arch} wheel of {spec} yourself (e.g. with cibuildwheel, "
        "or `pip wheel` on a matching Linux machine) and add its folder to target.find_links"
    )
    if built.returncode != 0:
        raise WheelsError(
            f"{spec}: no wheel for {env.describe} ({binary_error.splitlines()[-1] if binary_error else 'pip failed'}) "
            f"and its sdist did not build here:\n{_tail(built)}\nFix: {fix}"
        )
    wheel = _only_wheel(build_dir, spec)
    tags = wheel_tags(wheel)
    if any(t.abi != "none" or t.platform != "any" for t in tags):
        raise WheelsError(
            f"{spec}: its sdist has compiled extensions (built {wheel.name} for this machine, not for the target); "
            f"Fix: {fix}"
        )
    if env.rank(tags) is None:
        raise WheelsError(f"{spec}: its sdist built {wheel.name}, which {env.describe} cannot install; Fix: {fix}")
    return Fetched(_store(wheel, cache_dir), BUILT)
