"""The `[input]` settings (`InputSpec`) and the table of input readers (`READERS`). Stdlib only:
`kernel_src.spec` and `kernel_src.bundle` read it before anything is installed.

An entry (`ReaderKind`) says what differs between readers without importing them: the `[input]`
keys it takes, whether it reads a file (`path` required) and an example of one, the problems it
reports by name, and `opener`, the class in `kernel_src.readers` that reads it (imported when a
reader is opened: numpy, OpenCV and pandas are needed only then). What each reader does, its ids
and its problems: `kernel_src.readers`' docstring and docs/formats.md#input-readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .errors import SpecError
from .settings import setting, typed, wrong

IMAGES = "images"  # the image folder: today's reader and the default
BAD_PIXELS = ("skip", "zero")
NPZ_EVERY_KEY = "*"  # [input] array = "*": every key of the .npz is one image, named by its key
IMAGE_PROBLEMS = ("missing", "unreadable", "converted")  # kernel_src.profiler's image problems a reader reports


@dataclass(frozen=True)
class ReaderKind:
    """One reader: its name, the class in `kernel_src.readers` that opens it (`opener`), the `[input]`
    keys it takes besides `reader`, `first_id` and `bad_pixels`, whether it reads a file (`path`
    required; else it reads `competition.test_images`), an example of that file, and the problems it
    reports (by kernel_src.profiler's names)."""

    name: str
    opener: str
    keys: tuple[str, ...]
    file: bool
    example: str
    problems: tuple[str, ...] = IMAGE_PROBLEMS


READERS: dict[str, ReaderKind] = {
    r.name: r
    for r in (
        ReaderKind(IMAGES, "FolderReader", keys=(), file=False, example="test_images"),
        ReaderKind("npy", "NpyReader", keys=("path", "ids"), file=True, example="test.npy"),
        ReaderKind("npz", "NpzReader", keys=("path", "array", "ids"), file=True, example="test.npz"),
        ReaderKind(
            "csv_pixels",
            "CsvPixelsReader",
            keys=("path", "id_column", "shape", "ignore_columns"),
            file=True,
            example="test.csv",
        ),
    )
}


def _names() -> tuple[str, ...]:
    return tuple(READERS)


@dataclass(frozen=True)
class InputSpec:
    """The `[input]` settings: which reader and where its file is (see the module docstring)."""

    reader: str = field(
        default=IMAGES,
        metadata=setting(
            '`"images"`: the image folder `competition.test_images`; `"npy"`, `"npz"`: NumPy arrays N x H x W '
            '[x C]; `"csv_pixels"`: one image per CSV row, a column per pixel (docs/formats.md#input-readers).',
            choices=_names,
        ),
    )
    path: str = field(
        default="",
        metadata=setting(
            "the reader's file, relative to the competition's data folder (where `sample_submission.csv` is), "
            'e.g. `"test.csv"`; required for every reader but `"images"`, which reads `competition.test_images`.',
            shown="",
        ),
    )
    array: str = field(
        default="",
        metadata=setting(
            f'`npz`: the key holding the images (`""`: the only key besides `ids`); `"{NPZ_EVERY_KEY}"`: every '
            "key is one image, its id the key.",
            shown="",
        ),
    )
    ids: str = field(
        default="",
        metadata=setting(
            "`npz`: the key holding the ids; `npy`: a second `.npy` file of ids (relative like `path`); one per "
            'image, in order. `""`: ids are row numbers from `first_id`.',
            shown="",
        ),
    )
    id_column: str = field(
        default="",
        metadata=setting('`csv_pixels`: the column holding the ids (`""`: row numbers from `first_id`).', shown=""),
    )
    first_id: int = field(
        default=0,
        metadata=setting("the id of the first row where ids are row numbers: `0`, or `1` (Digit Recognizer)."),
    )
    shape: tuple[int, ...] = field(
        default=(),
        metadata=setting(
            "`csv_pixels`: `[height, width]` or `[height, width, channels]` of each row's image, filled row-major "
            "from the pixel columns in file order (`[28, 28]` for Digit Recognizer); required for `csv_pixels`.",
            shown="",
        ),
    )
    ignore_columns: tuple[str, ...] = field(
        default=("label",),
        metadata=setting("`csv_pixels`: columns that are neither pixels nor the id, skipped where present."),
    )
    bad_pixels: str = field(
        default="skip",
        metadata=setting(
            'a row with a missing, non-numeric or non-finite pixel: `"skip"` (reported `unreadable`, not '
            'predicted: the run\'s fallback, empty masks) or `"zero"` (those pixels read as 0, reported '
            "`converted`, predicted).",
            choices=BAD_PIXELS,
        ),
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Validated settings; a SpecError keyed `input.<setting>` names what to change."""
        known = list(cls.__dataclass_fields__)
        unknown = set(data) - set(known)
        if unknown:
            raise SpecError(f"input.{sorted(unknown)[0]}", f"unknown setting; known: {', '.join(known)}")
        d = cls()
        reader = typed("input.reader", data.get("reader", d.reader), str)
        if reader not in READERS:
            raise SpecError("input.reader", f"{reader!r} must be one of {list(READERS)}")
        kind = READERS[reader]
        text = {k: typed(f"input.{k}", data.get(k, getattr(d, k)), str) for k in ("path", "array", "ids", "id_column")}
        for name in ("path", "array", "ids", "id_column", "shape", "ignore_columns"):
            if name in data and _plain(data[name]) != _plain(getattr(d, name)) and name not in kind.keys:
                raise SpecError(f"input.{name}", f"does not apply to reader {reader!r}; it takes {list(kind.keys)}")
        if kind.file and not text["path"]:
            raise SpecError("input.path", f"is required for reader {reader!r}: its file, e.g. {kind.example!r}")
        for name in ("path",) + (("ids",) if reader == "npy" else ()):
            value = text[name]
            parts = PurePosixPath(value.replace("\\", "/")).parts
            if value and (value.startswith(("/", "\\")) or ".." in parts):
                raise SpecError(f"input.{name}", f"{value!r} must be relative to the competition's data folder")
        first_id = typed("input.first_id", data.get("first_id", d.first_id), int)
        if first_id < 0:
            raise SpecError("input.first_id", f"must be 0 or more, got {first_id}")
        shape = _shape(data.get("shape", d.shape))
        if reader == "csv_pixels" and not shape:
            raise SpecError("input.shape", "is required for reader 'csv_pixels': [height, width], e.g. [28, 28]")
        ignore = data.get("ignore_columns", d.ignore_columns)
        if not isinstance(ignore, (list, tuple)) or not all(isinstance(c, str) for c in ignore):
            raise wrong("input.ignore_columns", ignore, 'an array of strings, e.g. ["label"]')
        bad = typed("input.bad_pixels", data.get("bad_pixels", d.bad_pixels), str)
        if bad not in BAD_PIXELS:
            raise SpecError("input.bad_pixels", f"{bad!r} must be one of {list(BAD_PIXELS)}")
        return cls(reader, first_id=first_id, shape=shape, ignore_columns=tuple(ignore), bad_pixels=bad, **text)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise wrong("input.shape", value, "[height, width] or [height, width, channels]")
    if not value:
        return ()
    if len(value) not in (2, 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise SpecError("input.shape", f"{list(value)} must be [height, width] or [height, width, channels] (> 0)")
    if len(value) == 3 and value[2] not in (1, 3):
        raise SpecError("input.shape", f"{list(value)}: channels must be 1 (grey) or 3 (RGB)")
    return tuple(int(v) for v in value)


def input_files(spec: InputSpec) -> tuple[str, ...]:
    """The files (relative to the data folder) a file reader reads: `path`, and a `.npy` reader's `ids`."""
    if not READERS[spec.reader].file:
        return ()
    return (spec.path, spec.ids) if spec.reader == "npy" and spec.ids else (spec.path,)
