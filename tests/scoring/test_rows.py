"""Scoring a per-image submission against its labels: each metric's form of columns, the confusion
matrix, the predicted-vs-true pairs, the rows most wrong, and the errors a bad file gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm  # type: ignore[import-untyped]

from bundler.errors import ScoringError
from bundler.scoring.figures import confusion_png, row_score_section, scatter_png
from bundler.scoring.rows import score_rows


def _digits(tmp_path: Path, seed: int = 0, n: int = 60) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 10, n)
    pred = np.where(rng.random(n) < 0.7, true, rng.integers(0, 10, n))
    ids = np.arange(1, n + 1)
    labels, submission = tmp_path / "labels.csv", tmp_path / "submission.csv"
    pd.DataFrame({"ImageId": ids, "Label": true}).to_csv(labels, index=False)
    # the submission in another order, with one row the labels lack
    frame = pd.DataFrame({"ImageId": ids, "Label": pred}).iloc[::-1]
    pd.concat([frame, pd.DataFrame({"ImageId": [n + 1], "Label": [3]})]).to_csv(submission, index=False)
    return submission, labels, true, pred


def test_digit_recognizer_accuracy_and_confusion(tmp_path: Path) -> None:
    submission, labels, true, pred = _digits(tmp_path)
    result = score_rows(submission, labels, key="ImageId", task="classification")
    assert result.metric == "accuracy" and result.greater_is_better
    assert result.score == pytest.approx(skm.accuracy_score(true, pred))
    assert result.rows == 60 and result.unlabelled == 1
    classes = sorted(set(true) | set(pred))
    assert result.classes == tuple(str(c) for c in classes)
    assert np.array_equal(np.array(result.confusion), skm.confusion_matrix(true, pred, labels=classes))
    wrong = int((true != pred).sum())
    assert len(result.worst) == min(10, wrong)
    for image_id, t, p, err in result.worst:
        assert t == str(true[int(image_id) - 1]) and p == str(pred[int(image_id) - 1]) != t and err == 1.0


def test_macro_f1_and_qwk_by_name(tmp_path: Path) -> None:
    submission, labels, true, pred = _digits(tmp_path, seed=1)
    f1 = score_rows(submission, labels, key="ImageId", task="classification", metric="macro_f1")
    assert f1.score == pytest.approx(skm.f1_score(true, pred, average="macro"))
    qwk = score_rows(submission, labels, key="ImageId", task="ordinal")
    low, high = min(true.min(), pred.min()), max(true.max(), pred.max())
    expected = skm.cohen_kappa_score(true, pred, weights="quadratic", labels=range(low, high + 1))
    assert qwk.metric == "qwk" and qwk.score == pytest.approx(expected)
    assert qwk.worst[0][3] == np.abs(true - pred).max()  # the farthest grade first


def test_probability_columns_log_loss_and_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    names = ["cat", "dog", "fox"]
    true = rng.integers(0, 3, 50)
    logits = rng.normal(size=(50, 3))
    logits[np.arange(50), true] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sub = pd.DataFrame(proba, columns=names)
    sub.insert(0, "id", [f"img{i}" for i in range(50)])
    lab = pd.DataFrame({"id": [f"img{i}" for i in range(50)], "label": [names[t] for t in true]})
    loss = score_rows(sub.astype(str), lab, key="id", task="classification", metric="log_loss")
    assert not loss.greater_is_better
    assert loss.score == pytest.approx(skm.log_loss(true, proba), rel=1e-9)
    auc = score_rows(sub.astype(str), lab, key="id", task="classification", metric="roc_auc")
    assert auc.score == pytest.approx(skm.roc_auc_score(true, proba, multi_class="ovr"), rel=1e-9)
    assert auc.classes == tuple(names)
    assert np.array_equal(np.array(auc.confusion), skm.confusion_matrix(true, proba.argmax(axis=1)))
    worst = auc.worst[0]
    i = int(worst[0][3:])
    assert worst[3] == pytest.approx(1 - proba[i, true[i]], rel=1e-9)
    assert worst[3] == pytest.approx((1 - proba[np.arange(50), true]).max(), rel=1e-9)


def test_multilabel_columns_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    truth = (rng.random((40, 4)) < 0.4).astype(int)
    scores = np.clip(truth * 0.4 + rng.random((40, 4)) * 0.6, 0, 1)
    cols = ["healthy", "rust", "scab", "multiple"]
    lab = pd.DataFrame(truth, columns=cols)
    lab.insert(0, "image_id", [f"Test_{i}" for i in range(40)])
    sub = pd.DataFrame(scores, columns=cols)
    sub.insert(0, "image_id", [f"Test_{i}" for i in range(40)])
    result = score_rows(sub.astype(str), lab.astype(str), key="image_id", task="multilabel")
    assert result.metric == "roc_auc"
    assert result.score == pytest.approx(skm.roc_auc_score(truth, scores, average="macro"))


def test_top_k_labels_map_at_k() -> None:
    lab = pd.DataFrame({"Image": ["a", "b", "c", "d"], "Id": ["w1", "w2", "w3", "w4"]})
    sub = pd.DataFrame({"Image": ["a", "b", "c", "d"], "Id": ["w1 w9", "w9 w2 w8", "w7", "w8 w9 w4 w1 w2"]})
    result = score_rows(sub, lab, key="Image", task="classification", metric="map_at_k")
    assert result.score == pytest.approx((1 + 1 / 2 + 0 + 1 / 3) / 4)
    assert result.worst[0][0] == "c"


def test_regression_rmse_pairs_and_worst(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    true = rng.normal(10, 3, 30)
    pred = true + rng.normal(0, 1, 30)
    lab = pd.DataFrame({"id": range(30), "distance": true}).astype(str)
    sub = pd.DataFrame({"id": range(30), "distance": pred}).astype(str)
    result = score_rows(sub, lab, key="id", task="regression")
    assert result.metric == "rmse" and not result.greater_is_better
    assert result.score == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)))
    assert np.allclose(np.array(result.pairs), np.stack([true, pred], axis=1))
    assert result.worst[0][0] == str(int(np.abs(true - pred).argmax()))
    mae = score_rows(sub, lab, key="id", task="regression", metric="mae")
    assert mae.score == pytest.approx(skm.mean_absolute_error(true, pred))


def test_figures_are_pngs_and_the_section_embeds_them(tmp_path: Path) -> None:
    submission, labels, _, _ = _digits(tmp_path)
    result = score_rows(submission, labels, key="ImageId", task="classification").to_dict()
    png = confusion_png(result["classes"], result["confusion"])
    assert png is not None and png.startswith(b"\x89PNG")
    assert scatter_png([(1.0, 1.2), (2.0, 1.8)]) is not None
    assert scatter_png([]) is None and confusion_png([], []) is None
    section = row_score_section(result)
    assert "accuracy" in section and 'alt="confusion matrix"' in section and "most wrong" in section
    assert row_score_section(None) == ""


@pytest.mark.parametrize(
    ("submission", "labels", "kwargs", "words"),
    [
        ({"ImageId": [1], "Label": [2]}, {"ImageId": [1, 2], "Label": [2, 3]}, {}, "1 labelled key.*first '2'"),
        ({"Id": [1], "Label": [2]}, {"ImageId": [1], "Label": [2]}, {}, "no key column 'ImageId'"),
        ({"ImageId": [1, 1], "Label": [2, 2]}, {"ImageId": [1], "Label": [2]}, {}, "'1' appears more than once"),
        ({"ImageId": [1], "Label": ["x"]}, {"ImageId": [1], "Label": [2]}, {"task": "ordinal"}, "'x' is not an int"),
        ({"ImageId": [1], "Label": [2]}, {"ImageId": [1], "Label": [2]}, {"metric": "f2"}, "not registered"),
        ({"ImageId": [1], "a": [0.5]}, {"ImageId": [1], "Label": ["b"]}, {"metric": "log_loss"}, "no probability"),
    ],
)
def test_bad_files_are_one_line_errors(
    submission: dict[str, list[object]], labels: dict[str, list[object]], kwargs: dict[str, str], words: str
) -> None:
    args = {"task": "classification", **kwargs}
    with pytest.raises(ScoringError, match=words):
        score_rows(pd.DataFrame(submission).astype(str), pd.DataFrame(labels).astype(str), key="ImageId", **args)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScoringError, match=r"missing\.csv: cannot read the submission"):
        score_rows(tmp_path / "missing.csv", tmp_path / "labels.csv", key="ImageId", task="classification")
