"""What only a real GPU can show (the `gpu` marker; `python -m benchmarks --gpu-check` runs these).

Without CUDA every test here is skipped by tests/conftest.py with the reason printed (`-ra`). The
CPU suite already runs every CUDA-only branch on CPU (tests/kernel/test_devices.py and the device
matrix); these check what CPU emulation cannot: cudnn's kernels in fp16 and channels_last, two
real GPUs splitting a batch, and the memory a full-size run takes.

- fp16 autocast agrees with fp32 on CUDA for real smp segmenters and a timm classifier
  (probabilities within 0.02);
- `run()` on CUDA with channels_last (fp32 and fp16) writes the masks a CPU run writes (Dice
  >= 0.99 over all masks) with no model failure: the first-batch crash of issue 11 stays gone;
- with two GPUs, the batch split across both gives the masks one GPU gives, and both GPUs work;
- a full-size run (256x1600, batch 8, Unet-resnet34 with 3 views) records its peak GPU memory
  (`torch.cuda.max_memory_allocated`) as the test property `gpu_peak_mib`.

The segmenters' last layers are rescaled on the test images so their logits spread over +-3:
random weights give logits near 0, where fp16's rounding would flip half the pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bundler.demo.synthetic import SyntheticSet, make_dataset
from kernel_src.devices import DeviceSet, resolve_devices
from kernel_src.models import build_model, load_model
from kernel_src.rle import decode
from kernel_src.run import run
from kernel_src.spec import InferenceSpec, ModelSpec
from tests.tiny import ENCODER, model_dict

pytestmark = pytest.mark.gpu

H, W = 64, 256
VIEWS = ("identity", "hflip", "vflip")
DICE = 0.99
PROB_TOLERANCE = 0.02  # fp16 autocast vs fp32, sigmoid probabilities


def _inputs(images: SyntheticSet, spec: ModelSpec) -> torch.Tensor:
    """The engine's preprocessing of the first 4 images: x / 255, resize to the model's input, (x - mean) / std."""
    import cv2

    rgb = []
    for image_id in images.image_ids[:4]:
        bgr = cv2.imread(str(images.images_dir / image_id), cv2.IMREAD_COLOR)
        assert bgr is not None, image_id
        rgb.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255.0
    if spec.input_size is not None:
        x = nn.functional.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False)
    return (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


def _spread_last_layer(model: nn.Module, x: torch.Tensor) -> None:
    """Rescale the segmentation head's last conv so the logits on `x` have mean 0 and std 3."""
    conv = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d)][-1]  # type: ignore[union-attr]
    assert conv.bias is not None
    with torch.no_grad():
        logits = model(x)
        scale = 3.0 / logits.std().clamp_min(1e-12)
        conv.weight.mul_(scale)
        conv.bias.copy_((conv.bias - logits.mean()) * scale)


def _save(spec: ModelSpec, dest: Path, seed: int, images: SyntheticSet) -> ModelSpec:
    torch.manual_seed(seed)
    model = build_model(spec, 4).eval()
    if spec.kind == "smp":
        _spread_last_layer(model, _inputs(images, spec))
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(dest / spec.file))
    return spec


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """8 images at 64x256, a timm classifier and two smp segmenters (smp's resnet18 encoder and a
    timm-universal one), 3 flip views each."""
    root = tmp_path_factory.mktemp("gpu-small")
    images = make_dataset(root / "data", 8, seed=21, height=H, width=W, layout="wide")
    bundle = root / "bundle"
    bundle.mkdir()
    models = [
        ModelSpec(name="cls-r18", kind="timm", file="cls-r18.safetensors", arch="resnet18", input_size=(32, 128)),
        ModelSpec(name="unet-r18", kind="smp", file="unet-r18.safetensors", arch="Unet", encoder="resnet18", tta=VIEWS),
        ModelSpec(
            name="fpn-mnv3",
            kind="smp",
            file="fpn-mnv3.safetensors",
            arch="FPN",
            encoder=ENCODER,
            input_size=(128, 512),
            tta=VIEWS,
            weight=0.5,
        ),
    ]
    saved = [_save(m, bundle, i, images) for i, m in enumerate(models)]
    return {"root": root, "images": images, "bundle": bundle, "classifier": saved[0], "segmenters": saved[1:]}


def _spec(segmenters: list[ModelSpec], **overrides: Any) -> InferenceSpec:
    data: dict[str, Any] = {
        "num_classes": 4,
        "image_height": H,
        "image_width": W,
        "rle_order": "F",
        "batch_size": 4,
        "device": "cpu",
        "time_budget_s": 3600.0,
        "loader_workers": 1,
        "segmenters": [model_dict(m) for m in segmenters],
        "gating": {"mode": "off"},
        "postprocess": {"threshold": 0.5, "min_component": 0, "min_area": 0},
    }
    data.update(overrides)
    return InferenceSpec.from_dict(data)


def _run(data: dict[str, Any], spec: InferenceSpec, devices: DeviceSet, out: str) -> tuple[Path, dict[str, Any]]:
    images: SyntheticSet = data["images"]
    result = run(
        spec,
        bundle_dir=data["bundle"],
        test_dir=images.images_dir,
        sample_submission=images.sample_submission,
        out_dir=data["root"] / out,
        progress=False,
        devices=devices,
    )
    return result.submission_path, result.profile


