"""The benchmarks' inputs: synthetic Severstal-like images, and real smp/timm models with random
weights saved as a bundle (`<name>.safetensors`) the way the engine loads them.

Random weights give random decisions, so two heads are set from the benchmark's own images:

- the classifier's last layer is fitted (ridge regression on its pooled features) so that a
  class fires exactly where the synthetic labels have that defect: its decisions sit far from
  the gating threshold (checked: `|logit| >= MIN_MARGIN`), the gate lets the defective images
  through and holds the clean ones, and both pipelines see the same verdicts;
- each segmenter's output bias is shifted so that about `SEG_POSITIVE` of the pixels are above
  0 logit, like a trained model's mostly-empty maps; far fewer pixels then sit near the pixel
  threshold, where two correct float orders of summation could still disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from bundler.demo.synthetic import SyntheticSet, make_dataset
from kernel_src.models import build_model
from kernel_src.spec import InferenceSpec, ModelSpec
from kernel_src.submission import read_masks

MIN_MARGIN = 0.5  # smallest |logit| the fitted classifier may give on the benchmark images
SEG_POSITIVE = 0.03  # fraction of pixels a segmenter's shifted output puts above logit 0


def make_images(
    out_dir: Path, n_images: int, *, height: int, width: int, seed: int, clean_fraction: float = 0.5
) -> SyntheticSet:
    """`n_images` synthetic JPEGs (half clean by default) with labels and a wide sample submission."""
    return make_dataset(
        out_dir,
        n_images,
        seed=seed,
        height=height,
        width=width,
        clean_fraction=clean_fraction,
        layout="wide",
        image_dir_name="test_images",
    )


def defect_labels(images: SyntheticSet, num_classes: int) -> npt.NDArray[np.bool_]:
    """[images, classes]: True where the labels give the image that class of defect."""
    masks = read_masks(images.labels_csv, num_classes, labels=True)
    present = np.zeros((len(images.image_ids), num_classes), dtype=np.bool_)
    for i, image_id in enumerate(images.image_ids):
        present[i] = [bool(rle.strip()) for rle in masks.get(image_id, [""] * num_classes)]
    return present


def model_input(image_bgr: npt.NDArray[np.uint8], spec: ModelSpec) -> torch.Tensor:
    """[1,3,h,w] float as the engine prepares it: RGB / 255, bilinear resize, then normalised."""
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    # .contiguous(): NCHW memory as the engine uses on CPU (a permuted view would reach the model
    # channels-last, a slower mixed layout for a contiguous-format model).
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div(255.0).contiguous()
    if spec.input_size is not None and tuple(x.shape[-2:]) != spec.input_size:
        x = F.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _read(images: SyntheticSet, image_id: str) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(images.images_dir / image_id), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"benchmark image {images.images_dir / image_id} cannot be read")
    return np.asarray(image, dtype=np.uint8)


def _save(model: nn.Module, path: Path) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))


def _last_linear(model: nn.Module) -> nn.Linear:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Linear):
        raise TypeError(f"benchmark classifier {type(model).__name__} has no plain Linear head to fit")
    return head


def fit_classifier(model: nn.Module, spec: ModelSpec, images: SyntheticSet, present: npt.NDArray[np.bool_]) -> float:
    """Fit the Linear head so each class logit is +6 where `present`, -6 elsewhere; the margin."""
    head = _last_linear(model)
    features: list[torch.Tensor] = []
    with torch.inference_mode():
        for image_id in images.image_ids:
            x = model_input(_read(images, image_id), spec)
            features.append(model.forward_head(model.forward_features(x), pre_logits=True)[0].double())  # type: ignore[operator]
    feats = torch.stack(features)
    mean = feats.mean(0, keepdim=True)
    centred = feats - mean
    target = torch.from_numpy(np.where(present, 6.0, -6.0))
    offset = target.mean(0, keepdim=True)
    gram = centred @ centred.T
    ridge = 1e-5 * float(gram.diagonal().mean()) + 1e-12
    # Dual ridge solution (fewer images than features): W = X^T (X X^T + lambda I)^-1 (Y - mean).
    alpha = torch.linalg.solve(gram + ridge * torch.eye(len(feats), dtype=gram.dtype), target - offset)
    weight = centred.T @ alpha  # [features, classes]
    bias = offset[0] - (mean @ weight)[0]
    with torch.no_grad():
        head.weight.copy_(weight.T.float())
        head.bias.copy_(bias.float())
    logits = (feats @ weight + bias).numpy()
    wrong = np.sign(logits) != np.where(present, 1.0, -1.0)
    if wrong.any():
        raise RuntimeError(f"benchmark classifier {spec.name}: the fitted head misclassifies {int(wrong.sum())} pairs")
    return float(np.abs(logits).min())


def _seg_head_bias(model: nn.Module) -> torch.Tensor:
    head = getattr(model, "segmentation_head", None)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)] if head is not None else []
    if not convs or convs[-1].bias is None:
        raise TypeError(f"benchmark segmenter {type(model).__name__} has no segmentation_head conv bias to shift")
    return convs[-1].bias


def shift_segmenter(model: nn.Module, spec: ModelSpec, images: SyntheticSet, sample: int = 2) -> None:
    """Shift the output bias so about SEG_POSITIVE of the pixels of a few images are positive."""
    outputs = []
    with torch.inference_mode():
        for image_id in images.image_ids[:sample]:
            outputs.append(model(model_input(_read(images, image_id), spec)))
    logits = torch.cat(outputs)
    per_class = logits.transpose(0, 1).reshape(logits.shape[1], -1)
    quantile = torch.quantile(per_class[:, :: max(1, per_class.shape[1] // 200_000)], 1.0 - SEG_POSITIVE, dim=1)
    with torch.no_grad():
        _seg_head_bias(model).sub_(quantile)


@dataclass(frozen=True)
class Models:
    classifiers: tuple[ModelSpec, ...]
    segmenters: tuple[ModelSpec, ...]
    margin: float  # smallest |logit| of the fitted classifiers on the benchmark images


def half_size(height: int, width: int, factor: int = 2) -> tuple[int, int]:
    """(height, width) divided by `factor`, rounded to multiples of 32 (what smp models accept)."""
    return (max(32, round(height / factor / 32) * 32), max(32, round(width / factor / 32) * 32))


def demo_models(input_size: tuple[int, int] | None, cls_input: tuple[int, int] | None) -> Models:
    """The demo's three models (bundle.toml): timm resnet18, Unet-resnet18, FPN-mobilenet_v2."""
    cls = ModelSpec(
        name="cls-resnet18", kind="timm", file="cls-resnet18.safetensors", arch="resnet18", input_size=cls_input
    )
    unet = ModelSpec(
        name="unet-resnet18",
        kind="smp",
        file="unet-resnet18.safetensors",
        arch="Unet",
        encoder="resnet18",
        input_size=input_size,
        tta=("identity", "hflip"),
    )
    fpn = ModelSpec(
        name="fpn-mobilenet",
        kind="smp",
        file="fpn-mobilenet.safetensors",
        arch="FPN",
        encoder="mobilenet_v2",
        input_size=input_size,
        tta=("identity", "vflip"),
    )
    return Models(classifiers=(cls,), segmenters=(unet, fpn), margin=float("inf"))


