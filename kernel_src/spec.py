"""The inference configuration as the kernel sees it: typed, frozen, validated.

`bundler` builds these objects from `bundle.toml`; the rendered notebook receives them as
plain JSON data (`InferenceSpec.to_dict()`) and rebuilds them with `InferenceSpec.from_dict`.
Every validation error is a `SpecError` whose `key` is the dotted path of the bad value, so
`bundler` can name the `bundle.toml` key and the notebook can name the setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import SpecError

TTA_VIEWS = ("identity", "hflip", "vflip", "hvflip")  # the flips kernel_src.tta applies
GATING_MODES = ("off", "per_class", "per_image")
SEG_KINDS = ("smp", "torchscript")
CLS_KINDS = ("timm", "torchscript")
RLE_ORDERS = ("F", "C")  # column-major (Severstal), row-major: kernel_src.rle
DEVICES = ("auto", "cpu", "cuda")  # kernel_src.devices.resolve_devices
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # "auto": channels_last on CUDA, contiguous on CPU
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # "auto": fp16 autocast on CUDA, fp32 on CPU
RENAMED_SETTINGS = {  # old key -> what replaces it (from_dict names the new key)
    "fp16": "precision = 'fp16' (or 'auto', 'fp32', 'bf16')",
    "cpu_micro_batch": "images_per_call (0: measured at model load, N: fixed, CPU and CUDA alike)",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_item(
    key: str, value: float | Sequence[float], n: int, lo: float, hi: float | None, item: str = "class"
) -> tuple[float, ...]:
    """A scalar broadcast to all `n`, or one value per `item` (class or channel), each inside [lo, hi]."""
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != n:
        raise SpecError(key, f"expected one value or {n} (one per {item}), got {len(values)}")
    for v in values:
        if math.isnan(v) or v < lo or (hi is not None and v > hi):
            upper = f", {hi}]" if hi is not None else ", inf)"
            raise SpecError(key, f"{v} is outside [{lo}{upper}")
    return tuple(values)


def _size(key: str, value: Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise SpecError(key, f"expected [height, width] with positive integers, got {list(value)}")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class ModelSpec:
    """One model in the bundle. `file` is relative to the bundle folder."""

    name: str
    kind: str  # "smp" | "timm" | "torchscript"
    file: str
    arch: str = ""  # smp architecture ("Unet", "FPN", ...) or timm model name
    encoder: str = ""  # smp encoder name; unused for timm and torchscript
    input_size: tuple[int, int] | None = None  # (height, width) fed to the model; None: image size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tta: tuple[str, ...] = ("identity",)
    weight: float = 1.0
    sha256: str = ""  # filled in by the build; checked by the notebook when present

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], key: str, kinds: Sequence[str]) -> ModelSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecError(
                f"{key}.{sorted(unknown)[0]}", f"unknown setting; known: {sorted(cls.__dataclass_fields__)}"
            )
        for required in ("name", "kind", "file"):
            if not data.get(required):
                raise SpecError(f"{key}.{required}", "is required")
        kind = str(data["kind"])
        if kind not in kinds:
            raise SpecError(f"{key}.kind", f"{kind!r} is not one of {list(kinds)}")
        if kind != "torchscript" and not data.get("arch"):
            raise SpecError(f"{key}.arch", f"is required for kind {kind!r}")
        if kind == "smp" and not data.get("encoder"):
            raise SpecError(f"{key}.encoder", "is required for kind 'smp' (e.g. 'resnet34')")
        tta = tuple(str(v) for v in data.get("tta", ("identity",)))
        if not tta:
            raise SpecError(f"{key}.tta", f"needs at least one view from {list(TTA_VIEWS)}")
        for view in tta:
            if view not in TTA_VIEWS:
                raise SpecError(f"{key}.tta", f"{view!r} is not a TTA view; choose from {list(TTA_VIEWS)}")
        if len(set(tta)) != len(tta):
            raise SpecError(f"{key}.tta", f"lists a view twice: {list(tta)}")
        mean = _per_item(f"{key}.mean", data.get("mean", IMAGENET_MEAN), 3, 0.0, 1.0, item="channel")
        std = _per_item(f"{key}.std", data.get("std", IMAGENET_STD), 3, 1e-6, None, item="channel")
        weight = float(data.get("weight", 1.0))
        if not weight > 0 or math.isinf(weight):
            raise SpecError(f"{key}.weight", f"must be a positive number, got {weight}")
        return cls(
            name=str(data["name"]),
            kind=kind,
            file=str(data["file"]),
            arch=str(data.get("arch", "")),
            encoder=str(data.get("encoder", "")),
            input_size=_size(f"{key}.input_size", data.get("input_size")),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            tta=tta,
            weight=weight,
            sha256=str(data.get("sha256", "")),
        )


@dataclass(frozen=True)
class GatingSpec:
    mode: str = "off"
    thresholds: tuple[float, ...] = ()


@dataclass(frozen=True)
class PostprocessSpec:
    threshold: tuple[float, ...] = ()  # pixel probability threshold per class
    min_component: tuple[int, ...] = ()  # connected components smaller than this are removed
    min_area: tuple[int, ...] = ()  # a mask whose remaining area is below this becomes empty


@dataclass(frozen=True)
class InferenceSpec:
    """Everything the kernel needs to turn test images into a submission."""

    num_classes: int = 4
    image_height: int = 256
    image_width: int = 1600
    rle_order: str = "F"
    batch_size: int = 4
    device: str = "auto"
    memory_format: str = "auto"  # MEMORY_FORMATS; kernel_src.devices.resolve_devices
    precision: str = "auto"  # PRECISIONS: autocast dtype (fp16, bf16) or none (fp32)
    time_budget_s: float = 3300.0  # counted from the notebook's start
    loader_workers: int = 2
    images_per_call: int = 0  # images per forward call (0: measured at model load; N: fixed), CPU and CUDA
    classifiers: tuple[ModelSpec, ...] = ()
    segmenters: tuple[ModelSpec, ...] = ()
    gating: GatingSpec = field(default_factory=GatingSpec)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (lists, not tuples), the inverse of `from_dict`."""

        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceSpec:
        known = set(cls.__dataclass_fields__)
        for old, new in RENAMED_SETTINGS.items():
            if old in data:
                raise SpecError(old, f"is no longer a setting; use {new}")
        unknown = set(data) - known
        if unknown:
            raise SpecError(sorted(unknown)[0], f"unknown setting; known: {sorted(known)}")
        n = int(data.get("num_classes", 4))
        if n < 1:
            raise SpecError("num_classes", f"must be at least 1, got {n}")
        height, width = int(data.get("image_height", 256)), int(data.get("image_width", 1600))
        if height < 1 or width < 1:
            raise SpecError("image_height", f"image size must be positive, got {height}x{width}")
        order = str(data.get("rle_order", "F"))
        if order not in RLE_ORDERS:
            raise SpecError("rle_order", f"{order!r} must be 'F' (column-major, Severstal) or 'C' (row-major)")
        device = str(data.get("device", "auto"))
        if device not in DEVICES:
            raise SpecError("device", f"{device!r} must be one of {list(DEVICES)}")
        batch = int(data.get("batch_size", 4))
        if batch < 1:
            raise SpecError("batch_size", f"must be at least 1, got {batch}")
        budget = float(data.get("time_budget_s", 3300.0))
        if not budget > 0:
            raise SpecError("time_budget_s", f"must be positive seconds, got {budget}")
        workers = int(data.get("loader_workers", 2))
        if workers < 0:
            raise SpecError("loader_workers", f"must be 0 or more, got {workers}")

        memory_format = str(data.get("memory_format", "auto"))
        if memory_format not in MEMORY_FORMATS:
            raise SpecError("memory_format", f"{memory_format!r} must be one of {list(MEMORY_FORMATS)}")
        precision = str(data.get("precision", "auto"))
        if precision not in PRECISIONS:
            raise SpecError("precision", f"{precision!r} must be one of {list(PRECISIONS)}")
        per_call = int(data.get("images_per_call", 0))
        if per_call < 0:
            raise SpecError("images_per_call", f"must be 0 (measured at load) or a number of images, got {per_call}")

        classifiers = tuple(
            ModelSpec.from_dict(m, f"classifiers[{i}]", CLS_KINDS) for i, m in enumerate(data.get("classifiers", ()))
        )
        segmenters = tuple(
            ModelSpec.from_dict(m, f"segmenters[{i}]", SEG_KINDS) for i, m in enumerate(data.get("segmenters", ()))
        )
        names = [m.name for m in (*classifiers, *segmenters)]
        for name in names:
            if names.count(name) > 1:
                raise SpecError("segmenters", f"model name {name!r} is used twice; names must be unique")
        if not segmenters:
            raise SpecError("segmenters", "at least one segmentation model is required")

        g = dict(data.get("gating", {}))
        mode = str(g.get("mode", "per_class" if classifiers else "off"))
        if mode not in GATING_MODES:
            raise SpecError("gating.mode", f"{mode!r} must be one of {list(GATING_MODES)}")
        if mode != "off" and not classifiers:
            raise SpecError("gating.mode", f"{mode!r} needs at least one classifier; add one or set mode = 'off'")
        gating = GatingSpec(mode=mode, thresholds=_per_item("gating.thresholds", g.get("thresholds", 0.5), n, 0.0, 1.0))

        p = dict(data.get("postprocess", {}))
        unknown_p = set(p) - {"threshold", "min_component", "min_area"}
        if unknown_p:
            raise SpecError(
                f"postprocess.{sorted(unknown_p)[0]}", "unknown setting; known: threshold, min_component, min_area"
            )
        post = PostprocessSpec(
            threshold=_per_item("postprocess.threshold", p.get("threshold", 0.5), n, 0.0, 1.0),
            min_component=tuple(
                int(v) for v in _per_item("postprocess.min_component", p.get("min_component", 0), n, 0, None)
            ),
            min_area=tuple(int(v) for v in _per_item("postprocess.min_area", p.get("min_area", 0), n, 0, None)),
        )
        return cls(
            num_classes=n,
            image_height=height,
            image_width=width,
            rle_order=order,
            batch_size=batch,
            device=device,
            memory_format=memory_format,
            precision=precision,
            time_budget_s=budget,
            loader_workers=workers,
            images_per_call=per_call,
            classifiers=classifiers,
            segmenters=segmenters,
            gating=gating,
            postprocess=post,
        )
