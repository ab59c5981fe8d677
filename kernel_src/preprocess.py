"""Preprocessing as trained: a model's input made as its albumentations validation pipeline made it,
on tensors (on the GPU when there is one), and the pipeline's geometry undone on its output.

The build (`bundler.dataset.preprocess`) translates the user's `A.save` file into a small JSON
description, `<model>.preprocess.json` in the bundle, and proves the translation against
albumentations on sample images; this module reads that description and never imports
albumentations. The description: `{"format": 1, "model": ..., "steps": [...], ...}`, each step a
dict with an "op" and albumentations' own parameters:

- `resize` {height, width, interpolation, area_for_downscale} (Resize): undone by resizing back;
- `max_size` {side: longest | smallest, max_size, max_hw, interpolation, area_for_downscale}
  (LongestMaxSize, SmallestMaxSize): resized back;
- `pad` {min_height, min_width, height_divisor, width_divisor, position, border, fill}
  (PadIfNeeded): the pad cropped off;
- `center_crop` {height, width}, `crop` {x_min, y_min, x_max, y_max} (CenterCrop, Crop): the
  output placed back where the crop was taken, probability 0 outside it;
- `gray` {method} (ToGray with 3 output channels), `to_float` / `from_float` {max_value}
  (ToFloat, FromFloat), `normalize` {mode, mean, denominator} (Normalize, standard and per-image
  modes): no geometry.

Values are albumentations' units: the engine's batch (floats in [0, 1], the 8-bit image / 255) is
turned back into 8-bit values first, and while albumentations would hold a uint8 image every step
rounds and clips to 0..255 as OpenCV does. Interpolation: `linear` (cv2 INTER_LINEAR: bilinear with
half-pixel centres, no antialiasing), `nearest`, `nearest_exact`, `cubic`, `area` (cv2 INTER_AREA
when shrinking: each output pixel the area-weighted mean of the input it covers).

`channels = "bgr"` (a model trained on `cv2.imread`'s order) swaps the channels before anything
else, as the training code fed BGR images to its pipeline. Without a description, the model's
`input_size` and `mean`/`std` apply (`x` resized, then `(x - mean) / std` per channel).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ModelError
from .spec import ModelSpec

FORMAT = 1
OPS = ("resize", "max_size", "pad", "center_crop", "crop", "gray", "to_float", "from_float", "normalize")
INTERPOLATIONS = ("nearest", "linear", "cubic", "area", "nearest_exact")
BORDERS = ("constant", "replicate", "reflect", "wrap", "reflect101")
POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
GRAY_METHODS = ("weighted_average", "average", "max", "desaturation")
NORMALIZE_MODES = ("standard", "image", "image_per_channel", "min_max", "min_max_per_channel")
PER_IMAGE_EPS = 1e-4  # albucore's, for the per-image normalisations
PER_IMAGE_CLIP = 20.0  # albucore clips per-image normalised values to [-20, 20]
_TORCH_MODES = {"linear": "bilinear", "cubic": "bicubic"}


@dataclass(frozen=True)
class Geometry:
    """One geometric step on an image of `before` (height, width) giving `after`."""

    op: str  # "resize" | "pad" | "crop"
    before: tuple[int, int]
    after: tuple[int, int]
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # pad: (top, bottom, left, right); crop: (y0, y1, x0, x1)


def _max_size_scale(step: Mapping[str, Any], h: int, w: int) -> float:
    longest = step["side"] == "longest"
    if step.get("max_size") is not None:
        return float(step["max_size"]) / (max(h, w) if longest else min(h, w))
    max_h, max_w = step["max_hw"]
    if max_h is not None and max_w is not None:
        scales = (float(max_h) / h, float(max_w) / w)
        return min(scales) if longest else max(scales)
    return float(max_h) / h if max_h is not None else float(max_w) / float(w)


def _pad_amounts(step: Mapping[str, Any], h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) as albumentations' PadIfNeeded computes them."""

    def one(size: int, minimum: int | None, divisor: int | None) -> tuple[int, int]:
        if minimum is not None:
            if size < minimum:
                before = int((minimum - size) / 2.0)
                return before, minimum - size - before
        elif divisor is not None and size % divisor:
            total = divisor - size % divisor
            return total // 2, total - total // 2
        return 0, 0

    top, bottom = one(h, step.get("min_height"), step.get("height_divisor"))
    left, right = one(w, step.get("min_width"), step.get("width_divisor"))
    position = step.get("position", "center")
    if position == "center":
        return top, bottom, left, right
    vertical, horizontal = top + bottom, left + right
    top, bottom = (0, vertical) if position.startswith("top") else (vertical, 0)
    left, right = (0, horizontal) if position.endswith("left") else (horizontal, 0)
    return top, bottom, left, right


