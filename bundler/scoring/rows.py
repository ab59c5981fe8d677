"""Scoring a per-image submission against its labels (classification, multi-label, regression,
ordinal): the chosen metric, a confusion matrix or predicted-vs-true pairs, and the rows most wrong.

Both files are CSVs keyed by the same column (Digit Recognizer: `ImageId,Label`). What the
columns hold follows from the metric's form (`bundler.scoring.metrics`):
- "label" (accuracy, macro-F1, qwk): one label column on both sides (the submission's first
  column after the key unless `column` names it);
- "proba" (log loss, ROC-AUC): one probability column per class in the submission; the labels
  give either one label column whose values name those columns (single-label), or the same 0/1
  column per class (multi-label). The predicted label is the column of the highest probability;
- "ranked" (MAP@k): the submission's label column holds the top-k labels joined by spaces;
- "value" (RMSE, MAE): the value column(s) of the labels, by name, in the submission.

Keys are compared as text with surrounding spaces removed. Every labelled key must be in the
submission (a missing one is a `ScoringError` naming it); submission rows without a label are
left out and counted. Labels are compared as text, except where the metric needs numbers (qwk,
values), where they are read as numbers (an unreadable one is an error naming its row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bundler.errors import ScoringError
from bundler.scoring.metrics import Metric, default_metric, get_metric

WORST = 10
PAIRS_KEPT = 5000  # predicted-vs-true pairs kept for the scatter (the first ones, in label order)


@dataclass(frozen=True)
class RowScore:
    """The score of a per-image submission and where it goes wrong."""

    metric: str
    score: float
    greater_is_better: bool
    rows: int  # labelled rows scored
    unlabelled: int  # submission rows without a label, left out
    classes: tuple[str, ...] = ()  # the confusion matrix's order (classification)
    confusion: tuple[tuple[int, ...], ...] = ()  # [true][predicted] counts
    pairs: tuple[tuple[float, float], ...] = ()  # (true, predicted) of the first value column (regression)
    worst: tuple[tuple[str, str, str, float], ...] = field(default=())  # (key, true, predicted, error), worst first

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("classes", "confusion", "pairs", "worst"):
            data[name] = [list(x) if isinstance(x, tuple) else x for x in data[name]]
        return data


def _read(data: Path | pd.DataFrame, what: str) -> tuple[pd.DataFrame, str]:
    if isinstance(data, pd.DataFrame):
        return data.copy(), f"{what} (DataFrame)"
    try:
        frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise ScoringError(f"{data}: cannot read the {what} CSV ({type(e).__name__}); check the file") from None
    return frame, str(data)


def _keyed(frame: pd.DataFrame, source: str, key: str) -> pd.DataFrame:
    if key not in frame.columns:
        raise ScoringError(f"{source}: no key column {key!r} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.copy()
    frame[key] = frame[key].astype(str).str.strip()
    duplicated = frame[key][frame[key].duplicated()]
    if len(duplicated):
        raise ScoringError(f"{source}: key {duplicated.iloc[0]!r} appears more than once; one row per key")
    return frame.set_index(key)


def _numbers(column: pd.Series[Any], source: str, integer: bool) -> npt.NDArray[Any]:
    values = pd.to_numeric(column.astype(str).str.strip(), errors="coerce")
    bad = values.isna() | (values.round() != values if integer else False)
    if bad.any():
        kind = "an integer" if integer else "a number"
        raise ScoringError(
            f"{source}: key {column.index[bad][0]!r} column {column.name!r} = {column[bad].iloc[0]!r} is not {kind}"
        )
    return np.asarray(values.to_numpy(), dtype=np.int64 if integer else np.float64)


def _sorted_classes(values: Sequence[str]) -> tuple[str, ...]:
    unique = sorted(set(values))
    try:
        return tuple(sorted(unique, key=float))
    except ValueError:
        return tuple(unique)


def _confusion(true: Sequence[str], pred: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    classes = _sorted_classes([*true, *pred])
    where = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, ([where[t] for t in true], [where[p] for p in pred]), 1)
    return classes, tuple(tuple(int(v) for v in row) for row in matrix)


def _worst(
    keys: Sequence[str], true: Sequence[str], pred: Sequence[str], error: npt.NDArray[Any]
) -> tuple[tuple[str, str, str, float], ...]:
    order = [i for i in np.argsort(-error, kind="stable")[:WORST] if error[i] > 0]
    return tuple((str(keys[i]), str(true[i]), str(pred[i]), float(error[i])) for i in order)


def score_rows(
    submission: Path | pd.DataFrame,
    labels: Path | pd.DataFrame,
    *,
    key: str,
    task: str,
    metric: str | None = None,
    column: str | None = None,
) -> RowScore:
    """Score `submission` against `labels` (both keyed by `key`) with `metric` (default: the task's)."""
    chosen: Metric = get_metric(metric) if metric is not None else default_metric(task)
    sub, sub_source = _read(submission, "submission")
    lab, lab_source = _read(labels, "labels")
    sub, lab = _keyed(sub, sub_source, key), _keyed(lab, lab_source, key)
    missing = lab.index.difference(sub.index, sort=False)
    if len(missing):
        raise ScoringError(
            f"{sub_source}: {len(missing)} labelled key(s) missing, first {missing[0]!r}; "
            "the submission must have a row per labelled key"
        )
    unlabelled = len(sub.index.difference(lab.index))
    sub = sub.loc[lab.index]
    keys = [str(k) for k in lab.index]
    if not keys:
        raise ScoringError(f"{lab_source}: no labelled rows to score")

    def pick(frame: pd.DataFrame, source: str) -> str:
        name = column if column is not None else (str(frame.columns[0]) if len(frame.columns) else "")
        if name not in frame.columns:
            raise ScoringError(f"{source}: no column {name!r} after the key {key!r}; name the label column")
        return name

    if chosen.needs == "value":
        value_columns = [str(c) for c in lab.columns] if column is None else [column]
        absent = [c for c in value_columns if c not in sub.columns]
        if absent:
            raise ScoringError(f"{sub_source}: no value column {absent[0]!r} (the labels have it)")
        true = np.stack([_numbers(lab[c], lab_source, False) for c in value_columns], axis=1)
        pred = np.stack([_numbers(sub[c], sub_source, False) for c in value_columns], axis=1)
        if true.shape[1] == 1:
            true, pred = true[:, 0], pred[:, 0]
        error = np.abs(true - pred).reshape(len(keys), -1).sum(axis=1)
        t1, p1 = true.reshape(len(keys), -1)[:, 0], pred.reshape(len(keys), -1)[:, 0]
        return RowScore(
            metric=chosen.name, score=chosen(true, pred), greater_is_better=chosen.greater_is_better,
            rows=len(keys), unlabelled=unlabelled,
            pairs=tuple((float(a), float(b)) for a, b in zip(t1[:PAIRS_KEPT], p1[:PAIRS_KEPT], strict=True)),
            worst=_worst(keys, [f"{v:g}" for v in t1], [f"{v:g}" for v in p1], error),
        )  # fmt: skip

    if chosen.needs == "proba":
        classes = [str(c) for c in sub.columns]
        proba = np.stack([_numbers(sub[c], sub_source, False) for c in classes], axis=1)
        if set(lab.columns) >= set(classes) and len(classes) > 1 and column is None:  # one 0/1 column per class
            truth = np.stack([_numbers(lab[c], lab_source, True) for c in classes], axis=1)
            score = chosen(truth, proba)
            error = np.abs(truth - proba).sum(axis=1)
            shown_true = [" ".join(c for c, t in zip(classes, row, strict=True) if t) for row in truth]
            shown_pred = [" ".join(f"{c}:{p:.2f}" for c, p in zip(classes, row, strict=True)) for row in proba]
            return RowScore(
                metric=chosen.name, score=score, greater_is_better=chosen.greater_is_better, rows=len(keys),
                unlabelled=unlabelled, worst=_worst(keys, shown_true, shown_pred, error),
            )  # fmt: skip
        name = pick(lab, lab_source)
        true_labels = [str(v).strip() for v in lab[name]]
        where = {c: i for i, c in enumerate(classes)}
        unknown = [(k, t) for k, t in zip(keys, true_labels, strict=True) if t not in where]
        if unknown:
            raise ScoringError(
                f"{lab_source}: key {unknown[0][0]!r} has label {unknown[0][1]!r}, which is no probability column "
                f"of the submission ({', '.join(classes)})"
            )
        index = np.array([where[t] for t in true_labels], dtype=np.int64)
        predicted = [classes[i] for i in proba.argmax(axis=1)]
        shown, matrix = _confusion(true_labels, predicted)
        return RowScore(
            metric=chosen.name, score=chosen(index, proba), greater_is_better=chosen.greater_is_better,
            rows=len(keys), unlabelled=unlabelled, classes=shown, confusion=matrix,
            worst=_worst(keys, true_labels, predicted, 1.0 - proba[np.arange(len(keys)), index]),
        )  # fmt: skip

    true_name, pred_name = pick(lab, lab_source), pick(sub, sub_source)
    true_labels = [str(v).strip() for v in lab[true_name]]
    pred_text = [str(v).strip() for v in sub[pred_name]]
    if chosen.needs == "ranked":
        ranked = [p.split() for p in pred_text]
        k = max((len(r) for r in ranked), default=1) or 1
        table = np.array([r + [""] * (k - len(r)) for r in ranked], dtype=object)
        score = chosen(np.array(true_labels, dtype=object), table)
        top = [r[0] if r else "" for r in ranked]
        found = [1.0 / (r.index(t) + 1) if t in r else 0.0 for t, r in zip(true_labels, ranked, strict=True)]
        error = 1.0 - np.array(found)
        shown, matrix = _confusion(true_labels, top)
        return RowScore(
            metric=chosen.name, score=score, greater_is_better=chosen.greater_is_better, rows=len(keys),
            unlabelled=unlabelled, classes=shown, confusion=matrix, worst=_worst(keys, true_labels, pred_text, error),
        )  # fmt: skip
    if chosen.name == "qwk":  # grades: numbers, and the distance is the error
        t_num = _numbers(lab[true_name], lab_source, True)
        p_num = _numbers(sub[pred_name], sub_source, True)
        score, error = chosen(t_num, p_num), np.abs(t_num - p_num).astype(np.float64)
    else:
        score = chosen(np.array(true_labels, dtype=object), np.array(pred_text, dtype=object))
        error = np.array([float(t != p) for t, p in zip(true_labels, pred_text, strict=True)])
    shown, matrix = _confusion(true_labels, pred_text)
    return RowScore(
        metric=chosen.name, score=score, greater_is_better=chosen.greater_is_better, rows=len(keys),
        unlabelled=unlabelled, classes=shown, confusion=matrix, worst=_worst(keys, true_labels, pred_text, error),
    )  # fmt: skip


def sample_key(sample: Path) -> str:
    """The key column of a per-image sample submission: its first header column."""
    try:
        header = pd.read_csv(sample, dtype=str, nrows=0).columns
    except (OSError, ValueError) as e:
        raise ScoringError(f"{sample}: cannot read the sample submission's header ({type(e).__name__})") from None
    if len(header) < 2:
        raise ScoringError(f"{sample}: a per-image sample submission needs a key column and a prediction column")
    return str(header[0])


def score_submission(submission: Path, labels: Path, *, sample: Path, task: str, metric: str | None = None) -> RowScore:
    """What the dry-run calls for an image-level task: `submission` against `labels`, keyed by the
    sample submission's first column, scored by `metric` (default: the task's)."""
    return score_rows(submission, labels, key=sample_key(sample), task=task, metric=metric)
