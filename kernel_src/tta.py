"""Test-time augmentation for NCHW tensors: flips, scales, and how a model's views are merged.

Flip views (`TTA_VIEWS`) are their own inverse, so `invert_view` applies the same flip again.
Views of one size are stacked view-major into a single batch (`stack_views`) so a model sees all
of them in one forward pass; `merge_views` undoes each flip on the model output and averages them.

Scale views ("scale:0.75", `kernel_src.spec.view_scale`) feed the model the batch resized by the
factor (bilinear, like `cv2.resize`), each side rounded to a multiple of `SCALE_MULTIPLE` (what
encoders with five stride-2 stages need); their output is resized back to the unscaled size
before merging. `view_groups` splits a model's views into one forward batch per input size.

`merge(outputs, views, mode, size)` takes each view's raw output (logits), undoes the view, and
merges per `mode` (`kernel_src.spec.TTA_MERGES`), returning probabilities:
- "mean": the mean of the sigmoid probabilities;
- "gmean": their geometric mean, exp(mean(log sigmoid(z))) (one view's doubt pulls it down);
- "max": the largest probability of any view;
- "logit_mean": the sigmoid of the mean logit (+/-inf taken as +/-SATURATED_LOGIT, so +inf and
  -inf merge to 0.5, not NaN).
Each view is undone in the merge's own domain (probabilities, log-probabilities or logits), so a
mean of resized maps is the resized mean. With `probabilities=True` the outputs are already
probabilities: `bundler tune` merges its cache of undone views so, with this same merge.
Outputs may come in any memory layout (smp answers a channels_last input with a channels_last
output): only slicing, `torch.flip`, interpolation and arithmetic touch them here, never a flat
`view`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .spec import SCALE_VIEW, TTA_MERGES, TTA_VIEWS, view_problem, view_scale

SCALE_MULTIPLE = 32  # a scaled side is rounded to a multiple of this (at least one multiple)

# Tensor dimensions each view flips for an NCHW tensor: W is -1, H is -2.
_FLIP_DIMS: dict[str, tuple[int, ...]] = {"identity": (), "hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


def _dims(view: str) -> tuple[int, ...]:
    try:
        return _FLIP_DIMS[view]
    except KeyError:
        if view_scale(view) is not None:
            return ()
        raise ValueError(f"unknown TTA view {view!r}; choose from {list(TTA_VIEWS)}") from None


def _scale(view: str) -> float:
    """1.0 for a flip; the factor of a scale view; ValueError for anything else."""
    factor = view_scale(view)
    if factor is not None:
        return factor
    if view in _FLIP_DIMS:
        return 1.0
    if view.startswith(SCALE_VIEW):
        raise ValueError(view_problem(view))
    raise ValueError(f"unknown TTA view {view!r}; choose from {list(TTA_VIEWS)} or 'scale:<factor>'")


def scaled_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """(height, width) of a scale view of an input of `size`: each side times `factor`, rounded to
    the nearest multiple of SCALE_MULTIPLE (at least one); `size` itself for a factor of 1."""
    if factor == 1.0:
        return size
    m = SCALE_MULTIPLE
    h, w = (max(m, round(side * factor / m) * m) for side in size)
    return h, w


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`x` [N,C,H,W] bilinearly resized to `size` (half-pixel centres, no antialiasing: cv2.resize's
    INTER_LINEAR); `x` itself when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def view_groups(views: Sequence[str]) -> list[tuple[float, list[int]]]:
    """[(scale factor, indices of the views fed at that scale)], in order of first appearance:
    the flips share the unscaled input, each scale view has its own."""
    groups: dict[float, list[int]] = {}
    for i, view in enumerate(views):
        groups.setdefault(_scale(view), []).append(i)
    return list(groups.items())


def _check_4d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects an NCHW tensor (4 dimensions), got shape {tuple(x.shape)}")


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """`x` [N,C,H,W] seen through `view`: hflip flips W, vflip flips H, hvflip both; a scale view
    resizes it (`scaled_size`)."""
    _check_4d(x, "apply_view")
    factor = _scale(view)
    if factor != 1.0:
        return resize(x, scaled_size((x.shape[-2], x.shape[-1]), factor))
    dims = _dims(view)
    return torch.flip(x, dims) if dims else x


def invert_view(y: torch.Tensor, view: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Map a model output [N,K,H,W] computed on `apply_view(x, view)` back to `x`'s frame: the flip
    again, or (scale views) a resize to `size`, the unscaled input's (height, width). A classifier's
    output [N,K] has no frame: it is returned as it is."""
    if y.dim() == 2:
        return y
    if _scale(view) != 1.0:
        if size is None:
            raise ValueError(f"invert_view needs the unscaled size to undo {view!r}")
        return resize(y, size)
    return apply_view(y, view)


