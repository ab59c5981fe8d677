"""The sample submission found at run time, and a streaming writer that always completes it.

Layouts, told apart by the header of `sample_submission.csv` (columns in any order):

- wide: `ImageId_ClassId,EncodedPixels`, one row per image x class, keys `<image>_<class>` with
  class 1..C (Severstal during the competition);
- long: `ImageId,ClassId,EncodedPixels` (or `ImageId,EncodedPixels,ClassId`, Severstal's re-cut
  data). The sample's ClassId and EncodedPixels values are placeholders (Kaggle lists each test
  image once with `1 1` and class 0), so only its ImageIds and column order are used.

What `SubmissionWriter` writes, byte-deterministically (csv module, `\\n` line endings, empty
strings for no defect, never NaN):

- wide: for every image in sample order, the rows `<image>_1` .. `<image>_C`;
- long: for every image in sample order, one row per class 1..C, with an empty EncodedPixels when
  there is no defect, columns in the sample header's order. Writing every image x class pair
  (rather than defect rows only) keeps the row count fixed at images x classes, which is what
  Kaggle's scorer counts, and scores the same as omitting the empty pairs.

The file always has every row: images never passed to `add` get empty masks on `close()`, which
the context manager calls even when the `with` block raises. Rows are streamed in sample order;
only images that arrive ahead of their turn are buffered.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

import pandas as pd

WIDE_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
LONG_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
LAYOUTS = ("wide", "long")
_ACCEPTED = "wide 'ImageId_ClassId,EncodedPixels' or long 'ImageId,ClassId,EncodedPixels' (any column order)"


class SubmissionFormatError(ValueError):
    """A sample submission (or a submission being scored) has a layout this code does not know."""


@dataclass(frozen=True)
class SampleSubmission:
    """What a submission must contain: `layout` ("wide" | "long"), the header `columns` in file
    order, the unique `image_ids` in first-appearance order and `num_classes`."""

    layout: str
    columns: tuple[str, ...]
    image_ids: tuple[str, ...]
    num_classes: int

    @property
    def rows(self) -> int:
        """Data rows a complete submission has: images x classes."""
        return len(self.image_ids) * self.num_classes


def detect_layout(columns: Sequence[str], source: str) -> str:
    """'wide' or 'long' from a header; SubmissionFormatError naming `source` otherwise."""
    names = sorted(str(c).strip() for c in columns)
    if names == sorted(WIDE_COLUMNS):
        return "wide"
    if names == sorted(LONG_COLUMNS):
        return "long"
    raise SubmissionFormatError(f"{source}: unknown header {list(columns)}; expected {_ACCEPTED}")


def split_wide_key(key: str, num_classes: int, source: str) -> tuple[str, int]:
    """`abc.jpg_3` -> ("abc.jpg", 3); SubmissionFormatError unless the key ends `_<1..C>`."""
    image_id, sep, suffix = key.rpartition("_")
    if not sep or not image_id or not suffix.isdigit() or not 1 <= int(suffix) <= num_classes:
        raise SubmissionFormatError(
            f"{source}: ImageId_ClassId key {key!r} does not end with _<class> for a class in 1..{num_classes}; "
            f"expected keys like 'abc.jpg_1' in the wide layout ({_ACCEPTED})"
        )
    return image_id, int(suffix)


def read_csv_strings(path: Path) -> pd.DataFrame:
    """Every cell as a string; empty cells stay empty strings (never NaN)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def read_sample_submission(path: Path, num_classes: int) -> SampleSubmission:
    """Read `path`, detect its layout from the header, and list its images."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    source = str(path)
    try:
        frame = read_csv_strings(path)
    except pd.errors.EmptyDataError:
        raise SubmissionFormatError(f"{source}: the file is empty (no header); expected {_ACCEPTED}") from None
    columns = tuple(str(c) for c in frame.columns)
    layout = detect_layout(columns, source)
    frame.columns = pd.Index([c.strip() for c in columns])
    if layout == "wide":
        seen: dict[str, set[int]] = {}
        for key in frame["ImageId_ClassId"].tolist():
            image_id, class_id = split_wide_key(str(key), num_classes, source)
            classes = seen.setdefault(image_id, set())
            if class_id in classes:
                raise SubmissionFormatError(f"{source}: key {key!r} is listed twice; each image x class once")
            classes.add(class_id)
        for image_id, classes in seen.items():
            if len(classes) != num_classes:
                missing = sorted(set(range(1, num_classes + 1)) - classes)
                raise SubmissionFormatError(
                    f"{source}: image {image_id!r} lacks the keys for classes {missing}; the wide layout lists "
                    f"every image x class 1..{num_classes} (is num_classes right?)"
                )
        image_ids = tuple(seen)
    else:
        ids = frame["ImageId"].tolist()
        if any(not str(i) for i in ids):
            raise SubmissionFormatError(f"{source}: a row has an empty ImageId")
        image_ids = tuple(dict.fromkeys(str(i) for i in ids))
    return SampleSubmission(layout=layout, columns=columns, image_ids=image_ids, num_classes=num_classes)


class SubmissionWriter:
    """Stream a submission for `sample` to `path`, one `add(image_id, rles)` per image.

    `close()` fills every image not yet written with empty masks and returns the number of data
    rows in the file (always `sample.rows`). Use it as a context manager to close even on error.
    Counters: `ignored` (adds for ids the sample does not list), `duplicates` (a second add for an
    image), `filled` (images written with empty masks by `close`).
    """

    def __init__(self, path: Path, sample: SampleSubmission) -> None:
        self.path = Path(path)
        self.sample = sample
        self.ignored = 0
        self.duplicates = 0
        self.filled = 0
        self._position = {image_id: i for i, image_id in enumerate(sample.image_ids)}
        self._pending: dict[str, tuple[str, ...]] = {}
        self._next = 0  # index in sample.image_ids of the next image to write
        self._rows = 0
        self._closed = False
        self._empty = ("",) * sample.num_classes
        self._file: TextIO = self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(sample.columns)

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def written(self) -> int:
        """Images written to the file so far."""
        return self._next

    @property
    def buffered(self) -> int:
        """Images added ahead of their turn in the sample, held until the images before them come."""
        return len(self._pending)

    def add(self, image_id: str, rles: Sequence[str]) -> None:
        """Record the masks of one image: one RLE string per class, "" for no defect."""
        if self._closed:
            raise ValueError(f"{self.path}: add({image_id!r}) after close(); the submission is already complete")
        if len(rles) != self.sample.num_classes:
            raise ValueError(
                f"add({image_id!r}) got {len(rles)} RLE strings; expected one per class ({self.sample.num_classes})"
            )
        for rle in rles:
            if not isinstance(rle, str):
                raise TypeError(f"add({image_id!r}): RLE values must be str ('' for no defect), got {type(rle)}")
        position = self._position.get(image_id)
        if position is None:
            self.ignored += 1
            return
        if position < self._next or image_id in self._pending:
            self.duplicates += 1
            return
        self._pending[image_id] = tuple(rles)
        self._flush()

    def _flush(self) -> None:
        ids = self.sample.image_ids
        while self._next < len(ids) and ids[self._next] in self._pending:
            image_id = ids[self._next]
            self._write_image(image_id, self._pending.pop(image_id))
            self._next += 1

    def _write_image(self, image_id: str, rles: tuple[str, ...]) -> None:
        columns = self.sample.columns
        for class_id, rle in enumerate(rles, start=1):
            if self.sample.layout == "wide":
                values = {"ImageId_ClassId": f"{image_id}_{class_id}", "EncodedPixels": rle}
            else:
                values = {"ImageId": image_id, "ClassId": str(class_id), "EncodedPixels": rle}
            self._csv.writerow([values[c.strip()] for c in columns])
            self._rows += 1

    def close(self) -> int:
        """Write every remaining image (empty masks where none was added); the data row count."""
        if self._closed:
            return self._rows
        try:
            ids = self.sample.image_ids
            while self._next < len(ids):
                image_id = ids[self._next]
                rles = self._pending.pop(image_id, None)
                if rles is None:
                    rles = self._empty
                    self.filled += 1
                self._write_image(image_id, rles)
                self._next += 1
        finally:
            self._closed = True
            self._file.close()
        return self._rows
