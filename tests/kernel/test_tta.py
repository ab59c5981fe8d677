"""Flip TTA on non-square NCHW tensors: view semantics, exact inversion, view-major stacking, merging."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kernel_src.spec import TTA_VIEWS
from kernel_src.tta import apply_view, invert_view, merge_views, stack_views

H, W = 5, 7  # non-square, odd: a transposed or wrongly flipped tensor cannot match


def batch(n: int = 2, c: int = 3) -> torch.Tensor:
    return torch.arange(n * c * H * W, dtype=torch.float32).reshape(n, c, H, W)


def test_view_semantics_against_numpy() -> None:
    x = batch()
    a = x.numpy()
    np.testing.assert_array_equal(apply_view(x, "identity").numpy(), a)
    np.testing.assert_array_equal(apply_view(x, "hflip").numpy(), a[:, :, :, ::-1])
    np.testing.assert_array_equal(apply_view(x, "vflip").numpy(), a[:, :, ::-1, :])
    np.testing.assert_array_equal(apply_view(x, "hvflip").numpy(), a[:, :, ::-1, ::-1])
    # hflip moves the top-left pixel to the top-right, vflip to the bottom-left.
    assert apply_view(x, "hflip")[0, 0, 0, W - 1] == x[0, 0, 0, 0]
    assert apply_view(x, "vflip")[0, 0, H - 1, 0] == x[0, 0, 0, 0]


@pytest.mark.parametrize("view", TTA_VIEWS)
def test_invert_view_is_exact(view: str) -> None:
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    assert torch.equal(invert_view(apply_view(x, view), view), x)


def test_stack_views_is_view_major() -> None:
    x = batch(n=3)
    stacked = stack_views(x, TTA_VIEWS)
    assert stacked.shape == (4 * 3, 3, H, W)
    for i, view in enumerate(TTA_VIEWS):
        assert torch.equal(stacked[i * 3 : (i + 1) * 3], apply_view(x, view))


def ramp_model(x: torch.Tensor) -> torch.Tensor:
    """Not flip-invariant: weights each pixel by its column and row, and maps C channels to 2."""
    cols = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    rows = torch.arange(1, x.shape[-2] + 1, dtype=x.dtype)[:, None]
    s = x.sum(dim=1, keepdim=True)
    return torch.cat([s * cols, s * rows], dim=1)


def test_merge_undoes_each_view_on_a_position_dependent_model() -> None:
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    s = x.sum(dim=1, keepdim=True)
    cols = torch.arange(1, W + 1, dtype=torch.float32)
    rows = torch.arange(1, H + 1, dtype=torch.float32)[:, None]
    # Closed form: through a view, the model sees the image flipped, so after undoing the flip
    # the column (row) weights come out flipped: W + 1 - col for hflip, H + 1 - row for vflip.
    expected_cols = {"identity": cols, "hflip": W + 1 - cols, "vflip": cols, "hvflip": W + 1 - cols}
    expected_rows = {"identity": rows, "hflip": rows, "vflip": H + 1 - rows, "hvflip": H + 1 - rows}
    for r in range(1, len(TTA_VIEWS) + 1):
        for views in itertools.combinations(TTA_VIEWS, r):
            merged = merge_views(ramp_model(stack_views(x, views)), views, n=2)
            want_cols = sum(expected_cols[v] for v in views) / len(views)
            want_rows = sum(expected_rows[v] for v in views) / len(views)
            assert merged.shape == (2, 2, H, W)
            torch.testing.assert_close(merged[:, :1], s * want_cols)
            torch.testing.assert_close(merged[:, 1:], s * want_rows)


def test_pixelwise_model_is_unchanged_by_tta() -> None:
    x = torch.randn(3, 1, H, W, generator=torch.Generator().manual_seed(2))
    merged = merge_views(torch.sigmoid(stack_views(x, TTA_VIEWS)), TTA_VIEWS, n=3)
    torch.testing.assert_close(merged, torch.sigmoid(x))


def test_single_identity_view_is_a_no_op() -> None:
    x = batch()
    assert torch.equal(merge_views(stack_views(x, ["identity"]), ["identity"], n=2), x)


def test_bad_views_and_shapes_are_refused() -> None:
    x = batch()
    with pytest.raises(ValueError, match="unknown TTA view 'rot90'"):
        apply_view(x, "rot90")
    with pytest.raises(ValueError, match="NCHW"):
        apply_view(x[0], "hflip")
    with pytest.raises(ValueError, match="at least one view"):
        stack_views(x, [])
    with pytest.raises(ValueError, match="expected 4"):
        merge_views(torch.zeros(3, 1, H, W), ["identity", "hflip"], n=2)
