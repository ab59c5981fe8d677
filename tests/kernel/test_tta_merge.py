"""Scale views and merge modes: each view undone exactly on a position-dependent model, and each
merge mode equal to its closed form (kernel_src.tta.merge)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch

from kernel_src.errors import SpecError
from kernel_src.spec import TTA_MERGES, TTA_VIEWS, ModelSpec
from kernel_src.tta import SCALE_MULTIPLE, apply_view, merge, scaled_size, stack_group, view_groups

H, W = 64, 96  # non-square; multiples of SCALE_MULTIPLE so scaled sizes are exact factors
SCALES = ("scale:0.5", "scale:0.75", "scale:1.25", "scale:2")


def run_views(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, views: tuple[str, ...]
) -> list[torch.Tensor]:
    """What the Predictor does: one forward per input size, each view's slice of the output."""
    n = x.shape[0]
    outs: list[torch.Tensor] = [torch.empty(0)] * len(views)
    for factor, idx in view_groups(views):
        out = model(stack_group(x, [views[i] for i in idx], factor))
        for j, i in enumerate(idx):
            outs[i] = out[j * n : (j + 1) * n]
    return outs


def centres(x: torch.Tensor) -> torch.Tensor:
    """Position-dependent: each pixel's normalised centre, (col + 0.5) / W and (row + 0.5) / H, of the
    frame the model sees. Undone correctly, every view gives the unscaled frame's centres."""
    n, _, h, w = x.shape
    cols = ((torch.arange(w, dtype=torch.float32) + 0.5) / w).expand(n, 1, h, w)
    rows = ((torch.arange(h, dtype=torch.float32) + 0.5) / h)[:, None].expand(n, 1, h, w)
    return torch.cat([cols, rows], dim=1)


def test_scaled_sizes_are_multiples_of_32() -> None:
    assert scaled_size((256, 1600), 0.75) == (192, 1216)
    assert scaled_size((256, 1600), 1.25) == (320, 1984)
    assert scaled_size((256, 1600), 1.0) == (256, 1600)
    assert scaled_size((40, 40), 0.25) == (SCALE_MULTIPLE, SCALE_MULTIPLE)  # never below one multiple
    for factor in (0.5, 0.75, 1.25, 2.0):
        h, w = scaled_size((H, W), factor)
        assert h % SCALE_MULTIPLE == 0 and w % SCALE_MULTIPLE == 0


@pytest.mark.parametrize("view", SCALES)
def test_scale_view_is_undone_exactly(view: str) -> None:
    x = torch.zeros(2, 3, H, W)
    out = run_views(centres, x, (view,))
    assert out[0].shape[-2:] == scaled_size((H, W), float(view.split(":")[1]))
    undone = merge([torch.logit(o.double()) for o in out], (view,), "mean", (H, W))
    want = centres(x)
    assert undone.shape == want.shape
    # bilinear resizing maps pixel centres linearly: exact wherever it does not clamp at the border,
    # which is everywhere when the view was larger, and all but the outermost pixel when smaller
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(undone[inner], want[inner], rtol=0, atol=2e-6)
    if float(view.split(":")[1]) > 1:
        torch.testing.assert_close(undone, want, rtol=0, atol=2e-6)


def flip_ramp(x: torch.Tensor) -> torch.Tensor:
    """Logits weighted by column and row (not flip-invariant), 2 output classes."""
    h, w = x.shape[-2:]
    cols = torch.linspace(-2.0, 3.0, w)
    rows = torch.linspace(1.5, -1.0, h)[:, None]
    s = x.sum(dim=1, keepdim=True)
    return torch.cat([s * cols, s * rows], dim=1)


