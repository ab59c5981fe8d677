"""The optional one-class-per-pixel post-process: where classes overlap, the most probable keeps the pixel."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_src.errors import SpecError
from kernel_src.postprocess import postprocess
from kernel_src.spec import InferenceSpec, PostprocessSpec


def _spec(exclusive: bool, threshold: float = 0.5, min_component: int = 0) -> PostprocessSpec:
    return PostprocessSpec(
        threshold=(threshold,) * 3, min_component=(min_component,) * 3, min_area=(0,) * 3, one_class_per_pixel=exclusive
    )


def test_overlapping_classes_keep_only_the_most_probable() -> None:
    probs = np.zeros((3, 4, 6), dtype=np.float32)
    probs[0, :, :4] = 0.9
    probs[1, :, 2:] = 0.7  # overlaps class 0 on columns 2-3, where class 0 is more probable
    probs[2, 0, 0] = np.nan
    plain = postprocess(probs, _spec(False))
    exclusive = postprocess(probs, _spec(True))
    assert plain[0, :, 2:4].all() and plain[1, :, 2:4].all()
    assert exclusive[0, :, :4].all() and not exclusive[1, :, :4].any() and exclusive[1, :, 4:].all()
    assert not (exclusive.sum(axis=0) > 1).any()
    assert not exclusive[2].any()


def test_exclusive_pixels_are_lost_before_small_components_are_counted() -> None:
    probs = np.zeros((3, 4, 6), dtype=np.float32)
    probs[1, :, :3] = 0.8  # 12 pixels
    probs[0, :, :2] = 0.95  # takes 8 of them: 4 are left to class 1, fewer than min_component
    assert postprocess(probs, _spec(False, min_component=5))[1].sum() == 12
    assert postprocess(probs, _spec(True, min_component=5))[1].sum() == 0


def test_the_setting_is_read_and_checked() -> None:
    base = {"segmenters": [{"name": "s", "kind": "torchscript", "file": "s.pt"}]}
    assert InferenceSpec.from_dict(base).postprocess.one_class_per_pixel is False
    on = InferenceSpec.from_dict({**base, "postprocess": {"one_class_per_pixel": True}})
    assert on.postprocess.one_class_per_pixel is True
    assert InferenceSpec.from_dict(on.to_dict()) == on
    with pytest.raises(SpecError, match="one_class_per_pixel"):
        InferenceSpec.from_dict({**base, "postprocess": {"one_class_per_pixel": "yes"}})
