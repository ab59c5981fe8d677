"""The sample submission found at run time, and a streaming writer that always completes it.

Layouts, told apart by the header of `sample_submission.csv` (columns in any order):

- wide: `ImageId_ClassId,EncodedPixels`, one row per image x class, keys `<image>_<class>` with
  class 1..C (Severstal during the competition);
- long: `ImageId,ClassId,EncodedPixels` (or `ImageId,EncodedPixels,ClassId`, Severstal's re-cut
  data). The sample's ClassId and EncodedPixels values are placeholders (Kaggle lists each test
  image once with `1 1` and class 0), so only its ImageIds and column order are used;
- custom: whatever `[submission]` describes (`kernel_src.layout`): the header must have exactly
  its key, class and mask columns (any order), keys made by its template from the image id and
  the class tokens; a class column's values in the sample are not read (placeholders), a key's
  class token is. `SampleSubmission.custom` holds the resolved `Layout`. Given a
  `SubmissionSpec`, a Severstal preset is checked against the header too ("auto" detects it).

The one reader of submissions and labels files (`read_mask_rows`, `read_masks`; the dry-run's
inputs, metric and report and the demo use it): a class is a decimal integer string in 1..C
(`class_number`), in a wide key's `_<class>` suffix as in a long ClassId column; anything else
is a SubmissionFormatError naming the file, the line and the value. Labels are the long
train.csv form, or (a `SubmissionSpec` with a named layout given) that layout; in a custom layout
the empty value reads as "", relative RLEs as standard ones, and per-object rows are united per
image x class (`masks_by_image(merge=True)`).

What `SubmissionWriter` writes, byte-deterministically (csv module, `\\n` line endings, empty
strings for no defect, never NaN):

- wide: for every image in sample order, the rows `<image>_1` .. `<image>_C`;
- long: for every image in sample order, one row per class 1..C, with an empty EncodedPixels when
  there is no defect, columns in the sample header's order. Writing every image x class pair
  (rather than defect rows only) keeps the row count fixed at images x classes, which is what
  Kaggle's scorer counts, and scores the same as omitting the empty pairs.

- custom: for every image in sample order, one row per class token (per-object rows: one per
  object, or one with the empty value), the empty value (`""`, `"-1"`) for an empty mask,
  relative starts when `rle_starts = "relative"`, columns in the sample header's order.

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
from typing import NamedTuple, TextIO

import pandas as pd

from .errors import SubmissionFormatError
from .layout import Layout, SubmissionSpec, resolve
from .rle import from_relative, to_relative, union

WIDE_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
LONG_COLUMNS = ("ImageId", "ClassId", "EncodedPixels")
LAYOUTS = ("wide", "long")
_ACCEPTED = "wide 'ImageId_ClassId,EncodedPixels' or long 'ImageId,ClassId,EncodedPixels' (any column order)"


@dataclass(frozen=True)
class SampleSubmission:
    """What a submission must contain: `layout` ("wide" | "long"), the header `columns` in file
    order, the unique `image_ids` in first-appearance order and `num_classes`."""

    layout: str
    columns: tuple[str, ...]
    image_ids: tuple[str, ...]
    num_classes: int
    custom: Layout | None = None  # the resolved [submission] layout when it is "custom"

    @property
    def rows(self) -> int:
        """Data rows a complete submission has: images x classes (per-object layouts: at least)."""
        return len(self.image_ids) * self.num_classes


def detect_layout(columns: Sequence[str], source: str) -> str:
    """'wide' or 'long' from a header; SubmissionFormatError naming `source` otherwise."""
    names = sorted(str(c).strip() for c in columns)
    if names == sorted(WIDE_COLUMNS):
        return "wide"
    if names == sorted(LONG_COLUMNS):
        return "long"
    raise SubmissionFormatError(
        f"{source}: unknown header {list(columns)}; expected {_ACCEPTED}, or describe this file in bundle.toml's "
        "[submission] (layout = 'custom', key_column, mask_column, ...)"
    )


def class_number(text: str, num_classes: int) -> int | None:
    """The one ClassId rule: a decimal integer string ("1", "2", ...) in 1..num_classes; else None.

    "1.0", " 1", "0", "+1", "" and any class above `num_classes` are refused, in a wide key's
    `_<class>` suffix as in a long file's ClassId column.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value <= num_classes else None