@pytest.mark.parametrize("mode", TTA_MERGES)
def test_each_merge_mode_is_its_closed_form_over_flips(mode: str) -> None:
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    for r in (1, 2, 4):
        for views in itertools.combinations(TTA_VIEWS, r):
            merged = merge(run_views(flip_ramp, x, views), views, mode, (H, W))
            # the logits each view gives in the image's own frame: the ramp flipped back
            undone = []
            for v in views:
                z = flip_ramp(apply_view(x, v))
                undone.append(apply_view(z, v))
            z = torch.stack(undone)
            want = {
                "mean": torch.sigmoid(z).mean(0),
                "gmean": torch.sigmoid(z).prod(0) ** (1 / len(views)),
                "max": torch.sigmoid(z).amax(0),
                "logit_mean": torch.sigmoid(z.mean(0)),
            }[mode]
            torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", TTA_MERGES)
def test_a_pixelwise_model_is_unchanged_by_flips_and_scales_in_every_mode(mode: str) -> None:
    # one value per image: a pixel-wise model's output survives any resize unchanged
    x = torch.randn(3, 1, 1, 1, generator=torch.Generator().manual_seed(1)).expand(3, 1, H, W).contiguous()
    views = (*TTA_VIEWS, *SCALES)
    merged = merge(run_views(lambda t: t * 2.0, x, views), views, mode, (H, W))
    torch.testing.assert_close(merged, torch.sigmoid(x * 2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", TTA_MERGES)
def test_probabilities_merge_as_their_logits_do(mode: str) -> None:
    # bundler tune merges its cache of probabilities with probabilities=True: the same merge
    # (logits within +-8, so that no probability rounds to 0 or 1 in float32)
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    views = ("identity", "hflip", "hvflip", "scale:0.5", "scale:1.25")
    outs = run_views(lambda t: flip_ramp(t).clamp(-8.0, 8.0), x, views)
    want = merge(outs, views, mode, (H, W))
    got = merge([torch.sigmoid(o) for o in outs], views, mode, (H, W), probabilities=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5)  # float32 logit(sigmoid(z)) near |z| = 8

def test_classifier_outputs_merge_without_a_frame() -> None:
    x = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(2))
    views = ("identity", "hflip", "scale:0.5")

    def pooled(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=(2, 3))

    outs = run_views(pooled, x, views)
    merged = merge(outs, views, "max")
    assert merged.shape == (4, 3)
    torch.testing.assert_close(merged, torch.sigmoid(torch.stack(outs)).amax(0))


def test_view_groups_feed_each_size_once() -> None:
    views = ("identity", "scale:0.75", "hflip", "scale:1.25", "vflip")
    assert view_groups(views) == [(1.0, [0, 2, 4]), (0.75, [1]), (1.25, [3])]


def test_bad_merges_and_scale_views_are_refused() -> None:
    x = torch.zeros(1, 1, H, W)
    with pytest.raises(ValueError, match="unknown TTA merge 'median'"):
        merge([x], ("identity",), "median")
    with pytest.raises(ValueError, match="2 outputs for 1 views"):
        merge([x, x], ("identity",), "mean")
    with pytest.raises(ValueError, match="scale view is 'scale:<factor>'"):
        apply_view(x, "scale:9")
    base = {"name": "m", "kind": "torchscript", "file": "m.pt"}
    with pytest.raises(SpecError, match=r"scale view is 'scale:<factor>' with a factor in \[0.25, 4.0\]"):
        ModelSpec.from_dict({**base, "tta": ["identity", "scale:big"]}, "segmenters[0]", ("torchscript",))
    with pytest.raises(SpecError, match=r"tta_merge.*'median' must be one of"):
        ModelSpec.from_dict({**base, "tta_merge": "median"}, "segmenters[0]", ("torchscript",))
    with pytest.raises(SpecError, match=r"channels.*'rgba' must be one of"):
        ModelSpec.from_dict({**base, "channels": "rgba"}, "segmenters[0]", ("torchscript",))
    spec = ModelSpec.from_dict(
        {**base, "tta": ["hflip", "scale:0.75"], "tta_merge": "gmean", "channels": "bgr"}, "s", ("torchscript",)
    )
    assert (spec.tta, spec.tta_merge, spec.channels) == (("hflip", "scale:0.75"), "gmean", "bgr")
