"""Build models offline from their spec, load their weights from the bundle, and check them.

`load_models` loads every model of an `InferenceSpec` (one replica per device) and checks each
with a test forward, so configuration problems raise `ModelError` before any image is read.

Nothing here reaches the network: smp encoders are built with `encoder_weights=None` and timm
models with `pretrained=False`; weights come from the bundle (safetensors for smp and timm,
TorchScript files for `kind = "torchscript"`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .devices import DeviceSet
from .errors import ModelError
from .profiler import Profiler
from .spec import InferenceSpec, ModelSpec


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """An untrained model of the declared architecture (not used for TorchScript)."""
    if spec.kind == "smp":
        import segmentation_models_pytorch as smp

        arch = {name.lower(): name for name in _smp_archs()}.get(spec.arch.lower())
        if arch is None:
            raise ModelError(
                f"model {spec.name!r}: arch {spec.arch!r} is not a segmentation_models_pytorch "
                f"architecture; choose one of {sorted(_smp_archs())}"
            )
        try:
            model: nn.Module = getattr(smp, arch)(
                encoder_name=spec.encoder, encoder_weights=None, in_channels=3, classes=num_classes
            )
        except (KeyError, ValueError) as e:
            raise ModelError(
                f"model {spec.name!r}: encoder {spec.encoder!r} cannot be built for {arch} ({e}); "
                "see segmentation_models_pytorch's list of encoders"
            ) from None
        return model
    if spec.kind == "timm":
        import timm

        if not timm.is_model(spec.arch):
            raise ModelError(
                f"model {spec.name!r}: arch {spec.arch!r} is not a timm model name (timm.list_models() lists them)"
            )
        return timm.create_model(spec.arch, pretrained=False, num_classes=num_classes)
    raise ModelError(f"model {spec.name!r}: kind {spec.kind!r} has no architecture to build")


def _smp_archs() -> list[str]:
    import segmentation_models_pytorch as smp

    names = (
        "Unet",
        "UnetPlusPlus",
        "FPN",
        "PSPNet",
        "DeepLabV3",
        "DeepLabV3Plus",
        "Linknet",
        "MAnet",
        "PAN",
        "UPerNet",
        "Segformer",
        "DPT",
    )
    return [n for n in names if hasattr(smp, n)]


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Strict load that turns PyTorch's long mismatch report into one clear sentence."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} tensors have other shapes (e.g. {k}: checkpoint "
                f"{tuple(state[k].shape)}, model {tuple(own[k].shape)}; is the class count or encoder right?)"
            )
        if missing:
            parts.append(f"{len(missing)} tensors missing from the checkpoint (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors the architecture does not have (e.g. {unexpected[0]})")
        raise ModelError(f"model {name!r}: the checkpoint does not fit the declared architecture: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_model(spec: ModelSpec, bundle_dir: Path, num_classes: int, device: torch.device) -> nn.Module:
    """The model of `spec` with its bundled weights, in eval mode on `device`."""
    path = Path(bundle_dir) / spec.file
    if not path.is_file():
        raise ModelError(
            f"model {spec.name!r}: weight file {path} is missing from the bundle; rebuild it with `bundler build`"
        )
    if spec.kind == "torchscript":
        try:
            model: nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        except RuntimeError as e:
            raise ModelError(f"model {spec.name!r}: {path} is not a TorchScript file ({e})") from None
        return model.eval()
    from safetensors.torch import load_file

    model = build_model(spec, num_classes)
    load_state_dict_into(model, load_file(str(path)), spec.name)
    return model.to(device).eval()


@dataclass
class LoadedModel:
    """A model of the spec with one replica per device, and the TTA views it uses now."""

    spec: ModelSpec
    replicas: tuple[nn.Module, ...]
    views: tuple[str, ...]


def load_models(
    spec: InferenceSpec, bundle_dir: Path, devices: DeviceSet, profiler: Profiler
) -> tuple[list[LoadedModel], list[LoadedModel]]:
    """Every classifier and segmenter, one replica per device, each checked with a test forward.

    Raises `ModelError` naming the model and the key at fault before any image is touched.
    Classifiers are not loaded when gating is off (nothing would use them).
    """
    loaded: dict[str, list[LoadedModel]] = {"classifier": [], "segmenter": []}
    classifiers = spec.classifiers if spec.gating.mode != "off" else ()
    for kind, specs in (("classifier", classifiers), ("segmenter", spec.segmenters)):
        for m in specs:
            begin = time.perf_counter()
            replicas = []
            for device in devices.devices:
                model = load_model(m, bundle_dir, spec.num_classes, device)
                if devices.channels_last:
                    with contextlib.suppress(RuntimeError, TypeError):  # TorchScript may refuse: keep NCHW
                        model = model.to(memory_format=torch.channels_last)
                replicas.append(model)
            entry = LoadedModel(m, tuple(replicas), m.tta)
            _test_forward(entry, kind, spec, devices)
            devices.synchronize()
            profiler.model_loaded(m.name, time.perf_counter() - begin)
            loaded[kind].append(entry)
    return loaded["classifier"], loaded["segmenter"]


@torch.inference_mode()
def _test_forward(entry: LoadedModel, kind: str, spec: InferenceSpec, devices: DeviceSet) -> None:
    m = entry.spec
    h, w = m.input_size or (spec.image_height, spec.image_width)
    x = torch.zeros(1, 3, h, w, device=devices.devices[0])
    if devices.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        with devices.autocast():
            out = entry.replicas[0](x)
    except Exception as e:
        raise ModelError(
            f"model {m.name!r}: a test forward on one {h}x{w} image failed ({type(e).__name__}: {e}); "
            "check its input_size (smp models need multiples of 32) and its kind/arch"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {m.name!r}: returns {type(out).__name__}, not a tensor; export a single-output model")
    check_output(m.name, kind, out, 1, spec.num_classes)


def check_output(model: str, kind: str, out: torch.Tensor, rows: int, num_classes: int) -> None:
    """ModelError unless `out` is [rows, classes] (classifier) or [rows, classes, H, W] (segmenter)."""
    want = "[N, classes]" if kind == "classifier" else "[N, classes, H, W]"
    ok = (out.dim() == 2 if kind == "classifier" else out.dim() == 4) and out.shape[0] == rows
    if not ok or out.shape[1] != num_classes:
        raise ModelError(
            f"model {model!r}: output shape {tuple(out.shape)} is not {want} with {num_classes} classes "
            f"for {rows} inputs; check num_classes and the model's kind"
        )
