"""Ordinal cut-points tuned for quadratic weighted kappa, with k-fold CV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score  # type: ignore[import-untyped]

from bundler.errors import TuneError
from bundler.tune.cuts import apply_cuts, choose_cuts, cross_validate_cuts, default_cuts


def _shrunk(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grades 0..4 and a model's values pulled toward the mean (what a squared loss does)."""
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    values = 2.0 + 0.55 * (grades - 2.0) + rng.normal(0, 0.25, n)
    return values, grades


def test_apply_cuts_follows_the_task_rule() -> None:
    cuts = default_cuts(4)
    assert cuts == (0.5, 1.5, 2.5)
    assert apply_cuts([-1.0, 0.49, 0.5, 1.2, 2.5, 9.0], cuts).tolist() == [0, 0, 1, 1, 3, 3]


def test_tuned_cuts_beat_the_halfway_points_on_held_out_folds() -> None:
    values, grades = _shrunk(600, 0)
    result = cross_validate_cuts(values, grades, default_cuts(5), folds=5)
    assert len(result.folds) == 5 and sum(f.rows for f in result.folds) == 600
    assert all(f.gain > 0 for f in result.folds)  # shrunk values: every fold gains
    assert list(result.cuts) == sorted(result.cuts)
    # the shipped cuts' kappa, checked with scikit-learn
    tuned = apply_cuts(values, result.cuts)
    expected = cohen_kappa_score(grades, tuned, weights="quadratic", labels=range(5))
    current = cohen_kappa_score(grades, apply_cuts(values, default_cuts(5)), weights="quadratic", labels=range(5))
    assert expected > current
    std, low, high = result.spread()
    assert low <= result.tuned - result.current <= high and std >= 0


def test_cuts_already_right_stay_put() -> None:
    grades = np.repeat(np.arange(4), 10)
    values = grades.astype(float)  # exact: the halfway points are already perfect
    assert choose_cuts(values, grades, default_cuts(4)) == default_cuts(4)


def test_the_search_is_deterministic() -> None:
    values, grades = _shrunk(200, 3)
    a = cross_validate_cuts(values, grades, default_cuts(5), folds=4, seed=1)
    b = cross_validate_cuts(values, grades, default_cuts(5), folds=4, seed=1)
    assert a == b


@pytest.mark.parametrize(
    ("values", "grades", "folds", "words"),
    [
        ([1.0, np.nan, 2.0], [1, 1, 2], 2, "NaN"),
        ([1.0, 2.0], [1, 2], 3, "3 folds for 2"),
    ],
)
def test_bad_inputs_are_one_line_errors(values: list[float], grades: list[int], folds: int, words: str) -> None:
    with pytest.raises(TuneError, match=words):
        cross_validate_cuts(values, grades, default_cuts(3), folds=folds)
