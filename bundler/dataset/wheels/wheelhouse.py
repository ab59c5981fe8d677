"""The local wheelhouse (`target.wheelhouse`, default `wheels/` beside bundle.toml).

One flat folder of wheels with two kinds of content:
- the cache: every wheel bundler downloaded, built from an sdist, or copied from
  `target.find_links` is stored here (its name listed in `.bundler-cache`), so the next build
  fetches nothing;
- dropped wheels: every other `*.whl` is one the user put here (a private package, a wheel
  built from a git checkout).

How a dropped wheel enters the closure: the folder is a find-links location of the resolution,
and each dropped wheel that fits the target pins its package to its version (a uv constraint),
so it is preferred over the index whenever the closure has that package; it is then vendored,
checked and rehearsed like every other wheel, and its manifest reason says it came from the
local wheelhouse. A dropped wheel of a package that is not in the closure (no requirement names
it, directly or through a dependency) is not shipped: the build warns and names the fix (add
it to `target.requirements`). A dropped wheel the target cannot install (another Python tag or
platform) fails the build when its package is in the closure or named by a requirement.

The folder's contents are git-ignored (its own `.gitignore` holds `*` and `!.gitignore`). The
build's input fingerprint covers the dropped wheels (names, sizes, mtimes), not the cache.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename
from packaging.version import Version

from bundler.errors import WheelsError
from bundler.target import TargetEnv

CACHE_LIST = ".bundler-cache"  # names of the wheels bundler stored here, one per line
GITIGNORE = "*\n!.gitignore\n"
ORIGIN = "from the local wheelhouse"


@dataclass(frozen=True)
class Dropped:
    """The user's wheels in the wheelhouse, split by whether the target can install them."""

    fitting: dict[NormalizedName, tuple[Version, Path]]  # one per package
    misfits: dict[NormalizedName, list[Path]]

    def constraints(self) -> list[str]:
        """`name==version` of every fitting dropped wheel: the local wheel wins over the index."""
        return [f"{key}=={version}" for key, (version, _) in sorted(self.fitting.items())]

    def files(self) -> set[str]:
        return {path.name for _, path in self.fitting.values()}


def prepare(folder: Path) -> None:
    """Create the wheelhouse (and its `.gitignore`) when it does not exist yet."""
    if folder.exists() and not folder.is_dir():
        raise WheelsError(f"target.wheelhouse: {folder} is a file; set target.wheelhouse to a folder")
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text(GITIGNORE, encoding="utf-8")


def _cached_names(folder: Path) -> set[str]:
    try:
        return {line.strip() for line in (folder / CACHE_LIST).read_text(encoding="utf-8").splitlines()}
    except OSError:
        return set()


def store(built: Path, folder: Path) -> Path:
    """Move a finished wheel into the wheelhouse atomically, recorded as cache (not as dropped)."""
    final = folder / built.name
    partial = folder / f".{built.name}.partial"
    shutil.copyfile(built, partial)
    if built.name not in _cached_names(folder):
        with (folder / CACHE_LIST).open("a", encoding="utf-8") as f:
            f.write(built.name + "\n")
    partial.replace(final)
    return final


def dropped_files(folder: Path) -> list[Path]:
    """The wheels the user put in the wheelhouse (sorted): every `*.whl` bundler did not store."""
    if not folder.is_dir():
        return []
    cached = _cached_names(folder)
    return sorted(p for p in folder.glob("*.whl") if p.is_file() and p.name not in cached)


def scan(folder: Path, env: TargetEnv) -> Dropped:
    """The dropped wheels, each checked for a valid name; two fitting versions of one package fail."""
    fitting: dict[NormalizedName, tuple[Version, Path]] = {}
    misfits: dict[NormalizedName, list[Path]] = {}
    for path in dropped_files(folder):
        try:
            key, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename as e:
            raise WheelsError(
                f"{path}: not a valid wheel file name ({e}); give it the name its build wrote, or remove it "
                "from the wheelhouse"
            ) from None
        if env.rank(tags) is None:
            misfits.setdefault(key, []).append(path)
        elif key in fitting:
            raise WheelsError(
                f"the wheelhouse {folder} holds two wheels of {key} for the target ({fitting[key][1].name}, "
                f"{path.name}); remove the one that should not be shipped"
            )
        else:
            fitting[key] = (version, path)
    return Dropped(fitting, misfits)


def check_misfits(dropped: Dropped, names: Iterable[NormalizedName], env: TargetEnv) -> None:
    """Fail naming the file when a package of `names` has a dropped wheel the target cannot install."""
    for key in sorted(set(names)):
        if key in dropped.misfits and key not in dropped.fitting:
            path = dropped.misfits[key][0]
            raise WheelsError(
                f"{path}: this wheel of {key} in the local wheelhouse does not fit {env.describe} "
                f"(its tags: {'-'.join(path.name.removesuffix('.whl').split('-')[-3:])}). Fix: build it for the target "
                f"(`pip wheel` with Python {env.python} on a matching Linux machine, or cibuildwheel) and put that "
                "wheel in the wheelhouse instead, or remove it"
            )


def fingerprint_rows(folder: Path) -> list[list[Any]]:
    """Names, sizes and mtimes of the dropped wheels: what the user changes there changes the build."""
    rows: list[list[Any]] = []
    for p in dropped_files(folder):
        st = p.stat()
        rows.append([p.name, st.st_size, st.st_mtime_ns])
    return rows