def _masks(path: Path, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    import pandas as pd

    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {key: decode(rle, shape, "F").astype(bool) for key, rle in rows.itertuples(index=False)}


def _dice(a: Path, b: Path, shape: tuple[int, int] = (H, W)) -> float:
    """Dice over every mask of two submissions of the same rows (1.0 when both are all empty)."""
    ma, mb = _masks(a, shape), _masks(b, shape)
    assert ma.keys() == mb.keys()
    inter = sum(int((ma[k] & mb[k]).sum()) for k in ma)
    total = sum(int(ma[k].sum()) + int(mb[k].sum()) for k in ma)
    return 1.0 if total == 0 else 2 * inter / total


def _healthy(profile: dict[str, Any]) -> None:
    assert profile["problems"]["model_failures"] == [], profile["problems"]
    assert profile["problems"]["nonfinite"] == [], profile["problems"]


def test_fp16_autocast_agrees_with_fp32(small: dict[str, Any], record_property: Callable[[str, object], None]) -> None:
    device = torch.device("cuda", 0)
    worst = 0.0
    for spec in (small["classifier"], *small["segmenters"]):
        model = load_model(spec, small["bundle"], 4, device)
        x = _inputs(small["images"], spec).to(device)
        with torch.inference_mode():
            fp32 = torch.sigmoid(model(x).float())
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                out = model(x)
            assert out.dtype == torch.float16, f"{spec.name}: autocast did not run in fp16"
            fp16 = torch.sigmoid(out.float())
        diff = float((fp32 - fp16).abs().max())
        assert diff <= PROB_TOLERANCE, f"{spec.name}: fp16 probabilities differ from fp32 by {diff:.4f}"
        worst = max(worst, diff)
    record_property("gpu_fp16_max_prob_diff", round(worst, 5))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_channels_last_through_run_matches_cpu(
    small: dict[str, Any], precision: str, record_property: Callable[[str, object], None]
) -> None:
    spec = _spec(small["segmenters"])
    cpu, cpu_profile = _run(small, spec, resolve_devices("cpu"), f"cpu-{precision}")
    cuda = resolve_devices("cuda", memory_format="channels_last", precision=precision, replicas=1)
    gpu, profile = _run(small, spec, cuda, f"cuda-cl-{precision}")
    _healthy(cpu_profile)
    _healthy(profile)
    assert {k: profile["devices"][k] for k in ("kind", "replicas", "memory_format", "precision")} == {
        "kind": "cuda",
        "replicas": 1,
        "memory_format": "channels_last",
        "precision": precision,
    }
    dice = _dice(cpu, gpu)
    record_property(f"gpu_channels_last_{precision}_dice_vs_cpu", round(dice, 5))
    assert dice >= DICE, f"channels_last {precision} on CUDA vs CPU: Dice {dice:.4f} < {DICE}"


def test_two_gpus_split_the_batch_and_agree_with_one(
    small: dict[str, Any], record_property: Callable[[str, object], None]
) -> None:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"needs two CUDA devices, this machine has {gpus}")
    spec = _spec(small["segmenters"])
    one, _ = _run(small, spec, resolve_devices("cuda", replicas=1), "cuda-one")
    torch.cuda.reset_peak_memory_stats(1)
    two, profile = _run(small, spec, resolve_devices("cuda", replicas=2), "cuda-two")
    _healthy(profile)
    assert profile["devices"]["replicas"] == 2
    assert torch.cuda.max_memory_allocated(1) > 0, "the second GPU did no work"
    dice = _dice(one, two)
    record_property("gpu_two_gpus_dice_vs_one", round(dice, 5))
    assert dice >= DICE, f"batch split over 2 GPUs vs 1: Dice {dice:.4f} < {DICE}"


def test_a_full_size_run_records_its_peak_gpu_memory(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    images = make_dataset(tmp_path / "data", 16, seed=22, height=256, width=1600, layout="wide")
    (tmp_path / "bundle").mkdir()
    unet = ModelSpec(
        name="unet-r34", kind="smp", file="unet-r34.safetensors", arch="Unet", encoder="resnet34", tta=VIEWS
    )
    torch.manual_seed(0)
    state = build_model(unet, 4).state_dict()
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(tmp_path / "bundle" / unet.file))
    spec = _spec([unet], image_height=256, image_width=1600, batch_size=8, device="cuda", loader_workers=4)
    devices = resolve_devices("cuda", replicas=1)  # "auto": channels_last + fp16 autocast + pinned memory
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    result = run(
        spec,
        bundle_dir=tmp_path / "bundle",
        test_dir=images.images_dir,
        sample_submission=images.sample_submission,
        out_dir=tmp_path / "out",
        progress=False,
        devices=devices,
    )
    peak = torch.cuda.max_memory_allocated(0)
    total = torch.cuda.get_device_properties(0).total_memory
    record_property("gpu_peak_mib", round(peak / 2**20, 1))
    record_property("gpu_total_mib", round(total / 2**20, 1))
    record_property("gpu_full_size_images_per_s", round(float(result.profile["images_per_s"]), 2))
    _healthy(result.profile)
    assert result.profile["images"] == 16
    assert result.profile["devices"]["precision"] == "fp16"
    assert result.profile["devices"]["memory_format"] == "channels_last"
    assert 0 < peak < total
