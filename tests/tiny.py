"""Tiny REAL models for tests: timm classifiers and smp segmenters with random weights.

Weights are saved to `dest` exactly as a bundle carries them (`<name>.safetensors`, or `<name>.pt`
for TorchScript), so `kernel_src.models.load_model(spec, dest, ...)` loads them like the notebook
does. Everything is seeded: the same `seed` gives the same files.

- `make_tiny_models(dest)`: two timm classifiers and two smp segmenters (Unet and FPN on a small
  timm-universal MobileNetV3 encoder), each at its own small `input_size`; `TinyModels` is the
  folder and both lists, as tests/conftest.py's `tiny_models` fixture gives them.
- `make_torchscript_segmenter(dest)`: a scripted tiny encoder-decoder, the TorchScript model kind.
- `make_brightness_classifier(dest)`: a scripted classifier whose every class fires exactly when
  the image's mean pixel is above 0.5 (mean/std 0/1): gating tests choose what passes.
- `make_nan_segmenter(dest)`: a scripted segmenter that outputs NaN for images brighter than
  0.9 on average and a fixed logit elsewhere.
- `make_failing_segmenter(dest)`: a scripted segmenter that raises on batches with such an image.
- `make_nan_classifier(dest)`: a scripted classifier with logit `value` for every class, NaN for
  images brighter than 0.9; `make_inf_segmenter(dest)`: logits +inf for images brighter than 0.5,
  -inf for the others (an fp16 overflow's saturated logits).
- `tiny_spec(dest, **overrides)`: a complete `InferenceSpec` (64x256 images, CPU) around them.
- `write_image`, `write_sample`: hand-made test images and sample submissions; `random_images(n, seed)`:
  a seeded batch of 64x256 RGB images.
- `predictor(spec, dest, devices)`: the engine's `Predictor` with the spec's models loaded from `dest`.
- `ForwardCalls(monkeypatch)`: the batch size of every forward call of the replicas loaded from then on.
- `matrix_images`, `make_matrix_models`: the device matrix's graded 32x128 images, and three
  smp segmenters plus a timm classifier rescaled on them, with gating thresholds chosen for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import save_file
from torch import nn

from kernel_src.devices import DeviceSet
from kernel_src.models import build_model, load_models
from kernel_src.predict import Predictor
from kernel_src.profiler import Profiler
from kernel_src.spec import InferenceSpec, ModelSpec

IMAGE_HEIGHT = 64
IMAGE_WIDTH = 256
ENCODER = "tu-mobilenetv3_small_050"
CPU_ONLY = DeviceSet((torch.device("cpu"),))  # `predictor`'s devices unless given


def _save_random(spec: ModelSpec, dest: Path, num_classes: int, seed: int) -> ModelSpec:
    torch.manual_seed(seed)
    model = build_model(spec, num_classes)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / spec.file))
    return spec


class TinyModels(NamedTuple):
    """`make_tiny_models`' files and specs: `folder, classifiers, segmenters = tiny_models`."""

    dir: Path
    classifiers: list[ModelSpec]
    segmenters: list[ModelSpec]


