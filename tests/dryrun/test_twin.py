"""The twin of the image without creating one: finding the target Python, the package set, the key
and the cache lookup (bundler.target.interpreter, bundler.dryrun.twin)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bundler.config import TargetConfig
from bundler.dryrun import twin
from bundler.dryrun.twin import (
    TwinPlan,
    find_twin,
    imported_modules,
    plan_twin,
    prune_twins,
    pypi_version,
    twins_dir,
)
from bundler.errors import DryRunError, TargetPythonError
from bundler.target import interpreter
from bundler.target.env import target_env
from bundler.target.interpreter import TargetPython, find_target_python
from tests.wheelhouse import make_wheel, write_baseline

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
FULL = ".".join(str(n) for n in sys.version_info[:3])
ENV = target_env(TargetConfig())
PINS = {
    "torch": "2.10.0+cu128",
    "numpy": "2.0.2",
    "pandas": "2.3.3",
    "opencv-python-headless": "4.13.0.92",
    "safetensors": "0.7.0",
    "timm": "1.0.26",
    "ipykernel": "6.17.1",
    "pip": "24.1.2",
    "requests": "2.32.4",
}
KNOWN = {"cv2": ["opencv-python-headless"], "torch": ["torch"], "numpy": ["numpy"], "pandas": ["pandas"]}


@pytest.fixture
def no_python_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH, pyenv and uv hold no interpreter; returns the empty PATH folder."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.delenv(interpreter.PYTHON_ENV, raising=False)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setattr(interpreter, "uv_candidate", lambda version: None)
    return empty


def _link_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(sys.executable)
    return path


def test_nothing_found_is_none_and_the_fix_names_every_way(no_python_anywhere: Path) -> None:
    assert find_target_python(HERE) is None
    hint = interpreter.how_to_get("3.12")
    assert "pyenv install 3.12" in hint and "uv python install 3.12" in hint and "BUNDLER_TARGET_PYTHON" in hint


def test_the_environment_variable_wins_and_a_wrong_one_is_an_error(
    no_python_anywhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(interpreter.PYTHON_ENV, sys.executable)
    found = find_target_python(HERE)
    assert found == TargetPython(sys.executable, FULL, "BUNDLER_TARGET_PYTHON")
    with pytest.raises(TargetPythonError, match=r"BUNDLER_TARGET_PYTHON=.* is Python .*not Python 3\.99"):
        find_target_python("3.99")
    monkeypatch.setenv(interpreter.PYTHON_ENV, str(no_python_anywhere / "nothing-here"))
    with pytest.raises(TargetPythonError, match="not a working Python"):
        find_target_python(HERE)


def test_path_then_pyenv_newest_first_then_uv(no_python_anywhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shim = no_python_anywhere / f"python{HERE}"
    shim.write_text("#!/bin/sh\necho 'pyenv: no such version' >&2\nexit 127\n")
    shim.chmod(0o755)
    root = no_python_anywhere.parent / "pyenv"
    older = _link_python(root / "versions" / f"{HERE}.0" / "bin" / f"python{HERE}")
    newer = _link_python(root / "versions" / f"{HERE}.99" / "bin" / f"python{HERE}")
    assert interpreter.pyenv_candidates(HERE) == [str(newer), str(older)]
    found = find_target_python(HERE)  # the broken shim on PATH is skipped, not fatal
    assert found is not None and found.source == "pyenv" and found.path == str(newer)

    shim.unlink()
    _link_python(shim)
    found = find_target_python(HERE)
    assert found is not None and (found.source, found.path) == ("PATH", str(shim))

    shim.unlink()
    for folder in (older, newer):
        folder.unlink()
    monkeypatch.setattr(interpreter, "uv_candidate", lambda version: sys.executable)
    found = find_target_python(HERE)
    assert found is not None and (found.source, found.version) == ("uv", FULL)


def test_pypi_version_drops_the_local_label() -> None:
    assert pypi_version("2.10.0+cu128") == "2.10.0"
    assert pypi_version("0.25.0") == "0.25.0"


def test_imported_modules_are_the_absolute_non_stdlib_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "kernel_src"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import os, json\nimport numpy as np\nfrom torch import nn\nfrom . import b\nfrom kernel_src import c\n"
        "def f():\n    import cv2.data\n"
    )
    assert imported_modules(pkg) == {"numpy", "torch", "cv2"}
    real = imported_modules()
    assert {"torch", "numpy", "cv2", "pandas"} <= real and "kernel_src" not in real


def _python(version: str = "3.12.1") -> TargetPython:
    return TargetPython("/opt/python3.12", version, "pyenv")


def _plan(tmp_path: Path, pins: dict[str, str] = PINS, wheels: list[Path] | None = None, **kw: str) -> TwinPlan:
    baseline = write_baseline(tmp_path / "baseline.txt", pins)
    return plan_twin(_python(**kw), str(baseline), wheels or [], ENV, known=KNOWN)


def test_the_plan_holds_the_imports_and_the_wheels_requirements_at_baseline_versions(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", "probe", "1.0", ["requests>=2", "absent-dep", "pandas; python_version < '3'"])
    plan = _plan(tmp_path, wheels=[wheel])
    assert plan.wanted["torch"] == "2.10.0"  # the local label is dropped: PyPI serves it without one
    assert plan.wanted["opencv-python-headless"] == "4.13.0.92"  # cv2, through this environment's map
    assert plan.wanted["requests"] == "2.32.4"  # a vendored wheel's requirement
    assert {"ipykernel", "pip", "numpy", "pandas"} <= set(plan.wanted)
    assert "probe" not in plan.wanted and plan.vendored == {"probe"}
    notes = " | ".join(plan.notes)
    assert "absent-dep" in notes  # neither the baseline nor the bundle has it: the twin lacks it, as the image does
    assert "segmentation_models_pytorch" in notes  # kernel_src imports it; this baseline lacks it
    assert plan.relabelled == ("torch 2.10.0+cu128 is installed as 2.10.0 from PyPI (same build, no label)",)


def test_a_vendored_package_is_never_wanted_even_when_the_image_has_it(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", "timm", "9.9", ["numpy"])
    plan = _plan(tmp_path, wheels=[wheel])
    assert "timm" not in plan.wanted and "timm" in plan.vendored


def test_the_key_follows_the_baseline_bytes_the_package_set_and_the_python(tmp_path: Path) -> None:
    key = _plan(tmp_path).key
    assert _plan(tmp_path).key == key  # deterministic
    assert _plan(tmp_path, version="3.12.13").key != key
    assert _plan(tmp_path, pins={**PINS, "numpy": "2.0.1"}).key != key
    baseline = tmp_path / "baseline.txt"
    baseline.write_text("# refreshed, same pins\n" + baseline.read_text())
    assert plan_twin(_python(), str(baseline), [], ENV, known=KNOWN).key != key
    wheel = make_wheel(tmp_path / "w", "probe", "1.0", ["requests"])
    assert _plan(tmp_path, wheels=[wheel]).key != key


def test_a_baseline_without_pip_or_ipykernel_cannot_make_a_twin(tmp_path: Path) -> None:
    pins = {k: v for k, v in PINS.items() if k != "ipykernel"}
    with pytest.raises(DryRunError, match=r"has no ipykernel.*--runtime local"):
        _plan(tmp_path, pins=pins)


def _fake_twin(folder: Path, plan: TwinPlan, packages: dict[str, str]) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    record = {
        "format": twin.TWIN_FORMAT,
        "key": folder.name,
        "python": plan.python.version,
        "baseline_sha256": plan.baseline_sha256,
        "packages": packages,
        "seconds": 12.5,
    }
    (folder / twin.RECORD).write_text(json.dumps(record))
    return folder


def test_the_cache_reuses_only_complete_twins(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    root = tmp_path / "twins"
    root.mkdir()
    assert find_twin(plan, root) is None
    (root / plan.key / "bin").mkdir(parents=True)  # interrupted before its record: never reused
    _fake_twin(root / f".building-{plan.key}-x", plan, dict(plan.wanted))  # half-built: never reused
    assert find_twin(plan, root) is None
    (root / plan.key / "bin").rmdir()
    (root / plan.key).rmdir()
    _fake_twin(root / plan.key, plan, dict(plan.wanted))
    found = find_twin(plan, root)
    assert found is not None and found.path == root / plan.key and not found.created
    assert found.version("numpy") == "2.0.2" and found.site_packages.name == "site-packages"


def test_a_larger_twin_of_the_same_baseline_is_reused_unless_it_holds_what_the_bundle_vendors(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", "probe", "1.0", [])
    plan = _plan(tmp_path, wheels=[wheel])
    root = tmp_path / "twins"
    larger = _fake_twin(root / "other-key", plan, {**plan.wanted, "requests": "2.32.4"})
    found = find_twin(plan, root)
    assert found is not None and found.path == larger
    tainted = _fake_twin(root / "tainted", plan, {**plan.wanted, "probe": "1.0"})
    (larger / twin.RECORD).unlink()
    assert find_twin(plan, root) is None, f"{tainted} holds the vendored package: the notebook's install is untested"
    other_python = _plan(tmp_path, wheels=[wheel], version="3.12.13")
    assert find_twin(other_python, root) is None


def test_twins_live_in_the_user_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(twin.TWIN_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert twins_dir() == tmp_path / "xdg" / "bundler" / "twins"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert twins_dir() == Path.home() / ".cache" / "bundler" / "twins"
    monkeypatch.setenv(twin.TWIN_DIR_ENV, str(tmp_path / "mine"))
    assert twins_dir() == tmp_path / "mine"
    assert os.environ[twin.TWIN_DIR_ENV]


def test_pruning_keeps_the_most_recently_used_twins_and_new_building_folders(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    root = tmp_path / "twins"
    for age, name in enumerate(["new", "recent", "older", "oldest"]):
        folder = _fake_twin(root / name, plan, dict(plan.wanted))
        stamp = 1_000_000.0 - age * 100
        os.utime(folder / twin.RECORD, (stamp, stamp))
    (root / "oldest.log").write_text("")
    stale = root / ".building-abc-1"
    stale.mkdir()
    os.utime(stale, (1.0, 1.0))
    fresh = root / ".building-abc-2"
    fresh.mkdir()
    removed = prune_twins(root, "oldest", keep=3)  # the twin just made is kept whatever its stamp
    assert sorted(p.name for p in removed) == [".building-abc-1", "older"]
    assert sorted(p.name for p in root.iterdir()) == [".building-abc-2", "new", "oldest", "oldest.log", "recent"]
    assert find_twin(plan, root) is not None


def test_an_import_the_bundle_vendors_is_no_note(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", "segmentation-models-pytorch", "0.6.0", ["timm>=1", "torch"])
    baseline = write_baseline(tmp_path / "baseline.txt", PINS)
    known = {**KNOWN, "segmentation_models_pytorch": ["segmentation_models_pytorch"]}
    plan = plan_twin(_python(), str(baseline), [wheel], ENV, known=known)
    assert not [n for n in plan.notes if "segmentation_models_pytorch" in n]
    assert plan.vendored == {"segmentation-models-pytorch"} and plan.wanted["timm"] == "1.0.26"