class Preprocess:
    """A validated pipeline description: `apply` to a batch, `undo` on the model's output."""

    def __init__(self, steps: Sequence[Mapping[str, Any]], name: str = "pipeline") -> None:
        self.steps = tuple(dict(s) for s in steps)
        self.name = name
        for i, step in enumerate(self.steps):
            problem = step_problem(step)
            if problem:
                raise ModelError(f"{name}: step {i} ({step.get('op')!r}) {problem}; rebuild with `bundler build`")

    def geometry(self, size: tuple[int, int]) -> list[Geometry]:
        """The geometric steps on an image of `size` (height, width), in order."""
        h, w = size
        out: list[Geometry] = []
        for step in self.steps:
            op = step["op"]
            if op == "resize":
                new = (int(step["height"]), int(step["width"]))
                out.append(Geometry("resize", (h, w), new))
            elif op == "max_size":
                scale = _max_size_scale(step, h, w)
                new = (max(1, round(h * scale)), max(1, round(w * scale)))
                out.append(Geometry("resize", (h, w), new))
            elif op == "pad":
                top, bottom, left, right = _pad_amounts(step, h, w)
                new = (h + top + bottom, w + left + right)
                out.append(Geometry("pad", (h, w), new, (top, bottom, left, right)))
            elif op in ("center_crop", "crop"):
                if op == "center_crop":
                    ch, cw = int(step["height"]), int(step["width"])
                    y0, x0 = (h - ch) // 2, (w - cw) // 2
                    y1, x1 = y0 + ch, x0 + cw
                else:
                    y0, y1, x0, x1 = (int(step[k]) for k in ("y_min", "y_max", "x_min", "x_max"))
                if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
                    raise ModelError(
                        f"{self.name}: its {op} [{y0}:{y1}, {x0}:{x1}] does not fit a {h}x{w} image; put a "
                        "PadIfNeeded before it in the training pipeline, or crop within the image"
                    )
                new = (y1 - y0, x1 - x0)
                out.append(Geometry("crop", (h, w), new, (y0, y1, x0, x1)))
            else:
                continue
            h, w = new
        return out

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the model's input for an image of `size`."""
        steps = self.geometry(size)
        return steps[-1].after if steps else size

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input for `x` [N,3,H,W], floats in [0, 1] (8-bit values / 255)."""
        steps = self.steps
        first = steps[0] if steps else {}
        if (
            first.get("op") in ("resize", "max_size")
            and first["interpolation"] != "area"
            and not first.get("area_for_downscale")
        ):
            # resizing is linear: resized first, then scaled to 8-bit values and rounded as OpenCV
            # rounds its 8-bit result, the full-size image is never multiplied (not for area
            # averaging, whose exact .5 ties only integer inputs round as OpenCV does)
            x = (_resize_step(x.float(), steps[0]) * 255.0).round_().clamp_(0.0, 255.0)
            steps = steps[1:]
        else:
            x = (x.float() * 255.0).round()
        eight_bit = True
        for step in steps:
            x, eight_bit = apply_step(x, step, eight_bit)
        return x

    def undo(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The model's output `y` [N,K,h,w] (probabilities) mapped back onto an image of `size`: a
        resize resized back, a pad cropped off, a crop placed back (0 outside it)."""
        steps = self.geometry(size)
        final = steps[-1].after if steps else size
        if tuple(y.shape[-2:]) != final:
            y = _bilinear(y, final)
        for g in reversed(steps):
            if g.op == "resize":
                y = _bilinear(y, g.before)
            elif g.op == "pad":
                top, left = g.box[0], g.box[2]
                y = y[:, :, top : top + g.before[0], left : left + g.before[1]]
            else:
                y0, y1, x0, x1 = g.box
                canvas = y.new_zeros((*y.shape[:2], *g.before))
                canvas[:, :, y0:y1, x0:x1] = y
                y = canvas
        return y


def step_problem(step: Mapping[str, Any]) -> str | None:
    """What keeps `step` from being a step this module runs (None: it is one)."""
    op = step.get("op")
    if op not in OPS:
        return f"is not one of {list(OPS)}"
    if op in ("resize", "max_size") and step.get("interpolation") not in INTERPOLATIONS:
        return f"has interpolation {step.get('interpolation')!r}, not one of {list(INTERPOLATIONS)}"
    if op == "pad" and (step.get("border") not in BORDERS or step.get("position", "center") not in POSITIONS):
        return f"needs a border from {list(BORDERS)} and a position from {list(POSITIONS)}"
    if op == "gray" and step.get("method") not in GRAY_METHODS:
        return f"has method {step.get('method')!r}, not one of {list(GRAY_METHODS)}"
    if op == "normalize" and step.get("mode") not in NORMALIZE_MODES:
        return f"has mode {step.get('mode')!r}, not one of {list(NORMALIZE_MODES)}"
    if op == "normalize" and step["mode"] == "standard":
        for key in ("mean", "denominator"):
            values = step.get(key)
            if not isinstance(values, list) or len(values) != 3 or not all(math.isfinite(float(v)) for v in values):
                return f"needs {key} as three finite numbers"
    return None


