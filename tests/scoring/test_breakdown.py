"""Where the points are lost, computed from a submission and its labels for the dry-run's report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundler.scoring.breakdown import loss_section, submission_breakdown
from kernel_src.rle import encode

H, W = 8, 10


def _rle(rows: slice, cols: slice) -> str:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[rows, cols] = 1
    return encode(mask, "F")


def test_a_submission_breakdown_names_each_kind_and_the_worst_images(tmp_path: Path) -> None:
    defect = _rle(slice(0, 4), slice(0, 4))
    half = _rle(slice(0, 2), slice(0, 4))
    sub = tmp_path / "submission.csv"
    sub.write_text(
        "ImageId_ClassId,EncodedPixels\n"
        f"clean.jpg_1,{defect}\nclean.jpg_2,\n"  # class 1: a false positive on a clean image
        f"dirty.jpg_1,\ndirty.jpg_2,{half}\n"  # class 1 missed; class 2 half of the defect
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(f"ImageId,ClassId,EncodedPixels\ndirty.jpg,1,{defect}\ndirty.jpg,2,{defect}\n")
    one, two = submission_breakdown(sub, labels, num_classes=2, shape=(H, W), image_ids=["clean.jpg", "dirty.jpg"])
    assert (one.false_positive, one.missed, one.partial, one.score) == (1, 1, 0, 0.0)
    assert [w[:2] for w in one.worst] == [("clean.jpg", "false positive"), ("dirty.jpg", "missed")]
    assert (two.false_positive, two.missed, two.partial) == (0, 0, 1)
    assert two.partial_loss == pytest.approx(1 - 2 * 8 / (8 + 16))
    assert "pixel threshold" in two.advice()
    html = loss_section([one.to_dict(), two.to_dict()])
    assert "Where the points are lost" in html and "clean.jpg (false positive, 1.00)" in html
    assert loss_section(None) == ""
