"""Digit-Recognizer-shaped synthetic data: digits drawn by OpenCV, written as Kaggle's CSV files.

Each image is a 28 x 28 grey digit, white on black as in MNIST: one of OpenCV's Hershey fonts
(`cv2.putText`), a random scale, stroke thickness, rotation (up to `MAX_ROTATION` degrees either
way), shift and slant, drawn at 4 x the size and reduced with area averaging (soft edges like
MNIST's anti-aliasing), then Gaussian pixel noise and a random contrast. The ten classes are
equally likely.

Files written under `out_dir` (Kaggle's Digit Recognizer layout):
- `train.csv`: `label,pixel0,...,pixel783`, one row per image, pixel values 0..255 in row-major
  order (`pixel{28 * row + col}`);
- `test.csv`: `pixel0,...,pixel783`, the unlabelled split;
- `sample_submission.csv`: `ImageId,Label` with 1-based ImageIds in test.csv's order, Label 0;
- `holdout/test.csv`, `holdout/sample_submission.csv` as above, and `holdout/labels.csv`
  (`ImageId,Label`, the true digits): the labelled twin the dry-run scores.

The same seed and sizes give the same bytes: each image has its own random stream seeded from
the split's seed and the image's index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bundler.errors import DemoError

SIZE = 28
PIXELS = SIZE * SIZE
SCALE_UP = 4  # drawn at 112 x 112, reduced to 28 x 28
MAX_ROTATION = 15.0
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
)

Grey = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class DigitSplits:
    """Where the generated competition lives."""

    root: Path
    train_csv: Path
    test_csv: Path
    sample_submission: Path
    holdout_test_csv: Path
    holdout_sample_submission: Path
    holdout_labels: Path


def draw_digit(digit: int, rng: np.random.Generator) -> Grey:
    """One 28 x 28 uint8 image of `digit` (0..9), white on black."""
    if not 0 <= digit <= 9:
        raise DemoError(f"digit {digit} is not 0..9")
    big = SIZE * SCALE_UP
    canvas = np.zeros((big, big), dtype=np.uint8)
    font = FONTS[int(rng.integers(len(FONTS)))]
    thickness = int(rng.integers(2, 4)) * SCALE_UP
    (w, h), _ = cv2.getTextSize(str(digit), font, 1.0, thickness)
    # the digit's height fills 55-80 % of the image, as MNIST's 20-pixel box in 28
    scale = rng.uniform(0.55, 0.8) * big / max(h, 1)
    (w, h), _ = cv2.getTextSize(str(digit), font, scale, thickness)
    origin = ((big - w) // 2, (big + h) // 2)
    cv2.putText(canvas, str(digit), origin, font, scale, 255, thickness, cv2.LINE_AA)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    shear = rng.uniform(-0.2, 0.2)
    shift = rng.uniform(-0.08, 0.08, size=2) * big
    matrix = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    matrix[0, 1] += shear  # slant, as handwriting leans
    matrix[0, 2] += shift[0] - shear * big / 2
    matrix[1, 2] += shift[1]
    warped = cv2.warpAffine(canvas, matrix, (big, big), flags=cv2.INTER_LINEAR, borderValue=0)
    small = cv2.resize(warped, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small *= rng.uniform(0.7, 1.0)
    small += rng.normal(0.0, rng.uniform(0.0, 20.0), size=small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def make_digits(n: int, seed: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """`n` images [n, 28, 28] and their digits, the same for the same `seed`."""
    if n < 1:
        raise DemoError(f"{n} digit images asked for; at least 1")
    labels = np.random.default_rng(seed).integers(0, 10, n)
    images = np.stack([draw_digit(int(d), np.random.default_rng([seed, i])) for i, d in enumerate(labels)])
    return images, labels.astype(np.int64)


def _write_rows(path: Path, header: list[str], rows: npt.NDArray[np.int64]) -> None:
    """Integers as CSV (atomically: a half-written file is never left under the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        f.write(",".join(header) + "\n")
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    tmp.replace(path)


PIXEL_COLUMNS = [f"pixel{i}" for i in range(PIXELS)]


def write_train(path: Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]) -> None:
    """Kaggle's train.csv: `label,pixel0..pixel783`."""
    rows = np.concatenate([labels[:, None], images.reshape(len(images), -1).astype(np.int64)], axis=1)
    _write_rows(path, ["label", *PIXEL_COLUMNS], rows)


def write_test(folder: Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64] | None = None) -> None:
    """Kaggle's test.csv and sample_submission.csv in `folder` (and labels.csv when `labels` given)."""
    _write_rows(folder / "test.csv", PIXEL_COLUMNS, images.reshape(len(images), -1).astype(np.int64))
    ids = np.arange(1, len(images) + 1, dtype=np.int64)
    _write_rows(folder / "sample_submission.csv", ["ImageId", "Label"], np.stack([ids, np.zeros_like(ids)], axis=1))
    if labels is not None:
        _write_rows(folder / "labels.csv", ["ImageId", "Label"], np.stack([ids, labels], axis=1))


def make_competition(out_dir: Path, *, n_train: int, n_test: int, n_holdout: int, seed: int) -> DigitSplits:
    """The three splits under `out_dir` (see the module's docstring); each split has its own seed."""
    train_images, train_labels = make_digits(n_train, seed * 3 + 1)
    write_train(out_dir / "train.csv", train_images, train_labels)
    test_images, _ = make_digits(n_test, seed * 3 + 2)
    write_test(out_dir, test_images)
    holdout_images, holdout_labels = make_digits(n_holdout, seed * 3 + 3)
    write_test(out_dir / "holdout", holdout_images, holdout_labels)
    return DigitSplits(
        root=out_dir,
        train_csv=out_dir / "train.csv",
        test_csv=out_dir / "test.csv",
        sample_submission=out_dir / "sample_submission.csv",
        holdout_test_csv=out_dir / "holdout" / "test.csv",
        holdout_sample_submission=out_dir / "holdout" / "sample_submission.csv",
        holdout_labels=out_dir / "holdout" / "labels.csv",
    )


def read_pixel_csv(path: Path, *, labelled: bool) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64] | None]:
    """Images [N, 28, 28] (and labels) from a Digit Recognizer CSV this module wrote, for training
    and checking the demo (the kernel reads CSV pixel rows with its own reader)."""
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DemoError(f"{path}: not a pixel CSV ({type(e).__name__}); delete it to regenerate") from None
    width = PIXELS + (1 if labelled else 0)
    if table.shape[1] != width:
        raise DemoError(f"{path}: rows of {table.shape[1]} columns, expected {width}; delete it to regenerate")
    pixels = table[:, 1:] if labelled else table
    images = pixels.reshape(-1, SIZE, SIZE).clip(0, 255).astype(np.uint8)
    return images, (table[:, 0] if labelled else None)
