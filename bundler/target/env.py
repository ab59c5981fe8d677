"""The target interpreter as data: wheel tags, environment markers, and uv's platform name.

`target.platforms` lists manylinux levels; like pip on the target itself, every older
manylinux level of the same architecture is accepted too (pip's `--platform` does not widen
them by itself, so the widened list is what `pip download` is given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.tags import Tag, compatible_tags, cpython_tags

from bundler.config import PYTHON_VERSION, TargetConfig
from bundler.errors import WheelsError

_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_ARCHES = ("x86_64", "aarch64")
# `uv pip compile --python-platform` values per architecture (uv 0.5+), oldest first
_UV_GLIBC = ((2, 17), (2, 28), (2, 31), (2, 32), (2, 33), (2, 34), (2, 35), (2, 36), (2, 37), (2, 38), (2, 39), (2, 40))


@dataclass(frozen=True)
class TargetEnv:
    python: str  # "3.12"
    arch: str  # "x86_64"
    glibc: tuple[int, int] | None  # the newest manylinux level listed
    platforms: tuple[str, ...]  # widened, newest first
    tags: tuple[Tag, ...]  # most preferred first, as pip on the target orders them
    markers: dict[str, str]

    @property
    def interpreter(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def describe(self) -> str:
        libc = f"manylinux glibc {self.glibc[0]}.{self.glibc[1]}" if self.glibc else "linux"
        return f"{self.interpreter} {libc} {self.arch}"

    @property
    def uv_platform(self) -> str:
        if self.glibc is None or self.glibc < _UV_GLIBC[0]:
            return f"{self.arch}-unknown-linux-gnu"
        level = max(g for g in _UV_GLIBC if g <= self.glibc)
        return f"{self.arch}-manylinux2014" if level == (2, 17) else f"{self.arch}-manylinux_{level[0]}_{level[1]}"

    def rank(self, tags: frozenset[Tag]) -> int | None:
        """Position of the best of `tags` in the target's preference order; None: incompatible."""
        ranks = [i for i, t in enumerate(self.tags) if t in tags]
        return min(ranks) if ranks else None


def _split(platform: str) -> tuple[tuple[int, int] | None, str]:
    m = _MANYLINUX.match(platform)
    if m:
        return (int(m.group(1)), int(m.group(2))), m.group(3)
    for legacy, glibc in _LEGACY.items():
        if platform.startswith(legacy + "_"):
            return glibc, platform[len(legacy) + 1 :]
    if platform.startswith("linux_"):
        return None, platform[len("linux_") :]
    raise WheelsError(
        f"target.platforms: {platform!r} is not a Linux wheel platform tag; "
        "use tags like 'manylinux_2_35_x86_64' (the Kaggle image is glibc 2.35 x86_64)"
    )


def _widen(glibc: tuple[int, int], arch: str) -> list[str]:
    out = [f"manylinux_{glibc[0]}_{minor}_{arch}" for minor in range(glibc[1], 4, -1)]
    out += [f"{legacy}_{arch}" for legacy, level in reversed(_LEGACY.items()) if level <= glibc]
    return out


def target_env(target: TargetConfig) -> TargetEnv:
    if not PYTHON_VERSION.fullmatch(target.python):
        raise WheelsError(f"target.python = {target.python!r} must look like '3.12'")
    if not target.platforms:
        raise WheelsError("target.platforms is empty; list the image's, e.g. ['manylinux_2_35_x86_64']")
    parsed = [_split(p) for p in target.platforms]
    arches = {arch for _, arch in parsed}
    if len(arches) != 1 or next(iter(arches)) not in _ARCHES:
        raise WheelsError(
            f"target.platforms mixes or names unsupported architectures ({', '.join(sorted(arches))}); "
            f"list platforms of one of {', '.join(_ARCHES)}"
        )
    arch = arches.pop()
    levels = [g for g, _ in parsed if g is not None]
    glibc = max(levels) if levels else None
    platforms = _widen(glibc, arch) if glibc else []
    if any(g is None for g, _ in parsed):
        platforms.append(f"linux_{arch}")
    version = tuple(int(x) for x in target.python.split("."))
    py = (version[0], version[1])
    tags = [*cpython_tags(py, abis=[f"cp{py[0]}{py[1]}"], platforms=platforms)]
    tags += [t for t in compatible_tags(py, f"cp{py[0]}{py[1]}", platforms) if t not in tags]
    full = f"{target.python}.0"
    markers = {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": arch,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": target.python,
        "sys_platform": "linux",
    }
    return TargetEnv(target.python, arch, glibc, tuple(platforms), tuple(tags), markers)
