"""Get one wheel for the target into the local wheelhouse: reuse, download a binary wheel, or build a pure sdist.

The wheelhouse (`target.wheelhouse`, see `bundler.dataset.wheels.wheelhouse`) is a flat folder of
wheels; a wheel found there for the right name, version and tags (cached or dropped by the user)
is used as is, so a second build downloads and builds nothing.
Downloads go through pip (`pip download --no-deps --only-binary=:all:` with the target's
Python, ABI and every platform level), which honours the user's pip configuration and
verifies the index's hashes. A package with no wheel for the target is built from its sdist
here (`pip wheel --no-deps --no-build-isolation`, with this environment's setuptools/wheel,
so it also works offline); a build that is not pure Python (`*-none-any`) is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from bundler.dataset.wheels.wheelhouse import store
from bundler.errors import WheelsError
from bundler.target import TargetEnv

CACHED, COPIED, DOWNLOADED, BUILT = "cached", "from target.find_links", "downloaded", "built from sdist"


@dataclass(frozen=True)
class Fetched:
    path: Path  # in the wheelhouse
    how: str  # CACHED | COPIED | DOWNLOADED | BUILT


def wheel_tags(path: Path) -> frozenset[Tag]:
    try:
        return parse_wheel_filename(path.name)[3]
    except InvalidWheelFilename as e:
        raise WheelsError(f"{path}: not a valid wheel file name ({e}); remove it") from None


def find_cached(folder: Path, name: str, version: str, env: TargetEnv) -> Path | None:
    """The best wheel in `folder` (the wheelhouse or a find-links folder) for name==version on the target."""
    key, wanted = canonicalize_name(name), Version(version)
    best: tuple[int, Path] | None = None
    for path in folder.glob("*.whl"):
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


def _only_wheel(folder: Path, what: str) -> Path:
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelsError(f"{what}: expected one wheel from pip, got {[w.name for w in wheels]}")
    return wheels[0]


def _download_binary(spec: str, env: TargetEnv, index: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    platforms = [arg for p in env.platforms for arg in ("--platform", p)]
    args = ["download", "--no-deps", "--only-binary=:all:", "--python-version", env.python]
    args += ["--implementation", "cp", "--abi", env.interpreter, *platforms, "--dest", str(out), *index, spec]
    return _pip(args)


def _build_sdist(spec: str, index: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    args = ["wheel", "--no-deps", "--no-build-isolation", "--no-binary=:all:", "--ignore-requires-python"]
    return _pip([*args, "--wheel-dir", str(out), *index, spec])


def fetch_wheel(
    name: str,
    version: str,
    env: TargetEnv,
    *,
    find_links: tuple[Path, ...],
    no_index: bool,
    wheelhouse: Path,
    work: Path,
) -> Fetched:
    wheelhouse.mkdir(parents=True, exist_ok=True)
    cached = find_cached(wheelhouse, name, version, env)
    if cached:
        return Fetched(cached, CACHED)
    for folder in find_links:  # a wheel in a local wheelhouse needs no pip
        local = find_cached(folder, name, version, env)
        if local:
            return Fetched(store(local, wheelhouse), COPIED)
    spec = f"{name}=={version}"
    index = _index_args(find_links, no_index)
    key = canonicalize_name(name)
    binary_error = f"none in target.find_links ({', '.join(map(str, find_links))})"
    if not no_index:  # with no index, find_links was all there was: go straight to the sdist
        done = _download_binary(spec, env, index, work / f"dl-{key}")
        if done.returncode == 0:
            wheel = _only_wheel(work / f"dl-{key}", spec)
            if env.rank(wheel_tags(wheel)) is None:
                raise WheelsError(f"pip downloaded {wheel.name} for {spec}, which does not fit {env.describe}")
            return Fetched(store(wheel, wheelhouse), DOWNLOADED)
        binary_error = _tail(done, 1) or "pip download failed"
    built = _build_sdist(spec, index, work / f"build-{key}")
    fix = (
        f"build a {env.interpreter} manylinux {env.arch} wheel of {spec} yourself (e.g. with cibuildwheel, "
        "or `pip wheel` on a matching Linux machine) and add its folder to target.find_links"
    )
    if built.returncode != 0:
        raise WheelsError(
            f"{spec}: no wheel for {env.describe} ({binary_error}) and its sdist did not build here:\n"
            f"{_tail(built)}\nFix: {fix}"
        )
    wheel = _only_wheel(work / f"build-{key}", spec)
    tags = wheel_tags(wheel)
    if any(t.abi != "none" or t.platform != "any" for t in tags):
        raise WheelsError(
            f"{spec}: its sdist has compiled extensions (it built {wheel.name} for this machine, not for the "
            f"target); Fix: {fix}"
        )
    if env.rank(tags) is None:
        raise WheelsError(f"{spec}: its sdist built {wheel.name}, which {env.describe} cannot install; Fix: {fix}")
    return Fetched(store(wheel, wheelhouse), BUILT)
