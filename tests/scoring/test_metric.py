"""The competition metric: mean Dice over every image x class pair, empty on empty = 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bundler.scoring import MetricResult, dice, dice_of_intervals, dice_score
from kernel_src.rle import encode, parse
from kernel_src.submission import SubmissionWriter, read_sample_submission

SHAPE = (4, 6)


def labels_frame(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])


def wide_frame(predictions: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(f"{i}_{c + 1}", rle) for i, rles in predictions.items() for c, rle in enumerate(rles)]
    return pd.DataFrame(rows, columns=["ImageId_ClassId", "EncodedPixels"])


LABELS = labels_frame([("a.jpg", 1, "1 4"), ("a.jpg", 3, "5 6"), ("b.jpg", 2, "10 3")])
PERFECT = {"a.jpg": ["1 4", "", "5 6", ""], "b.jpg": ["", "10 3", "", ""], "c.jpg": ["", "", "", ""]}


def mask_dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def test_perfect_submission_scores_one() -> None:
    result = dice_score(wide_frame(PERFECT), LABELS, num_classes=4, shape=SHAPE)
    assert result.mean == 1.0
    assert result.per_class == (1.0, 1.0, 1.0, 1.0)
    assert result.pairs == 12


def test_all_empty_submission_scores_the_fraction_of_empty_pairs() -> None:
    empty = {image: ["", "", "", ""] for image in PERFECT}
    result = dice_score(wide_frame(empty), LABELS, num_classes=4, shape=SHAPE)
    assert result.mean == pytest.approx(9 / 12)
    assert result.per_class == pytest.approx((2 / 3, 2 / 3, 2 / 3, 1.0))


def test_one_false_positive_on_a_clean_image_costs_that_pair_a_full_point() -> None:
    predictions = {k: list(v) for k, v in PERFECT.items()}
    predictions["c.jpg"][3] = "1 1"
    result = dice_score(wide_frame(predictions), LABELS, num_classes=4, shape=SHAPE)
    assert result.mean == pytest.approx(11 / 12)
    assert result.per_class == pytest.approx((1.0, 1.0, 1.0, 2 / 3))


def test_partial_overlap() -> None:
    predictions = {k: list(v) for k, v in PERFECT.items()}
    predictions["a.jpg"][0] = "3 4"  # pixels 3..6 against truth 1..4: 2 shared, dice 2*2/8
    result = dice_score(wide_frame(predictions), LABELS, num_classes=4, shape=SHAPE)
    assert result.per_class[0] == pytest.approx((0.5 + 1 + 1) / 3)


def test_both_layouts_and_files_score_the_same(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    LABELS.to_csv(labels, index=False)
    predictions = {k: list(v) for k, v in PERFECT.items()}
    predictions["b.jpg"][1] = "11 5"
    scores: list[MetricResult] = []
    for header in ("ImageId_ClassId,EncodedPixels", "ImageId,EncodedPixels,ClassId"):
        sample_path = tmp_path / "sample.csv"
        if header.startswith("ImageId_"):
            sample_path.write_text(header + "\n" + "".join(f"{i}_{c},\n" for i in PERFECT for c in range(1, 5)))
        else:
            sample_path.write_text(header + "\n" + "".join(f"{i},1 1,0\n" for i in PERFECT))
        out = tmp_path / f"submission-{len(scores)}.csv"
        with SubmissionWriter(out, read_sample_submission(sample_path, 4)) as writer:
            for image_id, rles in predictions.items():
                writer.add(image_id, rles)
        scores.append(dice_score(out, labels, num_classes=4, shape=SHAPE))
    assert scores[0] == scores[1]
    assert scores[0].per_class[1] == pytest.approx((1 + 2 * 2 / 8 + 1) / 3)


def test_nan_cells_from_a_default_pandas_read_are_empty() -> None:
    frame = wide_frame(PERFECT)
    frame.loc[frame["EncodedPixels"] == "", "EncodedPixels"] = np.nan
    assert dice_score(frame, LABELS, num_classes=4, shape=SHAPE).mean == 1.0


def test_labels_for_images_missing_from_the_submission_are_refused() -> None:
    partial = {"c.jpg": ["", "", "", ""]}
    with pytest.raises(ValueError, match=r"labels name 2 image\(s\) not in the submission.*'a\.jpg', 'b\.jpg'"):
        dice_score(wide_frame(partial), LABELS, num_classes=4, shape=SHAPE)


def test_image_ids_choose_the_scored_pairs() -> None:
    partial = {"a.jpg": ["1 4", "", "5 6", ""]}
    # b.jpg is chosen but missing from the submission: empty predictions, its class-2 truth is missed.
    result = dice_score(wide_frame(partial), LABELS, num_classes=4, shape=SHAPE, image_ids=["a.jpg", "b.jpg"])
    assert result.pairs == 8
    assert result.mean == pytest.approx(7 / 8)
    # Labels outside the chosen images are left out.
    only_a = dice_score(wide_frame(partial), LABELS, num_classes=4, shape=SHAPE, image_ids=["a.jpg"])
    assert only_a.mean == 1.0 and only_a.pairs == 4


def test_malformed_rle_names_the_pair() -> None:
    predictions = {k: list(v) for k, v in PERFECT.items()}
    predictions["b.jpg"][1] = "20 9"  # past the 24 pixels of a 4x6 mask
    with pytest.raises(ValueError, match=r"image 'b\.jpg' class 2: .*out of range"):
        dice_score(wide_frame(predictions), LABELS, num_classes=4, shape=SHAPE)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="labels must be in the long"):
        dice_score(wide_frame(PERFECT), wide_frame(PERFECT), num_classes=4, shape=SHAPE)
    with pytest.raises(ValueError, match=r"ClassId '7'; expected an integer in 1\.\.4"):
        dice_score(wide_frame(PERFECT), labels_frame([("a.jpg", 7, "1 1")]), num_classes=4, shape=SHAPE)
    with pytest.raises(ValueError, match=r"DataFrame line 2: image 'a\.jpg' has ClassId '1\.0'"):
        float_ids = pd.DataFrame([("a.jpg", 1.0, "1 1")], columns=LABELS.columns)
        dice_score(wide_frame(PERFECT), float_ids, num_classes=4, shape=SHAPE)
    with pytest.raises(ValueError, match="two non-empty rows"):
        dice_score(wide_frame(PERFECT), labels_frame([("a.jpg", 1, "1 1")] * 2), num_classes=4, shape=SHAPE)
    with pytest.raises(ValueError, match="no images to score"):
        dice_score(wide_frame({}), LABELS.iloc[:0], num_classes=4, shape=SHAPE)
    with pytest.raises(ValueError, match="order"):
        dice_score(wide_frame(PERFECT), LABELS, num_classes=4, shape=SHAPE, order="X")


mask_pairs = st.integers(1, 9).flatmap(
    lambda h: st.integers(1, 9).flatmap(
        lambda w: st.tuples(
            hnp.arrays(np.bool_, (h, w), elements=st.booleans()), hnp.arrays(np.bool_, (h, w), elements=st.booleans())
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(pair=mask_pairs, order=st.sampled_from(["F", "C"]))
def test_interval_dice_equals_mask_dice(pair: tuple[npt.NDArray[np.bool_], ...], order: str) -> None:
    a, b = pair
    size = a.size
    got = dice_of_intervals(parse(encode(a, order), size), parse(encode(b, order), size))
    assert got == pytest.approx(mask_dice(a, b))


def test_the_one_dice_from_pixel_counts_elementwise_with_the_empty_pair_rule() -> None:
    # intersection, predicted area, true area: partial, a miss, a false positive, empty on empty
    inter, pred, true = np.array([2, 0, 0, 0]), np.array([3, 0, 5, 0]), np.array([5, 4, 0, 0])
    assert dice(inter, pred, true).tolist() == [0.5, 0.0, 0.0, 1.0]
    assert dice(inter, pred, true, empty_pair=0.0).tolist() == [0.5, 0.0, 0.0, 0.0]
    assert float(dice(3, 3, 3)) == 1.0 and float(dice(0, 0, 0, empty_pair=0.25)) == 0.25


def test_severstal_sized_masks_against_decoded_dice() -> None:
    rng = np.random.default_rng(0)
    shape = (256, 1600)
    truth: list[tuple[str, int, str]] = []
    predictions: dict[str, list[str]] = {}
    pair_dice = []
    for i in range(6):
        image_id = f"{i:08x}.jpg"
        predictions[image_id] = []
        for c in range(1, 5):
            t = rng.random(shape) > 0.995 if rng.random() < 0.5 else np.zeros(shape, dtype=bool)
            p = t ^ (rng.random(shape) > 0.998)
            if t.any():
                truth.append((image_id, c, encode(t)))
            predictions[image_id].append(encode(p))
            pair_dice.append(mask_dice(p, t))
    result = dice_score(wide_frame(predictions), labels_frame(truth), num_classes=4, shape=shape)
    assert result.mean == pytest.approx(float(np.mean(pair_dice)))
    assert result.pairs == 24
