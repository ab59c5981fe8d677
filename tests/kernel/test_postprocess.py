"""Post-processing: strict per-class threshold, 8-connected small components removed, then min area."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernel_src.postprocess import postprocess
from kernel_src.spec import PostprocessSpec


def spec(threshold: float = 0.5, min_component: int = 0, min_area: int = 0, n: int = 1) -> PostprocessSpec:
    return PostprocessSpec(threshold=(threshold,) * n, min_component=(min_component,) * n, min_area=(min_area,) * n)


def reference(probs: npt.NDArray[np.float32], s: PostprocessSpec) -> npt.NDArray[np.bool_]:
    """Slow and obvious: flood fill with 8 neighbours, pixel by pixel."""
    out = np.zeros(probs.shape, dtype=bool)
    for c in range(probs.shape[0]):
        fg = probs[c] > s.threshold[c]
        h, w = fg.shape
        seen = np.zeros_like(fg)
        for y in range(h):
            for x in range(w):
                if not fg[y, x] or seen[y, x]:
                    continue
                component, stack = [], [(y, x)]
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    component.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                if len(component) >= s.min_component[c]:
                    for cy, cx in component:
                        out[c, cy, cx] = True
        if out[c].sum() < s.min_area[c]:
            out[c] = False
    return out


@settings(max_examples=60, deadline=None)
@given(
    probs=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 11)),
                     elements=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0])),
    threshold=st.sampled_from([0.0, 0.4, 0.5, 0.6]),
    min_component=st.integers(0, 6),
    min_area=st.integers(0, 12),
)  # fmt: skip
def test_matches_the_reference(
    probs: npt.NDArray[np.float32], threshold: float, min_component: int, min_area: int
) -> None:
    s = spec(threshold, min_component, min_area, n=probs.shape[0])
    result = postprocess(probs, s)
    assert result.dtype == np.bool_
    assert result.shape == probs.shape
    np.testing.assert_array_equal(result, reference(probs, s))


def test_threshold_is_strict_and_per_class() -> None:
    probs = np.full((2, 2, 3), 0.5, dtype=np.float32)
    probs[1] = 0.45
    out = postprocess(probs, PostprocessSpec(threshold=(0.5, 0.4), min_component=(0, 0), min_area=(0, 0)))
    assert not out[0].any()  # 0.5 is not > 0.5
    assert out[1].all()


def test_diagonal_pixels_are_one_component() -> None:
    probs = np.zeros((1, 5, 7), dtype=np.float32)
    for i in range(3):
        probs[0, i, i] = 1.0  # 4-connectivity would see three 1-pixel components
    assert postprocess(probs, spec(min_component=3)).sum() == 3
    assert postprocess(probs, spec(min_component=4)).sum() == 0


def test_small_component_removed_large_kept() -> None:
    probs = np.zeros((1, 8, 9), dtype=np.float32)
    probs[0, 0:2, 0:2] = 0.9  # 4 pixels
    probs[0, 5:8, 5:8] = 0.9  # 9 pixels
    out = postprocess(probs, spec(min_component=5))
    assert not out[0, 0:2, 0:2].any()
    assert out[0, 5:8, 5:8].all()
    assert out.sum() == 9


def test_min_area_counts_what_is_left_after_component_removal() -> None:
    probs = np.zeros((1, 8, 9), dtype=np.float32)
    probs[0, 0:2, 0:2] = 0.9  # 4 pixels, removed by min_component
    probs[0, 5:8, 5:8] = 0.9  # 9 pixels kept
    assert postprocess(probs, spec(min_component=5, min_area=9)).sum() == 9  # area 9 is not below 9
    assert postprocess(probs, spec(min_component=5, min_area=10)).sum() == 0  # 13 before removal, 9 after
    assert postprocess(probs, spec(min_component=0, min_area=13)).sum() == 13


def test_nan_is_background_and_input_is_untouched() -> None:
    probs = np.full((1, 3, 4), np.nan, dtype=np.float32)
    probs[0, 1, 1] = 0.9
    before = probs.copy()
    out = postprocess(probs, spec())
    assert out.sum() == 1 and out[0, 1, 1]
    np.testing.assert_array_equal(probs, before)


def test_severstal_sized_input() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((4, 256, 1600), dtype=np.float32)
    s = PostprocessSpec(threshold=(0.5, 0.6, 0.7, 0.99), min_component=(150, 0, 10, 5), min_area=(600, 0, 0, 5000))
    out = postprocess(probs, s)
    np.testing.assert_array_equal(out[1], probs[1] > 0.6)
    assert not out[3].any()  # 1% of pixels in tiny components: all removed


def test_spec_that_does_not_fit_the_classes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"postprocess\.threshold has 1 values for 2 classes"):
        postprocess(np.zeros((2, 3, 3), dtype=np.float32), spec())
    with pytest.raises(ValueError, match="classes, height, width"):
        postprocess(np.zeros((3, 3), dtype=np.float32), spec())
