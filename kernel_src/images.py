"""Background image decoding with OpenCV: bounded memory, sample order, problems reported not raised.

`ImageLoader(test_dir, image_ids, ...)` yields one `LoadedImage` per id, in the order given (the
sample submission's). Decoding runs in worker threads (OpenCV releases the GIL while it decodes),
so it overlaps the model's compute; at most `prefetch` images are decoded ahead of the consumer,
however many images there are.

What a `LoadedImage.image` holds: an `(height, width, 3)` uint8 array in RGB channel order (the
order torchvision, timm and albumentations-with-`cv2.cvtColor` pipelines train on), resized to
`size` when one is given and the file differs. Problems never raise:

- `issue="missing"`: the sample lists the image but the folder has no such file -> `image` None;
- `issue="unreadable"`: zero bytes, a truncated JPEG, not an image at all -> `image` None;
- `issue="converted"`: decoded, but single-channel, 4-channel, 16-bit or of another size than
  declared; the image is converted to 3-channel uint8 RGB at `size` and predicted as usual.

What is declared (`PixelSettings`, from the spec's `bit_depth`, `pixel_max`, `image_channels`) is
not a problem: a 16-bit file when `bit_depth = 16` is scaled by `pixel_max` (the value shown as
255: the depth's full range, the image's own maximum, or a number), a grey file when
`image_channels = 1` is repeated to 3 channels, both without a warning. `size=None` keeps each
image at its own size. `image_paths` maps image ids to files: the id is the file name, or its
stem (`image_id = "stem"` in `[submission]`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
T = TypeVar("T")


@dataclass(frozen=True)
class PixelSettings:
    """How the test files are declared: `bit_depth` 8 or 16, `pixel_max` ("depth": 2**bit_depth - 1,
    "image": each image's own maximum, or a number) mapped to 255, `channels` 3 or 1."""

    bit_depth: int = 8
    pixel_max: float | str = "depth"
    channels: int = 3

    def scale(self, raw: npt.NDArray[np.generic]) -> Image:
        """Pixels of the declared depth to uint8: `raw * 255 / pixel_max`, rounded and clipped."""
        if self.pixel_max == "depth":
            top = float(2**self.bit_depth - 1)
        elif self.pixel_max == "image":
            top = float(raw.max()) if raw.size else 0.0
        else:
            top = float(self.pixel_max)
        if raw.dtype == np.uint8 and top == 255.0:
            same: Image = np.asarray(raw, dtype=np.uint8)
            return same
        if top <= 0:
            return np.zeros(raw.shape, dtype=np.uint8)
        scaled = np.rint(raw.astype(np.float32) * np.float32(255.0 / top))
        out: Image = np.clip(scaled, 0, 255).astype(np.uint8)
        return out


def image_paths(test_dir: Path, image_ids: Sequence[str], image_id: str = "file") -> dict[str, Path]:
    """The file of each image id: `test_dir / id` ("file"), or the file in `test_dir` whose name
    without its extension is the id ("stem"; an id with no such file maps to `test_dir / id`,
    which the loader reports missing)."""
    test_dir = Path(test_dir)
    if image_id == "file":
        return {i: test_dir / i for i in image_ids}
    by_stem: dict[str, Path] = {}
    if test_dir.is_dir():
        for path in sorted(test_dir.iterdir()):
            by_stem.setdefault(path.stem, path)
    return {i: by_stem.get(i, test_dir / i) for i in image_ids}


@dataclass(frozen=True)
class LoadedImage:
    """One decoded image. `image` is None exactly when `issue` is "missing" or "unreadable"."""

    image_id: str
    image: Image | None
    problem: str | None = None  # what happened, for the warning
    issue: str | None = None  # the problem's kind: "missing" | "unreadable" | "converted" | None
    decode_s: float = 0.0  # seconds spent reading and decoding (in a worker thread)


class ImageSource(Protocol):
    """What the loader asks a reader (`kernel_src.readers.Reader`) for: one image by id, never raising
    for that image's own trouble (a problem in the `LoadedImage` instead)."""

    def load(self, image_id: str, size: tuple[int, int] | None, pixels: PixelSettings | None) -> LoadedImage: ...


def _truncated_jpeg(data: bytes) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it.

    0xFF bytes inside entropy-coded data are always stuffed (FF 00) or restart markers, so FF D9
    after the last start-of-scan (FF DA) is the true end; an EXIF thumbnail's own markers sit
    before the main image's scan and do not fool this.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _to_rgb_uint8(raw: npt.NDArray[np.generic], pixels: PixelSettings | None = None) -> tuple[Image, str | None]:
    """3-channel uint8 RGB from OpenCV's BGR/grey/BGRA output, and what was converted (if anything)."""
    pixels = pixels or PixelSettings()
    note: list[str] = []
    arr: Image
    declared = np.uint16 if pixels.bit_depth == 16 else np.uint8
    if raw.dtype == declared:
        arr = pixels.scale(raw)
    elif raw.dtype == np.uint8:
        arr = raw.astype(np.uint8, copy=False)
        note.append(f"uint8 pixels where bit_depth = {pixels.bit_depth} is declared, taken as they are")
    else:
        if raw.dtype == np.uint16:
            arr = (raw.astype(np.uint32) // 257).astype(np.uint8)
        else:
            arr = np.clip(raw.astype(np.float64), 0, 255).astype(np.uint8)
        note.append(f"{raw.dtype} pixels scaled to uint8")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        if pixels.channels != 1:
            note.append("single-channel image converted to 3 channels")
        rgb = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    elif arr.shape[2] == 4:
        note.append("4-channel image: alpha dropped")
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb, dtype=np.uint8), ("; ".join(note) or None)


def decode_image(
    path: Path, image_id: str, size: tuple[int, int] | None = None, pixels: PixelSettings | None = None
) -> LoadedImage:
    """Read and decode one file; every failure becomes a `LoadedImage` with a problem, never raises."""
    started = time.perf_counter()

    def result(image: Image | None, problem: str | None, issue: str | None) -> LoadedImage:
        return LoadedImage(image_id, image, problem, issue, time.perf_counter() - started)

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return result(None, f"{image_id}: listed in the sample submission but not found in {path.parent}", "missing")
    except OSError as e:
        return result(None, f"{image_id}: cannot be read ({e.strerror or e})", "unreadable")
    if not data:
        return result(None, f"{image_id}: zero-byte file", "unreadable")
    if _truncated_jpeg(data):
        return result(None, f"{image_id}: truncated JPEG (no end-of-image marker)", "unreadable")
    try:
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        return result(None, f"{image_id}: OpenCV cannot decode it ({str(e).strip().splitlines()[-1]})", "unreadable")
    if raw is None or raw.size == 0 or raw.ndim not in (2, 3):
        return result(None, f"{image_id}: not an image OpenCV can decode ({len(data)} bytes)", "unreadable")
    image, note = _to_rgb_uint8(raw, pixels)
    notes = [note] if note else []
    if size is not None and image.shape[:2] != size:
        notes.append(f"{image.shape[1]}x{image.shape[0]} resized to {size[1]}x{size[0]}")
        image = np.asarray(cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    if notes:
        return result(image, f"{image_id}: " + "; ".join(notes), "converted")
    return result(image, None, None)


class ImageLoader:
    """Iterate `LoadedImage`s for `image_ids` (files in `test_dir`) in order, decoding ahead.

    `workers` threads decode (0: decode in the consumer's thread); at most `prefetch` images are
    decoded or decoding ahead of the consumer. `submitted` counts images handed to the workers so
    far (the bound is observable). Close it (or use `with`) to stop the workers early. `reader`: where
    the images come from when not from files in `test_dir` (`kernel_src.readers`; the caller closes it).
    """

    def __init__(
        self,
        test_dir: Path,
        image_ids: Sequence[str],
        *,
        workers: int = 2,
        prefetch: int = 8,
        size: tuple[int, int] | None = None,
        pixels: PixelSettings | None = None,
        paths: Mapping[str, Path] | None = None,
        reader: ImageSource | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.test_dir = Path(test_dir)
        self.image_ids = tuple(image_ids)
        self.size = size
        self.pixels = pixels
        self.paths = dict(paths or {})  # image id -> file; ids not in it: test_dir / id
        self.reader = reader
        self.prefetch = max(1, prefetch)
        self.submitted = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") if workers else None
        self._pending: deque[Future[LoadedImage]] = deque()

    def _decode(self, image_id: str) -> LoadedImage:
        try:
            if self.reader is not None:
                return self.reader.load(image_id, self.size, self.pixels)
            path = self.paths.get(image_id, self.test_dir / image_id)
            return decode_image(path, image_id, self.size, self.pixels)
        except Exception as e:  # a decoder bug must not stop the run: this image gets empty masks
            return LoadedImage(image_id, None, f"{image_id}: decoding failed ({type(e).__name__}: {e})", "unreadable")

    def _submit_until_full(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self.prefetch and self.submitted < len(self.image_ids):
            self._pending.append(self._pool.submit(self._decode, self.image_ids[self.submitted]))
            self.submitted += 1

    def __iter__(self) -> Iterator[LoadedImage]:
        if self._pool is None:
            for image_id in self.image_ids:
                self.submitted += 1
                yield self._decode(image_id)
            return
        self._submit_until_full()
        while self._pending:
            loaded = self._pending.popleft().result()
            self._submit_until_full()
            yield loaded

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ImageLoader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def shape_batches(
    items: Iterable[T], size: int, image_of: Callable[[T], Image | None], stopped: Callable[[], bool]
) -> Iterator[list[T]]:
    """Batches of `size` items whose images share one shape (items without an image are a shape of
    their own), each yielded as it fills; when `stopped()` after a full batch, nothing more is read
    or yielded; else the partial batches come last. Both engines batch their images this way."""
    batches: dict[tuple[int, ...] | None, list[T]] = {}
    for item in items:
        image = image_of(item)
        shape = None if image is None else tuple(image.shape)
        batch = batches.setdefault(shape, [])
        batch.append(item)
        if len(batch) == size:
            del batches[shape]
            yield batch
            if stopped():
                return
    yield from list(batches.values())
