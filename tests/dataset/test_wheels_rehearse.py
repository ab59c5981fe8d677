"""The offline install rehearsal on a real Python of the target's version (skipped where there is none)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from rich.console import Console

from bundler.config import TargetConfig
from bundler.dataset.wheels.rehearse import SKIP_ENV, find_target_python, rehearse_install
from bundler.dataset.wheels.vendor import vendor_wheels
from bundler.errors import WheelsError
from bundler.target.baseline import Baseline, parse_freeze
from bundler.target.env import target_env
from tests.wheelhouse import make_wheel, write_baseline

F = TypeVar("F", bound=Callable[..., Any])
ENV = target_env(TargetConfig())
BASE = Baseline("test", Path("t.txt"), parse_freeze("numpy==2.0.2\ntorch==2.10.0+cu128\n", "t.txt"))
_no_312 = find_target_python("3.12") is None


def needs_312(fn: F) -> F:
    """A test that runs pip on Python 3.12 (seconds each): slow, skipped where there is no 3.12."""
    skipped: F = pytest.mark.skipif(_no_312, reason="no Python 3.12 interpreter here")(fn)
    marked: F = pytest.mark.slow(skipped)
    return marked


@pytest.fixture(autouse=True)
def _rehearse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SKIP_ENV, raising=False)


@needs_312
def test_rehearsal_installs_offline_and_checks_the_closure(tmp_path: Path) -> None:
    alpha = make_wheel(tmp_path / "b", "alpha", "1.0", ["numpy>=2", "torch>=2.11"])  # torch conflict: warned only
    done = rehearse_install([alpha], tmp_path / "b", BASE, ENV, work=tmp_path)
    assert done.ran and "Python 3.12." in done.detail and "pip check is clean" in done.detail


@needs_312
def test_rehearsal_fails_with_pips_message(tmp_path: Path) -> None:
    alpha = make_wheel(tmp_path / "b", "alpha", "1.0", ["beta", "numpy<2"])
    with pytest.raises(WheelsError) as err:
        rehearse_install([alpha], tmp_path / "b", BASE, ENV, work=tmp_path)
    message = str(err.value)
    assert "alpha 1.0 requires beta, which is not installed" in message
    assert "alpha 1.0 has requirement numpy<2, but you have numpy 2.0.2" in message


@needs_312
def test_rehearsal_rejects_a_wheel_the_target_python_cannot_install(tmp_path: Path) -> None:
    old = make_wheel(tmp_path / "b", "old", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    with pytest.raises(WheelsError, match=r"old-1.0-cp311.*not a supported wheel"):
        rehearse_install([old], tmp_path / "b", BASE, ENV, work=tmp_path)


def test_rehearsal_can_be_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SKIP_ENV, "1")
    done = rehearse_install([tmp_path / "x.whl"], tmp_path, BASE, ENV, work=tmp_path)
    assert not done.ran and SKIP_ENV in done.detail


def test_a_wrong_interpreter_override_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUNDLER_TARGET_PYTHON", str(tmp_path / "python9"))
    with pytest.raises(WheelsError, match=r"BUNDLER_TARGET_PYTHON=.*python9"):
        rehearse_install([tmp_path / "x.whl"], tmp_path, BASE, ENV, work=tmp_path)


@needs_312
def test_vendor_wheels_reports_the_rehearsal(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "alpha", "1.0", ["beta", "numpy"])
    make_wheel(house, "beta", "1.0")
    target = TargetConfig(
        baseline=str(write_baseline(tmp_path / "base.txt", {"numpy": "2.0.2"})),
        requirements=("alpha",),
        find_links=(house,),
        no_index=True,
    )
    console = Console(record=True, width=200)
    plan = vendor_wheels(target, tmp_path / "dest", wheelhouse=tmp_path / "cache", console=console)
    assert plan.warnings == ()
    assert "offline install rehearsed: 2 wheel(s)" in console.export_text()
