"""Resolve the whole closure of `target.requirements` for the target with `uv pip compile`.

The image's packages enter the resolution three ways, so that it is exact and works offline:
- a metadata-only stub wheel per baseline pin in a private find-links folder: each image
  package is available at its image version even with `--no-index` (tests, offline users)
  and when the image's build is not on the index (e.g. `torch==2.10.0+cu128`);
- `dependency-metadata` (uv.toml) with no dependencies for each pin: an installed package's
  own dependencies are already in the image, so they are never resolved again;
- the pins as the existing output file: uv prefers those versions and moves away from one
  only when a requirement forces it (such a package is then vendored, and reported).
torch, torchvision, triton and CUDA packages the image has are overridden to the image's
version: a requirement that wants another one is reported by the closure check, never vendored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bundler.errors import WheelsError
from bundler.target.baseline import Baseline, is_protected
from bundler.target.env import TargetEnv

REQUESTED = "target.requirements"
_PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)")


@dataclass(frozen=True)
class Resolved:
    name: str
    version: str
    via: tuple[str, ...]  # package names, or REQUESTED for a top-level requirement


def parse_requirements(requirements: tuple[str, ...]) -> list[Requirement]:
    parsed: list[Requirement] = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise WheelsError(f"target.requirements: {text!r} is not a valid requirement ({e})") from None
        if req.url:
            raise WheelsError(
                f"target.requirements: {text!r} is a direct URL; put the wheel in a folder listed "
                "in target.find_links and require it by name"
            )
        parsed.append(req)
    return parsed


def compile_args(work: Path) -> list[str]:
    """uv's arguments compiling `work`'s requirements.in into its resolved.txt, with its uv.toml and
    overrides.txt (the files both the vendoring and `bundler baseline from-sources` write there)."""
    return [
        "--config-file",
        str(work / "uv.toml"),
        "pip",
        "compile",
        str(work / "requirements.in"),
        "--output-file",
        str(work / "resolved.txt"),
        "--override",
        str(work / "overrides.txt"),
    ]


def uv_command() -> list[str]:
    try:
        from uv import find_uv_bin

        return [str(find_uv_bin())]
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return [found]
    raise WheelsError("uv is not installed: `pip install uv` (bundler resolves the wheel closure with it)")


def _stub_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name)


def write_stubs(baseline: Baseline, folder: Path) -> None:
    """One metadata-only wheel per baseline pin (never installed: resolution input only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for pin in baseline.pins.values():
        dist = f"{_stub_name(pin.name)}-{pin.version}"
        with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as zf:
            zf.writestr(
                f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {pin.name}\nVersion: {pin.version}\n"
            )
            zf.writestr(
                f"{dist}.dist-info/WHEEL",
                "Wheel-Version: 1.0\nGenerator: bundler-baseline-stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            )
            zf.writestr(f"{dist}.dist-info/RECORD", "")


def _write_inputs(requirements: list[Requirement], baseline: Baseline, work: Path) -> None:
    (work / "requirements.in").write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
    (work / "resolved.txt").write_text(
        "".join(f"{p.name}=={p.version}\n" for p in baseline.pins.values()), encoding="utf-8"
    )
    (work / "overrides.txt").write_text(
        "".join(f"{p.name}=={p.version}\n" for p in baseline.pins.values() if is_protected(p.name)), encoding="utf-8"
    )
    entries = [
        f"[[dependency-metadata]]\nname = {json.dumps(p.name)}\nversion = {json.dumps(p.version)}\nrequires-dist = []\n"
        for p in baseline.pins.values()
    ]
    (work / "uv.toml").write_text("\n".join(entries), encoding="utf-8")
    write_stubs(baseline, work / "baseline-stubs")


def parse_compile_output(text: str) -> list[Resolved]:
    """`uv pip compile` output (split annotations) -> pins with what required each."""
    out: list[Resolved] = []
    name = version = ""
    via: list[str] = []

    def flush() -> None:
        if name:
            out.append(Resolved(name, version, tuple(via)))

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw[0].isspace() and not line.startswith("#"):
            flush()
            match = _PIN_LINE.match(line)
            if not match:
                raise WheelsError(f"uv pip compile printed a line bundler cannot read: {line!r}")
            name, version, via = match.group(1), match.group(2), []
            continue
        if not line.startswith("#") or not name:
            continue
        item = line.lstrip("#").strip()
        item = item.removeprefix("via").strip()
        if not item:
            continue
        if item.startswith(("-r ", "-c ", "--override", "--constraint", "--requirement")):
            item = REQUESTED
        via.append(item)
    flush()
    return out


def resolve(
    requirements: list[Requirement],
    baseline: Baseline,
    env: TargetEnv,
    *,
    find_links: tuple[Path, ...],
    no_index: bool,
    cache_dir: Path,
    work: Path,
    constraints: tuple[str, ...] = (),
) -> list[Resolved]:
    """The closure of `requirements` on the target, baseline packages at the image's versions.

    `constraints` (`name==version`, the local wheelhouse's dropped wheels) bind a package only
    when the closure has it; `cache_dir` holds uv's own cache."""
    for folder in find_links:
        if not folder.is_dir():
            raise WheelsError(f"target.find_links: {folder} is not a folder; create it or remove the entry")
    _write_inputs(requirements, baseline, work)
    (work / "constraints.txt").write_text("".join(f"{c}\n" for c in constraints), encoding="utf-8")
    argv = [
        *uv_command(),
        *compile_args(work),
        "--constraint",
        str(work / "constraints.txt"),
        "--find-links",
        str(work / "baseline-stubs"),
        *(arg for folder in find_links for arg in ("--find-links", str(folder))),
        *(["--no-index"] if no_index else []),
        "--python",
        sys.executable,
        "--python-version",
        env.python,
        "--python-platform",
        env.uv_platform,
        "--no-build-isolation",
        "--no-python-downloads",
        "--cache-dir",
        str(cache_dir),
        "--annotation-style",
        "split",
        "--no-header",
        "--quiet",
    ]
    environ = {**os.environ, "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never"}
    done = subprocess.run(argv, capture_output=True, text=True, env=environ, check=False, cwd=work)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-25:])
        where = "target.find_links only" if no_index else "the index and target.find_links"
        raise WheelsError(
            f"cannot resolve target.requirements ({', '.join(map(str, requirements))}) for {env.describe} "
            f"with the baseline {baseline.name} from {where}:\n{tail}\n"
            "Fix: relax or pin the requirement named above, or add its wheels to target.find_links "
            "(a wheel dropped in the local wheelhouse pins its package to its version: remove one that conflicts)"
        )
    resolved = parse_compile_output((work / "resolved.txt").read_text(encoding="utf-8"))
    keys = {canonicalize_name(r.name) for r in resolved}
    missing = [str(r) for r in requirements if canonicalize_name(r.name) not in keys and r.marker is None]
    if missing:
        raise WheelsError(f"uv resolved no version of {', '.join(missing)}; check target.requirements")
    return resolved
