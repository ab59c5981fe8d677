"""Static proof that the vendored wheels install offline on the target.

Every wheel's tags must fit the target and its `Requires-Python` must admit the target's
Python. Then the requirements are walked the way an installer would: each `Requires-Dist`
(markers evaluated for the target, with the extras that were asked for) must be met by a
vendored wheel or by the image's baseline. A requirement on torch/CUDA packages that the
image's version does not meet is a warning (never vendored; the notebook installs with
`--no-deps`); anything else unmet fails, naming the package and who requires it.
"""

from __future__ import annotations

import zipfile
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from bundler.dataset.wheels.fetch import wheel_tags
from bundler.errors import WheelsError
from bundler.target import REQUESTED, Baseline, TargetEnv, is_protected


@dataclass(frozen=True)
class WheelInfo:
    path: Path
    name: str
    version: Version
    tags: frozenset[Tag]
    requires: tuple[Requirement, ...]
    requires_python: SpecifierSet | None

    @property
    def key(self) -> NormalizedName:
        return canonicalize_name(self.name)


@dataclass
class ClosureReport:
    warnings: list[str] = field(default_factory=list)
    required_by: dict[NormalizedName, list[str]] = field(default_factory=dict)  # who asked, REQUESTED first
    from_baseline: dict[NormalizedName, str] = field(default_factory=dict)  # image packages the closure uses


def read_wheel(path: Path) -> WheelInfo:
    """Name, version, tags, Requires-Dist and Requires-Python of a wheel file."""
    tags = wheel_tags(path)
    try:
        with zipfile.ZipFile(path) as zf:
            metas = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(metas) != 1:
                raise WheelsError(f"{path.name}: no single .dist-info/METADATA inside; the wheel is broken, rebuild it")
            message = BytesParser().parsebytes(zf.read(metas[0]))
    except zipfile.BadZipFile:
        raise WheelsError(f"{path}: not a zip archive; delete it (from the cache too) and build again") from None
    try:
        requires = tuple(Requirement(r) for r in message.get_all("Requires-Dist") or [])
        rp = message.get("Requires-Python")
        requires_python = SpecifierSet(rp) if rp else None
    except (InvalidRequirement, InvalidSpecifier) as e:
        raise WheelsError(f"{path.name}: unreadable metadata ({e}); rebuild the wheel") from None
    return WheelInfo(path, str(message["Name"]), Version(str(message["Version"])), tags, requires, requires_python)


def check_tags(wheels: list[WheelInfo], env: TargetEnv) -> list[str]:
    problems: list[str] = []
    for w in wheels:
        if env.rank(w.tags) is None:
            got = ", ".join(sorted(str(t) for t in w.tags))
            problems.append(
                f"{w.path.name} ({got}) cannot be installed on {env.describe}: "
                f"replace it with a {env.interpreter} manylinux {env.arch} or py3-none-any wheel"
            )
        if w.requires_python is not None and not w.requires_python.contains(f"{env.python}.0", prereleases=True):
            problems.append(
                f"{w.path.name} requires Python {w.requires_python}, the target is {env.python}: "
                f"pin a version of {w.name} that supports Python {env.python}"
            )
    return problems


def _applies(req: Requirement, env: TargetEnv, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env.markers, "extra": extra}) for extra in ("", *sorted(extras)))


def _who(by: str) -> str:
    return "target.requirements" if by == REQUESTED else by


def check_closure(
    requirements: list[Requirement], wheels: list[WheelInfo], baseline: Baseline, env: TargetEnv
) -> ClosureReport:
    """Walk Requires-Dist from the requirements; raise WheelsError listing every unmet one."""
    report = ClosureReport()
    problems = check_tags(wheels, env)
    vendored = {w.key: w for w in wheels}
    queue = deque((r, REQUESTED) for r in requirements if _applies(r, env, frozenset()))
    expanded: set[tuple[NormalizedName, frozenset[str]]] = set()
    while queue:
        req, by = queue.popleft()
        key = canonicalize_name(req.name)
        asked = report.required_by.setdefault(key, [])
        if by not in asked:
            asked.append(by)
        wheel = vendored.get(key)
        pin = baseline.get(key)
        if wheel is not None:
            if not req.specifier.contains(wheel.version, prereleases=True):
                problems.append(f"{req} (required by {_who(by)}) is not met by the vendored {wheel.path.name}")
            state = (key, frozenset(req.extras))
            if state not in expanded:
                expanded.add(state)
                queue.extend((dep, wheel.name) for dep in wheel.requires if _applies(dep, env, frozenset(req.extras)))
        elif pin is not None:
            report.from_baseline[key] = pin.version
            if not req.specifier.contains(Version(pin.version), prereleases=True):
                if is_protected(key):
                    report.warnings.append(
                        f"requirement {req} (from {_who(by)}) would force {pin.name} {req.specifier}; "
                        f"the image has {pin.version}, which bundler never replaces: {_who(by)} will run "
                        f"with {pin.name} {pin.version} (the notebook installs with --no-deps) - check it works, "
                        "or pin an older release of it"
                    )
                else:
                    problems.append(
                        f"{req} (required by {_who(by)}) is not met: the image has {pin.name} {pin.version} "
                        "and no wheel of it is vendored"
                    )
        elif is_protected(key):
            problems.append(
                f"{req} (required by {_who(by)}) is not in the image, and bundler never vendors torch or CUDA "
                f"packages: drop the requirement, or take a baseline of an image that has {req.name}"
            )
        else:
            problems.append(
                f"missing dependency {req} (required by {_who(by)}): neither vendored nor in the baseline "
                f"{baseline.name}; add a wheel of it to target.find_links or let bundler reach the index"
            )
    if problems:
        raise WheelsError(
            f"the vendored wheels would not install offline on {env.describe}:\n- " + "\n- ".join(problems)
        )
    return report
