"""The model kinds, one table: `MODEL_KINDS` (smp, timm, torchscript).

An entry (`ModelKind`) says everything that differs between kinds: the roles a model of the kind
may take (classifier, segmenter), the config keys it needs (`arch`, `encoder`), how its
architecture is built offline, how its weights travel (`WeightsForm`: the bundle file's suffix,
how the notebook loads it, and which of the dataset stage's converters ships the user's
checkpoint: `bundler.dataset.weights.CONVERTERS`), and the words that name its architecture in
messages. Config validation (`kernel_src.spec`, `bundler.config`), the dataset stage, the
notebook's loader (`kernel_src.models`) and the demo look a kind up here (`get_kind`) instead of
branching on its name; docs/model-kinds.md says how to add one.

Standard library at import (`kernel_src.spec` imports this, and bundle.toml is parsed without
torch): torch, smp, timm and safetensors are imported by the functions that use them. Nothing here
reaches the network: smp encoders are built with `encoder_weights=None`, timm models with
`pretrained=False`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError, SpecError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .spec import ModelSpec

# role -> (the output's dimensions, its shape in words): what `kernel_src.models.check_output` expects
ROLES: dict[str, tuple[int, str]] = {
    "classifier": (2, "[N, classes]"),
    "segmenter": (4, "[N, classes, H, W]"),
    "regressor": (2, "[N, values]"),  # regression and ordinal tasks (kernel_src.tasks)
}

Builder = Callable[["ModelSpec", int], "nn.Module"]


@dataclass(frozen=True)
class WeightsForm:
    """How a kind's weights travel: the bundle file `<model name><suffix>`, read back by `load`.

    `name` also keys the dataset stage's converter (`bundler.dataset.weights.CONVERTERS`), which turns
    the user's checkpoint into that file and checks it."""

    name: str
    suffix: str
    load: Callable[[ModelKind, ModelSpec, Path, int, torch.device], nn.Module]


@dataclass(frozen=True)
class ModelKind:
    """One model kind. `keys` are the ModelSpec keys the kind requires, each with an example for
    the message ("" for none); `builder` is None where the weights file is the whole model;
    `library` is the distribution that builds it (its version is part of the build's fingerprint)."""

    name: str
    roles: tuple[str, ...]
    weights: WeightsForm
    describe: Callable[[ModelSpec], str]  # the architecture in messages: "Unet/resnet18", "TorchScript"
    builder: Builder | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    library: str = ""

    def check_keys(self, data: Mapping[str, Any], key: str) -> None:
        """SpecError naming the first key the kind requires that `data` (a model's table) lacks."""
        for name, example in self.keys.items():
            if not data.get(name):
                hint = f" (e.g. {example!r})" if example else ""
                raise SpecError(f"{key}.{name}", f"is required for kind {self.name!r}{hint}")

    def build(self, spec: ModelSpec, num_classes: int) -> nn.Module:
        """An untrained model of `spec`'s architecture, built offline."""
        if self.builder is None:
            raise ModelError(f"model {spec.name!r}: kind {spec.kind!r} has no architecture to build")
        return self.builder(spec, num_classes)

    def load(self, spec: ModelSpec, path: Path, num_classes: int, device: torch.device) -> nn.Module:
        """The model in the bundle file `path`, in eval mode on `device`."""
        return self.weights.load(self, spec, path, num_classes, device)


def get_kind(name: str) -> ModelKind:
    """The registered kind `name`; a ModelError listing the registered ones otherwise."""
    kind = MODEL_KINDS.get(name)
    if kind is None:
        raise ModelError(f"model kind {name!r} is not registered; registered kinds: {list(MODEL_KINDS)}")
    return kind


def kinds_for(role: str) -> tuple[str, ...]:
    """The names of the kinds that may take `role` ("classifier" or "segmenter"), in table order."""
    return tuple(k.name for k in MODEL_KINDS.values() if role in k.roles)


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
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


def _load_safetensors(
    kind: ModelKind, spec: ModelSpec, path: Path, num_classes: int, device: torch.device
) -> nn.Module:
    from safetensors.torch import load_file

    model = kind.build(spec, num_classes)
    load_state_dict_into(model, load_file(str(path)), spec.name)
    return model.to(device).eval()


def _load_torchscript(
    kind: ModelKind, spec: ModelSpec, path: Path, num_classes: int, device: torch.device
) -> nn.Module:
    import torch

    try:
        model: nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except RuntimeError as e:
        raise ModelError(f"model {spec.name!r}: {path} is not a TorchScript file ({e})") from None
    return model.eval()


# the model's tensors only, fitted into the kind's architecture by the dataset stage
STATE_DICT = WeightsForm("state_dict", ".safetensors", _load_safetensors)
# a whole module: verified by the dataset stage and copied as it is
TORCHSCRIPT = WeightsForm("torchscript", ".pt", _load_torchscript)


def _smp_architectures() -> dict[str, type[nn.Module]]:
    """smp's own table of architectures (since smp 0.4), by lower-case name."""
    import segmentation_models_pytorch as smp

    return dict(smp.MODEL_ARCHITECTURES_MAPPING)


def _build_smp(spec: ModelSpec, num_classes: int) -> nn.Module:
    architectures = _smp_architectures()
    arch = architectures.get(spec.arch.lower())
    if arch is None:
        raise ModelError(
            f"model {spec.name!r}: arch {spec.arch!r} is not a segmentation_models_pytorch "
            f"architecture; choose one of {sorted(a.__name__ for a in architectures.values())}"
        )
    try:
        return arch(encoder_name=spec.encoder, encoder_weights=None, in_channels=3, classes=num_classes)
    except (KeyError, ValueError) as e:
        raise ModelError(
            f"model {spec.name!r}: encoder {spec.encoder!r} cannot be built for {arch.__name__} ({e}); "
            "see segmentation_models_pytorch's list of encoders"
        ) from None


def _build_timm(spec: ModelSpec, num_classes: int) -> nn.Module:
    import timm

    if not timm.is_model(spec.arch):
        raise ModelError(
            f"model {spec.name!r}: arch {spec.arch!r} is not a timm model name (timm.list_models() lists them)"
        )
    model: nn.Module = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes)
    return model


def _arch_words(spec: ModelSpec) -> str:
    return "/".join(p for p in (spec.arch, spec.encoder) if p)


MODEL_KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            "smp",
            roles=("segmenter",),
            weights=STATE_DICT,
            describe=_arch_words,
            builder=_build_smp,
            keys={"arch": "", "encoder": "resnet34"},
            library="segmentation-models-pytorch",
        ),
        ModelKind(
            "timm",
            roles=("classifier", "regressor"),
            weights=STATE_DICT,
            describe=_arch_words,
            builder=_build_timm,
            keys={"arch": ""},
            library="timm",
        ),
        ModelKind(
            "torchscript",
            roles=("classifier", "segmenter", "regressor"),
            weights=TORCHSCRIPT,
            describe=lambda spec: "TorchScript",
        ),
    )
}
