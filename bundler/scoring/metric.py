"""The competition metric: mean Dice over every image x class pair (Severstal: empty on empty scores 1).

Dice is computed from the RLE intervals directly (no mask is decoded): the intersection of two
sorted, non-overlapping run lists comes from prefix sums and `searchsorted`. Both sides must use
the same pixel `order`; the order and `shape` are used to validate every RLE's range.

It follows the kernel's settings (`score_run` takes them from the InferenceSpec): both files are
read in the `[submission]` layout (a per-object layout's rows united per image x class), each
image's RLEs are checked against the size its masks are encoded at (`mask_shapes`: the fixed
`encode_size`, the fixed image size, or each test file's own size), and a pair empty on both
sides scores by `empty_pair`: "one" (Severstal, Clouds, SIIM-ACR), "zero", or "skip" (left out
of the mean; a class with no pair left scores 1). Only Dice is computed: Airbus (F2 over IoU
thresholds) and UW-Madison (Dice with a 3-D Hausdorff term) score differently on Kaggle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pandas as pd

from kernel_src.images import image_paths
from kernel_src.inputs import READERS
from kernel_src.layout import SubmissionSpec
from kernel_src.rle import parse
from kernel_src.spec import RLE_ORDERS, InferenceSpec
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


def _pairs(
    data: Path | pd.DataFrame, num_classes: int, labels: bool, submission: SubmissionSpec | None = None
) -> tuple[dict[tuple[str, int], str], list[str]]:
    """{(image, class): rle} for non-empty RLEs, and every image in first-appearance order."""
    if isinstance(data, pd.DataFrame):
        frame = data.astype(str).where(data.notna(), "")
        rows = mask_rows(frame, _source(data), num_classes, labels=labels, submission=submission)
    else:
        rows = read_mask_rows(Path(data), num_classes, labels=labels, submission=submission)
    merge = submission is not None and submission.per_object
    masks = masks_by_image(rows, num_classes, _source(data), merge=merge)
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


def dice(
    intersection: npt.ArrayLike, predicted: npt.ArrayLike, true: npt.ArrayLike, empty_pair: float = 1.0
) -> npt.NDArray[np.float64]:
    """Dice `2 I / (P + T)` from pixel counts (intersection, predicted area, true area), elementwise
    over arrays or for one pair; a pair empty on both sides scores `empty_pair`. The one Dice: the
    metric, its breakdown and tune's search and plans all score through it."""
    total = np.add(predicted, true)
    ratio = 2.0 * np.asarray(intersection) / np.maximum(total, 1)
    scores: npt.NDArray[np.float64] = np.where(total == 0, empty_pair, ratio)
    return scores


def dice_of_intervals(a: Intervals, b: Intervals) -> float:
    """Dice of two run lists (sorted, non-overlapping, [start, end)); 1.0 when both are empty."""
    size_a = int((a[1] - a[0]).sum())
    size_b = int((b[1] - b[0]).sum())
    inter = 0
    if size_a and size_b:
        inter = int((_covered_before(*a, b[1]) - _covered_before(*a, b[0])).sum())
    return float(dice(inter, size_a, size_b))


