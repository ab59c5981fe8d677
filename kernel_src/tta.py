"""Flip test-time augmentation for NCHW tensors.

Every view is its own inverse (a flip), so `invert_view` applies the same flip again. Views of
one batch are stacked view-major into a single batch (`stack_views`) so a model sees all of them
in one forward pass; `merge_views` undoes each view on the model output and averages them.
Outputs may come in any memory layout (smp answers a channels_last input with a channels_last
output): only slicing, `torch.flip` and addition touch them here, never a flat `view`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .spec import TTA_VIEWS

# Tensor dimensions each view flips for an NCHW tensor: W is -1, H is -2.
_FLIP_DIMS: dict[str, tuple[int, ...]] = {"identity": (), "hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


def _dims(view: str) -> tuple[int, ...]:
    try:
        return _FLIP_DIMS[view]
    except KeyError:
        raise ValueError(f"unknown TTA view {view!r}; choose from {list(TTA_VIEWS)}") from None


def _check_4d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects an NCHW tensor (4 dimensions), got shape {tuple(x.shape)}")


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """`x` [N,C,H,W] seen through `view`: hflip flips W, vflip flips H, hvflip both."""
    _check_4d(x, "apply_view")
    dims = _dims(view)
    return torch.flip(x, dims) if dims else x


def invert_view(y: torch.Tensor, view: str) -> torch.Tensor:
    """Map a model output [N,K,H,W] computed on `apply_view(x, view)` back to `x`'s frame."""
    return apply_view(y, view)


def stack_views(batch: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """[V*N,C,H,W]: view 0's N images first, then view 1's, and so on."""
    _check_4d(batch, "stack_views")
    if not views:
        raise ValueError(f"stack_views needs at least one view from {list(TTA_VIEWS)}")
    if len(views) == 1:
        return apply_view(batch, views[0])
    return torch.cat([apply_view(batch, v) for v in views], dim=0)


def merge_views(out: torch.Tensor, views: Sequence[str], n: int) -> torch.Tensor:
    """[N,K,H,W]: the mean over views of each de-augmented slice of `out` [V*N,K,H,W]."""
    _check_4d(out, "merge_views")
    if not views:
        raise ValueError(f"merge_views needs at least one view from {list(TTA_VIEWS)}")
    if out.shape[0] != len(views) * n:
        raise ValueError(
            f"merge_views got {out.shape[0]} outputs for {len(views)} views x {n} images; "
            f"expected {len(views) * n} (stack the batch with stack_views and the same views)"
        )
    total = invert_view(out[0:n], views[0])
    if len(views) == 1:
        return total
    total = total.clone()
    for i, view in enumerate(views[1:], start=1):
        total += invert_view(out[i * n : (i + 1) * n], view)
    return total / len(views)
