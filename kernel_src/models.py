"""Build models offline from their spec, load their weights from the bundle, and check them.

`load_models` loads every model of an `InferenceSpec` (one replica per device) and checks each
with a test forward, so configuration problems raise `ModelError` before any image is read.

Call sizes: the engine calls each model with at most `LoadedModel.images_per_call` images (TTA
views count as images). `images_per_call = N` in the spec fixes it; `0` measures it at load, as
cudnn's benchmark mode does for kernels: on the first replica, call sizes 1, 2, 4, ... up to the
largest call a batch makes (the batch's share of one device x the model's views) are timed
with zero inputs, best of `CALL_SIZE_TIMINGS` each (the first call of a shape is the warm-up on
every device kind); growing stops at a size slower per image than the best so
far, at one that runs out of memory, or once measuring has taken `CALL_SIZE_BUDGET` times the
estimated time of one call of the largest size. The fastest per image wins; the choice and the
seconds per call are recorded in profile.json `call_sizes`.

How a model is built and its weight file read depends on its kind: `kernel_src.model_kinds`
(offline: no pretrained weights are downloaded; weights come from the bundle).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .devices import DeviceSet
from .errors import ModelError
from .model_kinds import ROLES, get_kind
from .model_kinds import load_state_dict_into as load_state_dict_into  # the build and tests load through it
from .preprocess import Preprocess, load_preprocess
from .profiler import Profiler
from .spec import InferenceSpec, ModelSpec
from .tta import scaled_size, view_groups


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """An untrained model of the declared architecture, built offline (none for a TorchScript kind)."""
    return get_kind(spec.kind).build(spec, num_classes)


def load_model(spec: ModelSpec, bundle_dir: Path, num_classes: int, device: torch.device) -> nn.Module:
    """The model of `spec` with its bundled weights, in eval mode on `device`."""
    path = Path(bundle_dir) / spec.file
    if not path.is_file():
        raise ModelError(
            f"model {spec.name!r}: weight file {path} is missing from the bundle; rebuild it with `bundler build`"
        )
    return get_kind(spec.kind).load(spec, path, num_classes, device)


CALL_SIZE_TIMINGS = 2  # timed calls per measured size; the fastest counts
CALL_SIZE_BUDGET = 2.0  # measuring stops once it took this many (estimated) calls of the largest size

OUT_OF_MEMORY: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, a MemoryError, or a RuntimeError saying "out of memory"."""
    return isinstance(error, OUT_OF_MEMORY) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def free_memory(devices: DeviceSet) -> None:
    """Hand cached CUDA blocks back after an out-of-memory error (nothing to do on CPU)."""
    if devices.cuda:
        torch.cuda.empty_cache()


@dataclass
class LoadedModel:
    """A model of the spec with one replica per device, the TTA views it uses now, and the most
    images (views included) one forward call gets (0: the whole stacked batch in one call)."""

    spec: ModelSpec
    replicas: tuple[nn.Module, ...]
    views: tuple[str, ...]
    images_per_call: int = 0
    measured_s: dict[int, float] = field(default_factory=dict)  # call size -> best seconds per call
    preprocess: Preprocess | None = None  # the model's translated albumentations pipeline, if it has one


def load_models(
    spec: InferenceSpec, bundle_dir: Path, devices: DeviceSet, profiler: Profiler
) -> tuple[list[LoadedModel], list[LoadedModel]]:
    """Every classifier and segmenter, one replica per device, each checked with a test forward.

    Raises `ModelError` naming the model and the key at fault before any image is touched.
    Classifiers are not loaded when gating is off (nothing would use them).
    """
    classifiers = spec.classifiers if spec.gating.mode != "off" else ()
    return (
        load_role(spec, "classifier", classifiers, bundle_dir, devices, profiler),
        load_role(spec, "segmenter", spec.segmenters, bundle_dir, devices, profiler),
    )


def load_task_models(
    spec: InferenceSpec, bundle_dir: Path, devices: DeviceSet, profiler: Profiler
) -> list[LoadedModel]:
    """The predicting models of an image-level task (its table: classifiers or regressors), loaded
    and checked as `load_models` does, each head checked against the task's classes or values."""
    task = spec.task.task
    return load_role(spec, task.role, getattr(spec, task.table), bundle_dir, devices, profiler)


