"""`bundler baseline capture` and `bundler baseline diff OLD NEW`: the Kaggle image's packages as data.

capture: pushes a tiny notebook (`<owner>/bundler-image-baseline`: internet off, the GPU setting
and machine of bundle.toml's kernel, the newest image) that records the image's Python and
`pip freeze --all` (a line pip cannot give a version for, such as `name @ file://...`, is
replaced by that package's `pip list --format=freeze` pin, the original kept as a comment),
waits for it, downloads it into `build/kaggle/baseline/v<N>/` and writes
`baselines/kaggle-<date>.txt` beside bundle.toml, a file `target.baseline` can name.

diff: what changed between two baselines (names shipped with bundler, or paths): the Python
version, packages added, removed and changed; and what it means for the built bundle (its
`bundle.json` and wheels, when there is one): vendored packages the new image now has (no
longer needed), dependencies of the vendored wheels and `target.requirements` that the old
image provided and the new one lacks (to vendor) or has at another version (to check).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bundler.config import BundleConfig
from bundler.display import shown_path
from bundler.errors import ManifestError, RemoteError, WheelsError
from bundler.notebook.failure import tail
from bundler.remote.client import Kaggle, connect, poll_interval
from bundler.remote.diagnose import read_log
from bundler.remote.state import kaggle_dir
from bundler.remote.wait import spinner, wait_for
from bundler.target import Baseline, is_protected, load_baseline, parse_freeze

BASELINE_SLUG = "bundler-image-baseline"
BASELINE_TITLE = "bundler image baseline"
OUTPUT = "baseline.txt"
DEFAULT_POLL_S = 15.0
DEFAULT_TIMEOUT_S = 3600.0
_PYTHON = re.compile(r"^#.*?\b(?:python|cpython)\s+(\d+\.\d+)", re.I | re.M)
_DATE = re.compile(r"captured .*? on (\d{4}-\d{2}-\d{2})")

CAPTURE_SOURCE = """\
import datetime, platform, re, subprocess, sys

def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=True).stdout

freeze = pip("freeze", "--all").splitlines()
listed = {re.sub(r"[-_.]+", "-", l.split("==")[0]).lower(): l for l in pip("list", "--format=freeze").splitlines()}
lines = []
for line in freeze:
    if " @ " in line:
        key = re.sub(r"[-_.]+", "-", line.split(" @ ")[0].strip()).lower()
        if key in listed:
            lines += [f"# {line}", listed[key]]
            continue
    lines.append(line)
today = datetime.date.today().isoformat()
header = [
    f"# Kaggle image baseline captured by `bundler baseline capture` on {today}",
    f"# python {platform.python_version()} ({platform.platform()})",
]
with open("/kaggle/working/baseline.txt", "w") as f:
    f.write("\\n".join(header + lines) + "\\n")
print(f"python {platform.python_version()}, {len(lines)} lines written to /kaggle/working/baseline.txt")
"""


def capture_notebook() -> dict[str, Any]:
    """The one-cell notebook that records the image's Python and packages."""
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "capture",
                "metadata": {},
                "outputs": [],
                "source": CAPTURE_SOURCE,
            }
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def capture_metadata(cfg: BundleConfig) -> dict[str, Any]:
    owner = cfg.kernel.id.split("/")[0]
    return {
        "id": f"{owner}/{BASELINE_SLUG}",
        "title": BASELINE_TITLE,
        "code_file": "baseline.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": cfg.kernel.enable_gpu,
        "enable_internet": False,
        "machine_shape": cfg.kernel.machine_shape,
        "docker_image_pinning_type": "latest",
    }


@dataclass(frozen=True)
class CaptureResult:
    path: Path  # the dated baseline file
    python: str
    packages: int


def capture(
    cfg: BundleConfig,
    *,
    console: Console,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    kaggle: Kaggle | None = None,
) -> CaptureResult:
    """Push the capture notebook, wait for it, write the dated baseline; see the module doc."""
    interval = poll_interval(poll_s, DEFAULT_POLL_S)
    folder = kaggle_dir(cfg) / "baseline"
    folder.mkdir(parents=True, exist_ok=True)
    meta = capture_metadata(cfg)
    (folder / "baseline.ipynb").write_text(json.dumps(capture_notebook(), indent=1) + "\n", encoding="utf-8")
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    kaggle = kaggle or connect(say=lambda line: console.print(escape(line)))
    ref = str(meta["id"])
    with spinner(console, f"pushing {ref}"):
        response = kaggle.push_kernel(folder, no_run=False)
    if response.error or response.version is None:
        raise RemoteError(f"notebook {ref}: Kaggle refused the push ({response.error or 'no version number'})")
    version = response.version
    console.print(f"[green]pushed[/] {ref} v{version}: {response.url}")
    message = ""

    def poll() -> str:
        nonlocal message
        status, message = kaggle.kernel_status(ref, version)
        return status

    status, _ = wait_for(
        poll,
        lambda s: s in ("complete", "error", "cancel_acknowledged"),
        what=f"notebook {ref} v{version}",
        interval=interval,
        timeout_s=timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S,
        resume="run `bundler baseline capture` again later",
        console=console,
    )
    files = kaggle.kernel_output(ref, version, folder / f"v{version}")
    if status != "complete":
        for line in tail(read_log(files)):
            console.print(f"  {escape(line)}", soft_wrap=True)
        raise RemoteError(f"notebook {ref} v{version} ended {status} ({message or 'no message'}); see its log above")
    out = next((p for p in files if p.name == OUTPUT), None)
    if out is None:
        raise RemoteError(f"notebook {ref} v{version} completed without {OUTPUT}; see its log in {shown_path(folder)}")
    text = out.read_text(encoding="utf-8")
    try:
        pins = parse_freeze(text, str(out))
    except WheelsError as e:
        raise RemoteError(f"{e} (in the captured {OUTPUT}; it is kept in {shown_path(out.parent)})") from None
    date = _DATE.search(text)
    python = _PYTHON.search(text)
    stamp = date.group(1) if date else "undated"
    dest = cfg.root / "baselines" / f"kaggle-{stamp}.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    rel = dest.relative_to(cfg.root).as_posix()
    console.print(
        f"[green]baseline[/] {shown_path(dest)}: python {python.group(1) if python else '?'}, {len(pins)} packages"
    )
    shown, baseline = escape(str(rel)), escape(str(cfg.target.baseline))
    console.print(f'compare it: bundler baseline diff {baseline} {shown}; use it: target.baseline = "{shown}"')
    return CaptureResult(dest, python.group(1) if python else "", len(pins))


