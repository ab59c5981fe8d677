"""The GPU check's preflight, and the wheels it carries to a bare GPU machine. Standard library only.

A lent GPU machine has Python 3.12, torch, timm, OpenCV, numpy, pandas and pytest, but not
segmentation_models_pytorch (smp), and nothing can be fetched there. So:

- here, `python -m benchmarks.gpu_preflight --gather [DEST]` downloads (pip download, cp312
  manylinux, no dependencies resolved) the pure-Python wheels the check may need there, pinned to
  constraints.txt: smp and its pure-Python requirements that timm does not already bring
  (`CARRIED`), into DEST (default `.gpu-wheels/`, git-ignored, to be named in the run's `carry`),
  and refuses a folder over 64 MiB (what a run carries at most);
- there, `preflight(wheels)` imports every module the check needs (`REQUIRED`), installs from the
  wheels folder (by unpacking: pure-Python wheels need no pip, and a uv venv has none) only those
  that are missing, into a temporary folder put first on `sys.path` and on `PYTHONPATH` for the
  check's child processes, and checks the versions it found against the minimums.

A missing module with no wheel for it, or a version below its minimum, is a preflight problem:
one line naming the module and the fix.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WHEELS = ROOT / ".gpu-wheels"
CARRY_LIMIT_BYTES = 64 * 2**20  # a device run carries at most 64 MiB, the working tree included
PYTHON_MIN = (3, 11)


@dataclass(frozen=True)
class Requirement:
    module: str  # what the check imports
    distribution: str  # its name on PyPI (and in constraints.txt)
    minimum: str  # lowest version the check was written for ("" = any)


REQUIRED = (
    Requirement("torch", "torch", "2.10"),
    Requirement("numpy", "numpy", "2.0"),
    Requirement("pandas", "pandas", "2.2"),
    Requirement("cv2", "opencv-python-headless", "4.9"),
    Requirement("timm", "timm", "1.0"),
    Requirement("safetensors", "safetensors", "0.4"),
    Requirement("segmentation_models_pytorch", "segmentation_models_pytorch", "0.4"),
    Requirement("pytest", "pytest", "8"),
)
# The project's modules the check runs: importing them proves no notebook package (nbformat,
# nbclient) or rich is needed on the GPU machine.
PROJECT_MODULES = ("kernel_src.run", "benchmarks.bench_cuda", "benchmarks.workload", "tests.kernel.test_gpu")
# Pure-Python wheels gathered for the GPU machine: smp and its requirements that timm lacks.
CARRIED = ("segmentation_models_pytorch", "huggingface_hub", "tqdm")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


@dataclass
class Preflight:
    """What the preflight found: module -> version, installed-from-wheel modules, problems."""

    versions: dict[str, str] = field(default_factory=dict)
    installed: list[str] = field(default_factory=list)
    site: str = ""  # where carried wheels were unpacked ("" when none were needed)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "python": ".".join(str(v) for v in sys.version_info[:3]),
            "versions": dict(self.versions),
            "installed_from_wheels": list(self.installed),
            "site": self.site,
            "problems": list(self.problems),
        }


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of `version` ("2.11.0+cu130" -> (2, 11, 0))."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def module_version(module: str, distribution: str) -> str:
    """The version of the distribution that holds the imported `module`: its dist-info beside the
    module first (so an unpacked wheel reports its own version), then `__version__`, then metadata."""
    mod = importlib.import_module(module)
    origin = getattr(mod, "__file__", None)
    if origin:
        parent = Path(origin).resolve().parent.parent
        for dist in importlib.metadata.distributions(path=[str(parent)]):
            if _normal(dist.metadata["Name"] or "") == _normal(distribution):
                return str(dist.version)
    version = getattr(mod, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _wheel_for(wheels: Path, distribution: str) -> Path | None:
    for wheel in sorted(wheels.glob("*.whl")):
        if _normal(wheel.name.split("-")[0]) == _normal(distribution):
            return wheel
    return None


def unpack_wheel(wheel: Path, site: Path) -> None:
    """Install a pure-Python wheel by unpacking it into `site` (what pip does for purelib files)."""
    tags = wheel.name.removesuffix(".whl").split("-")[-3:]
    if tags[1:] != ["none", "any"]:
        raise ValueError(f"{wheel.name} is not a pure-Python wheel (tags {'-'.join(tags)}); carry only py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            target = (site / member).resolve()
            if not target.is_relative_to(site.resolve()):
                raise ValueError(f"{wheel.name}: member {member!r} would unpack outside {site}")
        archive.extractall(site)


def _try_import(req: Requirement) -> str | None:
    """The version found, or None when the module cannot be imported."""
    try:
        return module_version(req.module, req.distribution)
    except ImportError:
        return None


def preflight(wheels: Path | None = DEFAULT_WHEELS, requirements: tuple[Requirement, ...] = REQUIRED) -> Preflight:
    """Import every requirement, installing the missing ones from `wheels`; see the module docstring."""
    result = Preflight()
    if sys.version_info[:2] < PYTHON_MIN:
        result.problems.append(
            f"python {sys.version.split()[0]} is older than {'.'.join(map(str, PYTHON_MIN))}; run the check "
            "with python3.11 or newer"
        )
        return result
    missing: list[Requirement] = []
    for req in requirements:
        version = _try_import(req)
        if version is None:
            missing.append(req)
        else:
            result.versions[req.module] = version
    if missing and wheels is not None and wheels.is_dir():
        site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
        for req in missing:
            wheel = _wheel_for(wheels, req.distribution)
            if wheel is None:
                continue
            try:
                unpack_wheel(wheel, site)
            except (ValueError, zipfile.BadZipFile, OSError) as e:
                result.problems.append(f"{wheel}: cannot be installed ({e})")
                continue
            result.installed.append(wheel.name)
        if result.installed:
            result.site = str(site)
            sys.path.insert(0, str(site))
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
            importlib.invalidate_caches()
    for req in missing:
        version = _try_import(req)
        if version is None:
            where = f"{wheels}" if wheels is not None else "no wheels folder"
            result.problems.append(
                f"{req.module} cannot be imported and no wheel of {req.distribution} is in {where}; gather them "
                "with `python -m benchmarks.gpu_preflight --gather` where pip reaches PyPI and carry .gpu-wheels"
            )
        else:
            result.versions[req.module] = version
    if not result.problems and requirements is REQUIRED:
        for module in PROJECT_MODULES:
            try:
                importlib.import_module(module)
            except ImportError as e:
                result.problems.append(
                    f"{module} cannot be imported here ({e}); the GPU check's modules must import lazily "
                    "what a bare GPU machine lacks"
                )
    for req in requirements:
        found = result.versions.get(req.module)
        if found is not None and req.minimum and version_tuple(found) < version_tuple(req.minimum):
            result.problems.append(
                f"{req.module} {found} is older than {req.minimum}; install a newer {req.distribution}"
            )
    return result


def pinned(constraints: Path = ROOT / "constraints.txt", names: tuple[str, ...] = CARRIED) -> list[str]:
    """`name==version` for each of `names`, from constraints.txt's exact pins."""
    pins: dict[str, str] = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec:
            name, version = spec.split("==", 1)
            pins[_normal(name)] = version.strip()
    absent = [n for n in names if _normal(n) not in pins]
    if absent:
        raise SystemExit(f"gpu_preflight: {constraints} pins no version of {absent}; add an exact pin")
    return [f"{n}=={pins[_normal(n)]}" for n in names]


