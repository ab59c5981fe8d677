"""The naive pipeline, written the way popular public Severstal kernels did inference.

Batch 1; one forward per model per TTA view; the classifier run, but segmentation run on every
image whatever it says (its verdict only zeroes the masks afterwards); probability maps
post-processed per image with `cv2.connectedComponents` and a Python loop over components; a
per-pixel Python-loop RLE; every row kept in a list and written with pandas at the end.

It computes the same arithmetic as the shipped engine (same preprocessing, the same view merge
and model weighting, the same thresholds), so its submission must be identical; only the way
the work is organised differs. That is what `pipeline_vs_naive` measures. On a GPU (`device`,
and `autocast_dtype` for fp16 autocast as the engine runs it) the models and each image move to
the device the way public kernels did (`.cuda()`, batch 1, default memory format).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F

from kernel_src.models import load_model
from kernel_src.spec import InferenceSpec, ModelSpec
from kernel_src.submission import read_sample_submission


def naive_rle(mask: npt.NDArray[np.generic], order: str = "F") -> str:
    """RLE by walking every pixel in Python (1-indexed 'start length' pairs, `order` flattening)."""
    pixels = np.asarray(mask).flatten(order="F" if order == "F" else "C").tolist()
    runs: list[int] = []
    start = -1
    for i, value in enumerate(pixels):
        if value and start < 0:
            start = i
        elif not value and start >= 0:
            runs.extend((start + 1, i - start))
            start = -1
    if start >= 0:
        runs.extend((start + 1, len(pixels) - start))
    return " ".join(str(v) for v in runs)


def naive_postprocess(
    probability: npt.NDArray[np.floating], threshold: float, min_component: int, min_area: int
) -> tuple[npt.NDArray[np.uint8], int]:
    """One class map: threshold, then keep each 8-connected component of >= `min_component`
    pixels by looping over the components in Python; empty when the kept area < `min_area`.
    Returns the mask and the number of components visited."""
    mask = (probability > threshold).astype(np.uint8)
    count = 1
    if min_component > 1:
        count, labels = cv2.connectedComponents(mask, connectivity=8)
        kept = np.zeros_like(mask)
        for c in range(1, count):
            component = labels == c
            if component.sum() >= min_component:
                kept[component] = 1
        mask = kept
    if min_area > 0 and mask.sum() < min_area:
        mask[:] = 0
    return mask, count - 1


@dataclass
class NaiveResult:
    submission_path: Path
    seconds: float  # wall time of the whole run, model loading included
    stages: dict[str, float] = field(default_factory=dict)
    images: int = 0
    images_gated_out: int = 0  # images the classifier rejected (segmented all the same)
    components: int = 0  # connected components the Python loop visited
    image_done_s: list[float] = field(default_factory=list)  # seconds from the start when each image was done

    @property
    def load_s(self) -> float:
        return self.stages.get("load_models", 0.0)

    def steady_per_image_s(self) -> float:
        """Seconds per image with the first image (its one-off costs) left out, the final write
        shared out per image; (seconds - loading) / images with fewer than two images."""
        done = self.image_done_s
        if len(done) < 2:
            return (self.seconds - self.load_s) / max(self.images, 1)
        return (done[-1] - done[0]) / (len(done) - 1) + self.stages.get("write", 0.0) / len(done)


class _Clock:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - begin


def _prepare(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    if spec.input_size is not None and tuple(x.shape[-2:]) != spec.input_size:
        x = F.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _flip(x: torch.Tensor, view: str) -> torch.Tensor:
    dims = {"identity": [], "hflip": [3], "vflip": [2], "hvflip": [2, 3]}[view]
    return torch.flip(x, dims) if dims else x


def _image_ids(sample_submission: Path, num_classes: int) -> tuple[str, ...]:
    sample = read_sample_submission(sample_submission, num_classes)
    if sample.layout != "wide":
        raise ValueError(f"{sample_submission}: the naive pipeline writes the wide ImageId_ClassId layout only")
    return sample.image_ids


def run_naive(
    spec: InferenceSpec,
    *,
    bundle_dir: Path,
    test_dir: Path,
    sample_submission: Path,
    out_path: Path,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> NaiveResult:
    """Predict every image of the sample submission the public-kernel way on `device` (fp32, or
    autocast to `autocast_dtype`); write `out_path`."""
    started = time.perf_counter()
    clock = _Clock()
    target = torch.device(device)

    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(device_type=target.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out: torch.Tensor = model(x)
        return out.float()

    with clock.stage("load_models"):
        classifiers = [(m, load_model(m, bundle_dir, spec.num_classes, target)) for m in spec.classifiers]
        segmenters = [(m, load_model(m, bundle_dir, spec.num_classes, target)) for m in spec.segmenters]
    gate = spec.gating.mode if classifiers else "off"
    post = spec.postprocess
    result = NaiveResult(submission_path=out_path, seconds=0.0)
    rows: list[tuple[str, str]] = []
    with torch.no_grad():
        for image_id in _image_ids(sample_submission, spec.num_classes):
            with clock.stage("decode"):
                bgr = cv2.imread(str(Path(test_dir) / image_id), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise FileNotFoundError(f"naive pipeline: {Path(test_dir) / image_id} cannot be read")
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div(255.0).contiguous().to(target)
            allowed = [True] * spec.num_classes
            if gate != "off":
                with clock.stage("classifier"):
                    total = torch.zeros(1, spec.num_classes, device=target)
                    weights = sum(m.weight for m, _ in classifiers)
                    for m, model in classifiers:
                        xm = _prepare(x, m)
                        views = [torch.sigmoid(forward(model, _flip(xm, v))) for v in m.tta]
                        total += torch.stack(views).mean(dim=0) * (m.weight / weights)
                    passed = (total[0].cpu() >= torch.tensor(spec.gating.thresholds)).tolist()
                allowed = passed if gate == "per_class" else [any(passed)] * spec.num_classes
                result.images_gated_out += not any(allowed)
            with clock.stage("segmentation"):
                probability = torch.zeros(1, spec.num_classes, spec.image_height, spec.image_width, device=target)
                weights = sum(m.weight for m, _ in segmenters)
                for m, model in segmenters:
                    xm = _prepare(x, m)
                    outs = [_flip(torch.sigmoid(forward(model, _flip(xm, v))), v) for v in m.tta]
                    probs = outs[0]
                    if len(outs) > 1:
                        probs = probs.clone()
                        for out in outs[1:]:
                            probs += out
                        probs = probs / len(outs)
                    if tuple(probs.shape[-2:]) != (spec.image_height, spec.image_width):
                        probs = F.interpolate(
                            probs, size=(spec.image_height, spec.image_width), mode="bilinear", align_corners=False
                        )
                    probability.add_(probs, alpha=m.weight / weights)
                maps = probability[0].cpu().numpy()
            for c in range(spec.num_classes):
                with clock.stage("postprocess"):
                    mask, components = naive_postprocess(
                        maps[c], post.threshold[c], post.min_component[c], post.min_area[c]
                    )
                    result.components += components
                    if not allowed[c]:
                        mask[:] = 0
                with clock.stage("rle"):
                    rows.append((f"{image_id}_{c + 1}", naive_rle(mask, spec.rle_order)))
            result.images += 1
            result.image_done_s.append(time.perf_counter() - started)
    with clock.stage("write"):
        pd.DataFrame(rows, columns=["ImageId_ClassId", "EncodedPixels"]).to_csv(out_path, index=False)
    result.stages = clock.stages
    result.seconds = time.perf_counter() - started
    return result
