"""CUDA: images/s and projected minutes for 5,506 images at 1600x256, first-place-scale ensemble.

The ensemble is the shape of the 1st-place Severstal inference (public write-up): 4 classifiers
(3 timm efficientnet_b1 + resnet34), 9 segmenters (3 Unet + 3 FPN on efficientnet-b3, 3 Unet on
resnet34), 3 flip views each (identity, hflip, vflip), every model at the full 256x1600. Random
weights; the gate's thresholds are 0, so every classifier runs AND every image is segmented: the
worst case (1st place's classifiers dropped about half the images, which would cut the segmentation
time about in half).

Each configuration (fp16 / fp32 x one GPU / every GPU) runs `kernel_src.run.run` in a fresh
interpreter (`CUDA_VISIBLE_DEVICES` picks the GPUs). The projection is profile.json's
`fixed_s + 5506 x per_image_s`. Then the naive loop (`benchmarks.naive`: batch 1, one forward per
model and view, Python post-processing and RLE) runs the same models on the same images on the
same GPU in the first configuration's precision; `cuda_pipeline_vs_naive` is its projected time
for 5,506 images (model loading + 5,506 x its per-image seconds) over ours. Their submissions are
compared and the differing rows reported, not required to be zero: on a GPU the batch size picks
other kernels, so a pixel near a threshold may flip. Skipped, with a line saying so, where CUDA is
absent; `device="cpu"` runs the same code path at tiny sizes for the test suite.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from kernel_src.models import build_model
from kernel_src.paths import SUBMISSION_FILE
from kernel_src.spec import InferenceSpec, ModelSpec

from .bench_pipeline import compare_submissions
from .bench_rss import measure
from .naive import NaiveResult, run_naive
from .report import HIDDEN_IMAGES, BenchResult, Figure
from .workload import make_images

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
    classifiers: list[ModelSpec], segmenters: list[ModelSpec], *, height: int, width: int, device: str, precision: str
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
            "precision": precision,
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
    precisions: tuple[str, ...] = ("fp16", "fp32"),
    naive: bool = True,
) -> BenchResult:
    """Our pipeline in each of `precisions` on one GPU (and fp16 on every GPU when there are
    several), then, with `naive`, the naive loop in the first of `precisions` on GPU 0."""
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
    configs: list[tuple[str, str]] = [(precision, "0") for precision in precisions]
    if device != "cuda":  # a code-path check on CPU: fp32, one run
        configs = [("fp32", "")]
    elif gpus >= 2:
        configs.append(("fp16", ",".join(str(i) for i in range(gpus))))
    with tempfile.TemporaryDirectory(prefix="bench-cuda-") as tmp:
        root = Path(tmp)
        images = make_images(root / "data", n, height=height, width=width, seed=9)
        bundle = root / "bundle"
        bundle.mkdir()
        for i, m in enumerate([*classifiers, *segmenters]):
            torch.manual_seed(i)
            state = build_model(m, 4).state_dict()
            save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(bundle / m.file))
        base = ensemble_spec(classifiers, segmenters, height=height, width=width, device=device, precision="fp32")
        per_image: dict[tuple[str, int], float] = {}
        first: tuple[dict[str, Any], Path] | None = None
        for precision, visible in configs:
            spec = replace(base, precision=precision)
            env = {"CUDA_VISIBLE_DEVICES": visible} if device == "cuda" else {}
            used = len(visible.split(",")) if device == "cuda" else 0
            out = root / f"out-{precision}-{used}"
            report = measure(spec, bundle, images, out, torch.get_num_threads(), env)
            first = first or (report, out / SUBMISSION_FILE)
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
        if naive and first is not None:
            precision = configs[0][0]
            spec = replace(base, precision=precision)
            (root / "naive").mkdir()
            loop = run_naive(
                spec,
                bundle_dir=bundle,
                test_dir=images.images_dir,
                sample_submission=images.sample_submission,
                out_path=root / "naive" / "submission.csv",
                device="cuda:0" if device == "cuda" else "cpu",
                autocast_dtype={"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision),
            )
            _naive_rows(result, loop, first, precision, device)
    if ("fp16", 1) in per_image and ("fp32", 1) in per_image:
        result.row("fp16 speed-up", f"{per_image[('fp32', 1)] / per_image[('fp16', 1)]:.2f}x", "one GPU")
    if ("fp16", 1) in per_image and ("fp16", gpus) in per_image and gpus > 1:
        result.row(f"{gpus} GPUs speed-up", f"{per_image[('fp16', 1)] / per_image[('fp16', gpus)]:.2f}x", "fp16")
    result.notes.append(
        f"{n} images; {len(classifiers)} classifiers + {len(segmenters)} segmenters x {len(VIEWS)} views at "
        f"{height}x{width}, gate thresholds 0 (everything segmented: the worst case), batch 8, random weights"
    )
    return result


def _naive_rows(
    result: BenchResult, loop: NaiveResult, ours: tuple[dict[str, Any], Path], precision: str, device: str
) -> None:
    """The naive loop's projection, the ratio to ours (the first configuration) and the submissions' diff."""
    report, submission = ours
    load = loop.stages.get("load_models", 0.0)
    naive_rate = (loop.seconds - load) / max(loop.images, 1)
    naive_min = (load + HIDDEN_IMAGES * naive_rate) / 60
    ours_min = (float(report["fixed_s"]) + HIDDEN_IMAGES * float(report["per_image_s"])) / 60
    where = "GPU 0" if device == "cuda" else "cpu"
    result.row(
        f"naive loop, {precision}, {where}",
        f"{1 / naive_rate:.2f} img/s",
        f"projected {naive_min:.1f} min for {HIDDEN_IMAGES} images; batch 1, loading {load:.1f} s",
    )
    rows, differ, _ = compare_submissions(submission, loop.submission_path)
    result.row("submissions, ours vs naive", f"{differ} of {rows} rows differ", f"{precision}, {where}")
    prefix = "cuda" if device == "cuda" else "cpu"
    result.figures.append(Figure(f"{prefix}_naive_{precision}_projected_min", naive_min))
    result.figures.append(Figure(f"{prefix}_pipeline_vs_naive", naive_min / ours_min))
