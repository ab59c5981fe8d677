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
from typing import Any, TypeVar

from .errors import SpecError
from .layout import SubmissionSpec
from .model_kinds import MODEL_KINDS, kinds_for

TTA_VIEWS = ("identity", "hflip", "vflip", "hvflip")  # the flips kernel_src.tta applies
SCALE_VIEW = "scale:"  # "scale:0.75": the image resized by 0.75 (kernel_src.tta), the output resized back
SCALE_RANGE = (0.25, 4.0)  # the scale factors a scale view may take
TTA_MERGES = ("mean", "gmean", "max", "logit_mean")  # how a model's views are merged (kernel_src.tta.merge)
CHANNEL_ORDERS = ("rgb", "bgr")  # the channel order a model was trained on ("bgr": cv2.imread's)
PREPROCESS_SUFFIX = ".preprocess.json"  # <model name> + this: the translated pipeline in the bundle
GATING_MODES = ("off", "per_class", "per_image")
SEG_KINDS = kinds_for("segmenter")  # the model kinds (kernel_src.model_kinds) a segmenter may be
CLS_KINDS = kinds_for("classifier")
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


_T = TypeVar("_T", int, float, bool, str)
_WANTED: dict[type, str] = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _found(value: Any) -> str:
    """What a JSON/TOML value is (a boolean is not reported as an integer)."""
    for type_, words in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string")):
        if isinstance(value, type_):
            return words
    if isinstance(value, (list, tuple)):
        return "an array"
    return "a table" if isinstance(value, Mapping) else ("null" if value is None else f"a {type(value).__name__}")


def _wrong(key: str, value: Any, wanted: str) -> SpecError:
    shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return SpecError(key, f"{shown} must be {wanted} (found {_found(value)})")


def typed(key: str, value: Any, type_: type[_T]) -> _T:
    """`value` if it is a `type_`, else a SpecError naming `key`, the type wanted and what was found.

    Integers refuse floats and booleans; numbers (`float`) take integers; booleans refuse the
    strings "true"/"false"; strings refuse numbers: nothing is converted behind the user's back.
    """
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise _wrong(key, value, _WANTED[type_])
    return value


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _wrong(key, value, "a table")
    return value


def _array(key: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, value, "an array")
    return list(value)


def _per_item(
    key: str,
    value: float | Sequence[float],
    n: int,
    lo: float,
    hi: float | None,
    item: str = "class",
    type_: type[int] | type[float] = float,
) -> tuple[float, ...]:
    """A scalar broadcast to all `n`, or one value per `item` (class or channel), each inside [lo, hi]."""
    wanted = "an integer or an array of {n} integers" if type_ is int else "a number or an array of {n} numbers"
    wanted = wanted.format(n=n)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or (
            type_ is int and not all(isinstance(v, int) for v in value)
        ):
            raise _wrong(key, value, wanted)
        values = [float(v) for v in value]
    else:
        values = [float(typed(key, value, type_))] * n if isinstance(value, (int, float)) else []
        if not values:
            raise _wrong(key, value, wanted)
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
    value = _array(key, value)
    if len(value) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in value):
        raise SpecError(key, f"expected [height, width] with positive integers, got {list(value)}")
    return (int(value[0]), int(value[1]))


def view_scale(view: str) -> float | None:
    """The factor of a scale view ("scale:0.75" -> 0.75); None for a flip or an unknown name."""
    if not view.startswith(SCALE_VIEW):
        return None
    try:
        factor = float(view[len(SCALE_VIEW) :])
    except ValueError:
        return None
    return factor if SCALE_RANGE[0] <= factor <= SCALE_RANGE[1] else None


