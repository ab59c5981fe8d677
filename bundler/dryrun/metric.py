"""The Severstal metric: mean Dice over every image x class pair, empty on empty scoring 1.

Dice is computed from the RLE intervals directly (no mask is decoded): the intersection of two
sorted, non-overlapping run lists comes from prefix sums and `searchsorted`. Both sides must use
the same pixel `order`; the order and `shape` are used to validate every RLE's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from kernel_src.rle import parse
from kernel_src.spec import RLE_ORDERS
from kernel_src.submission import mask_rows, masks_by_image, read_mask_rows

Intervals = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class MetricResult:
    """`mean` Dice over all `pairs` (images x classes), and the mean per class."""

    mean: float
    per_class: tuple[float, ...]
    pairs: int


def _source(data: Path | pd.DataFrame) -> str:
    return "DataFrame" if isinstance(data, pd.DataFrame) else str(data)


def _pairs(data: Path | pd.DataFrame, num_classes: int, labels: bool) -> tuple[dict[tuple[str, int], str], list[str]]:
    """{(image, class): rle} for non-empty RLEs, and every image in first-appearance order."""
    if isinstance(data, pd.DataFrame):
        rows = mask_rows(data.astype(str).where(data.notna(), ""), _source(data), num_classes, labels=labels)
    else:
        rows = read_mask_rows(Path(data), num_classes, labels=labels)
    masks = masks_by_image(rows, num_classes, _source(data))
    found = {(image, c): rle for image, rles in masks.items() for c, rle in enumerate(rles, 1) if rle.strip()}
    return found, list(masks)


def _covered_before(
    starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64], x: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """How many pixels of the runs [starts, ends) lie below each position in `x`."""
    cumulative = np.concatenate(([0], np.cumsum(ends - starts)))
    k = np.searchsorted(starts, x, side="left")  # runs that start before x
    covered = cumulative[k]
    has_run = k > 0
    overshoot = np.zeros_like(x)
    overshoot[has_run] = np.maximum(ends[k[has_run] - 1] - x[has_run], 0)
    result: npt.NDArray[np.int64] = covered - overshoot
    return result


def dice_of_intervals(a: Intervals, b: Intervals) -> float:
    """Dice of two run lists (sorted, non-overlapping, [start, end)); 1.0 when both are empty."""
    size_a = int((a[1] - a[0]).sum())
    size_b = int((b[1] - b[0]).sum())
    if size_a == 0 and size_b == 0:
        return 1.0
    if size_a == 0 or size_b == 0:
        return 0.0
    inter = int((_covered_before(*a, b[1]) - _covered_before(*a, b[0])).sum())
    return 2.0 * inter / (size_a + size_b)


def dice_score(
    submission: Path | pd.DataFrame,
    labels: Path | pd.DataFrame,
    *,
    num_classes: int,
    shape: tuple[int, int],
    order: str = "F",
    image_ids: Sequence[str] | None = None,
) -> MetricResult:
    """Mean Dice of `submission` (wide or long) against `labels` (long train.csv, defect rows only).

    Scored pairs: every image of `image_ids` (default: the submission's images) x class 1..C; an
    image or pair the submission lacks counts as an empty prediction. Without `image_ids`, labels
    for an image the submission does not list raise ValueError (the submission is incomplete);
    with `image_ids`, labels outside it are left out (scoring a chosen subset).
    """
    if order not in RLE_ORDERS:
        raise ValueError(f"order {order!r} must be 'F' (column-major) or 'C' (row-major)")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    size = int(shape[0]) * int(shape[1])
    sub_source, lab_source = _source(submission), _source(labels)
    predicted, sub_images = _pairs(submission, num_classes, labels=False)
    truth, _ = _pairs(labels, num_classes, labels=True)

    scored = list(dict.fromkeys(image_ids)) if image_ids is not None else sub_images
    if not scored:
        raise ValueError(f"{sub_source}: no images to score (the submission is empty and image_ids is not given)")
    scored_set = set(scored)
    outside = sorted({image for image, _ in truth if image not in scored_set})
    if outside and image_ids is None:
        raise ValueError(
            f"{lab_source}: labels name {len(outside)} image(s) not in the submission {sub_source}, e.g. "
            f"{outside[:5]}; score the full test set, or pass image_ids= to score a subset"
        )

    def intervals(rle: str, source: str, image_id: str, class_id: int) -> Intervals:
        try:
            return parse(rle, size)
        except ValueError as error:
            raise ValueError(f"{source}: image {image_id!r} class {class_id}: {error}") from None

    empty: Intervals = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    per_class = np.zeros(num_classes, dtype=np.float64)
    for class_id in range(1, num_classes + 1):
        total = 0.0
        for image_id in scored:
            pred = predicted.get((image_id, class_id))
            true = truth.get((image_id, class_id))
            if pred is None and true is None:
                total += 1.0
                continue
            a = intervals(pred, sub_source, image_id, class_id) if pred is not None else empty
            b = intervals(true, lab_source, image_id, class_id) if true is not None else empty
            total += dice_of_intervals(a, b)
        per_class[class_id - 1] = total / len(scored)
    return MetricResult(
        mean=float(per_class.mean()),
        per_class=tuple(float(v) for v in per_class),
        pairs=len(scored) * num_classes,
    )