def _split_wide_key(key: str, num_classes: int, where: str) -> tuple[str, int]:
    """`abc.jpg_3` -> ("abc.jpg", 3); SubmissionFormatError naming `where` unless the key ends `_<1..C>`."""
    image_id, sep, suffix = key.rpartition("_")
    class_id = class_number(suffix, num_classes) if sep and image_id else None
    if class_id is None:
        raise SubmissionFormatError(
            f"{where}: ImageId_ClassId key {key!r} does not end with _<class> for a class in 1..{num_classes}; "
            f"write keys like 'abc.jpg_1' with a plain class number (not '_1.0'), and check num_classes"
        )
    return image_id, class_id


def read_csv_strings(path: Path) -> pd.DataFrame:
    """Every cell as a string; empty cells stay empty strings (never NaN)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def _read_frame(path: Path) -> pd.DataFrame:
    try:
        return read_csv_strings(path)
    except pd.errors.EmptyDataError:
        raise SubmissionFormatError(f"{path}: the file is empty (no header); expected {_ACCEPTED}") from None


class MaskRow(NamedTuple):
    """One row of a submission or labels file: its `line` in the CSV (the header is line 1)."""

    line: int
    image_id: str
    class_id: int
    rle: str


def mask_rows(
    frame: pd.DataFrame,
    source: str,
    num_classes: int,
    *,
    labels: bool = False,
    submission: SubmissionSpec | None = None,
) -> list[MaskRow]:
    """Every row of a submission (wide or long) or, with `labels`, of a long train.csv-form labels
    frame, as MaskRows in file order. Cells must be strings (see `read_csv_strings`); row i of the
    frame is line i + 2 of its CSV. Each ClassId follows `class_number`; a bad one, an empty
    ImageId or a labels file in another layout is a SubmissionFormatError naming `source`, the
    line and the value.

    With a `submission` spec whose layout is not "auto", the file (labels too) must have that
    layout; a custom layout's empty value reads as "" and its class tokens as classes 1..C."""
    if submission is not None and submission.layout != "auto":
        resolved = resolve(submission, [str(c) for c in frame.columns], num_classes, source)
        if resolved.name == "custom":
            return _custom_rows(frame.rename(columns=lambda c: str(c).strip()), resolved, source)
        labels = False  # a named Severstal preset: labels in that layout too
    columns = [str(c) for c in frame.columns]
    if labels and sorted(c.strip() for c in columns) != sorted(LONG_COLUMNS):
        raise SubmissionFormatError(
            f"{source}: header {columns}; labels must be in the long train.csv form ImageId,ClassId,EncodedPixels"
        )
    layout = detect_layout(columns, source)
    frame = frame.rename(columns=lambda c: str(c).strip())
    rows: list[MaskRow] = []
    if layout == "wide":
        for line, (key, rle) in enumerate(zip(frame["ImageId_ClassId"], frame["EncodedPixels"], strict=True), 2):
            image_id, class_id = _split_wide_key(str(key), num_classes, f"{source} line {line}")
            rows.append(MaskRow(line, image_id, class_id, str(rle)))
        return rows
    for line, (image_id, value, rle) in enumerate(
        zip(frame["ImageId"], frame["ClassId"], frame["EncodedPixels"], strict=True), 2
    ):
        if not str(image_id):
            raise SubmissionFormatError(f"{source} line {line}: the ImageId is empty; give the image's file name")
        number = class_number(str(value), num_classes)
        if number is None:
            raise SubmissionFormatError(
                f"{source} line {line}: image {image_id!r} has ClassId {value!r}; expected an integer in "
                f"1..{num_classes} written as plain digits ('3', not '3.0'); fix the file or num_classes"
            )
        rows.append(MaskRow(line, str(image_id), number, str(rle)))
    return rows


