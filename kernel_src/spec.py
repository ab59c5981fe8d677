"""The inference configuration as the kernel sees it: typed, frozen, validated.

`bundler` builds these objects from `bundle.toml`; the rendered notebook receives them as
plain JSON data (`InferenceSpec.to_dict()`) and rebuilds them with `InferenceSpec.from_dict`.
Every validation error is a `SpecError` whose `key` is the dotted path of the bad value, so
`bundler` can name the `bundle.toml` key and the notebook can name the setting. Each setting's
default and help are its field's (`kernel_src.settings.setting`); `from_dict` reads a missing
key's value from there, and bundler writes docs/config.md from the same fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import SpecError
from .inputs import InputSpec
from .layout import SubmissionSpec
from .model_kinds import MODEL_KINDS, kinds_for
from .rows import RowSpec
from .settings import default, setting, settings, typed, wrong
from .tasks import MODEL_TABLES, TaskSpec, check_models

TTA_VIEWS = ("identity", "hflip", "vflip", "hvflip")  # the flips kernel_src.tta applies
SCALE_VIEW = "scale:"  # "scale:0.75": the image resized by 0.75 (kernel_src.tta), the output resized back
SCALE_RANGE = (0.25, 4.0)  # the scale factors a scale view may take
TTA_MERGES = ("mean", "gmean", "max", "logit_mean")  # how a model's views are merged (kernel_src.tta.merge)
CHANNEL_ORDERS = ("rgb", "bgr")  # the channel order a model was trained on ("bgr": cv2.imread's)
PREPROCESS_SUFFIX = ".preprocess.json"  # <model name> + this: the translated pipeline in the bundle
GATING_MODES = ("off", "per_class", "per_image")
SEG_KINDS = kinds_for("segmenter")  # the model kinds (kernel_src.model_kinds) a segmenter may be
CLS_KINDS = kinds_for("classifier")
REG_KINDS = kinds_for("regressor")
TABLE_KINDS = {"classifiers": CLS_KINDS, "segmenters": SEG_KINDS, "regressors": REG_KINDS}  # [[table]] -> kinds
assert set(TABLE_KINDS) == set(MODEL_TABLES)
RLE_ORDERS = ("F", "C")  # column-major (Severstal), row-major: kernel_src.rle
DEVICES = ("auto", "cpu", "cuda")  # kernel_src.devices.resolve_devices
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # "auto": timed per model on CUDA, contiguous on CPU
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # "auto": fp16 autocast on CUDA, fp32 on CPU
IMAGE_SIZES = ("fixed", "own")
BIT_DEPTHS = (8, 16)
IMAGE_CHANNELS = (3, 1)
RENAMED_SETTINGS = {  # old key -> what replaces it (from_dict names the new key)
    "fp16": "precision = 'fp16' (or 'auto', 'fp32', 'bf16')",
    "cpu_micro_batch": "images_per_call (0: measured at model load, N: fixed, CPU and CUDA alike)",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise wrong(key, value, "a table")
    return value


def _array(key: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise wrong(key, value, "an array")
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
            raise wrong(key, value, wanted)
        values = [float(v) for v in value]
    else:
        values = [float(typed(key, value, type_))] * n if isinstance(value, (int, float)) else []
        if not values:
            raise wrong(key, value, wanted)
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

    name: str = field(
        metadata=setting(
            "unique among the models; the bundle file is `<name>.safetensors` (`<name>.pt` for TorchScript)."
        )
    )
    kind: str = field(
        metadata=setting('`"timm"` or `"torchscript"` for classifiers; `"smp"` or `"torchscript"` for segmenters.')
    )
    file: str = field(metadata=setting("the model's file inside the (flat) bundle folder.", by_build=True))
    arch: str = field(
        default="",
        metadata=setting(
            'timm model name, or smp architecture (`"Unet"`, `"FPN"`, `"UnetPlusPlus"`, …); required unless '
            "TorchScript.",
            shown="",
        ),
    )
    encoder: str = field(default="", metadata=setting("smp encoder name (required for smp).", shown=""))
    input_size: tuple[int, int] | None = field(
        default=None,
        metadata=setting("`[height, width]` fed to the model (smp needs multiples of 32).", shown="image size"),
    )
    mean: tuple[float, float, float] = field(
        default=IMAGENET_MEAN,
        metadata=setting("per-channel mean of the model's normalisation.", shown="ImageNet `[0.485, 0.456, 0.406]`"),
    )
    std: tuple[float, float, float] = field(
        default=IMAGENET_STD,
        metadata=setting("per-channel std of the model's normalisation.", shown="ImageNet `[0.229, 0.224, 0.225]`"),
    )
    tta: tuple[str, ...] = field(
        default=("identity",),
        metadata=setting(
            "views from `identity`, `hflip`, `vflip`, `hvflip` (stacked into one batch) and "
            '`"scale:<factor>"` (factor in [0.25, 4], e.g. `"scale:0.75"`, `"scale:1.25"`: the input resized, '
            "each side rounded to a multiple of 32, the output resized back before merging)."
        ),
    )
    weight: float = field(default=1.0, metadata=setting("weight in the ensemble average."))
    sha256: str = field(
        default="", metadata=setting("the file's sha256, checked by the notebook when present.", by_build=True)
    )
    channels: str = field(
        default="rgb",
        metadata=setting(
            'the channel order the model was trained on: `"bgr"` for a model trained on `cv2.imread`\'s.',
            choices=CHANNEL_ORDERS,
        ),
    )
    tta_merge: str = field(
        default="mean",
        metadata=setting(
            "how the views are merged: `mean` of probabilities, `gmean` (geometric mean), `max`, "
            "`logit_mean` (sigmoid of the mean logit).",
            choices=TTA_MERGES,
        ),
    )
    preprocess: str = field(
        default="",
        metadata=setting(
            f"the bundle's `<name>{PREPROCESS_SUFFIX}` (kernel_src.preprocess); empty: input_size/mean/std.",
            by_build=True,
        ),
    )

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
        tta = tuple(typed(f"{key}.tta", v, str) for v in _array(f"{key}.tta", data.get("tta", default(cls, "tta"))))
        if not tta:
            raise SpecError(f"{key}.tta", f"needs at least one view from {list(TTA_VIEWS)}")
        for view in tta:
            problem = view_problem(view)
            if problem:
                raise SpecError(f"{key}.tta", problem)
        if len(set(tta)) != len(tta):
            raise SpecError(f"{key}.tta", f"lists a view twice: {list(tta)}")
        channels = typed(f"{key}.channels", data.get("channels", default(cls, "channels")), str)
        if channels not in CHANNEL_ORDERS:
            raise SpecError(f"{key}.channels", f"{channels!r} must be one of {list(CHANNEL_ORDERS)}")
        merge = typed(f"{key}.tta_merge", data.get("tta_merge", default(cls, "tta_merge")), str)
        if merge not in TTA_MERGES:
            raise SpecError(f"{key}.tta_merge", f"{merge!r} must be one of {list(TTA_MERGES)}")
        preprocess = typed(f"{key}.preprocess", data.get("preprocess", default(cls, "preprocess")), str)
        if preprocess and ("/" in preprocess or "\\" in preprocess or not preprocess.endswith(PREPROCESS_SUFFIX)):
            raise SpecError(f"{key}.preprocess", f"{preprocess!r} must be a file name ending in {PREPROCESS_SUFFIX}")
        mean = _per_item(f"{key}.mean", data.get("mean", default(cls, "mean")), 3, 0.0, 1.0, item="channel")
        std = _per_item(f"{key}.std", data.get("std", default(cls, "std")), 3, 1e-6, None, item="channel")
        weight = typed(f"{key}.weight", data.get("weight", default(cls, "weight")), float)
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
            sha256=typed(f"{key}.sha256", data.get("sha256", default(cls, "sha256")), str),
            channels=channels,
            tta_merge=merge,
            preprocess=preprocess,
        )


@dataclass(frozen=True)
class GatingSpec:
    mode: str = field(
        default="off",
        metadata=setting(
            '`"per_class"`: a class whose classifier probability is below its threshold gets an empty mask; '
            '`"per_image"`: an image where some class reaches its threshold keeps every class; `"off"`. In both '
            "gating modes an image where no class reaches its threshold is not segmented at all (faster). A "
            "classifier whose output for an image holds NaN is left out of that image's gate; with no classifier "
            "left, the image is segmented ungated (counted in profile.json `nonfinite_outputs`).",
            choices=GATING_MODES,
            shown='`"per_class"` with classifiers, else `"off"`',
        ),
    )
    thresholds: tuple[float, ...] = field(
        default=(),
        metadata=setting("the classifier probability a class needs, one value or one per class.", missing=0.5),
    )


@dataclass(frozen=True)
class PostprocessSpec:
    threshold: tuple[float, ...] = field(
        default=(), metadata=setting("pixel probability threshold, one value or one per class.", missing=0.5)
    )
    min_component: tuple[int, ...] = field(
        default=(),
        metadata=setting(
            "connected components (8-connected) smaller than this are removed; one value or one per class.",
            missing=0,
        ),
    )
    min_area: tuple[int, ...] = field(
        default=(),
        metadata=setting("a mask left with fewer pixels becomes empty; one value or one per class.", missing=0),
    )
    one_class_per_pixel: bool = field(
        default=False,
        metadata=setting(
            "(one value) where classes overlap, only the class of highest probability keeps the pixel (before "
            "the threshold; a tie goes to the lower class). `bundler tune` tries both."
        ),
    )


@dataclass(frozen=True)
class InferenceSpec:
    """Everything the kernel needs to turn test images into a submission. The fields declared with
    `setting()` are bundle.toml's `[inference]` keys; the models and `submission` have tables of their own."""

    num_classes: int = field(default=4, metadata=setting("the competition's classes."))
    image_height: int = field(
        default=256, metadata=setting("the competition's image height (others are converted and reported).")
    )
    image_width: int = field(
        default=1600, metadata=setting("the competition's image width (others are converted and reported).")
    )
    rle_order: str = field(
        default="F",
        metadata=setting(
            '`"F"` column-major (Severstal, Airbus, Clouds), `"C"` row-major (kernel_src.rle; may be given in '
            "`[submission]` instead).",
            choices=RLE_ORDERS,
        ),
    )
    batch_size: int = field(default=4, metadata=setting("images per batch."))
    device: str = field(
        default="auto",
        metadata=setting(
            '`"auto"`: every GPU present, the batch split across them, else the CPU (kernel_src.devices).',
            choices=DEVICES,
        ),
    )
    memory_format: str = field(
        default="auto",
        metadata=setting(
            '`"channels_last"` or `"contiguous"` (NCHW) for models and inputs. `"auto"`: on CUDA each model\'s '
            "format and cudnn.benchmark are timed at load and the fastest kept (profile.json `call_sizes`), "
            "starting from channels_last under fp16/bf16 and contiguous under fp32; contiguous on CPU (faster "
            "there).",
            choices=MEMORY_FORMATS,
        ),
    )
    precision: str = field(
        default="auto",
        metadata=setting(
            '`"fp32"`, `"fp16"` or `"bf16"`: `torch.autocast` to that dtype, on CUDA and on CPU alike (CPU '
            "autocast runs both fp16 and bf16 with this project's models, slower than fp32 on most CPUs; use it "
            'to see the GPU precision\'s numbers locally). `"auto"`: fp16 on CUDA, fp32 on CPU. bf16 on a GPU '
            "below compute capability 8.0 (a T4) runs in fp16 (profile.json `devices.precision_fallback`). At "
            "load each model is compared with fp32 on a few real test images and one that overflows runs in "
            "fp32 (`devices.precision_check`); NaN later shows up as the `nonfinite_output` warning "
            "(Troubleshooting). Replaces the old `fp16` key.",
            choices=PRECISIONS,
        ),
    )
    time_budget_s: float = field(
        default=3300.0,
        metadata=setting(
            "seconds from the notebook's start: the budget guard steps down (fewer TTA views, fewer models, "
            "then empty masks) when the projected finish would pass it.",
            shown="`competition.time_limit_s - 300`",
        ),
    )
    loader_workers: int = field(default=2, metadata=setting("decoding threads."))
    images_per_call: int = field(
        default=0,
        metadata=setting(
            "images (TTA views count as images) per forward call, CPU and CUDA alike. `0`: measured at model "
            "load: calls of 1, 2, 4, ... up to the largest a batch makes (`batch_size` per device x the model's "
            "views) are timed with the test forward and the fastest per image is kept (measuring stops at a "
            "slower size, at out of memory, or after about two calls' worth of the largest size); `N`: fixed, "
            "nothing measured. profile.json `call_sizes` records the choice and the seconds measured. Out of "
            "memory in a forward is retried with half the call size, down to one image, and the smaller size is "
            "kept for the run (`reduced_by_oom`); only a model that does not fit one image is dropped. Replaces "
            "the old `cpu_micro_batch`.",
        ),
    )
    classifiers: tuple[ModelSpec, ...] = ()  # bundle.toml's [[classifiers]]
    segmenters: tuple[ModelSpec, ...] = ()  # bundle.toml's [[segmenters]]
    regressors: tuple[ModelSpec, ...] = ()  # bundle.toml's [[regressors]] (regression, ordinal)
    task: TaskSpec = field(default_factory=TaskSpec)  # bundle.toml's [task] (kernel_src.tasks)
    gating: GatingSpec = field(
        default_factory=GatingSpec, metadata=setting("which images and classes the classifiers let through.")
    )
    postprocess: PostprocessSpec = field(
        default_factory=PostprocessSpec, metadata=setting("from probabilities to masks; one value, or one per class.")
    )
    # Geometry (issue 16)
    image_sizes: str = field(
        default="fixed",
        metadata=setting(
            '`"fixed"`: every image resized to `image_height` x `image_width` (another size is converted and '
            'reported); `"own"`: each image predicted at its own size, images batched by size (a batch never '
            "mixes sizes; models with an `input_size` still get theirs), masks encoded at that size.",
            choices=IMAGE_SIZES,
        ),
    )
    encode_size: tuple[int, int] | None = field(
        default=None,
        metadata=setting(
            'the size masks are encoded at: `"image"`, the size the image was predicted at; `[height, width]`: '
            "the probabilities resized (bilinear) to it before the threshold and post-processing (e.g. Clouds' "
            "`[350, 525]`; `min_component`/`min_area` then count pixels at that size).",
            shown='`"image"`',
        ),
    )
    bit_depth: int = field(
        default=8,
        metadata=setting(
            "the depth the test files are stored in: `16` scales 16-bit files by `pixel_max`. Files as declared "
            "are not reported; anything else (a 16-bit file under `bit_depth = 8`) is still converted and "
            "reported as `converted`.",
            choices=BIT_DEPTHS,
        ),
    )
    pixel_max: float | str = field(
        default="depth",
        metadata=setting(
            'the value shown as 255: `"depth"`, 2^bit_depth - 1; `"image"`, each image\'s own maximum; or a '
            "number such as `4095`.",
        ),
    )
    image_channels: int = field(
        default=3,
        metadata=setting(
            "`1` repeats grey (single-channel) files to 3 channels. Files as declared are not reported; anything "
            "else (a grey file under 3 channels) is still converted and reported as `converted`.",
            choices=IMAGE_CHANNELS,
        ),
    )
    submission: SubmissionSpec = field(default_factory=SubmissionSpec)  # kernel_src.layout
    input: InputSpec = field(default_factory=InputSpec)  # kernel_src.inputs ([input] in bundle.toml)
    rows: RowSpec = field(default_factory=RowSpec)  # [submission] of an image-level task (kernel_src.rows)

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Every model: classifiers, segmenters, regressors (the order of the tables)."""
        return (*self.classifiers, *self.segmenters, *self.regressors)

    @property
    def models_by_role(self) -> tuple[tuple[str, ModelSpec], ...]:
        """(role, model) for every model, in the order of `models`."""
        roles = (("classifier", self.classifiers), ("segmenter", self.segmenters), ("regressor", self.regressors))
        return tuple((role, m) for role, models in roles for m in models)

    def outputs(self, role: str) -> int:
        """The head size a model of `role` must have: the task's for its predicting models (classes,
        or values), the classes otherwise (a segmentation's gating classifiers)."""
        task = self.task.task
        return task.head(self.task, self.num_classes) if role == task.role else self.num_classes

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
        n = typed("num_classes", data.get("num_classes", default(cls, "num_classes")), int)
        if n < 1:
            raise SpecError("num_classes", f"must be at least 1, got {n}")
        height = typed("image_height", data.get("image_height", default(cls, "image_height")), int)
        width = typed("image_width", data.get("image_width", default(cls, "image_width")), int)
        if height < 1 or width < 1:
            raise SpecError("image_height", f"image size must be positive, got {height}x{width}")
        order = typed("rle_order", data.get("rle_order", default(cls, "rle_order")), str)
        if order not in RLE_ORDERS:
            raise SpecError("rle_order", f"{order!r} must be 'F' (column-major, Severstal) or 'C' (row-major)")
        device = typed("device", data.get("device", default(cls, "device")), str)
        if device not in DEVICES:
            raise SpecError("device", f"{device!r} must be one of {list(DEVICES)}")
        batch = typed("batch_size", data.get("batch_size", default(cls, "batch_size")), int)
        if batch < 1:
            raise SpecError("batch_size", f"must be at least 1, got {batch}")
        budget = typed("time_budget_s", data.get("time_budget_s", default(cls, "time_budget_s")), float)
        if not budget > 0:
            raise SpecError("time_budget_s", f"must be positive seconds, got {budget}")
        workers = typed("loader_workers", data.get("loader_workers", default(cls, "loader_workers")), int)
        if workers < 0:
            raise SpecError("loader_workers", f"must be 0 or more, got {workers}")

        memory_format = typed("memory_format", data.get("memory_format", default(cls, "memory_format")), str)
        if memory_format not in MEMORY_FORMATS:
            raise SpecError("memory_format", f"{memory_format!r} must be one of {list(MEMORY_FORMATS)}")
        precision = typed("precision", data.get("precision", default(cls, "precision")), str)
        if precision not in PRECISIONS:
            raise SpecError("precision", f"{precision!r} must be one of {list(PRECISIONS)}")
        per_call = typed("images_per_call", data.get("images_per_call", default(cls, "images_per_call")), int)
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
        regressors = tuple(
            ModelSpec.from_dict(m, f"regressors[{i}]", REG_KINDS)
            for i, m in enumerate(_array("regressors", data.get("regressors", ())))
        )
        names = [m.name for m in (*classifiers, *segmenters, *regressors)]
        for name in names:
            if names.count(name) > 1:
                raise SpecError("segmenters", f"model name {name!r} is used twice; names must be unique")
        task = TaskSpec.from_dict(_table("task", data.get("task", {})), n)
        if not task.task.image_level and not segmenters:
            raise SpecError("segmenters", "at least one segmentation model is required")

        g = _table("gating", data.get("gating", {}))
        _known("gating", g, GatingSpec)
        gated = classifiers and not task.task.image_level
        mode = typed("gating.mode", g.get("mode", "per_class" if gated else "off"), str)
        if mode not in GATING_MODES:
            raise SpecError("gating.mode", f"{mode!r} must be one of {list(GATING_MODES)}")
        check_models(task, {"classifiers": classifiers, "segmenters": segmenters, "regressors": regressors}, mode)
        if mode != "off" and not classifiers:
            raise SpecError("gating.mode", f"{mode!r} needs at least one classifier; add one or set mode = 'off'")
        thresholds = g.get("thresholds", default(GatingSpec, "thresholds"))
        gating = GatingSpec(mode=mode, thresholds=_per_item("gating.thresholds", thresholds, n, 0.0, 1.0))

        p = _table("postprocess", data.get("postprocess", {}))
        given = {k: p.get(k, default(PostprocessSpec, k)) for k in _known("postprocess", p, PostprocessSpec)}
        exclusive = typed("postprocess.one_class_per_pixel", given["one_class_per_pixel"], bool)
        post = PostprocessSpec(
            threshold=_per_item("postprocess.threshold", given["threshold"], n, 0.0, 1.0),
            min_component=tuple(
                int(v) for v in _per_item("postprocess.min_component", given["min_component"], n, 0, None, type_=int)
            ),
            min_area=tuple(int(v) for v in _per_item("postprocess.min_area", given["min_area"], n, 0, None, type_=int)),
            one_class_per_pixel=exclusive,
        )
        geometry = _geometry(data)
        submission = SubmissionSpec.from_dict(_table("submission", data.get("submission", {})), n)
        input_spec = InputSpec.from_dict(_table("input", data.get("input", {})))
        rows = RowSpec()
        if task.task.image_level:
            head = task.task.head(task, n)
            rows = RowSpec.from_dict(_table("rows", data.get("rows", {})), task.task, n, head)
        elif any(_listed(v) != _listed(getattr(rows, k, None)) for k, v in _rows_given(data).items()):
            raise SpecError("rows", f"per-image rows are for the image-level tasks, not {task.name!r}")
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
            regressors=regressors,
            task=task,
            gating=gating,
            postprocess=post,
            submission=submission,
            input=input_spec,
            rows=rows,
            **geometry,
        )


