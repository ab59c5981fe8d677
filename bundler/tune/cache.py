"""The holdout cache: one pass of the shipped engine over the labelled holdout, kept on disk.

The first pass runs the SAME kernel_src code the notebook runs: `kernel_src.models.load_models`
(weights from the built bundle), `kernel_src.images.ImageLoader` (decoding and conversion),
`kernel_src.predict.Predictor`'s preprocessing and forward calls (`_upload`, `_prepare`,
`_forward`: resize, mean/std, views stacked, call sizes, out-of-memory retries) and
`kernel_src.tta.merge`. It keeps, per image:

- each classifier's class probabilities (`cls--<model>.npy`, float32 [N, C]; NaN where the
  model's output for that image held NaN, as the engine's gate would drop it);
- each segmenter's probability map for each of its TTA views, de-augmented
  (`seg--<model>--<view index>.npy`, uint8 [N, C, h, w] at the model's output size, before the
  resize to the image size). Stored as `round(p * 255)`: the resolution is 1/255, a stored
  probability is within 1/510 of the engine's. The resize back to the image size is bilinear,
  hence linear, so it is done at tuning time on the merged views without changing the result;
- `nan--<model>.npy` (bool [N]): the segmenter's output for the image held NaN (left out of the
  ensemble for it, as the engine does); `readable.npy` (bool [N]): the image was decoded
  (missing or unreadable images get empty masks in the engine, and here).

The cache folder's name is the key: a hash of the bundle's weights and preprocessing files'
hashes (bundle.json), the models' specs, the inference settings that change a probability
(image size, classes, device, precision, memory format), the holdout's fingerprint (every
image's name and sha256) and the engine version (`kernel_src_hash` of kernel_src/). Any change
is a new key and a new first pass; a folder is complete only when `meta.json` is there (it is
written last, then the folder renamed in).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kernel_src.bundle import kernel_src_hash, sha256_file
from kernel_src.spec import InferenceSpec, ModelSpec

CACHE_FORMAT = 1
QUANT = 255  # probabilities are stored as round(p * QUANT): resolution 1/255
META = "meta.json"

Progress = Callable[[int, int], None]  # (images done, total)


def kernel_src_dir() -> Path:
    import kernel_src

    return Path(kernel_src.__file__).resolve().parent


def holdout_fingerprint(test_dir: Path, image_ids: Sequence[str]) -> str:
    """sha256 over every image's name and content hash (a missing image counts as missing)."""
    lines = []
    for image_id in image_ids:
        path = test_dir / image_id
        lines.append(f"{image_id} {sha256_file(path) if path.is_file() else 'missing'}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def cache_key(spec: InferenceSpec, model_hashes: Mapping[str, str], fingerprint: str) -> str:
    """The key of a first pass: everything that changes a cached probability."""
    models = [
        {**_model_key(m), "sha256": model_hashes.get(m.file, "")} for m in (*spec.classifiers, *spec.segmenters)
    ]
    data = {
        "format": CACHE_FORMAT,
        "files": dict(sorted(model_hashes.items())),  # every weights and preprocessing file of the bundle
        "engine": kernel_src_hash(kernel_src_dir()),
        "models": models,
        "inference": {
            k: getattr(spec, k)
            for k in ("num_classes", "image_height", "image_width", "device", "precision", "memory_format")
        },
        "holdout": fingerprint,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _model_key(m: ModelSpec) -> dict[str, Any]:
    """What of a model's spec changes its probabilities (its weight in the ensemble does not)."""
    data = {k: v for k, v in m.__dict__.items() if k not in ("weight", "sha256")}
    return json.loads(json.dumps(data, default=list))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class HoldoutCache:
    """A complete cache folder, read back (arrays are memory-mapped, not loaded)."""

    folder: Path
    key: str
    image_ids: tuple[str, ...]
    num_classes: int
    height: int
    width: int
    classifiers: tuple[str, ...]
    segmenters: tuple[str, ...]
    views: dict[str, tuple[str, ...]]  # segmenter -> the views cached, in spec order
    seconds_per_image: dict[str, float]  # model -> forward seconds per image, all its views (first pass)
    first_pass_s: float
    unreadable: tuple[str, ...]

    def classifier_probs(self, name: str) -> npt.NDArray[np.float32]:
        result: npt.NDArray[np.float32] = np.load(self.folder / f"cls--{name}.npy")
        return result

    def view_probs(self, name: str, view: str) -> npt.NDArray[np.uint8]:
        """uint8 [N, C, h, w] (probability x 255) of segmenter `name` seen through `view`, de-augmented."""
        index = self.views[name].index(view)
        result: npt.NDArray[np.uint8] = np.load(self.folder / f"seg--{name}--{index}.npy", mmap_mode="r")
        return result

    def nan_images(self, name: str) -> npt.NDArray[np.bool_]:
        result: npt.NDArray[np.bool_] = np.load(self.folder / f"nan--{name}.npy")
        return result

    def readable(self) -> npt.NDArray[np.bool_]:
        result: npt.NDArray[np.bool_] = np.load(self.folder / "readable.npy")
        return result

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def read_cache(folder: Path) -> HoldoutCache | None:
    """The cache in `folder`, or None when it is absent or incomplete (no meta.json)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    return HoldoutCache(
        folder=folder,
        key=str(meta["key"]),
        image_ids=tuple(meta["image_ids"]),
        num_classes=int(meta["num_classes"]),
        height=int(meta["height"]),
        width=int(meta["width"]),
        classifiers=tuple(meta["classifiers"]),
        segmenters=tuple(meta["segmenters"]),
        views={k: tuple(v) for k, v in meta["views"].items()},
        seconds_per_image={k: float(v) for k, v in meta["seconds_per_image"].items()},
        first_pass_s=float(meta["first_pass_s"]),
        unreadable=tuple(meta["unreadable"]),
    )


def quantise(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Probabilities in [0, 1] (NaN as 0) -> uint8 at resolution 1/255."""
    return np.rint(np.nan_to_num(probs, nan=0.0) * QUANT).clip(0, QUANT).astype(np.uint8)


def first_pass(
    spec: InferenceSpec,
    *,
    bundle_dir: Path,
    test_dir: Path,
    image_ids: Sequence[str],
    folder: Path,
    key: str,
    on_batch_done: Progress | None = None,
) -> HoldoutCache:
    """Run every model of `spec` once over `image_ids` and write the cache into `folder`."""
    import torch

    from kernel_src.devices import resolve_devices
    from kernel_src.images import ImageLoader
    from kernel_src.models import load_models
    from kernel_src.predict import Predictor
    from kernel_src.preprocess import model_output
    from kernel_src.profiler import Profiler
    from kernel_src.tta import merge

    began = time.perf_counter()
    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    n, c = len(image_ids), spec.num_classes
    # Classifiers are loaded whatever the gating mode: tuning may switch the gate on.
    mode = spec.gating.mode if spec.gating.mode != "off" or not spec.classifiers else "per_class"
    run_spec = replace(spec, gating=replace(spec.gating, mode=mode))
    devices = resolve_devices(spec.device, memory_format=spec.memory_format, precision=spec.precision)
    profiler = Profiler(time.time(), torch_version=torch.__version__)
    classifiers, segmenters = load_models(run_spec, bundle_dir, devices, profiler)
    predictor = Predictor(run_spec, classifiers, segmenters, devices, profiler)
    cls_probs = {m.spec.name: np.full((n, c), np.nan, dtype=np.float32) for m in classifiers}
    nan = {m.spec.name: np.zeros(n, dtype=np.bool_) for m in segmenters}
    maps: dict[tuple[str, int], np.memmap[Any, np.dtype[np.uint8]]] = {}
    seconds = {m.spec.name: 0.0 for m in (*classifiers, *segmenters)}
    readable = np.zeros(n, dtype=np.bool_)
    unreadable: list[str] = []
    size = (spec.image_height, spec.image_width)

    def predict(images: npt.NDArray[np.uint8], rows: list[int]) -> None:
        index = np.asarray(rows)
        chunks = predictor._upload(images)
        for lm in classifiers:
            begin = time.perf_counter()
            parts = []
            for (i, _, _), x in zip(devices.split(len(images)), chunks, strict=True):
                logits = predictor._forward(lm, lm.replicas[i], predictor._prepare(x, lm), "classifier")
                views = merge([o.reshape(o.shape[0], -1) for o in logits], lm.views, lm.spec.tta_merge)
                parts.append(views.float().cpu())
            devices.synchronize()
            seconds[lm.spec.name] += time.perf_counter() - begin
            cls_probs[lm.spec.name][index] = torch.cat(parts).numpy()  # NaN stays NaN: dropped at tune time
        for lm in segmenters:
            begin = time.perf_counter()
            outs: list[list[torch.Tensor]] = []
            for (i, _, _), x in zip(devices.split(len(images)), chunks, strict=True):
                outs.append(predictor._forward(lm, lm.replicas[i], predictor._prepare(x, lm), "segmenter"))
            devices.synchronize()
            seconds[lm.spec.name] += time.perf_counter() - begin
            for (_, lo, hi), out in zip(devices.split(len(images)), outs, strict=True):
                k = hi - lo
                bad = torch.stack([torch.isnan(o).reshape(k, -1).any(1) for o in out]).any(0)
                nan[lm.spec.name][index[lo:hi]] = bad.cpu().numpy()
                frame = (out[0].shape[-2], out[0].shape[-1])  # the model's frame; scale views resized to it
                for v, view in enumerate(lm.views):
                    probs = merge([out[v]], (view,), "mean", frame)
                    if lm.preprocess is not None:  # its pipeline's geometry undone onto the image
                        probs = model_output(probs, lm.preprocess, size)
                    single = probs.float().cpu().numpy()
                    store = maps.get((lm.spec.name, v))
                    if store is None:
                        shape = (n, c, single.shape[-2], single.shape[-1])
                        path = staging / f"seg--{lm.spec.name}--{v}.npy"
                        store = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
                        maps[(lm.spec.name, v)] = store
                    store[index[lo:hi]] = quantise(single)

    with torch.inference_mode(), ImageLoader(
        test_dir, image_ids, workers=spec.loader_workers, prefetch=max(2 * spec.batch_size, 2), size=size
    ) as loader:
        batch: list[npt.NDArray[np.uint8]] = []
        rows: list[int] = []
        for done, loaded in enumerate(loader, start=1):
            if loaded.image is None:
                unreadable.append(loaded.image_id)
            else:
                readable[done - 1] = True
                batch.append(loaded.image)
                rows.append(done - 1)
            if len(batch) == spec.batch_size or (done == n and batch):
                predict(np.stack(batch), rows)
                batch, rows = [], []
            if on_batch_done is not None:
                on_batch_done(done, n)
    for store in maps.values():
        store.flush()
    maps_written = set(maps)
    maps.clear()  # closes the memory maps before the folder is renamed
    for name, probs in cls_probs.items():
        np.save(staging / f"cls--{name}.npy", probs)
    for name, flags in nan.items():
        np.save(staging / f"nan--{name}.npy", flags)
    np.save(staging / "readable.npy", readable)
    for lm in segmenters:  # a segmenter that saw no readable image still gets its (empty) arrays
        for v in range(len(lm.views)):
            if (lm.spec.name, v) not in maps_written:
                h, w = lm.spec.input_size or size
                np.save(staging / f"seg--{lm.spec.name}--{v}.npy", np.zeros((n, c, h, w), np.uint8))
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "image_ids": list(image_ids),
        "num_classes": c,
        "height": spec.image_height,
        "width": spec.image_width,
        "classifiers": [m.spec.name for m in classifiers],
        "segmenters": [m.spec.name for m in segmenters],
        "views": {m.spec.name: list(m.views) for m in segmenters},
        "seconds_per_image": {k: s / max(1, int(readable.sum())) for k, s in seconds.items()},
        "first_pass_s": time.perf_counter() - began,
        "unreadable": unreadable,
        "resolution": f"1/{QUANT}",
    }
    (staging / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    cache = read_cache(folder)
    assert cache is not None  # just written
    return cache