def _custom_rows(frame: pd.DataFrame, layout: Layout, source: str) -> list[MaskRow]:
    """MaskRows of a frame in a custom layout (columns already stripped)."""
    rows: list[MaskRow] = []
    keys = frame[layout.key_column].tolist()
    masks = frame[layout.mask_column].tolist()
    tokens = frame[layout.class_column].tolist() if layout.class_column else [None] * len(keys)
    empty = layout.empty.strip()
    for line, (key, token, rle) in enumerate(zip(keys, tokens, masks, strict=True), 2):
        where = f"{source} line {line}"
        try:
            image_id, index = layout.split_key(str(key))
        except ValueError as e:
            raise SubmissionFormatError(f"{where}: {e}; check submission.key and submission.classes") from None
        if token is not None:
            index = layout.class_index(str(token))
            if index is None:
                raise SubmissionFormatError(
                    f"{where}: {layout.class_column} {token!r} is not one of the class tokens {list(layout.tokens)}; "
                    "check submission.classes"
                )
        text = str(rle)
        if empty and text.strip() == empty:
            text = ""
        if layout.relative and text.strip():
            try:
                text = from_relative(text)
            except ValueError as e:
                raise SubmissionFormatError(f"{where}: {e}; check submission.rle_starts") from None
        rows.append(MaskRow(line, image_id, (index or 0) + 1, text))
    return rows


def read_mask_rows(
    path: Path, num_classes: int, *, labels: bool = False, submission: SubmissionSpec | None = None
) -> list[MaskRow]:
    """`mask_rows` of the CSV at `path`."""
    return mask_rows(_read_frame(path), str(path), num_classes, labels=labels, submission=submission)


def masks_by_image(
    rows: Sequence[MaskRow], num_classes: int, source: str, *, merge: bool = False
) -> dict[str, list[str]]:
    """{image id: one RLE per class, "" for none}, images in first-appearance order. Two non-empty
    RLEs for one image x class are a SubmissionFormatError (which one is meant is unknowable),
    unless `merge` (per-object layouts): then the objects' runs are united, and objects that
    overlap are a SubmissionFormatError."""
    masks: dict[str, list[str]] = {}
    for row in rows:
        rles = masks.setdefault(row.image_id, [""] * num_classes)
        if not row.rle.strip():
            continue
        if rles[row.class_id - 1].strip() and merge:
            try:
                rles[row.class_id - 1] = union(rles[row.class_id - 1], row.rle)
            except ValueError as e:
                raise SubmissionFormatError(
                    f"{source} line {row.line}: image {row.image_id!r} class {row.class_id}: {e}"
                ) from None
            continue
        if rles[row.class_id - 1].strip():
            raise SubmissionFormatError(
                f"{source} line {row.line}: image {row.image_id!r} class {row.class_id} has two non-empty rows; "
                "give one"
            )
        rles[row.class_id - 1] = row.rle
    return masks


def read_masks(
    path: Path, num_classes: int, *, labels: bool = False, submission: SubmissionSpec | None = None
) -> dict[str, list[str]]:
    """`masks_by_image` of the submission (or, with `labels`, the labels file) at `path`."""
    rows = read_mask_rows(path, num_classes, labels=labels, submission=submission)
    merge = submission is not None and submission.layout == "custom" and submission.rows == "per_object"
    return masks_by_image(rows, num_classes, str(path), merge=merge)


def _custom_sample(frame: pd.DataFrame, layout: Layout, columns: tuple[str, ...], source: str) -> SampleSubmission:
    """The images of a sample in a custom layout; with the class in the key, every image must list
    every class token once. A class column's values are not read (samples carry placeholders)."""
    seen: dict[str, set[int]] = {}
    for line, key in enumerate(frame[layout.key_column].tolist(), 2):
        try:
            image_id, index = layout.split_key(str(key))
        except ValueError as e:
            where = f"{source} line {line}"
            raise SubmissionFormatError(f"{where}: {e}; check submission.key and submission.classes") from None
        classes = seen.setdefault(image_id, set())
        if index is not None:
            if index in classes and not layout.per_object:
                raise SubmissionFormatError(f"{source}: key {key!r} is listed twice; each image x class once")
            classes.add(index)
    if layout.class_in_key:
        for image_id, classes in seen.items():
            if len(classes) != len(layout.tokens):
                missing = [t for i, t in enumerate(layout.tokens) if i not in classes]
                raise SubmissionFormatError(
                    f"{source}: image {image_id!r} lacks the keys for classes {missing}; check submission.classes "
                    "and num_classes"
                )
    return SampleSubmission("custom", columns, tuple(seen), len(layout.tokens), layout)


