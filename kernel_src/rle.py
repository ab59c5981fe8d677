"""Run-length encoding of binary masks, the way Kaggle segmentation competitions write them.

An RLE string is a space-separated list of 1-indexed "start length" pairs, sorted by start and
non-overlapping; the empty string is an empty mask. Pixels are numbered along the flattened
mask in `order`:

- "F" (column-major, Severstal, Airbus, Clouds): top to bottom, then left to right, so pixel 2
  is row 2 of column 1;
- "C" (row-major, Carvana, Sartorius): left to right, then top to bottom.

Both directions are vectorised with numpy (no Python loop over pixels or runs).

Per-object submissions (one row per connected component, e.g. Airbus): `encode_objects(mask,
order)` gives one RLE per 8-connected component, in the order of each component's first pixel
along `order`; `union(a, b)` joins two objects' RLEs back into one mask's (overlap refused).

Relative RLE (SIIM-ACR): the first start is 0-based, each later start counts the pixels between
the end of the previous run and it; `to_relative` / `from_relative` convert (lengths unchanged).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from .spec import RLE_ORDERS


def _check_order(order: str) -> Literal["F", "C"]:
    if order not in RLE_ORDERS:
        raise ValueError(f"RLE order {order!r} must be 'F' (column-major, Severstal) or 'C' (row-major)")
    return "F" if order == "F" else "C"


def encode(mask: npt.NDArray[np.generic], order: str = "F") -> str:
    """The RLE string of a 2-D mask (any dtype; non-zero is foreground). `""` when empty."""
    np_order = _check_order(order)
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D [height, width] mask, got shape {tuple(mask.shape)}")
    flat = np.asarray(mask).ravel(order=np_order) != 0
    if not flat.any():
        return ""
    padded = np.concatenate(([False], flat, [False]))
    # Indices where the value changes: run starts and run ends alternate (0-based in `flat` + 1).
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges.tolist()))


def _integer(token: str) -> int:
    digits = token[1:] if token.startswith("-") else token
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"RLE value {token!r} is not an integer; expected 'start length' pairs")
    if len(digits) > 18:
        raise ValueError(f"RLE value {token!r} is out of range (too large for any mask)")
    return int(token)


def _values(rle: str, tokens: list[str]) -> npt.NDArray[np.int64]:
    digits = "".join(tokens)
    if digits.isascii() and digits.isdigit():
        if max(map(len, tokens)) > 18:
            raise ValueError(f"RLE value {max(tokens, key=len)!r} is out of range (too large for any mask)")
        # Every token is plain digits, so numpy's text parser reads them all (fast path).
        values = np.fromstring(rle, dtype=np.int64, sep=" ")
        if values.size == len(tokens):
            return values
    return np.array([_integer(t) for t in tokens], dtype=np.int64)


def parse(rle: str, size: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validated 0-based run starts and exclusive ends of an RLE string over `size` pixels.

    Raises ValueError when a token is not an integer, the count is odd, a start is below 1, a
    length is below 1, runs are unsorted or overlap, or a run ends past pixel `size`.
    """
    tokens = rle.split()
    if not tokens:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)}); it must be 'start length' pairs")
    values = _values(rle, tokens)
    starts, lengths = values[::2] - 1, values[1::2]
    if starts.min() < 0:
        raise ValueError(f"RLE start {int(starts.min()) + 1} is below 1; pixels are numbered from 1")
    if lengths.min() < 1:
        i = int(np.argmin(lengths))
        raise ValueError(f"RLE run at start {int(starts[i]) + 1} has length {int(lengths[i])}; lengths must be >= 1")
    ends = starts + lengths
    if len(starts) > 1:
        clash = np.flatnonzero(starts[1:] < ends[:-1])
        if clash.size:
            i = int(clash[0])
            raise ValueError(
                f"RLE runs are unsorted or overlap: run {int(starts[i]) + 1} {int(lengths[i])} is followed by "
                f"start {int(starts[i + 1]) + 1}; starts must increase and runs must not overlap"
            )
    if ends[-1] > size:
        raise ValueError(f"RLE run ends at pixel {int(ends[-1])}, past the mask's {size} pixels (out of range)")
    return starts, ends