def dice_score(
    submission: Path | pd.DataFrame,
    labels: Path | pd.DataFrame,
    *,
    num_classes: int,
    shape: tuple[int, int] | Mapping[str, tuple[int, int]],
    order: str = "F",
    image_ids: Sequence[str] | None = None,
    submission_spec: SubmissionSpec | None = None,
) -> MetricResult:
    """Mean Dice of `submission` (wide or long) against `labels` (long train.csv, defect rows only;
    with a `submission_spec` whose layout is not "auto", both in that layout).

    Scored pairs: every image of `image_ids` (default: the submission's images) x class 1..C; an
    image or pair the submission lacks counts as an empty prediction. Without `image_ids`, labels
    for an image the submission does not list raise ValueError (the submission is incomplete);
    with `image_ids`, labels outside it are left out (scoring a chosen subset). `shape` is every
    image's mask size, or one per image id (an image not in it: RLEs checked for syntax only).
    """
    if order not in RLE_ORDERS:
        raise ValueError(f"order {order!r} must be 'F' (column-major) or 'C' (row-major)")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    sizes = {k: int(v[0]) * int(v[1]) for k, v in shape.items()} if isinstance(shape, Mapping) else None
    size = 0 if isinstance(shape, Mapping) else int(shape[0]) * int(shape[1])
    sub_source, lab_source = _source(submission), _source(labels)
    predicted, sub_images = _pairs(submission, num_classes, labels=False, submission=submission_spec)
    truth, _ = _pairs(labels, num_classes, labels=True, submission=submission_spec)
    rule = submission_spec.empty_pair if submission_spec is not None else "one"
    empty_score = {"one": 1.0, "zero": 0.0}.get(rule)  # None: "skip"

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
        pixels = size if sizes is None else sizes.get(image_id, 1 << 62)
        try:
            return parse(rle, pixels)
        except ValueError as error:
            raise ValueError(f"{source}: image {image_id!r} class {class_id}: {error}") from None

    empty: Intervals = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    per_class = np.zeros(num_classes, dtype=np.float64)
    counted = np.zeros(num_classes, dtype=np.int64)
    for class_id in range(1, num_classes + 1):
        total = 0.0
        for image_id in scored:
            pred = predicted.get((image_id, class_id))
            true = truth.get((image_id, class_id))
            a = intervals(pred, sub_source, image_id, class_id) if pred is not None else empty
            b = intervals(true, lab_source, image_id, class_id) if true is not None else empty
            if not a[0].size and not b[0].size:
                if empty_score is None:
                    continue
                total += empty_score
            else:
                total += dice_of_intervals(a, b)
            counted[class_id - 1] += 1
        per_class[class_id - 1] = total / counted[class_id - 1] if counted[class_id - 1] else 1.0
    pairs = int(counted.sum())
    if bool((counted == counted[0]).all()):
        mean = float(per_class.mean())  # every class scored on the same pairs (always, unless "skip")
    else:
        mean = float((per_class * counted).sum() / pairs) if pairs else 1.0
    return MetricResult(mean=mean, per_class=tuple(float(v) for v in per_class), pairs=pairs)


def mask_shapes(spec: InferenceSpec, test_dir: Path, image_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The (height, width) each image's masks are encoded at under `spec`: `encode_size`, else the
    fixed image size, else (`image_sizes = "own"`) each test file's own size (files OpenCV cannot
    read are left out: their RLEs are then checked for syntax only); for a file reader of `[input]`
    each image's size as the reader gives it."""
    if spec.encode_size is not None:
        return dict.fromkeys(image_ids, spec.encode_size)
    if spec.image_sizes != "own":
        return dict.fromkeys(image_ids, (spec.image_height, spec.image_width))
    shapes: dict[str, tuple[int, int]] = {}
    if READERS[spec.input.reader].file:  # arrays, CSV rows: `test_dir` is the folder the reader's path is in
        from kernel_src.readers import open_reader

        with open_reader(spec.input, Path(test_dir)) as reader:
            for image_id in image_ids:
                loaded = reader.load(image_id, None, None).image
                if loaded is not None:
                    shapes[image_id] = (int(loaded.shape[0]), int(loaded.shape[1]))
        return shapes
    for image_id, path in image_paths(Path(test_dir), image_ids, spec.submission.image_id).items():
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if image is not None:
            shapes[image_id] = (int(image.shape[0]), int(image.shape[1]))
    return shapes


def score_run(
    spec: InferenceSpec,
    submission: Path | pd.DataFrame,
    labels: Path | pd.DataFrame,
    *,
    test_dir: Path,
    image_ids: Sequence[str],
    subset: bool = True,
) -> MetricResult:
    """`dice_score` with every setting taken from `spec`: layout, RLE order, encode sizes, empty-pair
    rule. `image_ids` are the images scored (with `subset`, labels outside them are left out)."""
    return dice_score(
        submission,
        labels,
        num_classes=spec.num_classes,
        shape=mask_shapes(spec, test_dir, image_ids),
        order=spec.rle_order,
        image_ids=image_ids if subset else None,
        submission_spec=spec.submission,
    )