def gather_command(dest: Path, requirements: list[str], python_version: str = "3.12") -> list[str]:
    """The `pip download` that fetches `requirements` as wheels for a cp312 manylinux machine."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return [*command, "-d", str(dest), *requirements]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def gather(dest: Path = DEFAULT_WHEELS) -> int:
    """Download the carried wheels into `dest` (see the module docstring); 0 when they fit in 64 MiB."""
    dest.mkdir(parents=True, exist_ok=True)
    command = gather_command(dest, pinned())
    print(" ".join(command), flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        print(f"gpu_preflight: pip download failed (exit {done.returncode})", file=sys.stderr)
        return 1
    size = folder_bytes(dest)
    print(f"{dest}: {size / 2**20:.1f} MiB in {len(list(dest.glob('*.whl')))} wheels", flush=True)
    if size > CARRY_LIMIT_BYTES:
        print(f"gpu_preflight: {dest} holds {size / 2**20:.1f} MiB, over the 64 MiB a run carries", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--gather", nargs="?", const=str(DEFAULT_WHEELS), metavar="DEST", help="download the wheels")
    args = parser.parse_args(argv)
    if args.gather:
        return gather(Path(args.gather))
    result = preflight()
    for module, version in result.versions.items():
        print(f"{module} {version}")
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0 if result.ok else 3


if __name__ == "__main__":
    sys.exit(main())
