"""A model's albumentations validation pipeline -> the engine's own preprocessing, proved equal.

`preprocess = "models/<name>.albu.json"` (or `.yaml`: the file `A.save(val_transform, path)`
writes) is loaded with albumentations and translated step by step into the description that
`kernel_src.preprocess` runs on tensors. Only deterministic transforms applied always (p = 1)
are accepted: `SUPPORTED` lists them; any other is refused naming it and that list.

The proof: on `sample_images` (synthetic, deterministic, every 8-bit level present, at the
competition's image size and two other sizes), every step of the engine is run on
albumentations' own output of the previous step and compared with albumentations' output of that
step; then the whole chain is compared end to end. Tolerance, in units of one 8-bit level at that
step (the step's output range / 255, so a Normalize's gain is counted): the largest difference
at most `MAX_LEVELS` (one rounding of an 8-bit value the other way, which OpenCV's fixed-point
arithmetic does at a few pixels, plus 5 % for a per-image normalisation whose statistics move
with it), the mean difference at most `MEAN_LEVELS`. A step beyond it
fails the build naming the transform and the figures.

The description is written into the bundle as `<name>.preprocess.json` (with the pipeline as
albumentations saved it, its sha256 and the measured differences), listed in bundle.json's
"preprocess" records and hashed like the weights.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bundler.config import ModelEntry
from bundler.errors import PreprocessError
from kernel_src.bundle import sha256_file
from kernel_src.preprocess import FORMAT, Preprocess, apply_step

SUPPORTED = (
    "Resize",
    "LongestMaxSize",
    "SmallestMaxSize",
    "PadIfNeeded",
    "CenterCrop",
    "Crop",
    "ToGray",
    "ToFloat",
    "FromFloat",
    "Normalize",
    "ToTensorV2",
)
MAX_LEVELS = 1.05  # largest |engine - albumentations|, in 8-bit levels of the step's output
MEAN_LEVELS = (
    0.25  # mean |engine - albumentations|: OpenCV's fixed-point 8-bit resize rounds ~1 pixel in 8 the other way
)
_INTERPOLATIONS = {0: "nearest", 1: "linear", 2: "cubic", 3: "area", 5: "linear", 6: "nearest_exact"}
_BORDERS = {0: "constant", 1: "replicate", 2: "reflect", 3: "wrap", 4: "reflect101"}


@dataclass(frozen=True)
class Translated:
    """A pipeline translated: its description (the bundle file's data) and the names of its transforms."""

    description: dict[str, Any]
    transforms: tuple[str, ...]
    indices: tuple[int, ...]  # position in the Compose of each description step's transform


def data_format(path: Path) -> str:
    """How `A.save` wrote `path`: "yaml" for .yaml/.yml, else "json"."""
    return "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"


def load_pipeline_file(path: Path) -> Any:
    """`A.load` of `path` (its errors pass through), without the warning albumentations 2.0.8 gives
    when it reads back a PadIfNeeded it saved itself."""
    import albumentations as A  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Argument\(s\) 'padding' are not valid for transform PadIfNeeded")
        return A.load(str(path), data_format=data_format(path))


def _load(path: Path, where: str) -> Any:
    if not path.is_file():
        raise PreprocessError(f"{where} = {str(path)!r} does not exist; save it with A.save(val_transform, path)")
    try:
        return load_pipeline_file(path)
    except Exception as e:  # albumentations raises many kinds for a file it cannot use
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PreprocessError(
            f"{where}: albumentations cannot load {path} as {data_format(path)} ({type(e).__name__}: {first}); "
            "save the validation pipeline with A.save(val_transform, path)"
        ) from None


def _refuse(where: str, name: str, why: str) -> PreprocessError:
    return PreprocessError(f"{where}: {name} {why}; supported transforms: {', '.join(SUPPORTED)}")


def _interpolation(where: str, name: str, value: Any) -> str:
    if value not in _INTERPOLATIONS:
        raise _refuse(where, name, f"uses interpolation {value!r}, which the engine does not reproduce")
    return _INTERPOLATIONS[value]


def _area(value: Any) -> bool:
    return value in ("image", "image_mask")


def _step(where: str, t: Mapping[str, Any]) -> dict[str, Any] | None:
    """The description step of one transform's to_dict() entry; None for ToTensorV2 (layout only)."""
    name = str(t.get("__class_fullname__", "?")).rsplit(".", 1)[-1]
    if name not in SUPPORTED:
        raise _refuse(where, name, "is not a deterministic transform the engine reproduces")
    if float(t.get("p", 1.0)) != 1.0:
        raise _refuse(where, name, f"has p = {t.get('p')}: a validation pipeline must apply every transform (p = 1)")
    if name == "ToTensorV2":
        return None
    if name == "Resize":
        return {
            "op": "resize",
            "height": int(t["height"]),
            "width": int(t["width"]),
            "interpolation": _interpolation(where, name, t.get("interpolation")),
            "area_for_downscale": _area(t.get("area_for_downscale")),
        }
    if name in ("LongestMaxSize", "SmallestMaxSize"):
        size = t.get("max_size")
        if isinstance(size, (list, tuple)):
            if len(size) != 1:
                raise _refuse(where, name, f"picks max_size at random from {list(size)}; give one size")
            size = size[0]
        return {
            "op": "max_size",
            "side": "longest" if name == "LongestMaxSize" else "smallest",
            "max_size": None if size is None else int(size),
            "max_hw": list(t.get("max_size_hw") or (None, None)),
            "interpolation": _interpolation(where, name, t.get("interpolation")),
            "area_for_downscale": _area(t.get("area_for_downscale")),
        }
    if name == "PadIfNeeded":
        if t.get("position") not in ("center", "top_left", "top_right", "bottom_left", "bottom_right"):
            raise _refuse(where, name, f"has position {t.get('position')!r} (random); choose a fixed one")
        if t.get("border_mode") not in _BORDERS:
            raise _refuse(where, name, f"has border_mode {t.get('border_mode')!r}")
        fill = t.get("fill", 0)
        return {
            "op": "pad",
            "min_height": t.get("min_height"),
            "min_width": t.get("min_width"),
            "height_divisor": t.get("pad_height_divisor"),
            "width_divisor": t.get("pad_width_divisor"),
            "position": t.get("position"),
            "border": _BORDERS[t["border_mode"]],
            "fill": [float(v) for v in fill] if isinstance(fill, (list, tuple)) else [float(fill)],
        }
    if name in ("CenterCrop", "Crop"):
        if t.get("pad_if_needed"):
            raise _refuse(where, name, "has pad_if_needed = True; put a PadIfNeeded before it instead")
        if name == "CenterCrop":
            return {"op": "center_crop", "height": int(t["height"]), "width": int(t["width"])}
        return {"op": "crop", **{k: int(t[k]) for k in ("x_min", "y_min", "x_max", "y_max")}}
    if name == "ToGray":
        if int(t.get("num_output_channels", 3)) != 3:
            raise _refuse(where, name, "has num_output_channels != 3; the models take three channels")
        if t.get("method") not in ("weighted_average", "average", "max", "desaturation"):
            raise _refuse(
                where, name, f"has method {t.get('method')!r}; use weighted_average, average, max or desaturation"
            )
        return {"op": "gray", "method": t["method"]}
    if name == "ToFloat":
        return {"op": "to_float", "max_value": t.get("max_value")}
    if name == "FromFloat":
        if t.get("dtype", "uint8") != "uint8":
            raise _refuse(where, name, f"converts to {t.get('dtype')!r}; only uint8 is reproduced")
        return {"op": "from_float", "max_value": t.get("max_value")}
    # Normalize
    mode = t.get("normalization", "standard")
    if mode == "standard":
        mean, std, peak = t.get("mean"), t.get("std"), float(t.get("max_pixel_value") or 1.0)
        means = [float(v) for v in mean] if isinstance(mean, (list, tuple)) else [float(mean or 0.0)] * 3
        stds = [float(v) for v in std] if isinstance(std, (list, tuple)) else [float(std or 1.0)] * 3
        if len(means) != 3 or len(stds) != 3 or any(s == 0 for s in stds):
            raise _refuse(where, name, f"has mean {mean} and std {std}; give three of each, no zero std")
        return {
            "op": "normalize",
            "mode": "standard",
            "mean": [m * peak for m in means],
            "denominator": [1.0 / (s * peak) for s in stds],
        }
    if mode not in ("image", "image_per_channel", "min_max", "min_max_per_channel"):
        raise _refuse(where, name, f"has normalization {mode!r}")
    return {"op": "normalize", "mode": mode}


def translate(path: Path, where: str) -> tuple[Any, Translated]:
    """(the loaded albumentations pipeline, its translation); PreprocessError naming `where`."""
    import albumentations as A  # type: ignore[import-untyped]

    transform = _load(path, where)
    data = A.to_dict(transform)
    root = data.get("transform", {})
    if str(root.get("__class_fullname__", "")).rsplit(".", 1)[-1] != "Compose" or float(root.get("p", 1.0)) != 1.0:
        raise PreprocessError(f"{where}: {path} is not an A.Compose applied always (p = 1); save A.Compose([...])")
    steps, names, indices = [], [], []
    for i, t in enumerate(root.get("transforms", [])):
        name = str(t.get("__class_fullname__", "?")).rsplit(".", 1)[-1]
        step = _step(where, t)
        names.append(name)
        if step is not None:
            step["transform"] = name
            steps.append(step)
            indices.append(i)
    description = {
        "format": FORMAT,
        "steps": steps,
        "albumentations_version": str(data.get("__version__", A.__version__)),
        "albumentations": data,
    }
    return transform, Translated(description, tuple(names), tuple(indices))


def sample_images(size: tuple[int, int], seed: int = 0) -> list[npt.NDArray[np.uint8]]:
    """Deterministic RGB test images [H,W,3]: smooth gradients with texture and hard edges, holding
    0 and 255 in every channel, at `size` and at two other sizes (odd and wider)."""
    rng = np.random.default_rng(seed)
    h, w = size
    images = []
    for hh, ww in ((h, w), (h + 37, w // 2 + 11), (max(8, h // 2 + 5), w + 29)):
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
        base = np.stack(
            [255 * xx / max(ww - 1, 1), 255 * yy / max(hh - 1, 1), 127.5 + 127.5 * np.sin(xx / 7 + yy / 11)], axis=-1
        )
        noise = rng.normal(0, 18, size=(hh, ww, 3))
        image = np.clip(base + noise, 0, 255)
        image[hh // 3 : hh // 2, ww // 4 : ww // 3] = (255, 0, 128)  # a hard-edged block
        for y in range(0, hh, 32):  # black and white blocks everywhere: any crop or shrink keeps 0 and 255
            for x in range(0, ww, 32):
                image[y : y + 8, x : x + 8] = 0
                image[y + 16 : y + 24, x + 16 : x + 24] = 255
        images.append(image.round().astype(np.uint8))
    return images


def _hwc(image: Any) -> npt.NDArray[np.float32]:
    """An albumentations output as float [H,W,C] (ToTensorV2 gives a CHW tensor)."""
    if isinstance(image, torch.Tensor):
        image = image.numpy().transpose(1, 2, 0)
    array = np.asarray(image, dtype=np.float32)
    return array[:, :, None] if array.ndim == 2 else array


def _tensor(image: npt.NDArray[np.float32]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()


def _difference(engine: torch.Tensor, albu: npt.NDArray[np.float32]) -> tuple[float, float] | str:
    """(max |diff|, mean |diff|) in 8-bit levels of each channel, or why the shapes differ."""
    got = engine[0].permute(1, 2, 0).numpy()
    if got.shape != albu.shape:
        return f"the engine gives {got.shape[0]}x{got.shape[1]}x{got.shape[2]} where albumentations gives " + (
            f"{albu.shape[0]}x{albu.shape[1]}x{albu.shape[2]}"
        )
    # one 8-bit level as seen in each output channel: the sample images hold 0 and 255 in every region
    level = np.maximum((albu.max(axis=(0, 1)) - albu.min(axis=(0, 1))).astype(np.float64) / 255.0, 1e-6)
    diff = np.abs(got.astype(np.float64) - albu.astype(np.float64)) / level
    return float(diff.max()), float(diff.mean())


def _check(where: str, what: str, engine: torch.Tensor, albu: npt.NDArray[np.float32], worst: dict[str, float]) -> None:
    found = _difference(engine, albu)
    if isinstance(found, str):
        raise PreprocessError(f"{where}: {what}: {found}; this pipeline cannot be shipped as it is")
    biggest, mean = found
    worst["max_levels"] = max(worst["max_levels"], biggest)
    worst["mean_levels"] = max(worst["mean_levels"], mean)
    if biggest > MAX_LEVELS + 1e-3 or mean > MEAN_LEVELS:
        raise PreprocessError(
            f"{where}: {what}: the engine differs from albumentations by up to {biggest:.2f} 8-bit levels "
            f"(mean {mean:.3f}; allowed {MAX_LEVELS} and {MEAN_LEVELS}); this transform cannot be shipped "
            "as it is: remove it or change its parameters"
        )


def prove(transform: Any, translated: Translated, where: str, size: tuple[int, int]) -> dict[str, float]:
    """Compare the engine with albumentations on `sample_images(size)`, step by step and end to end;
    PreprocessError naming the first transform beyond the tolerance. Returns the worst figures."""
    steps = translated.description["steps"]
    plan = Preprocess(steps, name=where)
    worst = {"max_levels": 0.0, "mean_levels": 0.0, "images": 0.0}
    for number, image in enumerate(sample_images(size)):
        h, w = image.shape[:2]
        try:
            expected = _hwc(transform(image=image)["image"])
        except Exception as e:
            if number > 0:  # another size than the competition's: a pipeline may be made for one size
                continue
            raise PreprocessError(
                f"{where}: albumentations itself fails on a {h}x{w} image, the competition's size "
                f"({type(e).__name__}: {e}); fix the pipeline or [inference] image_height/image_width"
            ) from None
        current: npt.NDArray[Any] = image
        for step, index in zip(steps, translated.indices, strict=True):
            albu_t = transform.transforms[index]
            before = _hwc(current)
            try:
                after = albu_t(image=current)["image"]
            except Exception as e:
                raise PreprocessError(
                    f"{where}: {step['transform']} fails on a {h}x{w} image in albumentations itself "
                    f"({type(e).__name__}: {e}); the pipeline cannot take the competition's images"
                ) from None
            engine, _ = apply_step(_tensor(before), step, np.asarray(current).dtype == np.uint8)
            _check(where, f"{step['transform']} on a {h}x{w} image", engine, _hwc(after), worst)
            current = after
        full = plan.apply(_tensor(image.astype(np.float32) / 255.0))
        _check(where, f"the whole pipeline on a {h}x{w} image", full, expected, worst)
        worst["images"] += 1
    return {k: round(v, 4) for k, v in worst.items()}


def build_preprocess(
    entry: ModelEntry, key: str, size: tuple[int, int], dest: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Translate, prove and write `entry`'s pipeline into `dest`; its bundle.json record."""
    assert entry.preprocess is not None
    where = f"{key}.preprocess"  # key names the file read: "other.toml segmenters[0]"
    say("reading the albumentations pipeline")
    transform, translated = translate(entry.preprocess, where)
    say("proving the translation against albumentations")
    figures = prove(transform, translated, where, size)
    description = {
        **translated.description,
        "model": entry.spec.name,
        "source": entry.preprocess.name,
        "source_sha256": sha256_file(entry.preprocess),
        "proof": {"tolerance": {"max_levels": MAX_LEVELS, "mean_levels": MEAN_LEVELS}, "worst": figures},
    }
    path = dest / entry.spec.preprocess
    path.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {
        "file": entry.spec.preprocess,
        "model": entry.spec.name,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "source": entry.preprocess.name,
        "transforms": list(translated.transforms),
    }
