"""The metrics of the image-level tasks (classification, multi-label, regression, ordinal): a
registry from name to function, and a default per task.

Each metric takes the true values and the predictions as numpy arrays in the form its `needs`
names, and returns one float:
- "label": one predicted class per row (accuracy, macro-F1, quadratic weighted kappa);
- "proba": one probability per class per row, [N, C] (log loss; ROC-AUC, where the truth is one
  label per row, one-vs-rest, or [N, C] of 0/1 for several labels per row);
- "ranked": the top-k labels per row, best first, [N, k] (MAP@k, one true label per row);
- "value": one or more values per row (RMSE, MAE).

Definitions follow Kaggle's evaluation pages (scikit-learn's metrics are the tests' reference):
- macro-F1: the mean over every class seen in the truth or the predictions of 2TP / (2TP + FP + FN),
  a class with no TP, FP or FN scoring 0;
- log loss: probabilities clipped to [1e-15, 1 - 1e-15] and each row rescaled to sum to 1, then
  minus the mean log probability of the true class;
- ROC-AUC: per class, the probability that a positive row outranks a negative one (ties count
  half), averaged over the classes; a class whose rows are all positive or all negative has no
  AUC and is left out of the mean (scikit-learn refuses such a column);
- MAP@k: per row 1 / rank of the true label among the first k predictions (0 when absent; a
  repeated label counts at its first rank), averaged over the rows;
- quadratic weighted kappa: over the grades min..max of both sides (Kaggle's rating range, gaps
  included), `1 - sum(W * O) / sum(W * E)` with `W = (i - j)^2`, `O` the observed confusion matrix
  and `E` the outer product of the two histograms over N; 1.0 when both sides hold one grade only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from bundler.errors import ScoringError

Needs = Literal["label", "proba", "ranked", "value"]
Array = npt.NDArray[np.generic]

LOG_LOSS_EPS = 1e-15


@dataclass(frozen=True)
class Metric:
    """One registered metric: how it is computed, what predictions it needs, which way is better."""

    name: str
    function: Callable[[Array, Array], float]
    needs: Needs
    greater_is_better: bool
    help: str

    def __call__(self, y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
        true, pred = np.asarray(y_true), np.asarray(y_pred)
        if len(true) != len(pred):
            raise ScoringError(f"metric {self.name!r}: {len(true)} true rows but {len(pred)} predicted rows")
        if len(true) == 0:
            raise ScoringError(f"metric {self.name!r}: no rows to score")
        return float(self.function(true, pred))


def accuracy(y_true: Array, y_pred: Array) -> float:
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: Array, y_pred: Array) -> float:
    classes = np.union1d(y_true, y_pred)
    scores = []
    for c in classes:
        tp = int(np.sum((y_true == c) & (y_pred == c)))
        fp = int(np.sum((y_true != c) & (y_pred == c)))
        fn = int(np.sum((y_true == c) & (y_pred != c)))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def _class_index(y_true: Array, classes: int, name: str) -> npt.NDArray[np.int64]:
    index = np.asarray(y_true)
    if not np.issubdtype(index.dtype, np.integer) or index.min() < 0 or index.max() >= classes:
        raise ScoringError(
            f"metric {name!r}: true labels must be class indices 0..{classes - 1} (one probability column each)"
        )
    return index.astype(np.int64)


def _probabilities(y_pred: Array, name: str) -> npt.NDArray[np.float64]:
    proba = np.asarray(y_pred, dtype=np.float64)
    if proba.ndim != 2:
        raise ScoringError(f"metric {name!r}: needs one probability column per class ([N, C]), got shape {proba.shape}")
    if not np.isfinite(proba).all():
        raise ScoringError(f"metric {name!r}: a predicted probability is NaN or infinite")
    return proba


def log_loss(y_true: Array, y_pred: Array) -> float:
    proba = np.clip(_probabilities(y_pred, "log_loss"), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    proba = proba / proba.sum(axis=1, keepdims=True)
    index = _class_index(y_true, proba.shape[1], "log_loss")
    return float(-np.mean(np.log(proba[np.arange(len(index)), index])))


def _auc(positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float | None:
    """Mann-Whitney U over the midranks (ties count half); None when one side is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # midrank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: Array, y_pred: Array) -> float:
    proba = _probabilities(y_pred, "roc_auc")
    if np.asarray(y_true).ndim == 2:  # several labels per row: a 0/1 column per class
        if y_true.shape != proba.shape:
            raise ScoringError(f"metric 'roc_auc': true labels of shape {y_true.shape} but predictions {proba.shape}")
        truth = np.asarray(y_true).astype(bool)
    else:
        index = _class_index(y_true, proba.shape[1], "roc_auc")
        truth = index[:, None] == np.arange(proba.shape[1])[None, :]
    aucs = [a for c in range(proba.shape[1]) if (a := _auc(truth[:, c], proba[:, c])) is not None]
    if not aucs:
        raise ScoringError("metric 'roc_auc': every class is all positive or all negative in the labels; no AUC")
    return float(np.mean(aucs))