def save_models(
    models: Models, bundle_dir: Path, images: SyntheticSet, *, num_classes: int = 4, seed: int = 0
) -> Models:
    """Random-weight models fitted to `images` as described above, saved into `bundle_dir`."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    present = defect_labels(images, num_classes)
    margin = float("inf")
    for i, spec in enumerate(models.classifiers):
        torch.manual_seed(seed + i)
        model = build_model(spec, num_classes).eval()
        margin = min(margin, fit_classifier(model, spec, images, present))
        _save(model, bundle_dir / spec.file)
    for i, spec in enumerate(models.segmenters):
        torch.manual_seed(seed + 100 + i)
        model = build_model(spec, num_classes).eval()
        shift_segmenter(model, spec, images)
        _save(model, bundle_dir / spec.file)
    if margin < MIN_MARGIN:
        raise RuntimeError(f"benchmark classifiers decide too close to the threshold (margin {margin:.2f})")
    return replace(models, margin=margin)


def _model_dict(spec: ModelSpec) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "file": spec.file,
        "tta": list(spec.tta),
        "weight": spec.weight,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    for key in ("arch", "encoder"):
        if getattr(spec, key):
            data[key] = getattr(spec, key)
    if spec.input_size is not None:
        data["input_size"] = list(spec.input_size)
    return data


def make_spec(
    models: Models,
    *,
    height: int,
    width: int,
    gating: str,
    batch_size: int = 4,
    workers: int = 1,
    postprocess: dict[str, Any] | None = None,
    segmenters: Sequence[ModelSpec] | None = None,
) -> InferenceSpec:
    """An InferenceSpec on CPU, fp32, around `models` (classifiers dropped when gating is off)."""
    return InferenceSpec.from_dict(
        {
            "num_classes": 4,
            "image_height": height,
            "image_width": width,
            "rle_order": "F",
            "batch_size": batch_size,
            "device": "cpu",
            "precision": "fp32",
            "time_budget_s": 1e9,
            "loader_workers": workers,
            "classifiers": [_model_dict(m) for m in models.classifiers] if gating != "off" else [],
            "segmenters": [_model_dict(m) for m in (segmenters or models.segmenters)],
            "gating": {"mode": gating, "thresholds": 0.5},
            "postprocess": postprocess or {"threshold": 0.5, "min_component": 30, "min_area": 100},
        }
    )
