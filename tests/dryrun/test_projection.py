from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundler.dryrun.projection import (
    NO_CALIBRATION,
    NO_CALIBRATION_NOTE,
    factor_calibration,
    profile_calibration,
    project,
)
from bundler.errors import DryRunError

LOCAL = {"fixed_s": 10.0, "per_image_s": 2.0, "images": 8, "total_s": 26.0}


def test_uncalibrated_is_fixed_plus_per_image_times_hidden() -> None:
    p = project(LOCAL, hidden_images=100, budget_s=300.0)
    assert p.projected_s == pytest.approx(210.0)
    assert p.within_budget
    assert p.margin_s == pytest.approx(90.0)
    assert p.to_dict()["calibration"] == NO_CALIBRATION_NOTE


def test_over_budget() -> None:
    p = project(LOCAL, hidden_images=100, budget_s=200.0)
    assert not p.within_budget
    assert p.margin_s == pytest.approx(-10.0)


def test_exactly_on_budget_is_within() -> None:
    assert project(LOCAL, hidden_images=100, budget_s=210.0).within_budget


def test_user_factor_scales_both_parts() -> None:
    p = project(LOCAL, hidden_images=100, budget_s=1000.0, calibration=factor_calibration(0.1))
    assert p.fixed_s == pytest.approx(1.0)
    assert p.per_image_s == pytest.approx(0.2)
    assert p.projected_s == pytest.approx(21.0)
    assert "factor 0.1" in p.to_dict()["calibration"]


def test_kaggle_profile_gives_its_own_fixed_cost_and_a_per_image_ratio() -> None:
    kaggle = {"fixed_s": 40.0, "per_image_s": 0.5}
    cal = profile_calibration(kaggle, LOCAL, "kaggle/profile.json")
    assert cal.per_image_factor == pytest.approx(0.25)
    p = project(LOCAL, hidden_images=1000, budget_s=3300.0, calibration=cal)
    assert p.fixed_s == pytest.approx(40.0)
    assert p.projected_s == pytest.approx(40.0 + 0.5 * 1000)
    assert "kaggle/profile.json" in cal.describe()


@pytest.mark.parametrize(
    ("kaggle", "local", "needle"),
    [
        ({"fixed_s": 1.0}, LOCAL, "per_image_s"),
        ({"fixed_s": 1.0, "per_image_s": "fast"}, LOCAL, "per_image_s"),
        ({"fixed_s": 1.0, "per_image_s": 0.0}, LOCAL, "saw images"),
        ({"fixed_s": 1.0, "per_image_s": 1.0}, {"fixed_s": 1.0, "per_image_s": 0.0}, "no image was timed"),
    ],
)
def test_bad_calibration_profiles_are_named(kaggle: dict[str, object], local: dict[str, object], needle: str) -> None:
    with pytest.raises(DryRunError, match=needle):
        profile_calibration(kaggle, local, "k.json")


@pytest.mark.parametrize("factor", [0.0, -1.0, math.inf, math.nan])
def test_bad_factors_are_refused(factor: float) -> None:
    with pytest.raises(DryRunError, match="positive"):
        factor_calibration(factor)


def test_bad_budget_and_size_are_refused() -> None:
    with pytest.raises(DryRunError, match="hidden_test_images"):
        project(LOCAL, hidden_images=0, budget_s=10.0)
    with pytest.raises(DryRunError, match="time budget"):
        project(LOCAL, hidden_images=10, budget_s=0.0)


@given(
    fixed=st.floats(0, 1e4),
    per=st.floats(0, 10),
    n=st.integers(1, 100_000),
    factor=st.floats(0.01, 100),
)
def test_projection_is_monotonic_in_the_hidden_size(fixed: float, per: float, n: int, factor: float) -> None:
    local = {"fixed_s": fixed, "per_image_s": per}
    cal = factor_calibration(factor)
    a = project(local, hidden_images=n, budget_s=1.0, calibration=cal)
    b = project(local, hidden_images=n + 1, budget_s=1.0, calibration=cal)
    assert b.projected_s >= a.projected_s
    assert a.projected_s == pytest.approx(factor * (fixed + per * n))
    assert project(local, hidden_images=n, budget_s=1.0, calibration=NO_CALIBRATION).projected_s >= fixed