def _bilinear(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def _area_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """[n_out, n_in]: each output pixel's share of every input pixel it covers (INTER_AREA, shrinking)."""
    scale = n_in / n_out
    edges = torch.arange(n_out + 1, dtype=torch.float64, device=device) * scale
    j = torch.arange(n_in, dtype=torch.float64, device=device)[None, :]
    overlap = torch.minimum(edges[1:, None], j + 1) - torch.maximum(edges[:-1, None], j)
    return (overlap.clamp(min=0) / scale).float()


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation == "area" and size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        rows = _area_matrix(x.shape[-2], size[0], x.device)
        cols = _area_matrix(x.shape[-1], size[1], x.device)
        return torch.einsum("oh,nchw,pw->ncop", rows, x, cols)
    if interpolation in ("nearest", "nearest_exact"):
        # OpenCV's source index, in double precision as it computes it: floor(d / (out / in)), or
        # floor((d + 0.5) / (out / in)) for nearest_exact; torch's float scale can land one pixel off
        shift = 0.5 if interpolation == "nearest_exact" else 0.0
        rows, cols = (
            ((torch.arange(n_out, dtype=torch.float64) + shift) * (1.0 / (n_out / n_in)))
            .floor()
            .clamp(max=n_in - 1)
            .long()
            for n_in, n_out in ((x.shape[-2], size[0]), (x.shape[-1], size[1]))
        )
        return x.index_select(2, rows.to(x.device)).index_select(3, cols.to(x.device))
    mode = _TORCH_MODES.get(interpolation, "bilinear")  # area when enlarging: OpenCV's is bilinear-like
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _border_index(n: int, before: int, after: int, border: str, device: torch.device) -> torch.Tensor:
    """Source index of each position -before .. n+after-1 under an OpenCV border rule."""
    index = []
    for p in range(-before, n + after):
        q = p
        while not 0 <= q < n:
            if border == "replicate":
                q = min(max(q, 0), n - 1)
            elif border == "wrap":
                q %= n
            elif border == "reflect":  # cv2 BORDER_REFLECT: fedcba|abcdef|fedcba
                q = -q - 1 if q < 0 else 2 * n - 1 - q
            elif n == 1:  # reflect101 of a single pixel
                q = 0
            else:  # cv2 BORDER_REFLECT_101: fedcb|abcdef|edcba
                q = -q if q < 0 else 2 * (n - 1) - q
        index.append(q)
    return torch.tensor(index, dtype=torch.long, device=device)


def _pad(x: torch.Tensor, box: tuple[int, int, int, int], border: str, fill: Sequence[float]) -> torch.Tensor:
    top, bottom, left, right = box
    if not any(box):
        return x
    n, c, h, w = x.shape
    if border == "constant":
        values = torch.tensor([float(v) for v in fill] * (c if len(fill) == 1 else 1), dtype=x.dtype, device=x.device)
        out = values.view(1, -1, 1, 1).expand(n, c, h + top + bottom, w + left + right).clone()
        out[:, :, top : top + h, left : left + w] = x
        return out
    rows = _border_index(h, top, bottom, border, x.device)
    cols = _border_index(w, left, right, border, x.device)
    return x.index_select(2, rows).index_select(3, cols)


def _gray(x: torch.Tensor, method: str, eight_bit: bool) -> tuple[torch.Tensor, bool]:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    if method == "weighted_average":
        # cv2.cvtColor(RGB2GRAY): fixed-point coefficients on 8-bit images, 0.299/0.587/0.114 on floats
        gray = (
            ((r * 4899 + g * 9617 + b * 1868 + 8192) / 16384).floor()
            if eight_bit
            else r * 0.299 + g * 0.587 + b * 0.114
        )
    elif method == "average":
        gray = x.mean(dim=1, keepdim=True)
        gray = gray.floor() if eight_bit else gray  # numpy's astype(uint8) truncates
    elif method == "max":
        gray = x.amax(dim=1, keepdim=True)
    else:  # desaturation: (max + min) / 2, truncated back to 8 bits as albumentations does
        gray = (x.amax(dim=1, keepdim=True) + x.amin(dim=1, keepdim=True)) / 2
        gray = gray.floor() if eight_bit else gray
    return gray.expand(-1, 3, -1, -1).contiguous(), eight_bit


@functools.lru_cache(maxsize=256)
def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor on `device`, made once per (values, dtype, device): a fresh
    `torch.tensor(..., device=cuda)` per call is a host-to-device copy the GPU waits on every
    batch. Callers only read it (views and arithmetic, never in-place)."""
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device)


def _normalize(x: torch.Tensor, step: Mapping[str, Any]) -> torch.Tensor:
    mode = step["mode"]
    if mode == "standard":
        mean = constant(tuple(step["mean"]), x.dtype, x.device).view(1, -1, 1, 1)
        denominator = constant(tuple(step["denominator"]), x.dtype, x.device).view(1, -1, 1, 1)
        return (x - mean) * denominator
    dims = (1, 2, 3) if mode in ("image", "min_max") else (2, 3)
    if mode.startswith("image"):
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True, unbiased=False) + PER_IMAGE_EPS
        out = (x - mean) / std
    else:
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        out = (x - low) / (high - low + PER_IMAGE_EPS)
    return out.clamp(-PER_IMAGE_CLIP, PER_IMAGE_CLIP)


def _resize_step(x: torch.Tensor, step: Mapping[str, Any]) -> torch.Tensor:
    """A resize or max_size step, with no rounding."""
    size = (x.shape[-2], x.shape[-1])
    (g,) = Preprocess([step]).geometry(size)
    interpolation = step["interpolation"]
    if step.get("area_for_downscale") and (g.after[0] < size[0] or g.after[1] < size[1]):
        interpolation = "area"
    return _resize(x, g.after, interpolation)


def apply_step(x: torch.Tensor, step: Mapping[str, Any], eight_bit: bool) -> tuple[torch.Tensor, bool]:
    """One step on `x` in albumentations' units; `eight_bit`: albumentations would hold uint8 here."""
    op = step["op"]
    size = (x.shape[-2], x.shape[-1])
    if op in ("resize", "max_size"):
        x = _resize_step(x, step)
    elif op == "pad":
        x = _pad(x, _pad_amounts(step, *size), step["border"], step.get("fill") or [0.0])
    elif op in ("center_crop", "crop"):
        (g,) = Preprocess([step]).geometry(size)
        y0, y1, x0, x1 = g.box
        x = x[:, :, y0:y1, x0:x1]
    elif op == "gray":
        x, eight_bit = _gray(x, step["method"], eight_bit)
    elif op == "to_float":
        if eight_bit:
            x = x / float(step.get("max_value") or 255.0)
        return x, False
    elif op == "from_float":
        return (x * float(step.get("max_value") or 255.0)).round().clamp(0.0, 255.0), True
    elif op == "normalize":
        return _normalize(x, step), False
    if eight_bit and op in ("resize", "max_size", "gray", "pad"):
        x = x.round().clamp(0.0, 255.0)
    return x, eight_bit


def load_preprocess(path: Path, model: str) -> Preprocess:
    """The description at `path` (a bundle file), checked; ModelError naming it and the fix."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"model {model!r}: preprocessing file {path} is missing from the bundle; rebuild it with `bundler build`"
        ) from None
    except (OSError, ValueError) as e:
        raise ModelError(f"model {model!r}: {path} cannot be read ({e}); rebuild it with `bundler build`") from None
    if not isinstance(data, Mapping) or data.get("format") != FORMAT or not isinstance(data.get("steps"), list):
        raise ModelError(
            f"model {model!r}: {path} is not a preprocessing description of format {FORMAT}; "
            "rebuild it with `bundler build`"
        )
    return Preprocess(data["steps"], name=f"model {model!r} ({Path(path).name})")


def model_input(x: torch.Tensor, spec: ModelSpec, plan: Preprocess | None) -> torch.Tensor:
    """`x` [N,3,H,W] (floats in [0, 1], RGB) as the model `spec` takes it: channels in its order,
    then its pipeline (`plan`) or its input_size and mean/std."""
    if spec.channels == "bgr":
        x = x.flip(1)
    if plan is not None:
        return plan.apply(x)
    if spec.input_size is not None and tuple(x.shape[-2:]) != spec.input_size:
        x = F.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False)
    mean = constant(tuple(spec.mean), x.dtype, x.device).view(1, 3, 1, 1)
    std = constant(tuple(spec.std), x.dtype, x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def model_output(probs: torch.Tensor, plan: Preprocess | None, size: tuple[int, int]) -> torch.Tensor:
    """Probabilities [N,K,h,w] from the model's frame back onto images of `size` (height, width)."""
    if plan is not None:
        return plan.undo(probs, size)
    return _bilinear(probs, size)
