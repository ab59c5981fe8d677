"""The twin of the Kaggle image: a cached venv of the target Python with the baseline's versions.

`plan_twin(cfg, ...)` decides what the twin holds, without creating anything:
- the packages the notebook imports (the absolute, non-stdlib imports of `kernel_src/`, mapped to
  their distributions), the vendored wheels' `Requires-Dist` (markers evaluated for the target),
  `ipykernel` (the notebook's kernel) and `pip` (the setup cell installs with it), each at the
  baseline's exact version (read from the baseline file `target.baseline` names, never a list in
  code); minus every package the bundle vendors: the notebook must install those itself;
- a name no baseline pin and no vendored wheel provides is left out and said (the image lacks it
  too: the notebook will meet that, which is what a dry-run is for);
- the key: sha256 of the baseline file's bytes, the package set and the interpreter's full version.

`ensure_twin(plan, console=...)` returns the twin, creating it once under
`$XDG_CACHE_HOME/bundler/twins/<key>` (or `~/.cache/...`; `BUNDLER_TWIN_DIR` overrides the
folder of twins): `uv venv` of the target Python, `uv pip compile` of the package set with the
baseline as preferences (a transitive package moves from its baseline version only when the
pinned ones force it; such moves are recorded in `twin.json`), then `uv pip sync` with bytecode
compiled (so a read-only twin never recompiles). It is built in a temporary folder beside its
final place and renamed into it only when complete: a half-built twin is never reused. A complete
twin of the same baseline and Python that holds every wanted package at its version and none of
what the bundle vendors is reused too (the image holds every baseline package, so a larger twin
is no less faithful). Each use stamps the twin; after a creation only the `KEEP_TWINS` most
recently used twins stay (a refreshed baseline would otherwise leave one per version behind).

Local version labels: the baseline says `torch==2.10.0+cu128`; PyPI serves that build as plain
`2.10.0` (the `+cu128` builds live on download.pytorch.org), so pins are asked for without their
local label.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bundler.dataset.wheels.check import read_wheel
from bundler.errors import DryRunError
from bundler.target import Baseline, TargetEnv, TargetPython, baseline_path, load_baseline, uv_command

TWIN_DIR_ENV = "BUNDLER_TWIN_DIR"
TWIN_FORMAT = 1
RECORD = "twin.json"
KERNEL_SRC = Path(__file__).resolve().parents[2] / "kernel_src"
# Beside what the notebook imports: its kernel, and the installer its setup cell runs.
RUNNER_PACKAGES = ("ipykernel", "pip")
KEEP_TWINS = 3  # complete twins kept in the cache, the most recently used ones
STALE_BUILD_S = 6 * 3600.0  # a `.building-*` folder this old was left by a killed run
FIRST_TIME_NOTE = (
    "the first twin downloads torch and its CUDA wheels (about 3 GB) and takes a few minutes; later dry-runs reuse it"
)


@dataclass(frozen=True)
class TwinPlan:
    python: TargetPython
    baseline: Baseline
    baseline_sha256: str
    wanted: dict[str, str]  # canonical name -> version as PyPI serves it (local label dropped)
    vendored: frozenset[str]  # canonical names; never installed in the twin
    notes: tuple[str, ...]  # what the twin cannot hold (said at every run)
    relabelled: tuple[str, ...] = ()  # local labels dropped (said when the twin is made, kept in twin.json)

    @property
    def key(self) -> str:
        """Changes when the baseline file, the package set or the interpreter's version changes."""
        text = json.dumps(
            {
                "format": TWIN_FORMAT,
                "baseline": self.baseline_sha256,
                "python": self.python.version,
                "wanted": sorted(f"{k}=={v}" for k, v in self.wanted.items()),
                "vendored": sorted(self.vendored),
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class Twin:
    path: Path  # the venv
    python: Path  # its interpreter
    site_packages: Path
    packages: dict[str, str]  # canonical name -> installed version
    created: bool  # True: made by this call
    seconds: float  # creation time (of this call, or as recorded when it was made)
    record: dict[str, Any] = field(default_factory=dict)

    def version(self, name: str) -> str | None:
        return self.packages.get(canonicalize_name(name))


def twins_dir() -> Path:
    """Where twins are cached: BUNDLER_TWIN_DIR, else $XDG_CACHE_HOME/bundler/twins, else ~/.cache/..."""
    chosen = os.environ.get(TWIN_DIR_ENV, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "bundler" / "twins"


def pypi_version(version: str) -> str:
    """`2.10.0+cu128` -> `2.10.0`: PyPI serves the default CUDA build without the local label."""
    return str(Version(version).public)


def imported_modules(folder: Path = KERNEL_SRC) -> set[str]:
    """Top-level names of the absolute imports in `folder`'s .py files, the standard library left out."""
    found: set[str] = set()
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    own = {folder.name, "__future__"}
    return {m for m in found if m not in sys.stdlib_module_names and m not in own}


def module_distributions(
    modules: Iterable[str], baseline: Baseline, known: Mapping[str, list[str]] | None = None
) -> tuple[dict[str, list[NormalizedName]], list[str]]:
    """module -> the baseline's distributions providing it; and the modules no baseline pin provides.

    The module -> distribution map is this environment's (`importlib.metadata.packages_distributions`:
    e.g. cv2 -> opencv-python-headless), kept where the baseline has that distribution; a module
    this environment cannot map is looked up by its own name.
    """
    known = importlib.metadata.packages_distributions() if known is None else known
    mapped: dict[str, list[NormalizedName]] = {}
    unmapped: list[str] = []
    for module in sorted(modules):
        candidates = [canonicalize_name(d) for d in known.get(module, [])] or [canonicalize_name(module)]
        in_image = sorted({c for c in candidates if baseline.get(c) is not None})
        if in_image:
            mapped[module] = in_image
        else:
            unmapped.append(module)
    return mapped, unmapped


def wheel_dependencies(wheels: Sequence[Path], env: TargetEnv) -> set[NormalizedName]:
    """The names the wheels' Requires-Dist ask for on the target (markers evaluated, no extras)."""
    names: set[NormalizedName] = set()
    for path in wheels:
        for req in read_wheel(path).requires:
            if req.marker is None or req.marker.evaluate({**env.markers, "extra": ""}):
                names.add(canonicalize_name(req.name))
    return names


def plan_twin(
    python: TargetPython,
    baseline_spec: str,
    wheels: Sequence[Path],
    env: TargetEnv,
    *,
    known: Mapping[str, list[str]] | None = None,
    kernel_src: Path = KERNEL_SRC,
) -> TwinPlan:
    """What the twin for a bundle holds (see the module docstring); nothing is created."""
    baseline = load_baseline(baseline_spec)
    try:
        baseline_bytes = baseline_path(baseline_spec).read_bytes()
    except OSError as e:
        raise DryRunError(f"target.baseline {baseline_spec!r} cannot be read ({e}); fix the path") from None
    vendored = frozenset(read_wheel(w).key for w in wheels)
    notes: list[str] = []
    relabelled: list[str] = []
    known = importlib.metadata.packages_distributions() if known is None else known
    mapped, unmapped = module_distributions(imported_modules(kernel_src), baseline, known)
    wanted_names: set[NormalizedName] = {d for dists in mapped.values() for d in dists}
    for module in unmapped:
        provider = known.get(module) or [module]
        if not any(canonicalize_name(p) in vendored for p in provider):
            notes.append(
                f"the notebook imports {module}, which neither the baseline {baseline.name} nor the bundle has: "
                "a model that needs it fails on Kaggle too"
            )
    for name in sorted(wheel_dependencies(wheels, env)):
        if name in vendored:
            continue
        if baseline.get(name) is None:
            notes.append(
                f"a vendored wheel requires {name}, which neither the baseline {baseline.name} nor the bundle has"
            )
            continue
        wanted_names.add(name)
    for runner in RUNNER_PACKAGES:
        if baseline.get(runner) is None:
            raise DryRunError(
                f"the baseline {baseline.name} has no {runner}, which the twin needs to run the notebook; "
                "take the baseline with `pip freeze --all` (it lists pip) or use `--runtime local`"
            )
        wanted_names.add(canonicalize_name(runner))
    wanted: dict[str, str] = {}
    for name in sorted(wanted_names - vendored):
        pin = baseline.get(name)
        assert pin is not None
        wanted[name] = pypi_version(pin.version)
        if wanted[name] != pin.version:
            relabelled.append(
                f"{pin.name} {pin.version} is installed as {wanted[name]} from PyPI (same build, no label)"
            )
    digest = hashlib.sha256(baseline_bytes).hexdigest()
    return TwinPlan(python, baseline, digest, wanted, vendored, tuple(notes), tuple(relabelled))


# --- the cache ----------------------------------------------------------------------------


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != TWIN_FORMAT or not (folder / "bin" / "python").exists():
        return None
    return data


def _site_packages(folder: Path, python_version: str) -> Path:
    major_minor = ".".join(python_version.split(".")[:2])
    return folder / "lib" / f"python{major_minor}" / "site-packages"


def _twin_from(folder: Path, record: Mapping[str, Any], created: bool, seconds: float) -> Twin:
    return Twin(
        path=folder,
        python=folder / "bin" / "python",
        site_packages=_site_packages(folder, str(record["python"])),
        packages={canonicalize_name(k): str(v) for k, v in dict(record.get("packages", {})).items()},
        created=created,
        seconds=seconds,
        record=dict(record),
    )


def _fits(record: Mapping[str, Any], plan: TwinPlan) -> bool:
    """A complete twin of the same baseline and Python holding what `plan` wants and nothing it vendors."""
    if record.get("baseline_sha256") != plan.baseline_sha256 or record.get("python") != plan.python.version:
        return False
    packages: dict[str, str] = {canonicalize_name(k): str(v) for k, v in dict(record.get("packages", {})).items()}
    if any(name in packages and plan.baseline.get(name) is None for name in plan.vendored):
        return False
    return all(packages.get(name) == version for name, version in plan.wanted.items())


def find_twin(plan: TwinPlan, root: Path | None = None) -> Twin | None:
    """The cached twin for `plan`: its own key's, else a fitting one (see `_fits`); None when none."""
    root = twins_dir() if root is None else root
    exact = root / plan.key
    record = _read_record(exact)
    if record is not None:
        return _used(_twin_from(exact, record, False, float(record.get("seconds", 0.0))))
    if not root.is_dir():
        return None
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        record = _read_record(folder)
        if record is not None and _fits(record, plan):
            return _used(_twin_from(folder, record, False, float(record.get("seconds", 0.0))))
    return None


def _used(twin: Twin) -> Twin:
    """Stamp the twin as just used (its record's mtime), which `prune_twins` keeps by."""
    with contextlib.suppress(OSError):  # a read-only cache still serves; it is only pruned less well
        os.utime(twin.path / RECORD)
    return twin


def prune_twins(root: Path, keep_key: str, *, keep: int = KEEP_TWINS) -> list[Path]:
    """Delete the complete twins beyond the `keep` most recently used (never `keep_key`'s), and the
    half-built folders of killed runs (older than STALE_BUILD_S). Returns what was deleted."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    complete: list[tuple[float, Path]] = []
    now = time.time()
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        if folder.name.startswith(".building-"):
            if now - folder.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            continue
        if folder.name != keep_key and _read_record(folder) is not None:
            complete.append(((folder / RECORD).stat().st_mtime, folder))
    for _, folder in sorted(complete, reverse=True)[max(keep - 1, 0) :]:
        shutil.rmtree(folder, ignore_errors=True)
        (root / f"{folder.name}.log").unlink(missing_ok=True)
        removed.append(folder)
    return removed


# --- creation -----------------------------------------------------------------------------

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _run_step(argv: list[str], progress: Progress, task: Any, what: str, log: Path) -> None:
    """Run one creation step, its last output line shown under the bar; a failure is a DryRunError."""
    environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=environ
        )
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            sink.write(line)
            if line.strip():
                tail = [*tail[-14:], line.rstrip()]
                progress.update(task, description=f"{what}: {escape(line.strip()[:90])}")
        proc.wait()
    if proc.returncode != 0:
        raise DryRunError(
            f"creating the twin of the image failed at '{what}' (exit status {proc.returncode}); "
            f"see {log}. Its last lines:\n" + "\n".join(tail[-8:]) + "\nFix the cause, or use `--runtime local`"
        )


def _lock(lock: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _LOCK_LINE.match(line.strip())
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def _drop_vendored(lock: Path, plan: TwinPlan) -> None:
    """Take out of the resolution what the bundle vendors and the image lacks: the notebook installs it.

    A vendored package the baseline has (a replacement) stays at the image's version, as on Kaggle."""
    kept = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _LOCK_LINE.match(line.strip())
        name = canonicalize_name(match.group(1)) if match else None
        if name is not None and name in plan.vendored and plan.baseline.get(name) is None:
            continue
        kept.append(line)
    lock.write_text("\n".join(kept) + "\n", encoding="utf-8")


def create_twin(plan: TwinPlan, *, console: Console, root: Path | None = None) -> Twin:
    """Build the twin in a temporary folder beside its place, then rename it into place."""
    root = twins_dir() if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    final = root / plan.key
    building = Path(tempfile.mkdtemp(prefix=f".building-{plan.key}-", dir=root))
    log = root / f"{plan.key}.log"
    log.write_text("", encoding="utf-8")
    uv = uv_command()
    started = time.monotonic()
    venv = building / "venv"
    requested = building / "requested.in"
    lock = building / "twin.lock"
    requested.write_text("".join(f"{n}=={v}\n" for n, v in sorted(plan.wanted.items())), encoding="utf-8")
    # the baseline as the existing output: uv keeps those versions unless a pinned package forces a move
    lock.write_text(
        "".join(
            f"{p.name}=={pypi_version(p.version)}\n" for p in plan.baseline.pins.values() if p.key not in plan.vendored
        ),
        encoding="utf-8",
    )
    console.print(
        f"twin of the image: Python {plan.python.version} ({plan.python.source}: {plan.python.path}), "
        f"{len(plan.wanted)} packages at the baseline {plan.baseline.name}'s versions -> {final}"
    )
    console.print(f"[yellow]note:[/] {FIRST_TIME_NOTE}")
    for line in plan.relabelled:
        console.print(f"[dim]twin: {line}[/]")
    steps = [
        ("venv", [*uv, "venv", "--relocatable", "--python", plan.python.path, "--no-python-downloads", str(venv)]),
        (
            "resolve",
            [
                *uv,
                "pip",
                "compile",
                str(requested),
                "--output-file",
                str(lock),
                "--python",
                str(venv / "bin" / "python"),
                "--no-header",
                "--no-annotate",
                "--quiet",
            ],
        ),
        (
            "download and install",
            [*uv, "pip", "sync", str(lock), "--python", str(venv / "bin" / "python"), "--compile-bytecode"],
        ),
    ]
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("twin", total=len(steps))
            for what, argv in steps:
                progress.update(task, description=what)
                _run_step(argv, progress, task, what, log)
                if what == "resolve":
                    _drop_vendored(lock, plan)
                progress.advance(task)
        installed = _lock(lock)
        missing = [f"{n}=={v}" for n, v in plan.wanted.items() if installed.get(n) != v]
        if missing:
            raise DryRunError(
                f"the twin's resolution moved pinned packages off the baseline: {', '.join(missing)}; "
                f"the baseline {plan.baseline.name} is inconsistent: refresh it, or use `--runtime local`"
            )
        moved = {
            n: {"baseline": pypi_version(p.version), "twin": installed[n]}
            for n, p in plan.baseline.pins.items()
            if n in installed and installed[n] != pypi_version(p.version)
        }
        added = sorted(n for n in installed if plan.baseline.get(n) is None)
        seconds = round(time.monotonic() - started, 1)
        record = {
            "format": TWIN_FORMAT,
            "key": plan.key,
            "python": plan.python.version,
            "python_source": f"{plan.python.source}: {plan.python.path}",
            "baseline": plan.baseline.name,
            "baseline_file": str(plan.baseline.source),
            "baseline_sha256": plan.baseline_sha256,
            "wanted": dict(sorted(plan.wanted.items())),
            "vendored_excluded": sorted(plan.vendored),
            "packages": dict(sorted(installed.items())),
            "moved_from_baseline": moved,
            "not_in_baseline": added,  # pulled in by a pinned package although the baseline lacks it
            "notes": [*plan.notes, *plan.relabelled],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": seconds,
        }
        (venv / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(lock, venv / "twin.lock")
        try:
            venv.rename(final)
        except OSError:
            if _read_record(final) is None:  # not a twin made meanwhile by another run: a real failure
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    placed = _read_record(final)
    if placed is None:
        raise DryRunError(f"the twin at {final} is incomplete after its creation; delete it and rerun")
    console.print(f"twin ready in {seconds:.0f} s: {final}")
    pruned = [p for p in prune_twins(root, plan.key) if not p.name.startswith(".")]
    if pruned:
        console.print(f"removed {len(pruned)} older twin(s) from {root} (the {KEEP_TWINS} most recently used stay)")
    if moved:
        console.print(
            f"[yellow]note:[/] {len(moved)} package(s) differ from the baseline because the pinned ones need it "
            f"({', '.join(sorted(moved)[:5])}{', ...' if len(moved) > 5 else ''}; see {final / RECORD})"
        )
    return _twin_from(final, placed, True, seconds)


def ensure_twin(plan: TwinPlan, *, console: Console, root: Path | None = None) -> Twin:
    """The cached twin for `plan`, created first when there is none."""
    found = find_twin(plan, root)
    if found is not None:
        return found
    return create_twin(plan, console=console, root=root)
