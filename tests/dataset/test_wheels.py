"""vendor_wheels end to end on a local wheelhouse built at test time (no network: no_index)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from bundler.config import TargetConfig
from bundler.dataset.wheels import fetch as wheels_fetch
from bundler.dataset.wheels.vendor import WheelPlan, vendor_wheels
from bundler.errors import WheelsError
from tests.wheelhouse import make_sdist, make_wheel, write_baseline

BASELINE = {"numpy": "2.0.2", "torch": "2.10.0+cu128", "torchvision": "0.25.0+cu128", "six": "1.17.0"}


pytestmark = pytest.mark.usefixtures("no_rehearsal")


def _target(tmp_path: Path, requirements: tuple[str, ...], house: Path) -> TargetConfig:
    baseline = write_baseline(tmp_path / "baseline.txt", BASELINE)
    return TargetConfig(
        python="3.12",
        baseline=str(baseline),
        requirements=requirements,
        find_links=(house,),
        no_index=True,
    )


def _vendor(tmp_path: Path, target: TargetConfig, dest: str = "dest") -> tuple[WheelPlan, str]:
    console = Console(record=True, width=200)
    plan = vendor_wheels(target, tmp_path / dest, wheelhouse=tmp_path / "cache", console=console)
    return plan, console.export_text()


def test_closure_minus_baseline(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "alpha", "1.0", ["beta>=1", "numpy"])
    make_wheel(house, "beta", "0.9")
    make_wheel(house, "beta", "1.2", ['six; python_version >= "3"'])
    plan, _ = _vendor(tmp_path, _target(tmp_path, ("alpha",), house))

    assert [(w.name, w.version) for w in plan.wheels] == [("alpha", "1.0"), ("beta", "1.2")]
    assert dict(plan.from_baseline) == {"numpy": "2.0.2", "six": "1.17.0"}
    reasons = {w.name: w.reason for w in plan.wheels}
    assert reasons == {"alpha": "requested in target.requirements", "beta": "required by alpha"}
    for w in plan.wheels:
        data = (tmp_path / "dest" / w.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == w.sha256 and len(data) == w.size
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == sorted(w.file for w in plan.wheels)
    assert plan.warnings == (
        "offline install not rehearsed (skipped: BUNDLER_SKIP_REHEARSAL is set); only the static check ran",
    )


def test_empty_requirements_vendor_nothing(tmp_path: Path) -> None:
    plan, _ = _vendor(tmp_path, _target(tmp_path, (), tmp_path))
    assert plan == WheelPlan((), (), ())


def test_sdist_only_package_is_built_offline_into_a_pure_wheel(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_sdist(house, "gamma", "1.0", ["numpy>=1"])
    plan, text = _vendor(tmp_path, _target(tmp_path, ("gamma==1.0",), house))
    assert [w.file for w in plan.wheels] == ["gamma-1.0-py3-none-any.whl"]
    assert "built from sdist" in text
    assert dict(plan.from_baseline) == {"numpy": "2.0.2"}


@pytest.mark.slow
def test_compiled_sdist_is_refused_with_the_fix(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_sdist(house, "delta", "2.0", compiled=True)
    with pytest.raises(WheelsError) as err:
        _vendor(tmp_path, _target(tmp_path, ("delta",), house))
    message = str(err.value)
    assert "delta==2.0" in message and "target.find_links" in message and "cp312" in message
    assert not (tmp_path / "dest").exists() or not list((tmp_path / "dest").iterdir())


def test_missing_dependency_fails_naming_it(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "alpha", "1.0", ["epsilon>=3"])
    with pytest.raises(WheelsError) as err:
        _vendor(tmp_path, _target(tmp_path, ("alpha",), house))
    assert "epsilon" in str(err.value) and "target.requirements" in str(err.value)


def test_torch_is_never_vendored_and_a_different_torch_warns(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "zeta", "1.0", ["torch>=2.11", "torchvision"])
    make_wheel(house, "torch", "2.11.0")  # even when the wheelhouse offers it
    plan, text = _vendor(tmp_path, _target(tmp_path, ("zeta",), house))
    assert [w.name for w in plan.wheels] == ["zeta"]
    assert ("torch", "2.10.0+cu128") in plan.from_baseline
    [warning] = [w for w in plan.warnings if "torch" in w]
    assert "torch>=2.11" in warning and "2.10.0+cu128" in warning and "zeta" in warning
    assert "warning:" in text


def test_torch_missing_from_the_image_fails(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "omega", "1.0", ["torchaudio"])
    make_wheel(house, "torchaudio", "2.10.0")
    with pytest.raises(WheelsError, match=r"torchaudio .*never vendors torch"):
        _vendor(tmp_path, _target(tmp_path, ("omega",), house))


def test_incompatible_image_version_is_vendored_with_a_warning(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "theta", "1.0", ["numpy<2"])
    make_wheel(house, "numpy", "1.26.4", tag="cp312-cp312-manylinux_2_17_x86_64")
    plan, _ = _vendor(tmp_path, _target(tmp_path, ("theta",), house))
    by_name = {w.name: w for w in plan.wheels}
    assert by_name["numpy"].version == "1.26.4"
    assert "the image's 2.0.2 does not fit" in by_name["numpy"].reason
    assert any("replaces the image's 2.0.2" in w for w in plan.warnings)
    assert "numpy" not in dict(plan.from_baseline)


def test_tag_incompatible_wheel_is_rejected(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "eta", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    with pytest.raises(WheelsError) as err:
        _vendor(tmp_path, _target(tmp_path, ("eta",), house))
    assert "eta" in str(err.value)


def test_prefers_the_best_platform_wheel(tmp_path: Path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "iota", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    make_wheel(house, "iota", "1.0", tag="cp312-cp312-manylinux_2_39_x86_64")  # newer glibc than the image
    plan, _ = _vendor(tmp_path, _target(tmp_path, ("iota",), house))
    assert [w.file for w in plan.wheels] == ["iota-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"]


@pytest.mark.slow
def test_second_call_downloads_and_builds_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    house = tmp_path / "house"
    make_wheel(house, "alpha", "1.0", ["gamma"])
    make_sdist(house, "gamma", "1.0")
    target = _target(tmp_path, ("alpha",), house)
    first, _ = _vendor(tmp_path, target, "dest1")
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.whl")}

    def no_pip(args: list[str]) -> object:
        raise AssertionError(f"pip was called again: {args}")

    monkeypatch.setattr(wheels_fetch, "_pip", no_pip)
    second, text = _vendor(tmp_path, target, "dest2")
    assert second.wheels == first.wheels
    assert text.count("(cached,") == 2
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.whl")} == cached


def test_unknown_baseline_names_it_and_how_to_take_one(tmp_path: Path) -> None:
    target = replace(_target(tmp_path, ("alpha",), tmp_path), baseline="kaggle-1999-01")
    with pytest.raises(WheelsError, match=r"kaggle-1999-01.*pip freeze --all"):
        _vendor(tmp_path, target)


def test_bad_requirement_is_named(tmp_path: Path) -> None:
    with pytest.raises(WheelsError, match=r"'alpha>>1'"):
        _vendor(tmp_path, _target(tmp_path, ("alpha>>1",), tmp_path))
