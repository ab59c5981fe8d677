"""Input readers: where the test images come from, one class per entry of `kernel_src.inputs.READERS`.

The background loader (`kernel_src.images.ImageLoader`) asks a reader for one image at a time, by
id, in the sample submission's order; a reader hands back the loader's `LoadedImage` (a
`(height, width, 3)` uint8 RGB array, or None with a problem). The `[input]` settings
(`InputSpec`) pick the reader and say where its file is, relative to the competition's data folder
(the folder holding the sample submission), as `competition.test_images` names the image folder.

- `images`: the image folder (`competition.test_images`), decoded by OpenCV; ids are the file
  names, or their stems;
- `npy`: one `.npy` array N x H x W [x C], memory-mapped; ids from a second `.npy` (`ids`), else
  row numbers;
- `npz`: an `.npz` archive: the image stack under the key `array` (memory-mapped when stored
  uncompressed, read once when compressed), ids under the key `ids`, else row numbers; or
  `array = "*"`: every key is one image, its id the key, read when asked;
- `csv_pixels`: a CSV with one image per row and a column per pixel (Digit Recognizer's
  `test.csv`), parsed once in chunks; ids from `id_column`, else row numbers.

Row-number ids are `first_id + row` as strings ("1".."28000" with `first_id = 1`); ids from a
column or array are its values as strings (`str()` of each; bytes decoded as UTF-8), so a key
column of the sample submission matches them exactly (a CSV row with an empty id offers none the
sample could name: its images are reported `missing` from the sample's side).

Pixels of arrays and CSV rows are scaled as `PixelSettings` declares (`bit_depth`, `pixel_max`:
the value shown as 255, e.g. `pixel_max = 1` for floats in [0, 1]) and clipped to [0, 255]; grey
(N x H x W, or one channel) is repeated to 3 channels, 3 channels are taken as RGB; none of that is
reported. Problems, by name, as the image folder's:

- `missing`: the sample lists an id the reader does not offer -> `image` None;
- `unreadable`: a row with a missing, non-numeric or non-finite pixel (named by its row and the
  column or position), under `bad_pixels = "skip"` -> `image` None (left to the run's fallback:
  empty masks in segmentation);
- `converted`: such a row under `bad_pixels = "zero"` (those pixels read as 0, the image
  predicted), or an image resized to the loader's `size`.

What does not fit the settings at all (the file absent, a CSV row width that is not the image
shape's, an array that is not N x H x W [x C], an `ids` array of another length, an id twice) is
one `InputError` naming the file, what was found and the setting to change, raised when the reader
is opened, before any image. Memory: `.npy` arrays and uncompressed `.npz` members are memory-mapped
(`mmap_mode="r"`), so an image is read from the page cache when asked and never held twice; a CSV
is parsed once in chunks of `CSV_CHUNK_ROWS` rows into one uint8 array of the images.

How to add a reader: a `Reader` subclass here (its `open`, and `raw(row)` or `load`) and a
`ReaderKind` entry naming it in `kernel_src.inputs.READERS`; tests/kernel/test_readers.py runs the
contract over every entry.
"""

from __future__ import annotations

import contextlib
import math
import struct
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InputError
from .images import Image, LoadedImage, PixelSettings, decode_image, image_paths
from .inputs import NPZ_EVERY_KEY, READERS, InputSpec

CSV_CHUNK_ROWS = 2048  # rows parsed at a time: pandas' working memory stays a few chunks' worth


# --- pixels ---------------------------------------------------------------------------------------


