"""The static offline-install proof: tags, Requires-Python, Requires-Dist with markers and extras."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bundler.config import TargetConfig
from bundler.dataset.wheels.check import check_closure, read_wheel
from bundler.errors import WheelsError
from bundler.target.baseline import Baseline, parse_freeze
from bundler.target.env import target_env
from tests.wheelhouse import make_wheel

ENV = target_env(TargetConfig())
BASE = Baseline("test", Path("test.txt"), parse_freeze("numpy==2.0.2\ntorch==2.10.0+cu128\n", "test.txt"))


def _reqs(*texts: str) -> list[Requirement]:
    return [Requirement(t) for t in texts]


def test_read_wheel_metadata(tmp_path: Path) -> None:
    info = read_wheel(make_wheel(tmp_path, "Alpha.Pkg", "1.0", ["beta>=1"], requires_python=">=3.9"))
    assert info.key == "alpha-pkg" and str(info.version) == "1.0"
    assert [str(r) for r in info.requires] == ["beta>=1"] and str(info.requires_python) == ">=3.9"


def test_missing_dependency_names_it_and_who_requires_it(tmp_path: Path) -> None:
    alpha = read_wheel(make_wheel(tmp_path, "alpha", "1.0", ["beta", "numpy>=1.20"]))
    with pytest.raises(WheelsError, match=r"missing dependency beta \(required by alpha\)"):
        check_closure(_reqs("alpha"), [alpha], BASE, ENV)


def test_closure_met_by_vendored_and_baseline(tmp_path: Path) -> None:
    alpha = read_wheel(make_wheel(tmp_path, "alpha", "1.0", ["beta>=1", "numpy>=1.20"]))
    beta = read_wheel(make_wheel(tmp_path, "beta", "1.1"))
    report = check_closure(_reqs("alpha"), [alpha, beta], BASE, ENV)
    assert report.from_baseline == {"numpy": "2.0.2"}
    assert report.required_by[canonicalize_name("beta")] == ["alpha"] and not report.warnings


def test_markers_are_evaluated_for_the_target(tmp_path: Path) -> None:
    deps = [
        'tomli; python_version < "3.11"',
        'pywin32; sys_platform == "win32"',
        'appnope; platform_system == "Darwin"',
        'beta; platform_machine == "x86_64" and python_version >= "3.12"',
    ]
    alpha = read_wheel(make_wheel(tmp_path, "alpha", "1.0", deps))
    with pytest.raises(WheelsError) as err:
        check_closure(_reqs("alpha"), [alpha], BASE, ENV)
    assert "beta" in str(err.value)
    for skipped in ("tomli", "pywin32", "appnope"):
        assert skipped not in str(err.value)


def test_extras_pull_their_dependencies_only_when_asked(tmp_path: Path) -> None:
    alpha = read_wheel(make_wheel(tmp_path, "alpha", "1.0", ['gamma; extra == "fast"'], extras=["fast"]))
    check_closure(_reqs("alpha"), [alpha], BASE, ENV)
    with pytest.raises(WheelsError, match=r"gamma.*required by alpha"):
        check_closure(_reqs("alpha[fast]"), [alpha], BASE, ENV)


def test_unmet_version_of_an_image_package_fails(tmp_path: Path) -> None:
    alpha = read_wheel(make_wheel(tmp_path, "alpha", "1.0", ["numpy<2"]))
    with pytest.raises(WheelsError, match=r"numpy<2 \(required by alpha\) is not met: the image has numpy 2.0.2"):
        check_closure(_reqs("alpha"), [alpha], BASE, ENV)


def test_other_torch_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    alpha = read_wheel(make_wheel(tmp_path, "alpha", "1.0", ["torch>=2.11"]))
    report = check_closure(_reqs("alpha"), [alpha], BASE, ENV)
    assert len(report.warnings) == 1 and "torch>=2.11" in report.warnings[0]


def test_incompatible_tags_and_python_are_rejected(tmp_path: Path) -> None:
    old = read_wheel(make_wheel(tmp_path, "old", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64"))
    mac = read_wheel(make_wheel(tmp_path, "mac", "1.0", tag="cp312-cp312-macosx_11_0_arm64"))
    new_glibc = read_wheel(make_wheel(tmp_path, "newglibc", "1.0", tag="cp312-cp312-manylinux_2_39_x86_64"))
    future = read_wheel(make_wheel(tmp_path, "future", "1.0", requires_python=">=3.13"))
    with pytest.raises(WheelsError) as err:
        check_closure(_reqs("old", "mac", "newglibc", "future"), [old, mac, new_glibc, future], BASE, ENV)
    message = str(err.value)
    for name in ("old-1.0-cp311", "mac-1.0-cp312-cp312-macosx", "newglibc-1.0-cp312-cp312-manylinux_2_39", "future"):
        assert name in message
    assert "requires Python >=3.13" in message


def test_compatible_tags_pass(tmp_path: Path) -> None:
    tags = ["cp312-cp312-manylinux_2_31_x86_64", "cp310-abi3-manylinux2014_x86_64", "py2.py3-none-any"]
    wheels = [read_wheel(make_wheel(tmp_path, f"p{i}", "1.0", tag=t)) for i, t in enumerate(tags)]
    check_closure(_reqs("p0", "p1", "p2"), wheels, BASE, ENV)