def map_at_k(y_true: Array, y_pred: Array) -> float:
    ranked = np.asarray(y_pred)
    if ranked.ndim == 1:
        ranked = ranked[:, None]
    if ranked.ndim != 2:
        raise ScoringError(f"metric 'map_at_k': needs the top-k labels per row ([N, k]), got shape {ranked.shape}")
    hits = ranked == np.asarray(y_true)[:, None]
    found = hits.any(axis=1)
    first = hits.argmax(axis=1)
    return float(np.mean(np.where(found, 1.0 / (first + 1), 0.0)))


def _values(y_true: Array, y_pred: Array, name: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    true, pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if true.shape != pred.shape:
        raise ScoringError(f"metric {name!r}: true values of shape {true.shape} but predictions {pred.shape}")
    if not np.isfinite(pred).all():
        raise ScoringError(f"metric {name!r}: a predicted value is NaN or infinite")
    return true, pred


def rmse(y_true: Array, y_pred: Array) -> float:
    true, pred = _values(y_true, y_pred, "rmse")
    return float(np.sqrt(np.mean((true - pred) ** 2)))


def mae(y_true: Array, y_pred: Array) -> float:
    true, pred = _values(y_true, y_pred, "mae")
    return float(np.mean(np.abs(true - pred)))


def quadratic_weighted_kappa(y_true: Array, y_pred: Array) -> float:
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if not (np.issubdtype(true.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ScoringError("metric 'qwk': needs integer grades on both sides (round or cut the predictions first)")
    low = int(min(true.min(), pred.min()))
    size = int(max(true.max(), pred.max())) - low + 1
    rows, cols = true.astype(np.int64) - low, pred.astype(np.int64) - low
    observed = np.zeros((size, size), dtype=np.float64)
    np.add.at(observed, (rows, cols), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / len(true)
    grades = np.arange(size)
    weights = (grades[:, None] - grades[None, :]) ** 2
    denominator = float((weights * expected).sum())
    if denominator == 0:  # one grade on both sides: perfect agreement, nothing to weigh
        return 1.0
    return float(1.0 - (weights * observed).sum() / denominator)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", accuracy, "label", True, "share of rows whose predicted label is the true one"),
        Metric("macro_f1", macro_f1, "label", True, "F1 per class, averaged over the classes"),
        Metric("log_loss", log_loss, "proba", False, "multi-class log loss (Kaggle's clipping, rows rescaled)"),
        Metric("roc_auc", roc_auc, "proba", True, "ROC-AUC per class (one-vs-rest), averaged over the classes"),
        Metric("map_at_k", map_at_k, "ranked", True, "mean average precision at k, one true label per row"),
        Metric("rmse", rmse, "value", False, "root mean squared error"),
        Metric("mae", mae, "value", False, "mean absolute error"),
        Metric("qwk", quadratic_weighted_kappa, "label", True, "quadratic weighted kappa over integer grades"),
    )
}

DEFAULT_METRIC: Mapping[str, str] = {
    "classification": "accuracy",
    "multilabel": "roc_auc",
    "regression": "rmse",
    "ordinal": "qwk",
}


def get_metric(name: str) -> Metric:
    """The registered metric `name`; an unknown name is an error listing the registered ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ScoringError(f"metric {name!r} is not registered; choose one of {', '.join(METRICS)}") from None


def default_metric(task: str) -> Metric:
    """The metric a task is scored by when none is chosen."""
    try:
        return METRICS[DEFAULT_METRIC[task]]
    except KeyError:
        raise ScoringError(
            f"task {task!r} has no default metric; tasks with one: {', '.join(DEFAULT_METRIC)}"
        ) from None