def load_role(
    spec: InferenceSpec,
    role: str,
    specs: Sequence[ModelSpec],
    bundle_dir: Path,
    devices: DeviceSet,
    profiler: Profiler,
) -> list[LoadedModel]:
    """The models `specs` of `role`, one replica per device, each checked with a test forward and its
    call size measured or fixed (profile.json `call_sizes`, `model_load_s`)."""
    loaded: list[LoadedModel] = []
    for m in specs:
        begin = time.perf_counter()
        replicas = []
        for device in devices.devices:
            model = load_model(m, bundle_dir, spec.outputs(role), device)
            if devices.channels_last:
                with contextlib.suppress(RuntimeError, TypeError):  # TorchScript may refuse: keep NCHW
                    model = model.to(memory_format=torch.channels_last)
            replicas.append(model)
        plan = load_preprocess(Path(bundle_dir) / m.preprocess, m.name) if m.preprocess else None
        entry = LoadedModel(m, tuple(replicas), m.tta, preprocess=plan)
        _test_forward(entry, role, spec, devices)
        devices.synchronize()
        largest = -(-spec.batch_size // devices.replicas) * len(m.tta)
        if spec.images_per_call > 0:
            entry.images_per_call = spec.images_per_call
        else:
            entry.images_per_call, entry.measured_s = measure_call_size(entry, spec, devices, largest)
        profiler.call_sizes[m.name] = {
            "chosen": entry.images_per_call,
            "measured_s": {str(n): round(s, 6) for n, s in entry.measured_s.items()},
            "reduced_by_oom": [],
        }
        profiler.model_loaded(m.name, time.perf_counter() - begin)
        loaded.append(entry)
    return loaded


def call_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... below `largest`, then `largest` itself."""
    sizes = [1]
    while sizes[-1] * 2 < largest:
        sizes.append(sizes[-1] * 2)
    return [*sizes, largest] if largest > 1 else sizes


def input_size(entry: LoadedModel, spec: InferenceSpec) -> tuple[int, int]:
    """(height, width) the model is fed for an image of the spec's size: its pipeline's output,
    else its input_size, else the image size."""
    image = (spec.image_height, spec.image_width)
    if entry.preprocess is not None:
        return entry.preprocess.output_size(image)
    return entry.spec.input_size or image


def _zeros(
    entry: LoadedModel, spec: InferenceSpec, devices: DeviceSet, n: int, size: tuple[int, int] | None = None
) -> torch.Tensor:
    h, w = size or input_size(entry, spec)
    x = torch.zeros(n, 3, h, w, device=devices.devices[0])
    return x.contiguous(memory_format=torch.channels_last) if devices.channels_last else x


@torch.inference_mode()
def measure_call_size(
    entry: LoadedModel,
    spec: InferenceSpec,
    devices: DeviceSet,
    largest: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, dict[int, float]]:
    """(the call size fastest per image, {size: best seconds per call}) as the module docstring
    says; (1, {}) when the largest call is one image (nothing to choose)."""
    if largest <= 1:
        return 1, {}
    model = entry.replicas[0]
    measured: dict[int, float] = {}
    begin = clock()
    budget = float("inf")
    for n in call_sizes(largest):
        x = _zeros(entry, spec, devices, n)
        try:
            with devices.autocast():
                # best of several: the first call of a new shape also pays for allocator growth and
                # kernel choice (cudnn autotune, oneDNN primitives), so the minimum is the warm figure
                timings = []
                for _ in range(CALL_SIZE_TIMINGS):
                    devices.synchronize()
                    start = clock()
                    model(x)
                    devices.synchronize()
                    timings.append(clock() - start)
        except Exception as e:
            if not is_out_of_memory(e):
                raise ModelError(
                    f"model {entry.spec.name!r}: a forward of {n} images failed while measuring call sizes "
                    f"({type(e).__name__}: {e}); set images_per_call in [inference] to skip measuring"
                ) from None
            oom = True
        else:
            oom = False
        if oom:  # outside the except block, so the failed call's tensors are released first
            del x
            free_memory(devices)
            break
        measured[n] = min(timings)
        per_image = {size: s / size for size, s in measured.items()}
        if n == 1:
            budget = CALL_SIZE_BUDGET * measured[1] * largest
        if per_image[n] > min(per_image.values()) or clock() - begin > budget:
            break
    if not measured:  # the test forward fitted one image, so this is an OOM at one image under load
        return 1, {}
    per_image = {size: s / size for size, s in measured.items()}
    return min(per_image, key=lambda size: (per_image[size], size)), measured


@torch.inference_mode()
def _test_forward(entry: LoadedModel, role: str, spec: InferenceSpec, devices: DeviceSet) -> None:
    m = entry.spec
    base = input_size(entry, spec)
    # one forward per input size its views make (a scale view feeds another size)
    for factor, _ in view_groups(m.tta):
        h, w = scaled_size(base, factor)
        x = _zeros(entry, spec, devices, 1, (h, w))
        try:
            with devices.autocast():
                out = entry.replicas[0](x)
        except Exception as e:
            view = "" if factor == 1.0 else f" (its TTA view 'scale:{factor:g}')"
            raise ModelError(
                f"model {m.name!r}: a test forward on one {h}x{w} image{view} failed ({type(e).__name__}: {e}); "
                "check its input_size or preprocess (smp models need multiples of 32), its tta and its kind/arch"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise ModelError(
                f"model {m.name!r}: returns {type(out).__name__}, not a tensor; export a single-output model"
            )
        check_output(m.name, role, out, 1, spec.outputs(role))


def check_output(model: str, role: str, out: torch.Tensor, rows: int, num_classes: int) -> None:
    """ModelError unless `out` has the shape of `role`'s output (`model_kinds.ROLES`): [rows, classes]
    (classifier) or [rows, classes, H, W] (segmenter)."""
    dims, want = ROLES[role]
    ok = out.dim() == dims and out.shape[0] == rows
    if ok and dims == 2 and out.shape[1] != num_classes:
        what = ("value" if num_classes == 1 else "values") if role == "regressor" else "classes"
        raise ModelError(
            f"model {model!r}: its head has {out.shape[1]} outputs but the task has {num_classes} {what}; "
            f"retrain or re-export it with {num_classes} outputs, or fix num_classes / [task] values"
        )
    if not ok or out.shape[1] != num_classes:
        raise ModelError(
            f"model {model!r}: output shape {tuple(out.shape)} is not {want} with {num_classes} classes "
            f"for {rows} inputs; check num_classes and the model's kind"
        )
