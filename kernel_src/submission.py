"""The sample submission found at run time, and a streaming writer that always completes it.

Every file is read and written through one `kernel_src.layout.Layout`: the one its header
resolves to under `[submission]` (`resolve`; None or "auto": a preset detected from the header,
Severstal's wide `ImageId_ClassId,EncodedPixels` or long `ImageId,ClassId,EncodedPixels`, columns
in any order). `SampleSubmission.resolved` holds it. A sample's class column is not read (Kaggle's
samples carry placeholders: Severstal's long sample lists each test image once with `1 1` and
class 0); a key's class token is, and with the class in the key every image must list every
class once.

The one reader of submissions and labels files (`read_mask_rows`, `read_masks`; the dry-run's
inputs, metric and report and the demo use it): each row's key, class and mask are read by the
Layout, so a bad one is a SubmissionFormatError naming the file, the line and the value. In
Severstal's layouts a class is a decimal integer string in 1..C (`class_number`), in a wide key's
`_<class>` suffix as in a long ClassId column. Labels are the long train.csv form, or (a
`SubmissionSpec` with a named layout given) that layout; the empty value reads as "", relative
RLEs as standard ones, and per-object rows are united per image x class
(`masks_by_image(merge=True)`).

What `SubmissionWriter` writes, byte-deterministically (csv module, `\\n` line endings, never NaN):
for every image in sample order, one row per class in class order (wide: keys `<image>_1` ..
`<image>_C`; long: ClassId 1..C), or in a per-object layout one row per object (none: one row),
columns in the sample header's order, the layout's empty value (`""`, `"-1"`) for an empty mask,
relative starts when `rle_starts = "relative"`. Writing every image x class pair (rather than
defect rows only) keeps the row count fixed at images x classes, which is what Kaggle's scorer
counts, and scores the same as omitting the empty pairs.

The file always has every row: images never passed to `add` get empty masks on `close()`, which
the context manager calls even when the `with` block raises. Rows are streamed in sample order;
only images that arrive ahead of their turn are buffered.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, TextIO

import pandas as pd

from .errors import SubmissionFormatError as SubmissionFormatError  # its home is kernel_src.errors
from .layout import AUTO, LABELS, PRESETS, Layout, SubmissionSpec, accepted, resolve
from .layout import class_number as class_number  # its home is kernel_src.layout
from .rle import from_relative, to_relative, union

LAYOUTS = tuple(p.word for p in PRESETS.values() if p.detected)  # what "auto" tells apart: wide, long


@dataclass(frozen=True)
class SampleSubmission:
    """What a submission must contain: `layout` (the Layout's name: "wide", "long", "custom"), the
    header `columns` in file order, the unique `image_ids` in first-appearance order,
    `num_classes`, and `resolved`, the Layout its rows are read and written in (given: the detected
    preset named by `layout`)."""

    layout: str
    columns: tuple[str, ...]
    image_ids: tuple[str, ...]
    num_classes: int
    resolved: Layout = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.resolved is None:  # a detected preset's: the layouts "auto" gives by name alone
            preset = next((p for p in PRESETS.values() if p.detected and p.word == self.layout), None)
            if preset is None:
                raise ValueError(f"SampleSubmission {self.layout!r}: give its resolved Layout (named: {list(LAYOUTS)})")
            object.__setattr__(self, "resolved", preset.layout(self.num_classes))

    @property
    def rows(self) -> int:
        """Data rows a complete submission has: images x classes (per-object layouts: at least)."""
        return len(self.image_ids) * self.num_classes


def read_csv_strings(path: Path) -> pd.DataFrame:
    """Every cell as a string; empty cells stay empty strings (never NaN)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def _read_frame(path: Path) -> pd.DataFrame:
    try:
        return read_csv_strings(path)
    except pd.errors.EmptyDataError:
        raise SubmissionFormatError(f"{path}: the file is empty (no header); expected {accepted()}") from None


def _stripped(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns=lambda c: str(c).strip())


def layout_of(
    columns: Sequence[str], source: str, num_classes: int, submission: SubmissionSpec | None, *, labels: bool = False
) -> Layout:
    """The Layout of a file with this header: `resolve` under `submission` (None: "auto"). Labels
    under "auto" must be in the long train.csv form; under a named or custom layout, in that one."""
    spec = submission or SubmissionSpec()
    if labels and spec.layout == AUTO and not LABELS.fits(columns):
        raise SubmissionFormatError(
            f"{source}: header {list(columns)}; labels must be in the {LABELS.word} train.csv form "
            f"{','.join(LABELS.header)}"
        )
    return resolve(spec, columns, num_classes, source)


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
    """Every row of a submission or, with `labels`, of a labels frame, as MaskRows in file order
    (`rows_in` of the frame's Layout). Cells must be strings (see `read_csv_strings`); row i of the
    frame is line i + 2 of its CSV. A bad key or class, an empty ImageId or a labels file in
    another layout is a SubmissionFormatError naming `source`, the line and the value.

    With a `submission` spec whose layout is not "auto", the file (labels too) must have that
    layout; its empty value reads as "" and its class tokens as classes 1..C."""
    layout = layout_of([str(c) for c in frame.columns], source, num_classes, submission, labels=labels)
    return rows_in(_stripped(frame), layout, source)


def rows_in(frame: pd.DataFrame, layout: Layout, source: str) -> list[MaskRow]:
    """MaskRows of a frame in `layout` (columns already stripped): the one row reader."""
    rows: list[MaskRow] = []
    keys = frame[layout.key_column].tolist()
    masks = frame[layout.mask_column].tolist()
    tokens = frame[layout.class_column].tolist() if layout.class_column else [None] * len(keys)
    empty = layout.empty.strip()
    for line, (key, token, rle) in enumerate(zip(keys, tokens, masks, strict=True), 2):
        image_id, index = layout.read_key(str(key), source, line)
        if token is not None:
            index = layout.read_class(str(token), image_id, source, line)
        text = str(rle)
        if empty and text.strip() == empty:
            text = ""
        if layout.relative and text.strip():
            try:
                text = from_relative(text)
            except ValueError as e:
                raise SubmissionFormatError(f"{source} line {line}: {e}; check submission.rle_starts") from None
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
    merge = submission is not None and submission.per_object
    return masks_by_image(rows, num_classes, str(path), merge=merge)


def sample_in(frame: pd.DataFrame, layout: Layout, columns: tuple[str, ...], source: str) -> SampleSubmission:
    """The images of a sample in `layout` (columns already stripped; `columns` as in the file);
    with the class in the key, every image must list every class once."""
    seen: dict[str, set[int]] = {}
    for line, key in enumerate(frame[layout.key_column].tolist(), 2):
        image_id, index = layout.read_key(str(key), source, line)
        classes = seen.setdefault(image_id, set())
        if index is not None:
            if index in classes and not layout.per_object:
                raise SubmissionFormatError(f"{source}: key {key!r} is listed twice; each image x class once")
            classes.add(index)
    if layout.class_in_key:
        for image_id, classes in seen.items():
            if len(classes) != len(layout.tokens):
                raise layout.missing_classes(source, image_id, classes)
    return SampleSubmission(layout.name, columns, tuple(seen), len(layout.tokens), layout)


def read_sample_submission(path: Path, num_classes: int, submission: SubmissionSpec | None = None) -> SampleSubmission:
    """Read `path`, check its header against `submission` (None or layout "auto": a preset
    detected from the header), and list its images."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    source = str(path)
    frame = _read_frame(path)
    columns = tuple(str(c) for c in frame.columns)
    layout = layout_of(columns, source, num_classes, submission)
    return sample_in(_stripped(frame), layout, columns, source)


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
        self._objects = sample.resolved.per_object
        self._relative = sample.resolved.relative
        self._columns = [c.strip() for c in sample.columns]  # the sample's order, as the Layout names them
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
        layout = self.sample.resolved
        for index, rle in enumerate(rles):
            for text in (rle,) if isinstance(rle, str) else (rle or ("",)):
                if self._relative:
                    text = to_relative(text)
                values = layout.row(image_id, index, text if text.strip() else layout.empty)
                self._csv.writerow([values[c] for c in self._columns])
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