@dataclass(frozen=True)
class Change:
    name: str
    old: str  # '' when added
    new: str  # '' when removed


@dataclass
class DiffResult:
    old: str
    new: str
    python: tuple[str, str]
    changes: list[Change]
    no_longer_needed: list[str] = field(default_factory=list)  # vendored, now in the image
    to_vendor: list[str] = field(default_factory=list)  # needed, the new image lacks it
    to_check: list[str] = field(default_factory=list)  # needed from the image, at another version now


def _python(baseline: Baseline) -> str:
    try:
        found = _PYTHON.search(baseline.source.read_text(encoding="utf-8"))
    except OSError:
        return ""
    return found.group(1) if found else ""


def _wheel_requires(path: Path) -> list[NormalizedName]:
    """The unconditional dependencies a wheel declares (Requires-Dist without an extra)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
            text = zf.read(name).decode("utf-8", "replace") if name else ""
    except (OSError, zipfile.BadZipFile):
        return []
    out: list[NormalizedName] = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement:
            continue
        if req.marker is not None and "extra" in str(req.marker):
            continue
        out.append(canonicalize_name(req.name))
    return out


def _bundle_needs(cfg: BundleConfig, console: Console) -> tuple[dict[NormalizedName, str], set[NormalizedName]]:
    """(vendored name -> version, names the bundle needs from somewhere) of the built bundle."""
    from bundler.dataset.manifest import read_manifest

    needed = {canonicalize_name(Requirement(r).name) for r in cfg.target.requirements}
    try:
        manifest = read_manifest(cfg.dataset.out, cfg.name)
    except ManifestError:
        console.print(
            f"(no built bundle in {shown_path(cfg.dataset.out)}: only target.requirements are checked, "
            "not their dependencies; run `bundler build` first for the whole closure)"
        )
        return {}, needed
    vendored = {canonicalize_name(str(w["name"])): str(w["version"]) for w in manifest.get("wheels", []) if "name" in w}
    for wheel in manifest.get("wheels", []):
        needed.update(_wheel_requires(cfg.dataset.out / str(wheel["file"])))
    return vendored, needed


def diff(old_spec: str, new_spec: str, cfg: BundleConfig | None, *, console: Console) -> DiffResult:
    """Compare two baselines; with `cfg`, say what the change means for its built bundle."""
    try:
        old, new = load_baseline(old_spec), load_baseline(new_spec)
    except WheelsError as e:
        raise RemoteError(str(e)) from None
    changes = [
        Change(
            old.pins[k].name if k in old.pins else new.pins[k].name,
            old.pins[k].version if k in old.pins else "",
            new.pins[k].version if k in new.pins else "",
        )
        for k in sorted(set(old.pins) | set(new.pins))
        if (old.pins[k].version if k in old.pins else None) != (new.pins[k].version if k in new.pins else None)
    ]
    result = DiffResult(old.name, new.name, (_python(old), _python(new)), changes)
    table = Table(title=f"{old.name} -> {new.name}", show_lines=False)
    for column in ("package", old.name, new.name):
        table.add_column(column)
    for c in changes:
        table.add_row(c.name, c.old or "-", c.new or "-")
    console.print(table)
    added = sum(1 for c in changes if not c.old)
    removed = sum(1 for c in changes if not c.new)
    console.print(f"{added} added, {removed} removed, {len(changes) - added - removed} changed")
    if result.python[0] != result.python[1]:
        console.print(
            f"[yellow]python {result.python[0] or '?'} -> {result.python[1] or '?'}[/]: set target.python to the new "
            "version and rebuild; every compiled wheel must be vendored again for it"
        )
    for c in changes:
        if is_protected(c.name) and c.old and c.new:
            console.print(
                f"[yellow]{c.name} {c.old} -> {c.new}[/]: dry-run again; TorchScript files may need re-tracing"
            )
    if cfg is None:
        return result
    vendored, needed = _bundle_needs(cfg, console)
    for key, version in sorted(vendored.items()):
        if key in new.pins:
            result.no_longer_needed.append(f"{key} (vendored {version}, the new image has {new.pins[key].version})")
    for key in sorted(needed - set(vendored)):
        if key in new.pins:
            if key in old.pins and old.pins[key].version != new.pins[key].version:
                result.to_check.append(f"{key} ({old.pins[key].version} -> {new.pins[key].version})")
        elif key in old.pins and not is_protected(key):  # in neither image: vendored already, unchanged
            result.to_vendor.append(f"{key} (the old image had {old.pins[key].version})")
    for title, items in (
        ("no longer needed in the bundle", result.no_longer_needed),
        ("to vendor", result.to_vendor),
        ("taken from the image at another version (check)", result.to_check),
    ):
        console.print(f"[bold]{title}:[/] {', '.join(items) if items else 'none'}")
    if result.no_longer_needed or result.to_vendor or result.to_check:
        console.print(f"to act on it: set target.baseline = {new_spec!r} and run `bundler build`")
    return result
