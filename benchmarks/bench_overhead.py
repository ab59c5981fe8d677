"""`overhead_vs_forward`: the whole pipeline's wall time / the bare forward passes it must make.

At the full 256x1600 (every model at the image size, no resize), with the demo's three models
(timm resnet18 classifier, Unet-resnet18 and FPN-mobilenet_v2 with two flip views each), gating
per image, batch 4. The floor is measured in the same process right after the pipeline: the same
models loaded the same way, the same batches (the classifier on every batch, each segmenter on
the batch's gated images with its views stacked), timing nothing but `model(x)`.

Two figures: `overhead_vs_forward` charges the pipeline everything (setup, loading each model
and its test forward, decoding, merging, post-processing, RLE, writing); the `_steady` figure
leaves out the fixed start-up (profile.json's `fixed_s`), which a real run of thousands of
images amortises.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bundler.demo.synthetic import SyntheticSet
from kernel_src.models import load_model
from kernel_src.spec import InferenceSpec
from kernel_src.tta import stack_views

from .bench_pipeline import run_ours
from .report import BenchResult, Figure, Target, seconds
from .workload import Models, demo_models, make_images, make_spec, model_input, save_models


def _calls(model: torch.nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
    """model(x) in calls of `step` images (0: one call), so the floor is the engine's arithmetic."""
    step = step if step > 0 else x.shape[0]
    return torch.cat([model(x[i : i + step]) for i in range(0, x.shape[0], step)])


def engine_call_sizes(profile: dict[str, Any]) -> dict[str, int]:
    """The call size each model ended the run with (profile.json `call_sizes`: the measured
    choice, or the last out-of-memory reduction)."""
    return {
        name: int((entry.get("reduced_by_oom") or [entry["chosen"]])[-1])
        for name, entry in profile.get("call_sizes", {}).items()
    }


def forward_floor(
    spec: InferenceSpec, bundle: Path, images: SyntheticSet, call_sizes: dict[str, int]
) -> tuple[float, int]:
    """Seconds spent in the forward passes the pipeline must make, and how many images were gated
    in; each model called with the call size the engine chose (`call_sizes`, 0 or absent: one call)."""
    device = torch.device("cpu")
    classifiers = [(m, load_model(m, bundle, spec.num_classes, device)) for m in spec.classifiers]
    segmenters = [(m, load_model(m, bundle, spec.num_classes, device)) for m in spec.segmenters]
    thresholds = torch.tensor(spec.gating.thresholds)
    total = 0.0
    gated_in = 0
    ids = list(images.image_ids)
    with torch.inference_mode():
        for start in range(0, len(ids), spec.batch_size):
            batch = []
            for image_id in ids[start : start + spec.batch_size]:
                bgr = cv2.imread(str(images.images_dir / image_id), cv2.IMREAD_COLOR)
                batch.append(np.asarray(bgr, dtype=np.uint8))
            keep = torch.ones(len(batch), dtype=torch.bool)
            if classifiers and spec.gating.mode != "off":
                probs = torch.zeros(len(batch), spec.num_classes)
                for m, model in classifiers:
                    x = stack_views(torch.cat([model_input(b, m) for b in batch]), m.tta)
                    begin = time.perf_counter()
                    out = _calls(model, x, call_sizes.get(m.name, 0))
                    total += time.perf_counter() - begin
                    probs += torch.sigmoid(out).view(len(m.tta), len(batch), -1).mean(0)
                keep = (probs / len(classifiers) >= thresholds).any(dim=1)
            chosen = [b for b, k in zip(batch, keep.tolist(), strict=True) if k]
            gated_in += len(chosen)
            if not chosen:
                continue
            for m, model in segmenters:
                x = stack_views(torch.cat([model_input(b, m) for b in chosen]), m.tta)
                begin = time.perf_counter()
                _calls(model, x, call_sizes.get(m.name, 0))
                total += time.perf_counter() - begin
    return total, gated_in


def bench_overhead(
    *, quick: bool, n: int | None = None, height: int = 256, width: int = 1600, models: Models | None = None
) -> BenchResult:
    result = BenchResult("overhead_vs_forward")
    n = n or (4 if quick else 12)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        images = make_images(root / "data", n, height=height, width=width, seed=5)
        fitted = save_models(models or demo_models(None, None), root / "bundle", images)
        spec = make_spec(fitted, height=height, width=width, gating="per_image")
        wall, profile = run_ours(spec, root / "bundle", images, root / "ours")
        floor, gated_in = forward_floor(spec, root / "bundle", images, engine_call_sizes(profile))
    segmented = int(profile.get("gating", {}).get("images_segmented", -1))
    if segmented != gated_in:
        raise AssertionError(f"overhead_vs_forward: the pipeline segmented {segmented} images, the floor {gated_in}")
    fixed = float(profile.get("fixed_s", 0.0))
    stages = profile.get("stages", {})
    model_s = sum(v["seconds"] for k, v in stages.items() if k.startswith(("classifier:", "segmenter:")))
    result.row("images", f"{n}", f"{height}x{width}, {segmented} segmented (gating per_image), batch {spec.batch_size}")
    result.row("pipeline wall time", seconds(wall), "kernel_src.run.run, everything included")
    result.row("  fixed start-up", seconds(fixed), "setup + model loading with test forwards (profile fixed_s)")
    result.row("  model stages", seconds(model_s), "classifier:* + segmenter:* stages in profile.json")
    result.row("bare forward passes", seconds(floor), "same models, batches and views; model(x) only")
    result.figures.append(Figure("overhead_vs_forward", wall / floor, Target(1.10, at_most=True)))
    result.figures.append(Figure("overhead_vs_forward_steady", (wall - fixed) / floor, Target(1.10, at_most=True)))
    return result
