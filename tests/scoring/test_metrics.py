"""The image-level tasks' metrics against scikit-learn's (the independent reference) and, for
MAP@k, a hand computation of Kaggle's definition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm  # type: ignore[import-untyped]

from bundler.errors import ScoringError
from bundler.scoring.metrics import DEFAULT_METRIC, METRICS, default_metric, get_metric


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _labels(seed: int, n: int = 200, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    true = rng.integers(0, classes, n)
    pred = np.where(rng.random(n) < 0.6, true, rng.integers(0, classes, n))
    return true, pred


def _proba(seed: int, n: int = 200, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    true = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), true] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return true, proba


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_and_macro_f1_match_sklearn(seed: int) -> None:
    true, pred = _labels(seed)
    assert METRICS["accuracy"](true, pred) == pytest.approx(skm.accuracy_score(true, pred))
    assert METRICS["macro_f1"](true, pred) == pytest.approx(skm.f1_score(true, pred, average="macro"))


def test_macro_f1_counts_a_class_only_predicted_as_zero() -> None:
    true, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])  # class 2 never true
    expected = skm.f1_score(true, pred, average="macro", zero_division=0)
    assert METRICS["macro_f1"](true, pred) == pytest.approx(expected)
    assert expected == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)  # class 0: 2/3, class 1: 1, class 2: 0


@pytest.mark.parametrize("seed", range(5))
def test_log_loss_matches_sklearn(seed: int) -> None:
    true, proba = _proba(seed)
    assert METRICS["log_loss"](true, proba) == pytest.approx(skm.log_loss(true, proba, labels=range(5)))


def test_log_loss_clips_a_zero_probability() -> None:
    true, proba = np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]])
    # the second row puts 0 on its true class: clipped to 1e-15, not infinite
    assert METRICS["log_loss"](true, proba) == pytest.approx(-np.log(1e-15) / 2, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_one_vs_rest_matches_sklearn(seed: int) -> None:
    true, proba = _proba(seed)
    expected = skm.roc_auc_score(true, proba, multi_class="ovr", average="macro")
    assert METRICS["roc_auc"](true, proba) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_multilabel_with_ties_matches_sklearn(seed: int) -> None:
    rng = _rng(seed)
    truth = (rng.random((150, 4)) < 0.3).astype(int)
    scores = np.round(truth * 0.3 + rng.random((150, 4)), 1)  # rounded: many ties
    expected = skm.roc_auc_score(truth, scores, average="macro")
    assert METRICS["roc_auc"](truth, scores) == pytest.approx(expected)


def test_roc_auc_leaves_out_a_class_with_one_side() -> None:
    truth = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]])
    assert METRICS["roc_auc"](truth, scores) == pytest.approx(skm.roc_auc_score(truth[:, 0], scores[:, 0]))


def test_map_at_k_by_hand() -> None:
    true = np.array(["a", "b", "c", "d"])
    ranked = np.array([["a", "x", "y"], ["x", "b", "y"], ["x", "y", "c"], ["x", "y", "z"]])
    assert METRICS["map_at_k"](true, ranked) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)


def test_map_at_k_counts_a_repeated_label_at_its_first_rank() -> None:
    true = np.array([3, 3])
    ranked = np.array([[1, 3, 3], [3, 3, 3]])
    assert METRICS["map_at_k"](true, ranked) == pytest.approx((1 / 2 + 1) / 2)


def test_map_at_1_is_accuracy() -> None:
    true, pred = _labels(7)
    assert METRICS["map_at_k"](true, pred) == pytest.approx(skm.accuracy_score(true, pred))


@pytest.mark.parametrize("seed", range(3))
def test_rmse_and_mae_match_sklearn(seed: int) -> None:
    rng = _rng(seed)
    true = rng.normal(size=(80, 2))
    pred = true + rng.normal(scale=0.3, size=(80, 2))
    assert METRICS["rmse"](true, pred) == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)))
    assert METRICS["mae"](true, pred) == pytest.approx(skm.mean_absolute_error(true, pred))


@pytest.mark.parametrize("seed", range(5))
def test_qwk_matches_sklearn_over_the_rating_range(seed: int) -> None:
    rng = _rng(seed)
    true = rng.integers(0, 5, 300)
    pred = np.clip(true + rng.integers(-1, 2, 300), 0, 4)
    expected = skm.cohen_kappa_score(true, pred, weights="quadratic", labels=range(5))
    assert METRICS["qwk"](true, pred) == pytest.approx(expected)


def test_qwk_keeps_grades_nobody_used() -> None:
    true, pred = np.array([0, 2, 4, 4]), np.array([0, 4, 4, 2])  # grades 1 and 3 unused
    expected = skm.cohen_kappa_score(true, pred, weights="quadratic", labels=range(5))
    assert METRICS["qwk"](true, pred) == pytest.approx(expected)
    assert METRICS["qwk"](np.array([2, 2]), np.array([2, 2])) == 1.0


def test_every_task_has_a_registered_default() -> None:
    for task, name in DEFAULT_METRIC.items():
        assert default_metric(task) is METRICS[name]
    assert default_metric("classification").name == "accuracy"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: get_metric("f2"), "choose one of accuracy"),
        (lambda: default_metric("segmentation"), "no default metric"),
        (lambda: METRICS["accuracy"](np.array([1, 2]), np.array([1])), "2 true rows but 1"),
        (lambda: METRICS["log_loss"](np.array([0, 3]), np.eye(2)), "class indices 0..1"),
        (lambda: METRICS["qwk"](np.array([0, 1]), np.array([0.5, 1.0])), "integer grades"),
        (lambda: METRICS["rmse"](np.array([0.0]), np.array([np.nan])), "NaN"),
        (lambda: METRICS["roc_auc"](np.array([0, 0]), np.array([[0.2, 0.8], [0.3, 0.7]])), "no AUC"),
    ],
)
def test_bad_inputs_are_one_line_errors(call: object, words: str) -> None:
    with pytest.raises(ScoringError, match=words):
        call()  # type: ignore[operator]