def _bad_positions(raw: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
    """The non-finite pixels of a float image; None for integers (every value is a number)."""
    if not np.issubdtype(raw.dtype, np.floating):
        return None
    bad: npt.NDArray[np.bool_] = ~np.isfinite(raw)
    return bad


def array_image(
    raw: npt.NDArray[Any],
    image_id: str,
    where: str,
    size: tuple[int, int] | None,
    pixels: PixelSettings | None,
    bad_pixels: str = "skip",
    bad_note: str | None = None,
) -> LoadedImage:
    """One H x W [x C] array (C 1 or 3) as the loader's `LoadedImage`: scaled by `pixels`, grey repeated
    to 3 channels, resized to `size`. `where` names the image in messages ("row 3 of test.npy");
    non-finite pixels (or `bad_note`, a CSV row's own finding) are `bad_pixels`' problem."""
    started = time.perf_counter()
    pixels = pixels or PixelSettings()
    notes: list[str] = []
    bad = _bad_positions(raw)
    if bad_note is None and bad is not None and bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0][:2])
        bad_note = f"{int(bad.sum())} pixel(s) not finite (first at y={y}, x={x})"
    if bad_note is not None:
        if bad_pixels == "skip":
            return LoadedImage(image_id, None, f"{image_id}: {where}: {bad_note}", "unreadable",
                               time.perf_counter() - started)  # fmt: skip
        raw = np.where(bad, 0, raw) if bad is not None and bad.any() else raw
        notes.append(f"{where}: {bad_note}, read as 0")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    scaled = pixels.scale(np.asarray(raw))
    if scaled.ndim == 2:
        image = cv2.cvtColor(np.ascontiguousarray(scaled), cv2.COLOR_GRAY2RGB)
    else:
        image = np.array(scaled, dtype=np.uint8, order="C")  # a copy: never a view of the memory map
    if size is not None and image.shape[:2] != size:
        notes.append(f"{image.shape[1]}x{image.shape[0]} resized to {size[1]}x{size[0]}")
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    out: Image = np.asarray(image, dtype=np.uint8)
    seconds = time.perf_counter() - started
    if notes:
        return LoadedImage(image_id, out, f"{image_id}: " + "; ".join(notes), "converted", seconds)
    return LoadedImage(image_id, out, None, None, seconds)


# --- readers --------------------------------------------------------------------------------------


class Reader:
    """A reader opened on its input. `ids`: every id it offers, in its order; `load(id, size, pixels)`:
    one `LoadedImage` (an id it does not offer is `missing`), never raising for one image's trouble.
    Safe to call from the loader's worker threads; `close()` (or `with`) releases the file.
    `open(folder, spec, image_ids, image_id, pixels)` is how `open_reader` makes one."""

    @classmethod
    def open(
        cls, folder: Path, spec: InputSpec, image_ids: Sequence[str], image_id: str, pixels: PixelSettings | None
    ) -> Reader:
        raise NotImplementedError

    def __init__(self, ids: Sequence[str], source: Path, spec: InputSpec) -> None:
        self.ids = tuple(ids)
        self.source = source
        self.name = source.name  # messages name the file
        self.spec = spec
        self._index: dict[str, int] = {}
        for i, image_id in enumerate(self.ids):
            if image_id in self._index:
                raise InputError(
                    f"{source}: id {image_id!r} is given to rows {self._index[image_id]} and {i}; ids must be "
                    f"unique (fix the ids, or leave {_id_setting(spec)} empty for row numbers)"
                )
            self._index[image_id] = i

    def load(self, image_id: str, size: tuple[int, int] | None, pixels: PixelSettings | None) -> LoadedImage:
        row = self._index.get(image_id)
        if row is None:
            return LoadedImage(image_id, None, f"{image_id}: listed in the sample submission but not in {self.source}",
                               "missing")  # fmt: skip
        return self.load_row(row, image_id, size, pixels)

    def load_row(
        self, row: int, image_id: str, size: tuple[int, int] | None, pixels: PixelSettings | None
    ) -> LoadedImage:
        raw = self.raw(row)
        return array_image(raw, image_id, f"row {row} of {self.name}", size, pixels, self.spec.bad_pixels)

    def raw(self, row: int) -> npt.NDArray[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (the memory map, the archive)."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _id_setting(spec: InputSpec) -> str:
    return "input.id_column" if spec.reader == "csv_pixels" else "input.ids"


def _row_ids(n: int, first_id: int) -> list[str]:
    return [str(first_id + i) for i in range(n)]


def _as_ids(values: npt.NDArray[Any], where: str) -> list[str]:
    if values.ndim != 1:
        raise InputError(f"{where}: ids must be a 1-D array, one per image (found shape {list(values.shape)})")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _check_images(array: npt.NDArray[Any], where: str) -> None:
    """An image stack: N x H x W or N x H x W x C (C 1 or 3) of numbers."""
    if array.dtype.kind not in "iuf":
        raise InputError(f"{where}: dtype {array.dtype} is not numbers; save the images as an integer or float array")
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3)):
        raise InputError(
            f"{where}: shape {list(array.shape)} is not N x H x W or N x H x W x C (C 1 or 3); save the images "
            "stacked, channels last"
        )