def make_tiny_models(dest: Path, *, num_classes: int = 4, seed: int = 0) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(classifiers, segmenters): real timm and smp models with random weights saved in `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    classifiers = [
        ModelSpec(
            name="cls-mnv3",
            kind="timm",
            file="cls-mnv3.safetensors",
            arch="mobilenetv3_small_050",
            input_size=(32, 128),
        ),
        ModelSpec(name="cls-resnet", kind="timm", file="cls-resnet.safetensors", arch="test_resnet", input_size=None),
    ]
    segmenters = [
        ModelSpec(
            name="unet-mnv3",
            kind="smp",
            file="unet-mnv3.safetensors",
            arch="Unet",
            encoder=ENCODER,
            input_size=(32, 128),
            tta=("identity", "hflip"),
            weight=1.0,
        ),
        ModelSpec(
            name="fpn-mnv3",
            kind="smp",
            file="fpn-mnv3.safetensors",
            arch="FPN",
            encoder=ENCODER,
            input_size=(64, 128),
            tta=("identity", "vflip"),
            weight=0.5,
        ),
    ]
    for i, spec in enumerate([*classifiers, *segmenters]):
        _save_random(spec, dest, num_classes, seed + i)
    return classifiers, segmenters


class _TinySegNet(nn.Module):
    """A small encoder-decoder (stride-4 bottleneck, bilinear upsampling) with random weights."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(16 + 3, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = nn.functional.interpolate(self.down(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        out: torch.Tensor = self.head(torch.cat([features, x], dim=1))
        return out


def make_torchscript_segmenter(
    dest: Path,
    *,
    name: str = "ts-seg",
    num_classes: int = 4,
    seed: int = 0,
    input_size: tuple[int, int] | None = (32, 128),
    attributes: dict[str, Any] | None = None,
) -> ModelSpec:
    """A tiny encoder-decoder compiled with `torch.jit.script`, saved as `<name>.pt` in `dest`;
    `attributes` are set on the module first and saved with it (e.g. a training config dict).

    (Tracing a real smp model takes tens of seconds on a busy 2-core machine; the engine treats
    every TorchScript file alike, so a small scripted network tests the same code path.)
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = _TinySegNet(num_classes).eval()
    for attribute, value in (attributes or {}).items():
        setattr(net, attribute, value)
    scripted = torch.jit.script(net)  # type: ignore[no-untyped-call]
    spec = ModelSpec(name=name, kind="torchscript", file=f"{name}.pt", input_size=input_size, tta=("identity", "hflip"))
    scripted.save(str(dest / spec.file))  # type: ignore[no-untyped-call]
    return spec


class _Brightness(nn.Module):
    """Logit +20 for every class when the mean pixel is above 0.5, -20 below (linear in between)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean(dim=(1, 2, 3))
        return ((level - 0.5) * 200.0).clamp(-20.0, 20.0).unsqueeze(1).repeat(1, self.num_classes)


class _NanOnBright(nn.Module):
    """Logit `value` everywhere; NaN for images whose mean pixel is above 0.9."""

    def __init__(self, num_classes: int, value: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), self.value, dtype=x.dtype)
        bright = x.mean(dim=(1, 2, 3)) > 0.9
        out[bright] = float("nan")
        return out


class _FailOnBright(nn.Module):
    """Logit -4 everywhere; raises for a batch holding an image whose mean pixel is above 0.9."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.mean(dim=(1, 2, 3)) > 0.9).any()):
            raise RuntimeError("this model fails on bright images")
        return torch.full((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), -4.0, dtype=x.dtype)


def make_failing_segmenter(dest: Path, *, name: str = "seg-fail", num_classes: int = 4) -> ModelSpec:
    """A scripted segmenter that raises on any batch with an image of mean pixel > 0.9."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(
        name=name,
        kind="torchscript",
        file=f"{name}.pt",
        input_size=(32, 128),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    torch.jit.script(_FailOnBright(num_classes)).save(str(dest / spec.file))  # type: ignore[no-untyped-call]
    return spec


def make_brightness_classifier(dest: Path, *, name: str = "cls-bright", num_classes: int = 4) -> ModelSpec:
    """A scripted classifier: all classes pass for images with mean pixel > 0.5 (values in [0, 1])."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(
        name=name, kind="torchscript", file=f"{name}.pt", input_size=(16, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    torch.jit.script(_Brightness(num_classes)).save(str(dest / spec.file))  # type: ignore[no-untyped-call]
    return spec


def make_nan_segmenter(
    dest: Path, *, name: str = "seg-nan", num_classes: int = 4, value: float = 4.0, weight: float = 1.0
) -> ModelSpec:
    """A scripted segmenter: logit `value` everywhere, NaN for images with mean pixel > 0.9."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(
        name=name,
        kind="torchscript",
        file=f"{name}.pt",
        input_size=(32, 128),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        weight=weight,
    )
    torch.jit.script(_NanOnBright(num_classes, value)).save(str(dest / spec.file))  # type: ignore[no-untyped-call]
    return spec


def model_dict(spec: ModelSpec) -> dict[str, Any]:
    """`spec` as the plain data `InferenceSpec.from_dict` takes."""
    data: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "file": spec.file,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "tta": list(spec.tta),
        "weight": spec.weight,
    }
    if spec.arch:
        data["arch"] = spec.arch
    if spec.encoder:
        data["encoder"] = spec.encoder
    if spec.input_size is not None:
        data["input_size"] = list(spec.input_size)
    return data


def tiny_spec(dest: Path, **overrides: Any) -> InferenceSpec:
    """An InferenceSpec for 64x256 images on CPU around `make_tiny_models(dest)`.

    `overrides` are `InferenceSpec.from_dict` keys; `classifiers`/`segmenters` may be given as
    `ModelSpec`s or plain dicts (when both are given, no model is saved). `num_classes` and
    `seed` also shape the saved models.
    """
    num_classes = int(overrides.get("num_classes", 4))
    seed = int(overrides.pop("seed", 0))
    if "classifiers" in overrides and "segmenters" in overrides:  # models given: nothing to save
        classifiers: list[ModelSpec] = []
        segmenters: list[ModelSpec] = []
    else:
        classifiers, segmenters = make_tiny_models(dest, num_classes=num_classes, seed=seed)
    data: dict[str, Any] = {
        "num_classes": num_classes,
        "image_height": IMAGE_HEIGHT,
        "image_width": IMAGE_WIDTH,
        "rle_order": "F",
        "batch_size": 4,
        "device": "cpu",
        "precision": "fp32",
        "time_budget_s": 3600.0,
        "loader_workers": 1,
        "classifiers": classifiers,
        "segmenters": segmenters,
        "gating": {"mode": "per_class", "thresholds": 0.5},
        "postprocess": {"threshold": 0.5, "min_component": 0, "min_area": 0},
    }
    data.update(overrides)
    for key in ("classifiers", "segmenters"):
        data[key] = [model_dict(m) if isinstance(m, ModelSpec) else m for m in data[key]]
    if not data["classifiers"] and "gating" not in overrides:
        data["gating"] = {"mode": "off"}
    return InferenceSpec.from_dict(data)


def random_images(n: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """`n` seeded random RGB images of the tests' size (uint8, N x H x W x 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)


def predictor(spec: InferenceSpec, dest: Path, devices: DeviceSet = CPU_ONLY) -> Predictor:
    """The engine's `Predictor` for `spec`, its models loaded from `dest` onto `devices`."""
    profiler = Profiler(0.0)
    classifiers, segmenters = load_models(spec, dest, devices, profiler)
    return Predictor(spec, classifiers, segmenters, devices, profiler)


def write_image(path: Path, rgb: npt.NDArray[np.uint8]) -> Path:
    """Save an RGB (or single-channel) uint8 array as the JPEG/PNG its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(path.suffix or ".jpg", image)
    if not ok:
        raise ValueError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())
    return path


def write_sample(path: Path, image_ids: list[str], *, layout: str = "wide", num_classes: int = 4) -> Path:
    """A sample_submission.csv listing `image_ids`: wide (`ImageId_ClassId`) or long (`ImageId,ClassId`)."""
    if layout == "wide":
        lines = ["ImageId_ClassId,EncodedPixels"] + [
            f"{i}_{c},1 1" for i in image_ids for c in range(1, num_classes + 1)
        ]
    else:
        lines = ["ImageId,EncodedPixels,ClassId"] + [f"{i},1 1,0" for i in image_ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- Non-finite outputs (issue 11, item 4): a classifier with NaN, a segmenter with +/-Inf logits ---


class _NanClassifier(nn.Module):
    """Logit `value` for every class; NaN for images whose mean pixel is above 0.9."""

    def __init__(self, num_classes: int, value: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], self.num_classes), self.value, dtype=x.dtype, device=x.device)
        out[x.mean(dim=(1, 2, 3)) > 0.9] = float("nan")
        return out


class _InfSegmenter(nn.Module):
    """Logit +inf everywhere for images whose mean pixel is above 0.5, -inf for the others."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), -float("inf"), dtype=x.dtype)
        out[x.mean(dim=(1, 2, 3)) > 0.5] = float("inf")
        return out


def _scripted(dest: Path, name: str, model: nn.Module, **spec: Any) -> ModelSpec:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model_spec = ModelSpec(
        name=name, kind="torchscript", file=f"{name}.pt", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **spec
    )
    torch.jit.script(model).save(str(dest / model_spec.file))  # type: ignore[no-untyped-call]
    return model_spec


def make_nan_classifier(
    dest: Path, *, name: str = "cls-nan", num_classes: int = 4, value: float = -20.0, weight: float = 1.0
) -> ModelSpec:
    """A scripted classifier: logit `value` for every class, NaN for images with mean pixel > 0.9."""
    return _scripted(dest, name, _NanClassifier(num_classes, value), input_size=(16, 64), weight=weight)


def make_inf_segmenter(dest: Path, *, name: str = "seg-inf", num_classes: int = 4, weight: float = 1.0) -> ModelSpec:
    """A scripted segmenter: logit +inf for images with mean pixel > 0.5, -inf for the others (the
    saturated logits an fp16 overflow gives)."""
    return _scripted(dest, name, _InfSegmenter(num_classes), input_size=(32, 128), weight=weight)


# --- The device matrix (tests/kernel/test_device_matrix.py) -----------------------------------------
# Three smp architectures (smp's own resnet18 encoder and timm-universal MobileNetV3) and a timm
# classifier on small graded-brightness images. Random seeded weights give logits near zero, so
# masks would be coin flips at 0.5 and gating would hinge on the third decimal; the maker
# rescales each model's last layer on the matrix images so masks cover set fractions of the
# pixels, and places the gating thresholds in wide gaps between the classifier's probabilities.

MATRIX_HEIGHT = 32
MATRIX_WIDTH = 128
MATRIX_LOGIT_STD = 3.0  # segmenter logits' spread on the matrix images after rescaling
MATRIX_LOGIT_MEAN = (1.5, 0.5, 0.0, -1.0)  # per class (cycled): masks over ~69%, 57%, 50%, 37% of pixels
MATRIX_CLASSIFIER_LOGIT_STD = 2.0


def matrix_images(n: int = 7, *, seed: int = 0) -> npt.NDArray[np.uint8]:
    """`n` RGB images [n, 32, 128, 3]: a brightness ramp from dark (30) to bright (230) over the
    set, each image with three random coloured blocks and pixel noise (seeded)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, MATRIX_HEIGHT, MATRIX_WIDTH, 3), np.uint8)
    for i in range(n):
        image = np.full((MATRIX_HEIGHT, MATRIX_WIDTH, 3), 30.0 + 200.0 * i / max(n - 1, 1), np.float32)
        for _ in range(3):
            y, x = int(rng.integers(0, MATRIX_HEIGHT - 8)), int(rng.integers(0, MATRIX_WIDTH - 24))
            image[y : y + 12, x : x + 32] = rng.uniform(0.0, 255.0, size=3)
        image += rng.normal(0.0, 10.0, image.shape).astype(np.float32)
        out[i] = np.clip(image, 0.0, 255.0).astype(np.uint8)
    return out


@dataclass(frozen=True)
class MatrixModels:
    """What `make_matrix_models` saved, and the gating it chose for the images it was given."""

    classifier: ModelSpec
    segmenters: tuple[ModelSpec, ...]
    thresholds: tuple[float, ...]  # gating threshold per class
    margin: float  # the smallest distance of a classifier probability (fp32) from its threshold
    classifier_probs: npt.NDArray[np.float32]  # [n, C] fp32 probabilities the thresholds came from


def _matrix_inputs(images: npt.NDArray[np.uint8], spec: ModelSpec) -> torch.Tensor:
    """The engine's preprocessing (kernel_src/predict.py): x / 255, bilinear resize, (x - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if spec.input_size is not None and tuple(x.shape[-2:]) != spec.input_size:
        x = nn.functional.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False)
    return (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


def _rescale_last_layer(layer: nn.Module, logits: torch.Tensor, std: float, means: Sequence[float]) -> None:
    """Make the logits (per class: dim 1) have spread `std` and mean `means[c]`: an affine change
    of the last layer (what comes after it, e.g. smp's bilinear upsampling, keeps affine maps)."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)) or layer.bias is None:
        raise TypeError(f"expected a Conv2d or Linear last layer with a bias, got {layer}")
    dims = [d for d in range(logits.dim()) if d != 1]
    mean, spread = logits.mean(dim=dims), logits.std(dim=dims).clamp_min(1e-12)
    scale = std / spread
    target = torch.tensor([means[c % len(means)] for c in range(logits.shape[1])])
    with torch.no_grad():
        layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.dim() - 1)))
        layer.bias.copy_((layer.bias - mean) * scale + target)


def _gating_thresholds(probs: npt.NDArray[np.float32]) -> tuple[tuple[float, ...], float]:
    """Per-class thresholds for `probs` [n, C] under which one image passes no class while every
    class passes on some image, each threshold in the widest gap between the probabilities above
    that image's; the image is the one giving the widest smallest margin. (thresholds, margin)."""
    best: tuple[tuple[float, ...], float] | None = None
    for empty in range(probs.shape[0]):
        thresholds, margins = [], []
        for c in range(probs.shape[1]):
            floor = float(probs[empty, c])
            cuts = np.concatenate([[floor], np.sort(probs[probs[:, c] > floor, c])])
            if len(cuts) < 2:  # this image is the class's most probable: it cannot be the empty one
                break
            k = int(np.argmax(np.diff(cuts)))
            thresholds.append(float(cuts[k] + cuts[k + 1]) / 2)
            margins.append(float(cuts[k + 1] - cuts[k]) / 2)
        else:
            if best is None or min(margins) > best[1]:
                best = (tuple(thresholds), min(margins))
    if best is None:
        raise ValueError("no image can be left out by every class: use more images")
    return best


def make_matrix_models(
    dest: Path, images: npt.NDArray[np.uint8], *, num_classes: int = 4, seed: int = 0
) -> MatrixModels:
    """Save a timm classifier (mobilenetv3_small_050, identity view) and three smp segmenters in
    `dest`: Unet on smp's resnet18 at the image size; FPN on tu-mobilenetv3_small_050 at half the
    image width (inputs and probabilities are resized); DeepLabV3Plus on tu-mobilenetv3_small_050
    at the image size. Weights are seeded and random, each last layer rescaled on `images` (see
    the block comment above); the gating thresholds are chosen for `images` (`_gating_thresholds`)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    h, w = int(images.shape[1]), int(images.shape[2])
    classifier = ModelSpec(name="cls-mnv3", kind="timm", file="cls-mnv3.safetensors", arch="mobilenetv3_small_050")
    segmenters = (
        ModelSpec(name="unet-r18", kind="smp", file="unet-r18.safetensors", arch="Unet", encoder="resnet18"),
        ModelSpec(
            name="fpn-mnv3",
            kind="smp",
            file="fpn-mnv3.safetensors",
            arch="FPN",
            encoder=ENCODER,
            input_size=(h, w // 2),
            weight=0.7,
        ),
        ModelSpec(
            name="dlv3p-mnv3",
            kind="smp",
            file="dlv3p-mnv3.safetensors",
            arch="DeepLabV3Plus",
            encoder=ENCODER,
            weight=0.5,
        ),
    )
    probs = np.zeros((len(images), num_classes), np.float32)
    for i, spec in enumerate((classifier, *segmenters)):
        torch.manual_seed(seed + i)
        model = build_model(spec, num_classes).eval()
        with torch.no_grad():
            logits = model(_matrix_inputs(images, spec))
            if spec is classifier:
                head = model.get_classifier()  # type: ignore[operator]
                _rescale_last_layer(head, logits, MATRIX_CLASSIFIER_LOGIT_STD, (0.0,))
                probs = torch.sigmoid(model(_matrix_inputs(images, spec))).numpy()
            else:
                convs = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d)]  # type: ignore[union-attr]
                _rescale_last_layer(convs[-1], logits, MATRIX_LOGIT_STD, MATRIX_LOGIT_MEAN)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(dest / spec.file))
    thresholds, margin = _gating_thresholds(probs)
    return MatrixModels(classifier, segmenters, thresholds, margin, probs)


# --- counting forward calls ---


class ForwardCalls:
    """From now on, every model replica `kernel_src.models.load_model` loads (only model `name`'s,
    when given) records the batch size of each of its forward calls: `replicas[i]` is the i-th
    replica loaded, in load order (the load-time test forward and call-size measuring included)."""

    def __init__(self, monkeypatch: Any, name: str | None = None) -> None:
        import kernel_src.models as models_module

        self.replicas: list[list[int]] = []
        load = models_module.load_model

        def counting_load(spec: ModelSpec, *args: Any) -> nn.Module:
            model = load(spec, *args)
            if name is None or spec.name == name:
                seen: list[int] = []
                self.replicas.append(seen)
                model.register_forward_hook(lambda _m, inputs, _o: seen.append(int(inputs[0].shape[0])))
            return model

        monkeypatch.setattr(models_module, "load_model", counting_load)


# --- Exact models (issue 28): outputs no machine's floating point can move across a threshold ---

EXACT_RECTS: tuple[tuple[tuple[int, int, int, int, int], ...], ...] = (
    # per image: (channel, y0, y1, x0, x1) rectangles set to 230 over a background of 30
    (),  # clean: every class gated off
    ((0, 4, 20, 10, 60), (2, 30, 64, 200, 256)),  # red; blue touching the bottom-right corner
    ((0, 10, 40, 100, 140), (1, 20, 50, 120, 180)),  # red and green overlapping: yellow fires class 4
    ((1, 0, 64, 0, 8), (1, 60, 62, 30, 33)),  # a full-height green band; a 6-pixel speck (removed)
    ((2, 8, 12, 8, 12),),  # a lone 16-pixel blue speck: removed by min_component, the mask left empty
    ((0, 0, 64, 0, 256), (1, 32, 64, 128, 256), (2, 1, 63, 250, 255)),  # all red; a yellow quarter
)


class _ColourRule(nn.Module):
    """Per-pixel logits for 4 classes: red, green, blue and yellow (red and green) bright.

    Inputs are 30/255 or 230/255 (mean 0, std 1), so every logit is -15.3 or +16.1: no threshold is
    near, and flips and the sigmoid cannot move a pixel across one on any machine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red, green, blue = x[:, 0], x[:, 1], x[:, 2]
        return (torch.stack([red, green, blue, torch.minimum(red, green)], dim=1) - 0.5) * 40.0


class _ColourPresence(nn.Module):
    """Image-level logits for the same 4 classes: the rule holds anywhere in the image."""

    def __init__(self) -> None:
        super().__init__()
        self.rule = _ColourRule()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rule(x).amax(dim=(2, 3))


def make_exact_models(dest: Path) -> tuple[ModelSpec, ModelSpec]:
    """(classifier, segmenter): scripted models whose probabilities are exactly decided by colour."""
    segmenter = _scripted(dest, "seg-colour", _ColourRule(), tta=("identity", "hflip", "vflip"))
    return _scripted(dest, "cls-colour", _ColourPresence()), segmenter


def write_exact_images(folder: Path) -> list[str]:
    """`EXACT_RECTS` as 64x256 lossless images (PNG bytes under `.jpg` names; OpenCV decodes by
    content) in `folder`; returns their ids in order."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i, rects in enumerate(EXACT_RECTS):
        rgb = np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 3), 30, dtype=np.uint8)
        for channel, y0, y1, x0, x1 in rects:
            rgb[y0:y1, x0:x1, channel] = 230
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        image_id = f"exact{i:02d}.jpg"
        (folder / image_id).write_bytes(buf.tobytes())
        ids.append(image_id)
    return ids


# --- The image-level tasks (tests/kernel/test_tasks.py) -------------------------------------------
# A scripted model whose head outputs are written in the image itself: output k is red pixel
# (0, k) as a number, `(pixel - 128) / divisor`, so a test chooses every logit (or value) by the
# pixels it draws and computes what the engine must write independently; red pixel (1, 0) at 255
# makes the output NaN for that image (`nan = True`), at 254 makes the model raise (`fail = True`).
# An hflip view reads the row from the right.


class _PixelHead(nn.Module):
    def __init__(self, outputs: int, divisor: float, nan: bool, fail: bool) -> None:
        super().__init__()
        self.outputs = outputs
        self.divisor = divisor
        self.nan = nan
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail and bool((torch.round(x[:, 0, 1, 0] * 255.0) == 254.0).any()):
            raise RuntimeError("pixel head failed on purpose")
        out = (torch.round(x[:, 0, 0, : self.outputs] * 255.0) - 128.0) / self.divisor
        if self.nan:
            out[torch.round(x[:, 0, 1, 0] * 255.0) == 255.0] = float("nan")
        return out


def make_pixel_head(
    dest: Path, name: str, outputs: int, *, divisor: float = 16.0, nan: bool = False, fail: bool = False, **spec: Any
) -> ModelSpec:
    """A scripted model of `outputs` outputs read from the image's red pixels (see above); `fail`:
    it raises on a batch holding an image whose red pixel (1, 0) is 254."""
    return _scripted(dest, name, _PixelHead(outputs, divisor, nan, fail), **spec)
