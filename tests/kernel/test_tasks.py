"""The image-level tasks end to end through `kernel_src.run.run`: classification (single and
multi-label), regression and ordinal, every row form, aggregation over a key's images, NaN and the
fallback, the head-size check and the sample's header check.

The models are `tests.tiny.make_pixel_head`: their outputs are the red pixels of the image's first
row, so each test draws the logits it wants and computes the expected rows here, independently
of kernel_src (numpy softmax/sigmoid, its own flips, its own formatting of the numbers)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kernel_src.errors import ModelError, SpecError, SubmissionFormatError
from kernel_src.models import check_output
from kernel_src.run import run
from kernel_src.spec import InferenceSpec
from tests.tiny import make_pixel_head

HEIGHT, WIDTH = 4, 16


def draw(folder: Path, name: str, row: Sequence[int], *, nan: bool = False, fail: bool = False) -> str:
    """A 4x16 PNG (whatever its file name) whose red first row starts with `row` (the rest 128)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    rgb[0, : len(row), 0] = row
    if nan or fail:
        rgb[1, 0, 0] = 255 if nan else 254
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    (folder / name).write_bytes(buf.tobytes())
    return name


def red_row(values: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The whole red first row as the model sees it (the drawn values, then 128)."""
    row = np.full(WIDTH, 128.0)
    row[: len(values)] = values
    return row


def sample(path: Path, header: Sequence[str], keys: Sequence[str]) -> Path:
    lines = [",".join(header)] + [",".join([k] + ["0"] * (len(header) - 1)) for k in keys]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def spec_of(task: dict[str, Any], rows: dict[str, Any], models: dict[str, list[Any]], **extra: Any) -> InferenceSpec:
    data = {
        "image_height": HEIGHT,
        "image_width": WIDTH,
        "device": "cpu",
        "batch_size": 2,
        "loader_workers": 0,
        "images_per_call": 8,
        "task": task,
        "rows": rows,
        **{table: [m.__dict__ for m in specs] for table, specs in models.items()},
        **extra,
    }
    return InferenceSpec.from_dict(data)


def go(tmp_path: Path, spec: InferenceSpec, sample_file: Path) -> tuple[list[list[str]], dict[str, Any], str]:
    result = run(
        spec,
        bundle_dir=tmp_path / "models",
        test_dir=tmp_path / "test",
        sample_submission=sample_file,
        out_dir=tmp_path / "out",
        progress=False,
    )
    text = result.submission_path.read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    return rows, json.loads(result.profile_path.read_text(encoding="utf-8")), text


def softmax(z: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    e = np.exp(z - z.max())
    return e / e.sum()


def number(v: float) -> str:
    return f"{v:.6g}"


def test_digit_recognizer_preset_writes_1_based_image_ids_and_labels(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "cnn", 10, tta=("identity",))
    labels = [3, 7, 0, 9, 5]
    for n, label in enumerate(labels):  # the loader's ids of row-numbered images: "0", "1", ...
        draw(tmp_path / "test", str(n), [128 + (32 if k == label else 0) for k in range(10)])
    spec = spec_of({"name": "classification"}, {"preset": "digit-recognizer"}, {"classifiers": [model]}, num_classes=10)
    keys = [str(n + 1) for n in range(len(labels))]
    _rows, profile, text = go(tmp_path, spec, sample(tmp_path / "sample_submission.csv", ["ImageId", "Label"], keys))
    assert text == "ImageId,Label\n1,3\n2,7\n3,0\n4,9\n5,5\n"  # golden, byte for byte
    assert profile["task"]["fallback_rows"] == 0 and profile["task"]["rows"] == 5
    assert profile["images_predicted"] == 5 and "classifier:cnn" in profile["stages"]


def test_probabilities_merge_views_and_weighted_models(tmp_path: Path) -> None:
    a = make_pixel_head(tmp_path / "models", "a", 3, tta=("identity", "hflip"), weight=3.0)
    b = make_pixel_head(tmp_path / "models", "b", 3, divisor=8.0, tta=("identity",), tta_merge="logit_mean")
    drawn = {"x.png": [160, 128, 96], "y.png": [128, 200, 140], "z.png": [100, 100, 130]}
    for name, values in drawn.items():
        draw(tmp_path / "test", name, values)
    spec = spec_of(
        {"name": "classification"},
        {"key_column": "image", "form": "probabilities", "classes": ["cat", "dog", "owl"]},
        {"classifiers": [a, b]},
        num_classes=3,
    )
    rows, _, _text = go(tmp_path, spec, sample(tmp_path / "s.csv", ["image", "owl", "cat", "dog"], list(drawn)))
    assert rows[0] == ["image", "owl", "cat", "dog"]  # the sample's column order
    for row, (name, values) in zip(rows[1:], drawn.items(), strict=True):
        full = red_row(values)
        views = [softmax((full[:3] - 128) / 16), softmax((full[::-1][:3] - 128) / 16)]  # identity, hflip
        expected = (np.mean(views, axis=0) * 3.0 + softmax((full[:3] - 128) / 8)) / 4.0
        assert row[0] == name
        got = {c: float(v) for c, v in zip(rows[0][1:], row[1:], strict=True)}
        assert [got["cat"], got["dog"], got["owl"]] == pytest.approx(expected.tolist(), abs=1e-6)
        assert row[1:] == [number(expected[2]), number(expected[0]), number(expected[1])]


def test_top_k_and_thresholds_rows_for_multi_label(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "m", 4)
    drawn = {"p": [200, 100, 150, 129], "q": [50, 60, 70, 80]}
    for name, values in drawn.items():
        draw(tmp_path / "test", name, values)
    models = {"classifiers": [model]}
    sigmoid = {n: 1 / (1 + np.exp(-(np.asarray(v, float) - 128) / 16)) for n, v in drawn.items()}
    rows_spec = {"form": "thresholds", "thresholds": [0.5, 0.9, 0.5, 0.5], "empty": "none"}
    spec = spec_of({"name": "classification", "labels": "multi"}, rows_spec, models, num_classes=4)
    rows, _, _ = go(tmp_path, spec, sample(tmp_path / "s.csv", ["id", "label"], list(drawn)))
    for row in rows[1:]:
        probs, need = sigmoid[row[0]], np.asarray([0.5, 0.9, 0.5, 0.5])
        want = " ".join(str(k) for k in range(4) if probs[k] >= need[k]) or "none"
        assert row[1] == want
    assert rows[1:] == [["p", "0 2 3"], ["q", "none"]]
    spec = spec_of({"name": "classification"}, {"form": "top_k", "top_k": 2, "classes": ["a", "b", "c", "d"]}, models,
                   num_classes=4)  # fmt: skip
    rows, _, _ = go(tmp_path, spec, sample(tmp_path / "s.csv", ["id", "label"], list(drawn)))
    for row in rows[1:]:
        order = np.argsort(-np.asarray(drawn[row[0]], float), kind="stable")[:2]
        assert row[1].split(" ") == ["abcd"[i] for i in order]


def test_regression_values_in_target_units_aggregated_per_key(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "r", 2, tta=("identity",))
    drawn = {"i1.png": [144, 96], "i2.png": [176, 128], "i3.png": [128, 255], "i4.png": [64, 130]}
    for name, values in drawn.items():
        draw(tmp_path / "test", name, values)
    groups = {"i1.png": "p1_L", "i2.png": "p1_L", "i3.png": "p2_R", "i4.png": "p2_R"}
    (tmp_path / "groups.csv").write_text(
        "image_id,key\n" + "".join(f"{i},{k}\n" for i, k in groups.items()), encoding="utf-8"
    )
    keys = ["p2_R", "p1_L", "p3_L"]  # p3_L has no image: it takes the fallback
    for aggregate in ("mean", "max"):
        spec = spec_of(
            {"name": "regression", "values": 2, "scale": [10.0, 1.0], "offset": [5.0, 0.0], "clip": [-1.0, 50.0]},
            {"form": "values", "value_columns": ["dist", "speed"], "groups": "groups.csv", "aggregate": aggregate},
            {"regressors": [model]},
        )
        rows, profile, _ = go(tmp_path, spec, sample(tmp_path / "s.csv", ["id", "dist", "speed"], keys))
        values = {
            i: np.clip((np.asarray(v, float) - 128) / 16 * [10.0, 1.0] + [5.0, 0.0], -1, 50) for i, v in drawn.items()
        }
        for row in rows[1:3]:
            members = np.asarray([values[i] for i, k in groups.items() if k == row[0]])
            merged = members.mean(axis=0) if aggregate == "mean" else members.max(axis=0)
            assert row[1:] == [number(merged[0]), number(merged[1])]
        assert rows[3] == ["p3_L", number(24.5), number(24.5)]  # the clip range's middle
        assert profile["task"]["fallback_rows"] == 1 and profile["task"]["fallback_examples"] == ["p3_L"]
    assert rows[1:3] == [["p2_R", "5", "7.9375"], ["p1_L", "35", "0"]]  # golden (max)


def test_ordinal_grades_at_the_cut_points(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "o", 1, tta=("identity",))
    drawn = {"a": 128, "b": 140, "c": 152, "d": 200, "e": 20}  # values 0, 0.75, 1.5, 4.5, -6.75
    for name, value in drawn.items():
        draw(tmp_path / "test", name, [value])
    spec = spec_of({"name": "ordinal", "cuts": [0.5, 1.5, 2.5]}, {"form": "label", "classes": ["A", "B", "C", "D"]},
                   {"regressors": [model]}, num_classes=4)  # fmt: skip
    _rows, _, text = go(tmp_path, spec, sample(tmp_path / "s.csv", ["id", "label"], list(drawn)))
    assert text == "id,label\na,A\nb,B\nc,C\nd,D\ne,A\n"


def test_nan_output_is_covered_by_the_other_model_then_falls_back(tmp_path: Path) -> None:
    nanny = make_pixel_head(tmp_path / "models", "nanny", 2, nan=True, tta=("identity",))
    steady = make_pixel_head(tmp_path / "models", "steady", 2, divisor=8.0, tta=("identity",))
    draw(tmp_path / "test", "ok.png", [160, 128])
    draw(tmp_path / "test", "bad.png", [160, 128], nan=True)
    keys = ["ok.png", "bad.png"]
    both = spec_of({"name": "classification"}, {"form": "probabilities"}, {"classifiers": [nanny, steady]},
                   num_classes=2)  # fmt: skip
    rows, profile, _ = go(tmp_path, both, sample(tmp_path / "s.csv", ["id", "0", "1"], keys))
    assert [float(v) for v in rows[2][1:]] == pytest.approx(softmax(np.asarray([32.0, 0.0]) / 8).tolist(), abs=1e-6)
    assert profile["nonfinite_outputs"]["models"] == {"nanny": 1} and profile["task"]["models_left_out"] == 1
    alone = spec_of({"name": "classification", "fallback": [0.25, 0.75]}, {"form": "probabilities"},
                    {"classifiers": [nanny]}, num_classes=2)  # fmt: skip
    rows, profile, _ = go(tmp_path, alone, sample(tmp_path / "s.csv", ["id", "0", "1"], keys))
    assert rows[2] == ["bad.png", "0.25", "0.75"]
    assert profile["task"]["fallback_rows"] == 1 and profile["problems"]["nonfinite"] == ["bad.png"]


def test_a_missing_image_falls_back_and_the_submission_is_complete(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "m", 3)
    draw(tmp_path / "test", "here.png", [200, 128, 128])
    spec = spec_of({"name": "classification"}, {}, {"classifiers": [model]}, num_classes=3)
    rows, profile, _ = go(tmp_path, spec, sample(tmp_path / "s.csv", ["id", "label"], ["here.png", "gone.png"]))
    assert rows == [["id", "label"], ["here.png", "0"], ["gone.png", "0"]]  # uniform fallback: the first class
    assert profile["counts"]["missing"] == 1 and profile["task"]["fallback_rows"] == 1


def test_a_sample_whose_header_fits_no_setting_names_the_setting(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "cnn", 10)
    draw(tmp_path / "test", "0", [128] * 10)
    spec = spec_of({"name": "classification"}, {"preset": "digit-recognizer"}, {"classifiers": [model]}, num_classes=10)
    with pytest.raises(SubmissionFormatError, match=r"missing \['Label'\].*submission\.label_column \('Label'\)"):
        go(tmp_path, spec, sample(tmp_path / "s.csv", ["ImageId", "Category"], ["1"]))
    with pytest.raises(SubmissionFormatError, match=r"'x' is not a row number from 1.*submission.row_start"):
        go(tmp_path, spec, sample(tmp_path / "s.csv", ["ImageId", "Label"], ["x"]))


def test_a_head_of_the_wrong_size_is_refused_naming_model_head_and_classes(tmp_path: Path) -> None:
    model = make_pixel_head(tmp_path / "models", "cnn9", 9)
    draw(tmp_path / "test", "0", [128] * 10)
    spec = spec_of({"name": "classification"}, {"preset": "digit-recognizer"}, {"classifiers": [model]}, num_classes=10)
    with pytest.raises(ModelError, match=r"model 'cnn9': its head has 9 outputs but the task has 10 classes"):
        go(tmp_path, spec, sample(tmp_path / "s.csv", ["ImageId", "Label"], ["1"]))
    import torch

    with pytest.raises(ModelError, match=r"model 'r': its head has 3 outputs but the task has 2 values"):
        check_output("r", "regressor", torch.zeros(1, 3), 1, 2)


@pytest.mark.parametrize(
    ("task", "rows", "tables", "key"),
    [
        ({"name": "regression", "cuts": [1.0]}, {}, "regressors", "task.cuts"),
        ({"name": "regression"}, {"form": "label"}, "regressors", "submission.form"),
        ({"name": "classification"}, {"form": "top_k", "top_k": 9}, "classifiers", "submission.top_k"),
        ({"name": "classification"}, {"preset": "digit-recognizer", "label_column": "y"}, "classifiers",
         "submission.label_column"),
        ({"name": "ordinal", "cuts": [2.0, 1.0, 3.0]}, {}, "regressors", "task.cuts"),
        ({"name": "nope"}, {}, "classifiers", "task.name"),
    ],
)  # fmt: skip
def test_bad_task_and_row_settings_name_the_key(
    tmp_path: Path, task: dict[str, Any], rows: dict[str, Any], tables: str, key: str
) -> None:
    model = make_pixel_head(tmp_path, "m", 4)
    with pytest.raises(SpecError) as caught:
        spec_of(task, rows, {tables: [model]}, num_classes=4)
    assert caught.value.key == key


def test_the_budget_guard_steps_down_then_leaves_the_rest_to_the_fallback(tmp_path: Path) -> None:
    a = make_pixel_head(tmp_path / "models", "a", 3, tta=("identity", "hflip"))
    b = make_pixel_head(tmp_path / "models", "b", 3)
    names = [draw(tmp_path / "test", f"{n:02d}.png", [200, 128, 128]) for n in range(12)]
    spec = spec_of({"name": "classification"}, {"form": "probabilities"}, {"classifiers": [a, b]},
                   num_classes=3, batch_size=1, time_budget_s=1.0)  # fmt: skip
    result = run(spec, bundle_dir=tmp_path / "models", test_dir=tmp_path / "test", out_dir=tmp_path / "out",
                 sample_submission=sample(tmp_path / "s.csv", ["id", "0", "1", "2"], names),
                 started_at=time.time() - 10.0, progress=False)  # fmt: skip: the budget is spent already
    rows = list(csv.reader(result.submission_path.read_text(encoding="utf-8").splitlines()))
    steps = [s["action"] for s in result.profile["guard"]["steps"]]
    assert steps[-1] == "empty_rest" and {"drop_tta", "drop_model"} <= set(steps)
    left = result.profile["guard"]["images_left_empty"]
    assert left > 0 and result.profile["task"]["fallback_rows"] == left
    assert [r[0] for r in rows[1:]] == names  # complete: every key, the sample's order
    assert rows[-1][1:] == [number(1 / 3)] * 3  # the uniform fallback


def test_a_model_that_raises_is_dropped_and_the_other_carries_on(tmp_path: Path) -> None:
    frail = make_pixel_head(tmp_path / "models", "frail", 2, fail=True)
    sturdy = make_pixel_head(tmp_path / "models", "sturdy", 2, divisor=8.0)
    names = [draw(tmp_path / "test", "a.png", [128, 160]), draw(tmp_path / "test", "b.png", [160, 128], fail=True),
             draw(tmp_path / "test", "c.png", [128, 160])]  # fmt: skip
    spec = spec_of({"name": "classification"}, {"form": "label"}, {"classifiers": [frail, sturdy]}, num_classes=2,
                   batch_size=1)  # fmt: skip
    _rows, profile, text = go(tmp_path, spec, sample(tmp_path / "s.csv", ["id", "label"], names))
    assert text == "id,label\na.png,1\nb.png,0\nc.png,1\n"
    (failure,) = profile["problems"]["model_failures"]
    assert failure["model"] == "frail" and failure["after_images"] == 1 and "on purpose" in failure["error"]
    assert profile["task"]["fallback_rows"] == 0


def test_every_registered_task_and_row_form_has_its_end_to_end_test_here() -> None:
    # a new entry of kernel_src.tasks.TASKS or kernel_src.rows.ROW_FORMS needs its run above
    from kernel_src.rows import ROW_FORMS, ROW_PRESETS
    from kernel_src.tasks import TASKS

    assert set(TASKS) == {"segmentation", "classification", "regression", "ordinal"}
    assert set(ROW_FORMS) == {"label", "probabilities", "top_k", "thresholds", "values"}
    assert set(ROW_PRESETS) == {"digit-recognizer"}
    assert {f for t in TASKS.values() for f in t.forms} == set(ROW_FORMS)


@pytest.mark.parametrize("mode", ["mean", "gmean", "max", "logit_mean"])
def test_softmax_and_raw_value_merges_match_numpy(mode: str) -> None:
    import torch

    from kernel_src.tta import merge

    rng = np.random.default_rng(3)
    logits = [rng.normal(size=(5, 4)) for _ in range(3)]
    views = ["identity", "hflip", "vflip"]  # a [N, K] output has no frame: every view is as it is
    p = np.stack([np.apply_along_axis(softmax, 1, z) for z in logits])
    expected = {
        "mean": p.mean(0),
        "max": p.max(0),
        "gmean": np.exp(np.log(p).mean(0)) / np.exp(np.log(p).mean(0)).sum(1, keepdims=True),
        "logit_mean": np.apply_along_axis(softmax, 1, np.mean(logits, axis=0)),
    }[mode]
    outs = [torch.tensor(z, dtype=torch.float32) for z in logits]
    got = merge(outs, views, mode, activation="softmax").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    probs = [torch.tensor(x, dtype=torch.float32) for x in p]  # tune's cache holds probabilities
    np.testing.assert_allclose(merge(probs, views, mode, activation="softmax", probabilities=True), expected, atol=1e-6)
    if mode in ("mean", "max"):
        raw = merge(outs, views, mode, activation="identity").numpy()
        np.testing.assert_allclose(raw, np.mean(logits, 0) if mode == "mean" else np.max(logits, 0), atol=1e-6)
    else:
        with pytest.raises(ValueError, match=f"TTA merge '{mode}' does not apply to 'identity' outputs"):
            merge(outs, views, mode, activation="identity")
