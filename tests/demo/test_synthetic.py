"""Synthetic Severstal-like data: files, labels that match the pixels, layouts, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from bundler.demo.synthetic import NUM_CLASSES, make_dataset, make_image
from bundler.errors import ConfigError
from bundler.scoring.metric import dice_score
from kernel_src.rle import decode, encode
from kernel_src.submission import read_masks, read_sample_submission

H, W = 64, 400  # a quarter of Severstal's size keeps the tests fast


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_of_the_files(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 10, seed=3, height=H, width=W, prefix="syn-")
    assert s.root == tmp_path and s.images_dir == tmp_path / "test_images"
    assert s.labels_csv == tmp_path / "labels.csv" and s.sample_submission == tmp_path / "sample_submission.csv"
    assert len(s.image_ids) == 10 and list(s.image_ids) == sorted(set(s.image_ids))
    assert all(re.fullmatch(r"syn-[0-9a-f]{8}\.jpg", i) for i in s.image_ids)
    assert sorted(p.name for p in s.images_dir.iterdir()) == list(s.image_ids)
    image = cv2.imread(str(s.images_dir / s.image_ids[0]), cv2.IMREAD_UNCHANGED)
    assert image is not None
    assert image.shape == (H, W, 3) and image.dtype == np.uint8


def test_clean_fraction_and_labels_form(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 20, seed=1, height=H, width=W, clean_fraction=0.25)
    labels = pd.read_csv(s.labels_csv, dtype=str, keep_default_na=False)
    assert list(labels.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert labels["ImageId"].nunique() == 15  # 20 - round(20 * 0.25) images have defects
    assert set(labels["ClassId"]) <= {"1", "2", "3", "4"}
    assert (labels["EncodedPixels"] != "").all()  # defect rows only
    assert set(labels["ImageId"]) <= set(s.image_ids)
    assert make_dataset(tmp_path / "all", 6, height=H, width=W, clean_fraction=1.0).labels_csv.read_text() == (
        "ImageId,ClassId,EncodedPixels\n"
    )


@pytest.mark.parametrize("class_index", range(NUM_CLASSES))
def test_each_defect_changes_exactly_its_mask(class_index: int) -> None:
    for seed in range(3):
        with_defect, masks = make_image(np.random.default_rng(seed), H, W, [class_index])
        clean, none = make_image(np.random.default_rng(seed), H, W, [])
        assert not none.any()
        mask = masks[class_index].astype(bool)
        assert mask.any() and masks.sum() == mask.sum()  # only this class is drawn
        diff = with_defect[:, :, 0].astype(np.int16) - clean[:, :, 0].astype(np.int16)
        assert (diff[~mask] == 0).all()  # nothing outside the mask
        assert np.abs(diff[mask]).mean() > 20  # clearly visible inside it


def thinness(mask: np.ndarray) -> float:
    """Share of mask pixels with a left or right neighbour outside the mask (1 for 1-2 px wide lines)."""
    padded = np.pad(mask, ((0, 0), (1, 1)))
    inner = padded[:, :-2] & padded[:, 2:]
    return float((mask & ~inner).sum() / mask.sum())


def test_defect_classes_look_different() -> None:
    stats: dict[int, list[tuple[float, float, float]]] = {c: [] for c in range(NUM_CLASSES)}
    for c in range(NUM_CLASSES):
        for seed in range(4):
            img, masks = make_image(np.random.default_rng(seed), 256, 1600, [c])
            clean, _ = make_image(np.random.default_rng(seed), 256, 1600, [])
            mask = masks[c].astype(bool)
            diff = img[:, :, 0].astype(np.float32) - clean[:, :, 0].astype(np.float32)
            stats[c].append((float(diff[mask].mean()), float(mask.sum()), thinness(mask)))
    mean = {c: np.mean(np.array(v), axis=0) for c, v in stats.items()}
    assert mean[0][0] < -20 and mean[3][0] < -20  # pits and blobs are dark
    assert mean[1][0] > 20 and mean[2][0] > 20  # scratches and patches are bright
    assert mean[3][1] > 5 * mean[0][1]  # blobs are far bigger than pit clusters
    assert mean[1][2] > 0.3 and mean[2][2] < 0.1 and mean[3][2] < 0.1  # scratches are thin lines


def test_labels_match_the_written_jpegs(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 8, seed=7, height=H, width=W, clean_fraction=0.0)
    labels = read_masks(s.labels_csv, NUM_CLASSES, labels=True)
    assert set(labels) == set(s.image_ids)
    for image_id, rles in labels.items():
        masks = s.masks(image_id)
        assert masks.shape == (NUM_CLASSES, H, W) and masks.dtype == np.uint8
        for c, rle in enumerate(rles):
            assert encode(masks[c]) == rle
            if rle:
                assert masks[c].any()
        # In the saved JPEG, class-4 (dark blob) pixels are much darker than the defect-free steel.
        if masks[3].any():
            read = cv2.imread(str(s.images_dir / image_id), cv2.IMREAD_GRAYSCALE)
            assert read is not None
            grey = read.astype(np.float32)
            assert grey[masks[3] == 1].mean() < 0.7 * grey[masks.sum(axis=0) == 0].mean()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", 6, seed=11, height=H, width=W)
    b = make_dataset(tmp_path / "b", 6, seed=11, height=H, width=W)
    c = make_dataset(tmp_path / "c", 6, seed=12, height=H, width=W)
    assert files(a.root) == files(b.root)
    assert a.image_ids == b.image_ids != c.image_ids
    assert files(a.root) != files(c.root)


def test_wide_sample_submission(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 3, height=H, width=W, layout="wide")
    lines = s.sample_submission.read_text().splitlines()
    assert lines[0] == "ImageId_ClassId,EncodedPixels"
    assert lines[1:5] == [f"{s.image_ids[0]}_{c}," for c in range(1, 5)]
    sample = read_sample_submission(s.sample_submission, NUM_CLASSES)
    assert sample.layout == "wide" and sample.image_ids == s.image_ids


def test_long_sample_submission(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 3, height=H, width=W, layout="long", image_dir_name="imgs")
    assert s.images_dir == tmp_path / "imgs"
    lines = s.sample_submission.read_text().splitlines()
    assert lines == ["ImageId,EncodedPixels,ClassId"] + [f"{i},1 1,0" for i in s.image_ids]
    sample = read_sample_submission(s.sample_submission, NUM_CLASSES)
    assert sample.layout == "long" and sample.image_ids == s.image_ids


def test_metric_on_the_synthetic_set(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 10, seed=2, height=H, width=W, clean_fraction=0.5)
    shape = (H, W)
    perfect = dice_score(s.labels_csv, s.labels_csv, num_classes=4, shape=shape, image_ids=s.image_ids)
    assert perfect.mean == 1.0
    labelled_pairs = len(pd.read_csv(s.labels_csv))
    empty = dice_score(s.sample_submission, s.labels_csv, num_classes=4, shape=shape)
    assert empty.mean == pytest.approx(1 - labelled_pairs / 40)


def test_masks_round_trip_through_decode(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 4, seed=5, height=H, width=W, clean_fraction=0.0)
    labels = pd.read_csv(s.labels_csv, dtype=str, keep_default_na=False)
    row = labels.iloc[0]
    mask = decode(row["EncodedPixels"], (H, W), "F")
    np.testing.assert_array_equal(s.masks(row["ImageId"])[int(row["ClassId"]) - 1], mask)
    with pytest.raises(KeyError, match="not an image"):
        s.masks("nope.jpg")


def test_stale_images_are_refused_unless_overwrite(tmp_path: Path) -> None:
    make_dataset(tmp_path, 3, seed=1, height=H, width=W)
    make_dataset(tmp_path, 3, seed=1, height=H, width=W)  # same set again: fine
    with pytest.raises(ConfigError, match="already holds 3 other image"):
        make_dataset(tmp_path, 3, seed=2, height=H, width=W)
    s = make_dataset(tmp_path, 3, seed=2, height=H, width=W, overwrite=True)
    assert sorted(p.name for p in s.images_dir.iterdir()) == list(s.image_ids)


def test_zero_images(tmp_path: Path) -> None:
    s = make_dataset(tmp_path, 0, height=H, width=W)
    assert s.image_ids == ()
    assert read_sample_submission(s.sample_submission, 4).image_ids == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": -1}, "n_images"),
        ({"height": 8}, "too small"),
        ({"clean_fraction": 1.5}, "clean_fraction"),
        ({"layout": "tall"}, "layout 'tall'"),
        ({"prefix": "a/b"}, "prefix"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"n_images": 2, "height": H, "width": W} | kwargs
    with pytest.raises(ConfigError, match=message):
        make_dataset(tmp_path, **args)  # type: ignore[arg-type]