def _single_image(array: npt.NDArray[Any], where: str) -> str | None:
    """Why `array` is not one H x W [x C] image (None: it is one)."""
    if array.dtype.kind not in "iuf":
        return f"{where}: dtype {array.dtype} is not numbers"
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        return f"{where}: shape {list(array.shape)} is not H x W or H x W x C (C 1 or 3)"
    return None


def _file(folder: Path, relative: str, key: str) -> Path:
    path = folder / relative
    if not path.is_file():
        raise InputError(
            f"{key} = {relative!r}: {path} not found; fix {key} (relative to the competition's data folder, "
            f"{folder})"
        )
    return path


def _npy(path: Path, key: str) -> npt.NDArray[Any]:
    try:
        array: npt.NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{key}: {path} is not a .npy array NumPy can read ({e}); save it with np.save") from None
    return array


class FolderReader(Reader):
    """The image folder: ids are its image files' names (or stems); OpenCV decodes each file."""

    def __init__(self, folder: Path, spec: InputSpec, image_ids: Sequence[str], image_id: str) -> None:
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        offered = [Path(f).stem for f in files] if image_id == "stem" else files
        super().__init__(list(dict.fromkeys(offered)), folder, spec)
        self.paths = image_paths(folder, image_ids, image_id)

    @classmethod
    def open(
        cls, folder: Path, spec: InputSpec, image_ids: Sequence[str], image_id: str, pixels: PixelSettings | None
    ) -> Reader:
        return cls(folder, spec, image_ids, image_id)

    def load(self, image_id: str, size: tuple[int, int] | None, pixels: PixelSettings | None) -> LoadedImage:
        return decode_image(self.paths.get(image_id, self.source / image_id), image_id, size, pixels)


class NpyReader(Reader):
    """One `.npy` array N x H x W [x C], memory-mapped; ids from a second `.npy` or row numbers."""

    def __init__(self, folder: Path, spec: InputSpec) -> None:
        path = _file(folder, spec.path, "input.path")
        self.mapped = _npy(path, "input.path")  # np.memmap: read from the page cache when a row is asked for
        _check_images(self.mapped, str(path))
        self.array = self.mapped.view(np.ndarray)  # the same memory, without memmap's per-slice bookkeeping
        n = int(self.array.shape[0])
        ids = _row_ids(n, spec.first_id)
        if spec.ids:
            ids_path = _file(folder, spec.ids, "input.ids")
            ids = _as_ids(np.asarray(_npy(ids_path, "input.ids")), str(ids_path))
            if len(ids) != n:
                raise InputError(f"input.ids: {ids_path} holds {len(ids)} ids for the {n} images of {path}")
        super().__init__(ids, path, spec)

    @classmethod
    def open(
        cls, folder: Path, spec: InputSpec, image_ids: Sequence[str], image_id: str, pixels: PixelSettings | None
    ) -> Reader:
        return cls(folder, spec)

    def raw(self, row: int) -> npt.NDArray[Any]:
        return np.asarray(self.array[row])

    def close(self) -> None:
        mm = getattr(self.mapped, "_mmap", None)
        self.array = self.mapped = np.empty((0,))
        if mm is not None:
            with contextlib.suppress(BufferError, ValueError):  # a view still alive: the GC closes it
                mm.close()


