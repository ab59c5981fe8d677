"""Probabilities -> binary masks: pixel threshold, small components removed, minimum mask area.

For each class c, in this order:
1. pixel threshold: `probs[c] > threshold[c]`;
2. connected components (8-connectivity) with fewer than `min_component[c]` pixels are removed
   (one `cv2.connectedComponentsWithStats` call, then a lookup table indexed by the label image);
3. when the remaining area is below `min_area[c]` pixels the mask becomes empty.

With `one_class_per_pixel`, a pixel can belong to one class only: before step 1, each pixel is
kept only by the class of highest probability there (ties: the lower class index; NaN counts as
the lowest probability), so where thresholded classes overlap the most probable one keeps it.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from kernel_src.spec import PostprocessSpec


def _check(probs: npt.NDArray[np.floating], spec: PostprocessSpec) -> int:
    if probs.ndim != 3:
        raise ValueError(f"postprocess expects probabilities [classes, height, width], got shape {probs.shape}")
    n = probs.shape[0]
    for name in ("threshold", "min_component", "min_area"):
        values = getattr(spec, name)
        if len(values) != n:
            raise ValueError(
                f"postprocess.{name} has {len(values)} values for {n} classes; give one per class "
                "(build the spec with InferenceSpec.from_dict, which broadcasts a single value)"
            )
    return int(n)


def remove_small_components(mask: npt.NDArray[np.bool_], min_component: int) -> npt.NDArray[np.bool_]:
    """`mask` without its 8-connected components of fewer than `min_component` pixels."""
    if min_component <= 1 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_component
    keep[0] = False  # label 0 is the background
    if keep[1:count].all():
        return mask
    result: npt.NDArray[np.bool_] = keep[labels]
    return result


def winning_class(probs: npt.NDArray[np.floating]) -> npt.NDArray[np.intp]:
    """[H,W]: the class of highest probability at each pixel of `probs` [C,H,W] (NaN lowest)."""
    if np.isnan(probs).any():
        probs = np.where(np.isnan(probs), -1.0, probs)
    result: npt.NDArray[np.intp] = probs.argmax(axis=0)
    return result


def postprocess(probs: npt.NDArray[np.floating], spec: PostprocessSpec) -> npt.NDArray[np.bool_]:
    """bool masks [C,H,W] from float probabilities [C,H,W] in [0, 1] (NaN counts as background)."""
    n = _check(probs, spec)
    masks = np.empty(probs.shape, dtype=np.bool_)
    winner = winning_class(probs) if spec.one_class_per_pixel and n > 1 else None
    for c in range(n):
        mask = np.ascontiguousarray(probs[c] > spec.threshold[c])
        if winner is not None:
            mask &= winner == c
        area = int(np.count_nonzero(mask))
        # Removing components only lowers the area, so a mask already below either limit is empty.
        if area < spec.min_area[c] or area < spec.min_component[c]:
            masks[c] = False
            continue
        mask = remove_small_components(mask, spec.min_component[c])
        if spec.min_area[c] > 0 and int(np.count_nonzero(mask)) < spec.min_area[c]:
            mask[:] = False
        masks[c] = mask
    return masks