def view_problem(view: str) -> str | None:
    """Why `view` is not a TTA view (None: it is one): a flip of TTA_VIEWS or "scale:<factor>"."""
    if view in TTA_VIEWS or view_scale(view) is not None:
        return None
    if view.startswith(SCALE_VIEW):
        lo, hi = SCALE_RANGE
        return f"{view!r}: a scale view is 'scale:<factor>' with a factor in [{lo}, {hi}], e.g. 'scale:0.75'"
    return f"{view!r} is not a TTA view; choose from {list(TTA_VIEWS)} or 'scale:<factor>' (e.g. 'scale:1.25')"


@dataclass(frozen=True)
class ModelSpec:
    """One model in the bundle. `file` is relative to the bundle folder."""

    name: str
    kind: str  # a kernel_src.model_kinds.MODEL_KINDS name: "smp" | "timm" | "torchscript"
    file: str
    arch: str = ""  # smp architecture ("Unet", "FPN", ...) or timm model name
    encoder: str = ""  # smp encoder name; unused for timm and torchscript
    input_size: tuple[int, int] | None = None  # (height, width) fed to the model; None: image size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tta: tuple[str, ...] = ("identity",)
    weight: float = 1.0
    sha256: str = ""  # filled in by the build; checked by the notebook when present
    channels: str = "rgb"  # CHANNEL_ORDERS: the order the model was trained on
    tta_merge: str = "mean"  # TTA_MERGES: mean of probabilities, geometric mean, max, mean of logits
    preprocess: str = ""  # the bundle's <name>.preprocess.json (kernel_src.preprocess); "": input_size/mean/std

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], key: str, kinds: Sequence[str]) -> ModelSpec:
        data = _table(key, data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecError(
                f"{key}.{sorted(unknown)[0]}", f"unknown setting; known: {sorted(cls.__dataclass_fields__)}"
            )
        for required in ("name", "kind", "file"):
            if not data.get(required):
                raise SpecError(f"{key}.{required}", "is required")
        kind = typed(f"{key}.kind", data["kind"], str)
        if kind not in kinds:
            raise SpecError(f"{key}.kind", f"{kind!r} is not one of {list(kinds)}")
        MODEL_KINDS[kind].check_keys(data, key)
        tta = tuple(typed(f"{key}.tta", v, str) for v in _array(f"{key}.tta", data.get("tta", ("identity",))))
        if not tta:
            raise SpecError(f"{key}.tta", f"needs at least one view from {list(TTA_VIEWS)}")
        for view in tta:
            problem = view_problem(view)
            if problem:
                raise SpecError(f"{key}.tta", problem)
        if len(set(tta)) != len(tta):
            raise SpecError(f"{key}.tta", f"lists a view twice: {list(tta)}")
        channels = typed(f"{key}.channels", data.get("channels", "rgb"), str)
        if channels not in CHANNEL_ORDERS:
            raise SpecError(f"{key}.channels", f"{channels!r} must be one of {list(CHANNEL_ORDERS)}")
        merge = typed(f"{key}.tta_merge", data.get("tta_merge", "mean"), str)
        if merge not in TTA_MERGES:
            raise SpecError(f"{key}.tta_merge", f"{merge!r} must be one of {list(TTA_MERGES)}")
        preprocess = typed(f"{key}.preprocess", data.get("preprocess", ""), str)
        if preprocess and ("/" in preprocess or "\\" in preprocess or not preprocess.endswith(PREPROCESS_SUFFIX)):
            raise SpecError(f"{key}.preprocess", f"{preprocess!r} must be a file name ending in {PREPROCESS_SUFFIX}")
        mean = _per_item(f"{key}.mean", data.get("mean", IMAGENET_MEAN), 3, 0.0, 1.0, item="channel")
        std = _per_item(f"{key}.std", data.get("std", IMAGENET_STD), 3, 1e-6, None, item="channel")
        weight = typed(f"{key}.weight", data.get("weight", 1.0), float)
        if not weight > 0 or math.isinf(weight):
            raise SpecError(f"{key}.weight", f"must be a positive number, got {weight}")
        return cls(
            name=typed(f"{key}.name", data["name"], str),
            kind=kind,
            file=typed(f"{key}.file", data["file"], str),
            arch=typed(f"{key}.arch", data.get("arch", ""), str),
            encoder=typed(f"{key}.encoder", data.get("encoder", ""), str),
            input_size=_size(f"{key}.input_size", data.get("input_size")),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            tta=tta,
            weight=weight,
            sha256=typed(f"{key}.sha256", data.get("sha256", ""), str),
            channels=channels,
            tta_merge=merge,
            preprocess=preprocess,
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
    one_class_per_pixel: bool = False  # where classes overlap, the highest probability keeps the pixel


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
    # Geometry (issue 16): "fixed" resizes every image to image_height x image_width; "own" predicts
    # each at its own size (batched by size). encode_size: None = masks encoded at the predicted
    # size, (h, w) = probabilities resized to it first (e.g. Clouds' 350x525).
    image_sizes: str = "fixed"
    encode_size: tuple[int, int] | None = None
    bit_depth: int = 8  # the test files' declared depth: 8 or 16 (other depths are converted, with a warning)
    pixel_max: float | str = "depth"  # the value shown as 255: "depth" (2**bit_depth - 1), "image" (its max), N
    image_channels: int = 3  # 3, or 1 (single-channel files repeated to 3 channels, as declared)
    submission: SubmissionSpec = field(default_factory=SubmissionSpec)  # kernel_src.layout

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
        n = typed("num_classes", data.get("num_classes", 4), int)
        if n < 1:
            raise SpecError("num_classes", f"must be at least 1, got {n}")
        height = typed("image_height", data.get("image_height", 256), int)
        width = typed("image_width", data.get("image_width", 1600), int)
        if height < 1 or width < 1:
            raise SpecError("image_height", f"image size must be positive, got {height}x{width}")
        order = typed("rle_order", data.get("rle_order", "F"), str)
        if order not in RLE_ORDERS:
            raise SpecError("rle_order", f"{order!r} must be 'F' (column-major, Severstal) or 'C' (row-major)")
        device = typed("device", data.get("device", "auto"), str)
        if device not in DEVICES:
            raise SpecError("device", f"{device!r} must be one of {list(DEVICES)}")
        batch = typed("batch_size", data.get("batch_size", 4), int)
        if batch < 1:
            raise SpecError("batch_size", f"must be at least 1, got {batch}")
        budget = typed("time_budget_s", data.get("time_budget_s", 3300.0), float)
        if not budget > 0:
            raise SpecError("time_budget_s", f"must be positive seconds, got {budget}")
        workers = typed("loader_workers", data.get("loader_workers", 2), int)
        if workers < 0:
            raise SpecError("loader_workers", f"must be 0 or more, got {workers}")

        memory_format = typed("memory_format", data.get("memory_format", "auto"), str)
        if memory_format not in MEMORY_FORMATS:
            raise SpecError("memory_format", f"{memory_format!r} must be one of {list(MEMORY_FORMATS)}")
        precision = typed("precision", data.get("precision", "auto"), str)
        if precision not in PRECISIONS:
            raise SpecError("precision", f"{precision!r} must be one of {list(PRECISIONS)}")
        per_call = typed("images_per_call", data.get("images_per_call", 0), int)
        if per_call < 0:
            raise SpecError("images_per_call", f"must be 0 (measured at load) or a number of images, got {per_call}")

        classifiers = tuple(
            ModelSpec.from_dict(m, f"classifiers[{i}]", CLS_KINDS)
            for i, m in enumerate(_array("classifiers", data.get("classifiers", ())))
        )
        segmenters = tuple(
            ModelSpec.from_dict(m, f"segmenters[{i}]", SEG_KINDS)
            for i, m in enumerate(_array("segmenters", data.get("segmenters", ())))
        )
        names = [m.name for m in (*classifiers, *segmenters)]
        for name in names:
            if names.count(name) > 1:
                raise SpecError("segmenters", f"model name {name!r} is used twice; names must be unique")
        if not segmenters:
            raise SpecError("segmenters", "at least one segmentation model is required")

        g = _table("gating", data.get("gating", {}))
        mode = typed("gating.mode", g.get("mode", "per_class" if classifiers else "off"), str)
        if mode not in GATING_MODES:
            raise SpecError("gating.mode", f"{mode!r} must be one of {list(GATING_MODES)}")
        if mode != "off" and not classifiers:
            raise SpecError("gating.mode", f"{mode!r} needs at least one classifier; add one or set mode = 'off'")
        gating = GatingSpec(mode=mode, thresholds=_per_item("gating.thresholds", g.get("thresholds", 0.5), n, 0.0, 1.0))

        p = _table("postprocess", data.get("postprocess", {}))
        unknown_p = set(p) - {"threshold", "min_component", "min_area", "one_class_per_pixel"}
        if unknown_p:
            raise SpecError(
                f"postprocess.{sorted(unknown_p)[0]}",
                "unknown setting; known: threshold, min_component, min_area, one_class_per_pixel",
            )
        exclusive = typed("postprocess.one_class_per_pixel", p.get("one_class_per_pixel", False), bool)
        post = PostprocessSpec(
            threshold=_per_item("postprocess.threshold", p.get("threshold", 0.5), n, 0.0, 1.0),
            min_component=tuple(
                int(v) for v in _per_item("postprocess.min_component", p.get("min_component", 0), n, 0, None, type_=int)
            ),
            min_area=tuple(
                int(v) for v in _per_item("postprocess.min_area", p.get("min_area", 0), n, 0, None, type_=int)
            ),
            one_class_per_pixel=exclusive,
        )
        geometry = _geometry(data)
        submission = SubmissionSpec.from_dict(_table("submission", data.get("submission", {})), n)
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
            submission=submission,
            **geometry,
        )


IMAGE_SIZES = ("fixed", "own")
BIT_DEPTHS = (8, 16)


def _geometry(data: Mapping[str, Any]) -> dict[str, Any]:
    """image_sizes, encode_size, bit_depth, pixel_max, image_channels, validated."""
    sizes = typed("image_sizes", data.get("image_sizes", "fixed"), str)
    if sizes not in IMAGE_SIZES:
        raise SpecError("image_sizes", f"{sizes!r} must be 'fixed' (resized to image_height x image_width) or 'own'")
    raw = data.get("encode_size")
    encode: tuple[int, int] | None = None
    if raw is not None and raw != "image":
        if not isinstance(raw, (list, tuple)) or len(raw) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw
        ):
            raise _wrong("encode_size", raw, "'image' or [height, width] with positive integers")
        encode = (int(raw[0]), int(raw[1]))
    depth = typed("bit_depth", data.get("bit_depth", 8), int)
    if depth not in BIT_DEPTHS:
        raise SpecError("bit_depth", f"{depth} must be 8 or 16 (the depth the test images are stored in)")
    pixel_max: float | str = data.get("pixel_max", "depth")
    if isinstance(pixel_max, str):
        if pixel_max not in ("depth", "image"):
            raise SpecError("pixel_max", f"{pixel_max!r} must be 'depth', 'image' or a positive number")
    else:
        pixel_max = typed("pixel_max", pixel_max, float)
        if not pixel_max > 0 or math.isinf(pixel_max):
            raise SpecError("pixel_max", f"must be a positive number (the value shown as 255), got {pixel_max}")
    channels = typed("image_channels", data.get("image_channels", 3), int)
    if channels not in (1, 3):
        raise SpecError("image_channels", f"{channels} must be 3, or 1 for single-channel (grey) files")
    return {
        "image_sizes": sizes,
        "encode_size": encode,
        "bit_depth": depth,
        "pixel_max": pixel_max,
        "image_channels": channels,
    }