def npz_member_memmap(path: Path, key: str) -> npt.NDArray[Any] | None:
    """The `.npz` member `key` as a read-only memory map when it is stored uncompressed (np.savez);
    None when it is compressed (np.savez_compressed) or not a plain array."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject or math.prod(shape) == 0:
        return None
    mapped: npt.NDArray[Any] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                         order="F" if fortran else "C")  # fmt: skip
    return mapped


class NpzReader(Reader):
    """An `.npz` archive: the image stack under `array` (memory-mapped when stored uncompressed, else
    read once), or (`array = "*"`) every key one image, read when asked."""

    def __init__(self, folder: Path, spec: InputSpec) -> None:
        path = _file(folder, spec.path, "input.path")
        try:
            archive = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise InputError(f"input.path: {path} is not an .npz archive NumPy can read ({e})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"input.path: {path} holds one array, not an .npz archive; use reader = 'npy'")
        self.archive = archive
        keys = list(archive.files)
        self._lock = threading.Lock()  # one archive handle shared by the loader's threads
        self.stack: npt.NDArray[Any] | None = None
        self.mapped: npt.NDArray[Any] | None = None
        self.every_key = spec.array == NPZ_EVERY_KEY
        if self.every_key:
            ids = [k for k in keys if k != spec.ids] if spec.ids else keys
            super().__init__(ids, path, spec)
            return
        name = spec.array
        if not name:
            rest = [k for k in keys if k != spec.ids]
            if len(rest) != 1:
                raise InputError(
                    f"input.array: {path} holds the keys {keys}; name the one holding the images "
                    f"(input.array), or '{NPZ_EVERY_KEY}' when each key is one image"
                )
            name = rest[0]
        if name not in keys:
            raise InputError(f"input.array = {name!r}: {path} holds the keys {keys}; name one of them")
        self.mapped = npz_member_memmap(path, name)
        self.stack = self.archive[name] if self.mapped is None else self.mapped.view(np.ndarray)
        # compressed: read once (a compressed member cannot be mapped)
        _check_images(self.stack, f"{path} key {name!r}")
        n = int(self.stack.shape[0])
        ids = _row_ids(n, spec.first_id)
        if spec.ids:
            if spec.ids not in keys:
                raise InputError(f"input.ids = {spec.ids!r}: {path} holds the keys {keys}; name the ids' key")
            ids = _as_ids(self.archive[spec.ids], f"{path} key {spec.ids!r}")
            if len(ids) != n:
                raise InputError(f"input.ids: key {spec.ids!r} of {path} holds {len(ids)} ids for {n} images")
        super().__init__(ids, path, spec)

    def load_row(
        self, row: int, image_id: str, size: tuple[int, int] | None, pixels: PixelSettings | None
    ) -> LoadedImage:
        if not self.every_key:
            return super().load_row(row, image_id, size, pixels)
        with self._lock:
            try:
                raw = self.archive[image_id]
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                return LoadedImage(image_id, None, f"{image_id}: key of {self.name} unreadable ({e})",
                                   "unreadable")  # fmt: skip
        problem = _single_image(raw, f"key {image_id!r} of {self.name}")
        if problem:
            return LoadedImage(image_id, None, f"{image_id}: {problem}", "unreadable")
        return array_image(raw, image_id, f"key {image_id!r}", size, pixels, self.spec.bad_pixels)

    @classmethod
    def open(
        cls, folder: Path, spec: InputSpec, image_ids: Sequence[str], image_id: str, pixels: PixelSettings | None
    ) -> Reader:
        return cls(folder, spec)

    def raw(self, row: int) -> npt.NDArray[Any]:
        assert self.stack is not None
        return np.asarray(self.stack[row])

    def close(self) -> None:
        self.stack = self.mapped = None
        self.archive.close()


class CsvPixelsReader(Reader):
    """A CSV with one image per row and a column per pixel, parsed once in chunks with pandas into one
    uint8 array of the images (after the pixel scaling); bad rows are kept by name, as problems."""

    def __init__(self, folder: Path, spec: InputSpec, pixels: PixelSettings | None) -> None:
        import pandas as pd  # the image folder and arrays need no pandas at import

        path = _file(folder, spec.path, "input.path")
        self.pixels = pixels or PixelSettings()
        try:
            header = list(pd.read_csv(path, nrows=0).columns)
        except (OSError, ValueError) as e:
            raise InputError(f"input.path: {path} cannot be read as a CSV ({e})") from None
        if spec.id_column and spec.id_column not in header:
            raise InputError(
                f"input.id_column = {spec.id_column!r}: {path} has no such column (its first columns: "
                f"{header[:4]}); name the id column, or leave it empty for row numbers"
            )
        skipped = {spec.id_column, *spec.ignore_columns}
        pixel_columns = [c for c in header if c not in skipped]
        shape = spec.shape
        wanted = math.prod(shape)
        if len(pixel_columns) != wanted:
            listed = f"'{pixel_columns[0]}' .. '{pixel_columns[-1]}'" if pixel_columns else "none"
            raise InputError(
                f"{path}: rows hold {len(pixel_columns)} pixel columns ({listed}), but input.shape = {list(shape)} "
                f"needs {wanted}; fix input.shape (or input.id_column / input.ignore_columns for the columns that "
                "are not pixels)"
            )
        self.shape = shape
        self.images = np.zeros((0, *shape), dtype=np.uint8)
        self.bad: dict[int, str] = {}  # row -> what is wrong with it
        chunks: list[npt.NDArray[np.uint8]] = []
        ids: list[str] = []
        read_as = {spec.id_column: str} if spec.id_column else None
        try:
            reader = pd.read_csv(
                path, chunksize=CSV_CHUNK_ROWS, dtype=read_as, keep_default_na=False, na_values=[""],
                skip_blank_lines=False, low_memory=False,
            )  # fmt: skip
            start = 0
            for chunk in reader:
                chunks.append(self._chunk(chunk, pixel_columns, start, path.name))
                if spec.id_column:
                    ids += ["" if isinstance(v, float) else str(v) for v in chunk[spec.id_column].tolist()]
                start += len(chunk)
        except (OSError, ValueError) as e:  # pandas' ParserError is a ValueError: a row with too many fields
            raise InputError(f"{path}: cannot be read as CSV pixel rows ({str(e).strip()}); fix the file") from None
        if chunks:
            self.images = np.concatenate(chunks)
        if not spec.id_column:
            ids = _row_ids(len(self.images), spec.first_id)
        super().__init__([i if i else f"<row {r} without an id>" for r, i in enumerate(ids)], path, spec)

    @classmethod
    def open(
        cls, folder: Path, spec: InputSpec, image_ids: Sequence[str], image_id: str, pixels: PixelSettings | None
    ) -> Reader:
        return cls(folder, spec, pixels)

    def _chunk(self, chunk: Any, columns: list[str], start: int, name: str) -> npt.NDArray[np.uint8]:
        """The chunk's rows scaled to uint8 images; its bad rows recorded in `self.bad`."""
        import pandas as pd

        cells = chunk if len(columns) == chunk.shape[1] else chunk[columns]  # a copy only when columns are left out
        if any(not pd.api.types.is_numeric_dtype(t) for t in cells.dtypes):
            numbers = cells.apply(pd.to_numeric, errors="coerce")
        else:
            numbers = cells
        # float32 holds every integer pixel value exactly (up to 2**24), and NaN for what is not a number
        values = numbers.to_numpy(dtype=np.float32, na_value=np.nan)
        bad = ~np.isfinite(values)
        for r in np.flatnonzero(bad.any(axis=1)).tolist():
            cols = np.flatnonzero(bad[r])
            column = columns[int(cols[0])]
            found = cells.iloc[r, int(cols[0])]
            what = "missing" if isinstance(found, float) and math.isnan(found) else f"{str(found)[:20]!r}, not a number"
            more = f" (and {len(cols) - 1} more)" if len(cols) > 1 else ""
            self.bad[start + r] = f"pixel column {column!r} is {what}{more}"
        values[bad] = 0.0
        stacked = values.reshape(len(values), *self.shape)
        if self.pixels.pixel_max != "image":
            return self.pixels.scale(stacked)
        images = np.empty(stacked.shape, dtype=np.uint8)
        for r in range(len(values)):  # pixel_max = "image": each image's own maximum
            images[r] = self.pixels.scale(stacked[r])
        return images

    def load_row(
        self, row: int, image_id: str, size: tuple[int, int] | None, pixels: PixelSettings | None
    ) -> LoadedImage:
        where = f"row {row} of {self.name} (line {row + 2})"
        note = self.bad.get(row)
        # already scaled when parsed: the loader's pixel settings are the reader's
        return array_image(self.images[row], image_id, where, size, None, self.spec.bad_pixels, note)


def open_reader(
    spec: InputSpec,
    folder: Path,
    image_ids: Sequence[str] = (),
    image_id: str = "file",
    pixels: PixelSettings | None = None,
) -> Reader:
    """The reader `spec` names (`kernel_src.inputs.READERS`), opened on `folder`: the image folder for
    `images`, else the data folder `spec.path` is relative to. `image_ids`/`image_id`: the sample's
    ids and how the image folder maps them to files. An input that does not fit is one `InputError`."""
    opener: type[Reader] = globals()[READERS[spec.reader].opener]
    return opener.open(Path(folder), spec, image_ids, image_id, pixels)
