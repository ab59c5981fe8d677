"""CUDA: images/s and projected minutes for 5,506 images at 1600x256, first-place-scale ensemble.

The ensemble is the shape of the 1st-place Severstal inference (public write-up): 4 classifiers
(3 timm efficientnet_b1 + resnet34), 9 segmenters (3 Unet + 3 FPN on efficientnet-b3, 3 Unet on
resnet34), 3 flip views each (identity, hflip, vflip), every model at the full 256x1600. Random
weights; the gate's thresholds are 0, so every classifier runs AND every image is segmented: the
worst case (1st place's classifiers dropped about half the images, which would cut the segmentation
time about in half).

Each configuration (fp16 / fp32 x one GPU / every GPU) runs `kernel_src.run.run` in a fresh
interpreter (`CUDA_VISIBLE_DEVICES` picks the GPUs). The projection is profile.json's
`fixed_s + 5506 x per_image_s`. Skipped, with a line saying so, where CUDA is absent.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from kernel_src.models import build_model
from kernel_src.spec import InferenceSpec, ModelSpec

from .bench_rss import measure
from .report import BenchResult, Figure
from .workload import make_images

HIDDEN_IMAGES = 5506
VIEWS = ("identity", "hflip", "vflip")


def first_place_models() -> tuple[list[ModelSpec], list[ModelSpec]]:
    classifiers = [
        ModelSpec(name=f"cls-effb1-{i}", kind="timm", file=f"cls-effb1-{i}.safetensors", arch="efficientnet_b1")
        for i in range(3)
    ]
    classifiers.append(ModelSpec(name="cls-resnet34", kind="timm", file="cls-resnet34.safetensors", arch="resnet34"))
    segmenters = []
    for arch, encoder in [("Unet", "efficientnet-b3"), ("FPN", "efficientnet-b3"), ("Unet", "resnet34")]:
        for i in range(3):
            name = f"{arch.lower()}-{encoder}-{i}"
            segmenters.append(
                ModelSpec(name=name, kind="smp", file=f"{name}.safetensors", arch=arch, encoder=encoder, tta=VIEWS)
            )
    return classifiers, segmenters


def ensemble_spec(
    classifiers: list[ModelSpec], segmenters: list[ModelSpec], *, height: int, width: int, device: str, fp16: bool
) -> InferenceSpec:
    def plain(m: ModelSpec) -> dict[str, object]:
        data: dict[str, object] = {"name": m.name, "kind": m.kind, "file": m.file, "arch": m.arch, "tta": list(m.tta)}
        if m.encoder:
            data["encoder"] = m.encoder
        return data

    return InferenceSpec.from_dict(
        {
            "num_classes": 4,
            "image_height": height,
            "image_width": width,
            "batch_size": 8,
            "device": device,
            "precision": "fp16" if fp16 else "fp32",
            "time_budget_s": 1e9,
            "loader_workers": 4,
            "classifiers": [plain(m) for m in classifiers],
            "segmenters": [plain(m) for m in segmenters],
            "gating": {"mode": "per_class", "thresholds": 0.0},
            "postprocess": {"threshold": 0.55, "min_component": 150, "min_area": [600, 600, 900, 2000]},
        }
    )


def bench_cuda(
    *,
    quick: bool,
    n: int | None = None,
    height: int = 256,
    width: int = 1600,
    device: str = "cuda",
    models: tuple[list[ModelSpec], list[ModelSpec]] | None = None,
) -> BenchResult:
    result = BenchResult("cuda_ensemble")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and gpus == 0:
        result.skipped = (
            "no CUDA device here (torch.cuda.is_available() is False); on a GPU machine this section "
            f"reports images/s and projected minutes for {HIDDEN_IMAGES} images (fp16/fp32, one GPU/two)"
        )
        return result
    n = n or (16 if quick else 64)
    classifiers, segmenters = models or first_place_models()
    configs: list[tuple[str, bool, str]] = [("fp16", True, "0"), ("fp32", False, "0")]
    if device != "cuda":  # a code-path check on CPU: autocast is CUDA-only, so one run says it all
        configs = [("fp32", False, "")]
    if gpus >= 2:
        configs.append(("fp16", True, ",".join(str(i) for i in range(gpus))))
    with tempfile.TemporaryDirectory(prefix="bench-cuda-") as tmp:
        root = Path(tmp)
        images = make_images(root / "data", n, height=height, width=width, seed=9)
        bundle = root / "bundle"
        bundle.mkdir()
        for i, m in enumerate([*classifiers, *segmenters]):
            torch.manual_seed(i)
            state = build_model(m, 4).state_dict()
            save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(bundle / m.file))
        base = ensemble_spec(classifiers, segmenters, height=height, width=width, device=device, fp16=False)
        per_image: dict[tuple[str, int], float] = {}
        for precision, fp16, visible in configs:
            spec = replace(base, precision="fp16" if fp16 else "fp32")
            env = {"CUDA_VISIBLE_DEVICES": visible} if device == "cuda" else {}
            used = len(visible.split(",")) if device == "cuda" else 0
            report = measure(spec, bundle, images, root / f"out-{precision}-{used}", torch.get_num_threads(), env)
            rate = float(report["per_image_s"])
            per_image[(precision, used)] = rate
            minutes = (float(report["fixed_s"]) + HIDDEN_IMAGES * rate) / 60
            label = f"{precision}, {used} GPU" + ("s" if used > 1 else "") if device == "cuda" else f"{precision}, cpu"
            result.row(
                label,
                f"{1 / rate:.2f} img/s",
                f"projected {minutes:.1f} min for {HIDDEN_IMAGES} images; {report['device']}; "
                f"start-up {float(report['fixed_s']):.1f} s",
            )
            key = f"cuda_{precision}_{used}gpu" if device == "cuda" else f"cpu_{precision}"
            result.figures.append(Figure(f"{key}_images_per_s", 1 / rate))
            result.figures.append(Figure(f"{key}_projected_min", minutes))
    if ("fp16", 1) in per_image and ("fp32", 1) in per_image:
        result.row("fp16 speed-up", f"{per_image[('fp32', 1)] / per_image[('fp16', 1)]:.2f}x", "one GPU")
    if ("fp16", 1) in per_image and ("fp16", gpus) in per_image and gpus > 1:
        result.row(f"{gpus} GPUs speed-up", f"{per_image[('fp16', 1)] / per_image[('fp16', gpus)]:.2f}x", "fp16")
    result.notes.append(
        f"{len(classifiers)} classifiers + {len(segmenters)} segmenters x {len(VIEWS)} views at {height}x{width}, "
        "gate thresholds 0 (everything segmented: the worst case), batch 8, random weights"
    )
    return result
