"""What the models' arithmetic would cost on the kernel's target GPU: an estimate beside the projection.

A dry-run here runs on this machine's CPU; Kaggle's rerun of a GPU kernel runs on "T4 x2". Without
a calibration (a Kaggle run's profile.json, or a factor), the CPU projection says how long the
notebook takes HERE, not there, so it never decides the verdict by itself (bundler.dryrun.verdict).
Beside it this module gives an estimate for the target from the models' floating-point operations:

    seconds = hidden images x sum over models (FLOPs of one image x its TTA views) / device rate

counted by torch's FlopCounterMode on one forward per model at its input size, every image through
every model and view (an upper bound: gating lets fewer through), model compute only (decoding,
post-processing and loading are left out). The rate is stated, not measured: `T4_FP16_FLOPS` per
GPU, from public T4 inference figures (ResNet-50 at about 1,000 images/s in fp16 at large batch,
8.2 GFLOP an image), times the two GPUs. The GPU check (`python -m benchmarks --gpu-check`) can
replace it with a measured one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernel_src.spec import InferenceSpec

T4_FP16_FLOPS = 8e12  # effective FLOP/s of one T4 on convolution networks in fp16 (stated, see above)
T4_GPUS = 2


@dataclass(frozen=True)
class Estimate:
    flops_per_image: float  # every model x view, one image
    seconds: float  # for the hidden test set, model compute only
    basis: str  # how it was made, for the summary and the report

    def describe(self) -> str:
        return f"about {self.seconds:.0f} s of model compute on the target ({self.basis})"


def model_flops(spec: InferenceSpec, bundle_dir: Path) -> float:
    """FLOPs of one image through every classifier and segmenter, each view counted (CPU, fp32)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kernel_src.models import load_model

    total = 0.0
    for role, model_spec in spec.models_by_role:
        model = load_model(model_spec, bundle_dir, spec.outputs(role), torch.device("cpu"))
        height, width = model_spec.input_size or (spec.image_height, spec.image_width)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(torch.zeros(1, 3, height, width))
        total += float(counter.get_total_flops()) * len(model_spec.tta)
    return total


def target_estimate(spec: InferenceSpec, bundle_dir: Path, hidden_images: int) -> Estimate:
    """The estimate for `hidden_images` images on T4 x2 at fp16 (raises what loading a model raises)."""
    flops = model_flops(spec, bundle_dir)
    rate = T4_FP16_FLOPS * T4_GPUS
    basis = (
        f"{flops / 1e9:.3g} GFLOP an image through every model and view, at a stated {T4_GPUS} x "
        f"{T4_FP16_FLOPS / 1e12:g} TFLOP/s (T4 x2, fp16); decoding and post-processing not included"
    )
    return Estimate(flops_per_image=flops, seconds=hidden_images * flops / rate, basis=basis)
