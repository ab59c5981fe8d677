"""`vendor_wheels`: every wheel the Kaggle image lacks for `target.requirements`, proven installable.

1. resolve the whole closure for the target with uv, the image's baseline preferred
   (`resolve`), the local wheelhouse a find-links folder whose dropped wheels pin their
   packages (`wheelhouse`: a dropped wheel is shipped only when the closure has its package);
   what the image has at the resolved version is not vendored, and torch/torchvision/triton/
   CUDA packages never are;
2. get each remaining wheel into the wheelhouse: reuse, download, or build a pure sdist
   (`fetch`), with a progress bar; copy it into `dest` (flat);
3. prove the offline install: tags and Requires-Dist against the target and the baseline
   (`check`), then a rehearsal on a real interpreter of the target version (`rehearse`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bundler.config import TargetConfig
from bundler.dataset.wheels.check import ClosureReport, check_closure, read_wheel
from bundler.dataset.wheels.fetch import Fetched, fetch_wheel
from bundler.dataset.wheels.rehearse import rehearse_install
from bundler.dataset.wheels.wheelhouse import ORIGIN, check_misfits, prepare, scan
from bundler.display import labelled
from bundler.outdir import remove_stale_temp
from bundler.target import (
    REQUESTED,
    Baseline,
    Resolved,
    TargetEnv,
    is_protected,
    load_baseline,
    parse_requirements,
    resolve,
    target_env,
)
from kernel_src.bundle import sha256_file

WORK_PREFIX = "bundler-wheels-"  # + pid: the resolver's work folder in $TMPDIR, removed when its process is gone


@dataclass(frozen=True)
class VendoredWheel:
    file: str
    name: str
    version: str
    sha256: str
    size: int
    reason: str  # e.g. "required by segmentation-models-pytorch"


@dataclass(frozen=True)
class WheelPlan:
    wheels: tuple[VendoredWheel, ...]
    from_baseline: tuple[tuple[str, str], ...]  # (name, version) of closure members the image already has
    warnings: tuple[str, ...]  # e.g. "requirement X would force torch 2.x; the image has 2.10.0"


def _split(resolved: list[Resolved], baseline: Baseline) -> tuple[list[Resolved], list[str]]:
    """What must be vendored, and warnings for image packages the closure replaces."""
    vendor: list[Resolved] = []
    warnings: list[str] = []
    for r in resolved:
        pin = baseline.get(r.name)
        if is_protected(r.name):
            continue  # never vendored; check_closure judges whether the image's copy will do
        if pin is not None and Version(pin.version) == Version(r.version):
            continue
        if pin is not None:
            warnings.append(
                f"{r.name} {r.version} is vendored and replaces the image's {pin.version} "
                f"(required by {', '.join(_who(v) for v in r.via) or 'the closure'})"
            )
        vendor.append(r)
    return vendor, warnings


def _who(via: str) -> str:
    return "target.requirements" if via == REQUESTED else via


def _reason(name: str, report: ClosureReport, resolved: Resolved, baseline: Baseline, local: bool) -> str:
    asked = report.required_by.get(canonicalize_name(name)) or list(resolved.via)
    parts = []
    if REQUESTED in asked:
        parts.append("requested in target.requirements")
    others = [a for a in asked if a != REQUESTED]
    if others:
        parts.append("required by " + ", ".join(others))
    pin = baseline.get(name)
    if pin is not None:
        parts.append(f"the image's {pin.version} does not fit")
    if local:
        parts.append(ORIGIN)
    return "; ".join(parts) or "in the resolved closure"


def _copy_into(src: Path, dest: Path, sha256: str) -> None:
    target = dest / src.name
    if target.is_file() and target.stat().st_size == src.stat().st_size and sha256_file(target) == sha256:
        return
    partial = dest / f".{src.name}.partial"
    shutil.copyfile(src, partial)
    partial.replace(target)


def _fetch_all(
    vendor: list[Resolved],
    target: TargetConfig,
    env: TargetEnv,
    wheelhouse: Path,
    dropped: set[str],
    work: Path,
    console: Console,
) -> list[Fetched]:
    fetched: list[Fetched] = []
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("wheels", total=len(vendor))
        for r in vendor:
            progress.update(task, description=f"wheel {r.name}=={r.version}")
            got = fetch_wheel(
                r.name,
                r.version,
                env,
                find_links=target.find_links,
                no_index=target.no_index,
                wheelhouse=wheelhouse,
                work=work,
            )
            if got.path.name in dropped:
                got = Fetched(got.path, ORIGIN)
            size_mb = got.path.stat().st_size / 1e6
            console.print(f"  {got.path.name} [dim]({got.how}, {size_mb:.2f} MB)[/]")
            fetched.append(got)
            progress.advance(task)
    return fetched


def vendor_wheels(
    target: TargetConfig, dest: Path, *, wheelhouse: Path, console: Console, uv_cache: Path | None = None
) -> WheelPlan:
    """Write every wheel of the plan into `dest` (flat), reusing and filling the local `wheelhouse`
    (`target.wheelhouse` in a build); `uv_cache` (default `<wheelhouse>/.uv`) is uv's own cache.
    See the module doc."""
    env = target_env(target)
    baseline = load_baseline(target.baseline)
    requirements = parse_requirements(target.requirements)
    if not requirements:
        return WheelPlan((), (), ())
    prepare(wheelhouse)
    dropped = scan(wheelhouse, env)
    check_misfits(dropped, (canonicalize_name(r.name) for r in requirements), env)
    dest.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    remove_stale_temp(WORK_PREFIX)  # left by a build killed outright (SIGKILL) during this stage
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        with console.status(f"resolving {', '.join(target.requirements)} for {env.describe} ..."):
            resolved = resolve(
                requirements,
                baseline,
                env,
                find_links=(wheelhouse, *target.find_links),
                no_index=target.no_index,
                cache_dir=uv_cache or wheelhouse / ".uv",
                work=work,
                constraints=tuple(dropped.constraints()),
            )
        closure = {canonicalize_name(r.name) for r in resolved}
        check_misfits(dropped, closure, env)
        vendor, warnings = _split(resolved, baseline)
        warnings += [
            f"{path.name} in the local wheelhouse is not shipped: no requirement needs {key}; "
            "name it in target.requirements to ship it"
            for key, (_, path) in sorted(dropped.fitting.items())
            if key not in closure
        ]
        console.print(
            f"wheels: {len(resolved)} package(s) in the closure for {env.describe}, "
            f"{len(vendor)} to vendor, the rest already in the image ({baseline.name})"
        )
        fetched = _fetch_all(vendor, target, env, wheelhouse, dropped.files(), work, console)
        infos = [read_wheel(f.path) for f in fetched]
        report = check_closure(requirements, infos, baseline, env)
        by_key = {canonicalize_name(r.name): r for r in vendor}
        wheels: list[VendoredWheel] = []
        for info in infos:
            digest = sha256_file(info.path)
            _copy_into(info.path, dest, digest)
            wheels.append(
                VendoredWheel(
                    file=info.path.name,
                    name=by_key[info.key].name,
                    version=str(info.version),
                    sha256=digest,
                    size=info.path.stat().st_size,
                    reason=_reason(info.name, report, by_key[info.key], baseline, info.path.name in dropped.files()),
                )
            )
        warnings += report.warnings
        rehearsal = rehearse_install([dest / w.file for w in wheels], dest, baseline, env, work=work)
    if rehearsal.ran:
        console.print(f"wheels: offline install rehearsed: {rehearsal.detail}")
    elif wheels:
        warnings.append(f"offline install not rehearsed ({rehearsal.detail}); only the static check ran")
    for warning in warnings:
        console.print(labelled("warning:", warning, "bold yellow"), soft_wrap=True)
    vendored_keys = {canonicalize_name(w.name) for w in wheels}
    from_baseline = sorted(
        (baseline.pins[k].name, v) for k, v in report.from_baseline.items() if k not in vendored_keys
    )
    console.print(
        f"wheels: {len(wheels)} vendored ({sum(w.size for w in wheels) / 1e6:.1f} MB), "
        f"{len(from_baseline)} taken from the image, in {time.perf_counter() - started:.1f} s"
    )
    return WheelPlan(tuple(sorted(wheels, key=lambda w: w.file)), tuple(from_baseline), tuple(warnings))
