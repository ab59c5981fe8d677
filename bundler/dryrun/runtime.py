"""Where the dry-run's notebook runs: `image` (the twin of the Kaggle image) or `local` (this Python).

- `image` (the default where an interpreter of `target.python` is found): the twin of
  `bundler.dryrun.twin`, the notebook executed with papermill's engine and the notebook's own
  kernelspec, as Kaggle runs a pushed notebook. The twin is mounted read-only where a mount
  namespace can be had.
- `local` (`--runtime local`, or the fallback when no target Python is found, said in one line):
  the Python bundler runs from, with nbclient; quick, but not the image's versions.

Either way the kernel runs from an OVERLAY made per run inside the Kaggle-like tree: a venv of
the runtime's Python without packages of its own, whose `site-packages` comes first on sys.path
and which sees the runtime's packages through a `.pth` file (`site.addsitedir`). The setup cell's
`pip install` of the vendored wheels lands in the overlay (pip never uninstalls outside
`sys.prefix`), so neither the cached twin nor the environment bundler runs from ever receives a
package; the overlay goes away with the tree. Its kernelspec, under the notebook's kernelspec
name, is found through `JUPYTER_PATH`.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import site
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bundler.config import DRYRUN_RUNTIMES, RUNTIME_IMAGE, RUNTIME_LOCAL, BundleConfig
from bundler.dryrun.engines import NbclientEngine, PapermillEngine
from bundler.dryrun.twin import ensure_twin, plan_twin
from bundler.errors import BundlerError, DryRunError, TargetPythonError
from bundler.target import find_target_python, how_to_get, target_env

RUNTIMES = DRYRUN_RUNTIMES
OVERLAY_PTH = "_bundler_overlay.pth"


@dataclass(frozen=True)
class Runtime:
    name: str  # RUNTIME_IMAGE | RUNTIME_LOCAL
    python: Path  # the interpreter the overlay is made from
    sites: tuple[Path, ...]  # the package folders the overlay sees
    engine: str  # the registered engine that runs the notebook (bundler.dryrun.engines)
    versions: dict[str, str | None]  # python, torch, numpy
    detail: str  # the twin's folder, or "the environment bundler runs from"
    readonly: tuple[Path, ...] = ()  # mounted read-only for the run, where it can be
    kernel_env: dict[str, str] = field(default_factory=dict)  # set for the kernel (kernel.json "env")
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        v = self.versions
        return f"{self.name} (Python {v.get('python')}, torch {v.get('torch') or '-'}, numpy {v.get('numpy') or '-'})"

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "engine": self.engine, "where": self.detail, **self.versions}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def local_sites() -> tuple[Path, ...]:
    """The package folders of the environment bundler runs from (its site-packages, then the user's)."""
    found: list[Path] = []
    candidates = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    for text in candidates:
        path = Path(text).resolve()
        if path.is_dir() and path not in found:
            found.append(path)
    return tuple(found)


def local_runtime(notes: tuple[str, ...] = ()) -> Runtime:
    sites = local_sites()
    return Runtime(
        name=RUNTIME_LOCAL,
        python=Path(sys.executable),
        sites=sites,
        engine=NbclientEngine.name,
        versions={
            "python": platform.python_version(),
            "torch": _dist_version("torch"),
            "numpy": _dist_version("numpy"),
        },
        detail="the environment bundler runs from",
        readonly=sites,
        notes=notes,
    )


def choose_runtime(cfg: BundleConfig, manifest: Mapping[str, Any], *, console: Console) -> Runtime:
    """`cfg.dryrun.runtime` (None: image where a target Python is found, else local, said)."""
    asked = cfg.dryrun.runtime
    if asked is not None and asked not in RUNTIMES:
        raise DryRunError(f"dryrun.runtime = {asked!r} must be one of {', '.join(RUNTIMES)}")
    if asked == RUNTIME_LOCAL:
        return local_runtime()
    version = cfg.target.python
    try:
        found = find_target_python(version)
    except TargetPythonError as e:
        raise DryRunError(f"{e} (or run with `--runtime local`)") from None
    if found is None:
        if asked == RUNTIME_IMAGE:
            raise DryRunError(
                f"--runtime image needs a Python {version} for the twin of the Kaggle image and none was found "
                f"(BUNDLER_TARGET_PYTHON, PATH, pyenv, uv): {how_to_get(version)}; or run with `--runtime local`"
            )
        line = f"runtime: local, because no Python {version} was found for a twin of the image ({how_to_get(version)})"
        console.print(line)
        return local_runtime((line,))
    wheels = [cfg.dataset.out / str(w["file"]) for w in manifest.get("wheels", []) if isinstance(w, Mapping)]
    try:
        plan = plan_twin(found, cfg.target.baseline, wheels, target_env(cfg.target))
    except DryRunError:
        raise
    except BundlerError as e:  # the baseline or a wheel could not be read
        raise DryRunError(f"the twin of the image cannot be planned: {e}") from None
    for note in plan.notes:
        console.print(f"[dim]twin: {note}[/]")
    twin = ensure_twin(plan, console=console)
    return Runtime(
        name=RUNTIME_IMAGE,
        python=twin.python,
        sites=(twin.site_packages,),
        engine=PapermillEngine.name,
        versions={"python": found.version, "torch": twin.version("torch"), "numpy": twin.version("numpy")},
        detail=str(twin.path),
        readonly=(twin.path,),
        kernel_env={"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"},
        notes=plan.notes,
    )


@dataclass(frozen=True)
class Overlay:
    folder: Path
    python: Path
    site_packages: Path
    jupyter_path: Path  # for JUPYTER_PATH: holds kernels/<name>/kernel.json


def make_overlay(runtime: Runtime, folder: Path, kernel_name: str) -> Overlay:
    """The per-run venv the kernel runs from (see the module docstring), and its kernelspec."""
    env = folder / "env"
    done = subprocess.run(
        [str(runtime.python), "-m", "venv", "--without-pip", str(env)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DryRunError(
            f"cannot make the run's overlay venv with {runtime.python} ({'; '.join(tail)}); "
            "check that interpreter, or use the other --runtime"
        )
    major_minor = ".".join(str(runtime.versions["python"]).split(".")[:2])
    site_packages = env / "lib" / f"python{major_minor}" / "site-packages"
    if not site_packages.is_dir():
        raise DryRunError(f"the overlay venv {env} has no {site_packages.name} for Python {major_minor}")
    lines = [f"import site; site.addsitedir({str(p)!r})" for p in runtime.sites]
    (site_packages / OVERLAY_PTH).write_text("\n".join(lines) + "\n", encoding="utf-8")
    jupyter = folder / "jupyter"
    spec_dir = jupyter / "kernels" / kernel_name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [str(env / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {runtime.versions['python']} ({runtime.name} runtime)",
        "language": "python",
        "env": dict(runtime.kernel_env),
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return Overlay(folder=env, python=env / "bin" / "python", site_packages=site_packages, jupyter_path=jupyter)