def stack_views(batch: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """[V*N,C,H,W]: view 0's N images first, then view 1's, and so on."""
    _check_4d(batch, "stack_views")
    if not views:
        raise ValueError(f"stack_views needs at least one view from {list(TTA_VIEWS)}")
    if len(views) == 1:
        return apply_view(batch, views[0])
    return torch.cat([apply_view(batch, v) for v in views], dim=0)


def stack_group(x: torch.Tensor, views: Sequence[str], factor: float) -> torch.Tensor:
    """The forward batch of one `view_groups` entry: `x` stacked through `views` (flips) when the
    factor is 1, else `x` resized by the factor (a scale view is the identity at that scale)."""
    if factor == 1.0:
        return stack_views(x, views)
    return resize(x, scaled_size((x.shape[-2], x.shape[-1]), factor))


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


SATURATED_LOGIT = 1e30  # +/-inf logits (an fp16 overflow) averaged as this: finite sums, sigmoid still 1 / 0


def _domain(output: torch.Tensor, mode: str, probabilities: bool, activation: str = "sigmoid") -> torch.Tensor:
    """A view's output (logits, or probabilities) in the space `mode` merges in. For logit_mean an
    infinite logit is SATURATED_LOGIT with its sign, so +inf in one view and -inf in another merge
    to probability 0.5 (the views disagree completely, as "mean" says too) instead of NaN; finite
    logits are unchanged and NaN stays NaN (the engine drops that model for that image)."""
    if activation == "softmax" and probabilities:  # softmax probabilities: logits up to a constant per image
        return torch.log(output) if mode in ("gmean", "logit_mean") else output
    if activation != "sigmoid":
        return _OTHER_DOMAINS[activation][mode](output)
    if mode == "logit_mean":
        logits = torch.logit(output) if probabilities else output
        return torch.nan_to_num(logits, nan=float("nan"), posinf=SATURATED_LOGIT, neginf=-SATURATED_LOGIT)
    if mode == "gmean":
        return torch.log(output) if probabilities else F.logsigmoid(output)
    return output if probabilities else torch.sigmoid(output)


def merge(
    outputs: Sequence[torch.Tensor],
    views: Sequence[str],
    mode: str = "mean",
    size: tuple[int, int] | None = None,
    *,
    probabilities: bool = False,
    activation: str = "sigmoid",
) -> torch.Tensor:
    """Probabilities [N,K,H,W] (or [N,K]) from each view's raw output (`outputs[i]` computed on
    `apply_view(x, views[i])`), every view undone (`invert_view`, `size` being x's (H, W)) and merged
    per `mode`, as the module docstring says. `probabilities`: the outputs are probabilities, not
    logits (gmean and logit_mean need them inside (0, 1)). `activation` (kernel_src.tasks): "sigmoid"
    (a probability per class), "softmax" over dim 1 (one label per image: gmean and logit_mean give
    softmax(mean log-probability) and softmax(mean logit), which sum to one; mean and max of the
    softmax probabilities), or "identity" (raw values: mean and max only)."""
    if mode not in TTA_MERGES:
        raise ValueError(f"unknown TTA merge {mode!r}; choose from {list(TTA_MERGES)}")
    if not views or len(outputs) != len(views):
        raise ValueError(f"merge got {len(outputs)} outputs for {len(views)} views; give one output per view")
    if activation != "sigmoid" and (activation not in _OTHER_DOMAINS or mode not in _OTHER_DOMAINS[activation]):
        raise ValueError(f"TTA merge {mode!r} does not apply to {activation!r} outputs")
    total = invert_view(_domain(outputs[0].float(), mode, probabilities, activation), views[0], size)
    if len(views) > 1:
        total = total.clone()
        for out, view in zip(outputs[1:], views[1:], strict=True):
            undone = invert_view(_domain(out.float(), mode, probabilities, activation), view, size)
            if undone.shape != total.shape:
                raise ValueError(
                    f"view {view!r} gave shape {tuple(undone.shape)} where {tuple(total.shape)} was expected"
                )
            if mode == "max":
                torch.maximum(total, undone, out=total)
            else:
                total += undone
        if mode != "max":
            total /= len(views)
    if activation == "softmax" and mode in ("logit_mean", "gmean"):
        return torch.softmax(total, dim=1)
    if activation != "sigmoid":
        return total
    if mode == "logit_mean":
        return torch.sigmoid(total)
    if mode == "gmean":
        return torch.exp(total)
    return total


# The merge domains of the image-level activations (kernel_src.tasks): softmax merges in
# probabilities (mean, max), log-probabilities (gmean) or logits (logit_mean); raw values as they are.
_OTHER_DOMAINS: dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "softmax": {
        "mean": lambda z: torch.softmax(z, dim=1),
        "max": lambda z: torch.softmax(z, dim=1),
        "gmean": lambda z: torch.log_softmax(z, dim=1),
        "logit_mean": lambda z: z,
    },
    "identity": {"mean": lambda z: z, "max": lambda z: z},
}