def read_sample_submission(path: Path, num_classes: int, submission: SubmissionSpec | None = None) -> SampleSubmission:
    """Read `path`, check its header against `submission` (None or layout "auto": a Severstal
    layout detected from the header), and list its images."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    source = str(path)
    frame = _read_frame(path)
    columns = tuple(str(c) for c in frame.columns)
    if submission is not None and submission.layout != "auto":
        resolved = resolve(submission, columns, num_classes, source)
        if resolved.name == "custom":
            frame.columns = pd.Index([c.strip() for c in columns])
            return _custom_sample(frame, resolved, columns, source)
    layout = detect_layout(columns, source)
    frame.columns = pd.Index([c.strip() for c in columns])
    if layout == "wide":
        seen: dict[str, set[int]] = {}
        for line, key in enumerate(frame["ImageId_ClassId"].tolist(), 2):
            image_id, class_id = _split_wide_key(str(key), num_classes, f"{source} line {line}")
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
    rows in the file (always `sample.rows`; at least that in a per-object layout). Use it as a
    context manager to close even on error.
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
        self._pending: dict[str, tuple[str | tuple[str, ...], ...]] = {}
        self._next = 0  # index in sample.image_ids of the next image to write
        self._rows = 0
        self._closed = False
        self._empty: tuple[str | tuple[str, ...], ...] = ("",) * sample.num_classes
        self._objects = sample.custom is not None and sample.custom.per_object
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

    def add(self, image_id: str, rles: Sequence[str | Sequence[str]]) -> None:
        """Record the masks of one image: one RLE string per class, "" for no defect; in a
        per-object layout a class may be a sequence of RLEs, one row each (none: one empty row)."""
        if self._closed:
            raise ValueError(f"{self.path}: add({image_id!r}) after close(); the submission is already complete")
        if len(rles) != self.sample.num_classes:
            raise ValueError(
                f"add({image_id!r}) got {len(rles)} RLE strings; expected one per class ({self.sample.num_classes})"
            )
        values: list[str | tuple[str, ...]] = []
        for rle in rles:
            if isinstance(rle, str):
                values.append(rle)
            elif self._objects and all(isinstance(r, str) for r in rle):
                values.append(tuple(rle))
            else:
                raise TypeError(f"add({image_id!r}): RLE values must be str ('' for no defect), got {type(rle)}")
        position = self._position.get(image_id)
        if position is None:
            self.ignored += 1
            return
        if position < self._next or image_id in self._pending:
            self.duplicates += 1
            return
        self._pending[image_id] = tuple(values)
        self._flush()

    def _flush(self) -> None:
        ids = self.sample.image_ids
        while self._next < len(ids) and ids[self._next] in self._pending:
            image_id = ids[self._next]
            self._write_image(image_id, self._pending.pop(image_id))
            self._next += 1

    def _write_image(self, image_id: str, rles: tuple[str | tuple[str, ...], ...]) -> None:
        columns = self.sample.columns
        custom = self.sample.custom
        if custom is not None:
            for index, rle in enumerate(rles):
                values = {custom.key_column: custom.make_key(image_id, index)}
                if custom.class_column:
                    values[custom.class_column] = custom.tokens[index]
                for text in (rle,) if isinstance(rle, str) else (rle or ("",)):
                    if custom.relative:
                        text = to_relative(text)
                    values[custom.mask_column] = text if text.strip() else custom.empty
                    self._csv.writerow([values[c.strip()] for c in columns])
                    self._rows += 1
            return
        for class_id, rle in enumerate(rles, start=1):
            if not isinstance(rle, str):
                raise TypeError(f"{image_id}: several objects for one class need a per-object [submission] layout")
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