def _rows_given(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return _table("rows", data.get("rows", {}))


def _listed(value: Any) -> Any:
    """Lists and tuples compare alike (to_dict writes lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _known(key: str, table: Mapping[str, Any], cls: type) -> list[str]:
    """The settings of `cls`, the sub-table at `key`; a key of `table` outside them is refused naming them."""
    known = [f.name for f in settings(cls)]
    unknown = set(table) - set(known)
    if unknown:
        raise SpecError(f"{key}.{sorted(unknown)[0]}", f"unknown setting; known: {', '.join(known)}")
    return known


def _geometry(data: Mapping[str, Any]) -> dict[str, Any]:
    """image_sizes, encode_size, bit_depth, pixel_max, image_channels, validated."""
    sizes = typed("image_sizes", data.get("image_sizes", default(InferenceSpec, "image_sizes")), str)
    if sizes not in IMAGE_SIZES:
        raise SpecError("image_sizes", f"{sizes!r} must be 'fixed' (resized to image_height x image_width) or 'own'")
    raw = data.get("encode_size")
    encode: tuple[int, int] | None = None
    if raw is not None and raw != "image":
        if (
            not isinstance(raw, (list, tuple))
            or len(raw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
        ):
            raise wrong("encode_size", raw, "'image' or [height, width] with positive integers")
        encode = (int(raw[0]), int(raw[1]))
    depth = typed("bit_depth", data.get("bit_depth", default(InferenceSpec, "bit_depth")), int)
    if depth not in BIT_DEPTHS:
        raise SpecError("bit_depth", f"{depth} must be 8 or 16 (the depth the test images are stored in)")
    pixel_max: float | str = data.get("pixel_max", default(InferenceSpec, "pixel_max"))
    if isinstance(pixel_max, str):
        if pixel_max not in ("depth", "image"):
            raise SpecError("pixel_max", f"{pixel_max!r} must be 'depth', 'image' or a positive number")
    else:
        pixel_max = typed("pixel_max", pixel_max, float)
        if not pixel_max > 0 or math.isinf(pixel_max):
            raise SpecError("pixel_max", f"must be a positive number (the value shown as 255), got {pixel_max}")
    channels = typed("image_channels", data.get("image_channels", default(InferenceSpec, "image_channels")), int)
    if channels not in IMAGE_CHANNELS:
        raise SpecError("image_channels", f"{channels} must be 3, or 1 for single-channel (grey) files")
    return {
        "image_sizes": sizes,
        "encode_size": encode,
        "bit_depth": depth,
        "pixel_max": pixel_max,
        "image_channels": channels,
    }
