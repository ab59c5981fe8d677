"""RLE: exact round trips in both orders, agreement with a slow reference, malformed input refused."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernel_src.rle import decode, encode


def slow_decode(rle: str, shape: tuple[int, int], order: str) -> npt.NDArray[np.uint8]:
    """Pixel by pixel, straight from the definition: pixel k (1-based) along the `order` walk."""
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[::2], values[1::2], strict=True):
        for k in range(start - 1, start - 1 + length):
            if order == "F":
                mask[k % height, k // height] = 1
            else:
                mask[k // width, k % width] = 1
    return mask


def slow_encode(mask: npt.NDArray[np.uint8], order: str) -> str:
    height, width = mask.shape
    pixels = [mask[k % height, k // height] if order == "F" else mask[k // width, k % width] for k in range(mask.size)]
    runs: list[int] = []
    for k, value in enumerate(pixels):
        if value and (k == 0 or not pixels[k - 1]):
            runs += [k + 1, 0]
        if value:
            runs[-1] += 1
    return " ".join(str(v) for v in runs)


masks = hnp.arrays(
    dtype=np.uint8,
    shape=st.tuples(st.integers(1, 13), st.integers(1, 17)),
    elements=st.integers(0, 1),
)


@settings(max_examples=200, deadline=None)
@given(mask=masks, order=st.sampled_from(["F", "C"]))
def test_round_trip_and_reference(mask: npt.NDArray[np.uint8], order: str) -> None:
    rle = encode(mask, order)
    assert rle == slow_encode(mask, order)
    shape = (mask.shape[0], mask.shape[1])
    decoded = decode(rle, shape, order)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(slow_decode(rle, shape, order), mask)


@settings(max_examples=100, deadline=None)
@given(mask=masks, order=st.sampled_from(["F", "C"]))
def test_runs_are_sorted_non_overlapping_and_not_adjacent(mask: npt.NDArray[np.uint8], order: str) -> None:
    values = [int(v) for v in encode(mask, order).split()]
    starts, lengths = values[::2], values[1::2]
    assert all(length >= 1 for length in lengths)
    for i in range(len(starts) - 1):
        assert starts[i] + lengths[i] < starts[i + 1]  # a gap: maximal runs
    assert all(s >= 1 for s in starts)


def test_severstal_column_major_convention() -> None:
    mask = np.zeros((4, 3), dtype=np.uint8)
    mask[1, 0] = 1  # row 2 of column 1 is pixel 2 in column-major order
    assert encode(mask, "F") == "2 1"
    assert encode(mask, "C") == "4 1"
    mask[2:, 0] = 1
    mask[0, 1] = 1  # the run continues across the column boundary: pixels 2, 3, 4, 5
    assert encode(mask, "F") == "2 4"


def test_empty_full_and_non_binary_masks() -> None:
    assert encode(np.zeros((5, 7), dtype=np.uint8)) == ""
    assert encode(np.ones((5, 7), dtype=bool)) == "1 35"
    assert encode(np.full((2, 2), 255, dtype=np.uint8), "C") == "1 4"
    np.testing.assert_array_equal(decode("", (5, 7)), np.zeros((5, 7), dtype=np.uint8))
    np.testing.assert_array_equal(decode("  ", (2, 2)), np.zeros((2, 2), dtype=np.uint8))


def test_any_whitespace_separates_values() -> None:
    np.testing.assert_array_equal(decode(" 1\t2\n4  1 ", (1, 5), "C"), [[1, 1, 0, 1, 0]])


def test_touching_runs_decode() -> None:
    # Not what encode writes, but sorted and non-overlapping, so valid input.
    np.testing.assert_array_equal(decode("1 2 3 2", (1, 5), "C"), [[1, 1, 1, 1, 0]])


def test_severstal_size_round_trip() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((256, 1600)) > 0.7).astype(np.uint8)
    np.testing.assert_array_equal(decode(encode(mask), (256, 1600)), mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "not an integer"),
        ("1.5 2", "not an integer"),
        ("0 2", "below 1"),
        ("-1 2", "below 1"),
        ("3 0", "length 0"),
        ("5 2 1 2", "unsorted or overlap"),
        ("1 4 3 2", "unsorted or overlap"),
        ("19 3", "out of range"),
        ("1 99999999999999999999", "out of range"),
        ("+1 2", "not an integer"),
        ("--1 2", "not an integer"),
        ("1 -99999999999999999999", "out of range"),
        ("1 ²", "not an integer"),
    ],
)
def test_malformed_rle_is_refused(rle: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(rle, (4, 5))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="order"):
        encode(np.zeros((2, 2)), "X")
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="order"):
        decode("1 1", (2, 2), "K")
    with pytest.raises(ValueError, match="positive"):
        decode("1 1", (0, 2))
