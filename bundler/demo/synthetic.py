"""Severstal-like synthetic data: steel-texture JPEGs, exact defect labels, a sample submission.

Each image is a grey steel texture (brushed horizontal streaks, a slow illumination gradient,
pixel noise) stored as 3 identical channels. About `clean_fraction` of the images are
defect-free; the others carry one to three of four defect classes, each with its own look:

1. clusters of small dark pits;
2. thin, near-vertical bright scratches;
3. large irregular patches with a bright, mottled texture;
4. big dark elongated blobs (rotated ellipses).

A defect changes the pixels exactly where its mask is, so `labels.csv` matches what is visible.

Files written under `out_dir`:

- `<image_dir_name>/<id>.jpg`, ids `"{prefix}{8 hex digits}.jpg"`, listed sorted;
- `labels.csv`: the long train.csv form `ImageId,ClassId,EncodedPixels`, defect rows only,
  column-major (Severstal) RLE of the exact mask drawn;
- `sample_submission.csv`: every image with placeholder predictions. Wide layout:
  `ImageId_ClassId,EncodedPixels` with rows `<id>_1` .. `<id>_4` and empty EncodedPixels. Long
  layout: Kaggle's re-cut form `ImageId,EncodedPixels,ClassId`, one row per image with the
  placeholder `1 1` and class `0` (the kernel only reads the ImageIds and the header from it).

The same arguments give the same bytes (per-image random streams are seeded from `seed` and the
image's index).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bundler.errors import ConfigError
from kernel_src import rle
from kernel_src.submission import LAYOUTS, read_masks

NUM_CLASSES = 4
CLASS_WEIGHTS = (0.22, 0.18, 0.38, 0.22)  # class 3 most common, as in Severstal
JPEG_QUALITY = 95
_REF_HEIGHT, _REF_WIDTH = 256, 1600  # defect sizes are given at Severstal's size and scaled

FloatImage = npt.NDArray[np.float32]
Mask = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class SyntheticSet:
    """Where a generated set lives, and its image ids (sorted, the sample submission's order)."""

    root: Path
    images_dir: Path
    labels_csv: Path
    sample_submission: Path
    image_ids: tuple[str, ...]
    height: int = _REF_HEIGHT
    width: int = _REF_WIDTH
    num_classes: int = NUM_CLASSES
    layout: str = "wide"
    _labels: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def masks(self, image_id: str) -> Mask:
        """The true masks [num_classes, height, width] (uint8 0/1) of one image, from labels.csv."""
        if not self._labels:
            self._labels.update(read_masks(self.labels_csv, self.num_classes, labels=True))
        if image_id not in self.image_ids:
            raise KeyError(f"{image_id!r} is not an image of the synthetic set at {self.root}")
        rles = self._labels.get(image_id, [""] * self.num_classes)
        return np.stack([rle.decode(r, (self.height, self.width), "F") for r in rles])


def _check_args(n_images: int, height: int, width: int, clean_fraction: float, layout: str, prefix: str) -> None:
    if n_images < 0:
        raise ConfigError(f"n_images must be 0 or more, got {n_images}")
    if height < 16 or width < 16:
        raise ConfigError(f"image size {height}x{width} is too small; height and width must be at least 16")
    if not 0.0 <= clean_fraction <= 1.0:
        raise ConfigError(f"clean_fraction must be in [0, 1], got {clean_fraction}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} must be one of {list(LAYOUTS)}")
    if any(c in prefix for c in '/\\,"\n\r'):
        raise ConfigError(f"prefix {prefix!r} must not contain path separators, commas, quotes or newlines")


def _image_ids(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for value in rng.integers(0, 2**32, size=n - len(ids), dtype=np.uint64).tolist():
            image_id = f"{prefix}{value:08x}.jpg"
            if image_id not in seen:
                seen.add(image_id)
                ids.append(image_id)
    return ids


def steel_texture(rng: np.random.Generator, height: int, width: int) -> FloatImage:
    """Grey steel: base level, slow illumination gradient, brushed horizontal streaks, noise."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = np.float32(rng.uniform(85.0, 125.0))
    gx, gy = (np.float32(v) for v in rng.uniform(-15.0, 15.0, size=2))
    wave = np.float32(rng.uniform(4.0, 10.0)) * np.sin(
        np.float32(2 * np.pi * rng.uniform(0.3, 1.5)) * x + np.float32(rng.uniform(0, 2 * np.pi))
    )
    illumination = base + gx * x + gy * y + wave
    # Streaks: noise that is coarse along x and fine along y, stretched to full width.
    coarse = rng.normal(0.0, 7.0, size=(height, max(2, width // 40))).astype(np.float32)
    streaks = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    rows = rng.normal(0.0, 2.5, size=(height, 1)).astype(np.float32)
    noise = rng.normal(0.0, 3.0, size=(height, width)).astype(np.float32)
    texture: FloatImage = illumination + streaks + rows + noise
    return texture


def _scale(height: int, width: int) -> float:
    return min(height / _REF_HEIGHT, width / _REF_WIDTH)


def _point(rng: np.random.Generator, height: int, width: int) -> tuple[int, int]:
    return int(rng.integers(0, width)), int(rng.integers(0, height))


def _pits(rng: np.random.Generator, img: FloatImage) -> Mask:
    """Class 1: one to three clusters of small dark round pits."""
    height, width = img.shape
    s = _scale(height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = _point(rng, height, width)
        spread = max(3.0, 14.0 * s)
        for _ in range(int(rng.integers(6, 20))):
            px = int(np.clip(cx + rng.normal(0.0, spread), 0, width - 1))
            py = int(np.clip(cy + rng.normal(0.0, spread), 0, height - 1))
            cv2.circle(mask, (px, py), max(1, round(rng.uniform(2.0, 5.0) * s)), 1, thickness=-1)
    region = mask.astype(bool)
    img[region] -= np.float32(rng.uniform(50.0, 70.0))
    return mask


def _scratches(rng: np.random.Generator, img: FloatImage) -> Mask:
    """Class 2: one to four thin, near-vertical bright scratches."""
    height, width = img.shape
    s = _scale(height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        length = rng.uniform(0.35, 0.95) * height
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, max(1, height - int(length))))
        dx = rng.uniform(-0.08, 0.08) * length
        x1, y1 = int(np.clip(x0 + dx, 0, width - 1)), int(min(height - 1, y0 + length))
        thickness = max(1, round(rng.uniform(2.0, 4.0) * s))
        cv2.line(mask, (x0, y0), (x1, y1), 1, thickness=thickness)
    img[mask.astype(bool)] += np.float32(rng.uniform(60.0, 80.0))
    return mask


def _patches(rng: np.random.Generator, img: FloatImage) -> Mask:
    """Class 3: one or two large irregular patches, brighter and mottled."""
    height, width = img.shape
    s = _scale(height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = _point(rng, height, width)
        radius = min(rng.uniform(30.0, 90.0) * s, height / 2)
        stretch = rng.uniform(1.5, 3.0)
        angles = np.sort(rng.uniform(0.0, 2 * np.pi, size=12))
        radii = radius * rng.uniform(0.6, 1.3, size=12)
        xs = cx + stretch * radii * np.cos(angles)
        ys = cy + radii * np.sin(angles)
        polygon = np.stack([xs, ys], axis=1).round().astype(np.int32)
        cv2.fillPoly(mask, [polygon], 1)
        cv2.circle(mask, (cx, cy), 1, 1, thickness=-1)  # never empty, even when tiny
    coarse = rng.normal(0.0, 22.0, size=(max(2, height // 8), max(2, width // 8))).astype(np.float32)
    mottle = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    region = mask.astype(bool)
    img[region] = img[region] * np.float32(0.6) + np.float32(rng.uniform(70.0, 90.0)) + mottle[region]
    return mask


def _blobs(rng: np.random.Generator, img: FloatImage) -> Mask:
    """Class 4: one or two big dark elongated blobs."""
    height, width = img.shape
    mask = np.zeros((height, width), dtype=np.uint8)
    sx, sy = width / _REF_WIDTH, height / _REF_HEIGHT
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = _point(rng, height, width)
        axes = (max(2, round(rng.uniform(120.0, 350.0) * sx)), max(1, round(rng.uniform(25.0, 70.0) * sy)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(-15.0, 15.0)), 0.0, 360.0, 1, thickness=-1)
    region = mask.astype(bool)
    img[region] *= np.float32(rng.uniform(0.35, 0.5))
    return mask


DEFECTS = (_pits, _scratches, _patches, _blobs)


def make_image(
    rng: np.random.Generator, height: int, width: int, classes: list[int]
) -> tuple[npt.NDArray[np.uint8], Mask]:
    """One BGR uint8 image [H,W,3] (3 equal channels) and its masks [4,H,W] for `classes` (0-based)."""
    img = steel_texture(rng, height, width)
    masks = np.zeros((NUM_CLASSES, height, width), dtype=np.uint8)
    for c in sorted(classes):
        masks[c] = DEFECTS[c](rng, img)
    grey = np.clip(img, 0.0, 255.0).round().astype(np.uint8)
    bgr: npt.NDArray[np.uint8] = np.repeat(grey[:, :, None], 3, axis=2)
    return bgr, masks


def _defect_classes(rng: np.random.Generator) -> list[int]:
    count = int(rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]))
    return [int(c) for c in rng.choice(NUM_CLASSES, size=count, replace=False, p=CLASS_WEIGHTS)]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_dataset(
    out_dir: Path,
    n_images: int,
    *,
    seed: int = 0,
    height: int = 256,
    width: int = 1600,
    clean_fraction: float = 0.5,
    layout: str = "wide",
    image_dir_name: str = "test_images",
    prefix: str = "",
    overwrite: bool = False,
) -> SyntheticSet:
    """Write `n_images` synthetic images, `labels.csv` and `sample_submission.csv` under `out_dir`.

    An images folder holding other `.jpg` files is refused (they would not be in the sample
    submission) unless `overwrite=True`, which deletes those `.jpg` files first.
    """
    _check_args(n_images, height, width, clean_fraction, layout, prefix)
    out_dir = Path(out_dir)
    images_dir = out_dir / image_dir_name
    rng = np.random.default_rng(seed)
    ids = sorted(_image_ids(rng, n_images, prefix))
    clean = set(rng.permutation(n_images)[: round(n_images * clean_fraction)].tolist())

    images_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(p for p in images_dir.glob("*.jpg") if p.name not in set(ids))
    if stale and not overwrite:
        raise ConfigError(
            f"{images_dir} already holds {len(stale)} other image(s) (e.g. {stale[0].name}); "
            "use an empty folder, delete them, or pass overwrite=True"
        )
    for path in stale:
        path.unlink()

    label_rows: list[list[str]] = []
    for index, image_id in enumerate(ids):
        image_rng = np.random.default_rng([seed, index])
        classes = [] if index in clean else _defect_classes(image_rng)
        image, masks = make_image(image_rng, height, width, classes)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ConfigError(f"OpenCV could not encode {image_id} as JPEG")
        (images_dir / image_id).write_bytes(encoded.tobytes())
        for c in sorted(classes):
            label_rows.append([image_id, str(c + 1), rle.encode(masks[c], order="F")])

    labels_csv = out_dir / "labels.csv"
    _write_csv(labels_csv, ["ImageId", "ClassId", "EncodedPixels"], label_rows)
    sample = out_dir / "sample_submission.csv"
    if layout == "wide":
        rows = [[f"{i}_{c}", ""] for i in ids for c in range(1, NUM_CLASSES + 1)]
        _write_csv(sample, ["ImageId_ClassId", "EncodedPixels"], rows)
    else:
        _write_csv(sample, ["ImageId", "EncodedPixels", "ClassId"], [[i, "1 1", "0"] for i in ids])
    return SyntheticSet(
        root=out_dir,
        images_dir=images_dir,
        labels_csv=labels_csv,
        sample_submission=sample,
        image_ids=tuple(ids),
        height=height,
        width=width,
        layout=layout,
    )
