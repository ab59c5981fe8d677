"""Build models offline from their spec and load their weights from the bundle.

Nothing here reaches the network: smp encoders are built with `encoder_weights=None` and timm
models with `pretrained=False`; weights come from the bundle (safetensors for smp and timm,
TorchScript files for `kind = "torchscript"`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .spec import ModelSpec


class ModelError(RuntimeError):
    """A model cannot be built or its weights do not fit. The message names the model and key."""


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