def decode(rle: str, shape: tuple[int, int], order: str = "F") -> npt.NDArray[np.uint8]:
    """The uint8 0/1 mask of `shape` that `rle` describes (the inverse of `encode`)."""
    np_order = _check_order(order)
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"decode needs a positive (height, width) shape, got {shape}")
    size = height * width
    starts, ends = parse(rle, size)
    # Alternating background and foreground stretches: gap, run, gap, run, ..., final gap.
    k = len(starts)
    counts = np.empty(2 * k + 1, dtype=np.int64)
    counts[0 : 2 * k : 2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1 : 2 * k : 2] = ends - starts
    counts[-1] = size - (int(ends[-1]) if k else 0)
    values = np.zeros(2 * k + 1, dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    mask: npt.NDArray[np.uint8] = flat.reshape((height, width), order=np_order)
    return mask


def encode_objects(mask: npt.NDArray[np.generic], order: str = "F") -> list[str]:
    """One RLE string per 8-connected component of a 2-D mask, in the order their first pixels
    come along `order`; `[]` when the mask is empty."""
    np_order = _check_order(order)
    if mask.ndim != 2:
        raise ValueError(f"encode_objects expects a 2-D [height, width] mask, got shape {tuple(mask.shape)}")
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    count, labels = cv2.connectedComponents(binary, connectivity=8)
    if count <= 1:
        return []
    flat = np.asarray(labels).ravel(order=np_order)
    first = np.unique(flat[flat > 0], return_index=True)  # labels and where each first appears
    ordered = [int(label) for _, label in sorted(zip(first[1].tolist(), first[0].tolist(), strict=True))]
    return [encode(np.asarray(labels) == label, order) for label in ordered]


def union(a: str, b: str) -> str:
    """The RLE of the union of two objects' RLEs (same order and shape); ValueError when they
    overlap (instance-level competitions require objects not to)."""
    unbounded = 1 << 62
    sa, ea = parse(a, unbounded)
    sb, eb = parse(b, unbounded)
    starts, ends = np.concatenate((sa, sb)), np.concatenate((ea, eb))
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    if len(starts) > 1 and bool((starts[1:] < ends[:-1]).any()):
        raise ValueError("two objects overlap; each pixel may belong to one object only")
    # Touching runs (one ends where the next starts) become one run.
    keep = np.concatenate(([True], starts[1:] != ends[:-1]))
    run_starts = starts[keep]
    run_ends = np.concatenate((ends[np.flatnonzero(keep)[1:] - 1], ends[-1:])) if len(ends) else ends
    pairs = np.empty(2 * len(run_starts), dtype=np.int64)
    pairs[0::2] = run_starts + 1
    pairs[1::2] = run_ends - run_starts
    return " ".join(map(str, pairs.tolist()))


def to_relative(rle: str) -> str:
    """A standard RLE written with relative starts (SIIM-ACR); "" stays ""."""
    starts, ends = parse(rle, 1 << 62)
    if not starts.size:
        return ""
    gaps = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2], pairs[1::2] = gaps, ends - starts
    return " ".join(map(str, pairs.tolist()))


def from_relative(rle: str) -> str:
    """The standard RLE of a relative-start RLE; ValueError when it is not pairs of integers."""
    tokens = rle.split()
    if not tokens:
        return ""
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)}); it must be 'start length' pairs")
    values = _values(rle, tokens)
    gaps, lengths = values[0::2], values[1::2]
    if gaps.min() < 0 or lengths.min() < 1:
        raise ValueError("relative RLE needs gaps >= 0 and lengths >= 1")
    starts = np.cumsum(gaps + np.concatenate(([0], lengths[:-1])))  # 0-based
    pairs = np.empty(len(values), dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts + 1, lengths
    return " ".join(map(str, pairs.tolist()))
