"""Build models offline from their spec, load their weights from the bundle, and check them.

`load_models` loads every model of an `InferenceSpec` (one replica per device) and checks each
replica with a test forward under its device's context, so configuration problems raise
`ModelError` before any image is read; a model that fails on some devices only runs their share
on a device where it works (a TorchScript traced on `cuda:0` has that device baked in).

Call sizes: the engine calls each model with at most `LoadedModel.images_per_call` images (TTA
views count as images). `images_per_call = N` in the spec fixes it; `0` measures it at load, as
cudnn's benchmark mode does for kernels: on every working replica (the smallest choice is kept),
call sizes 1, 2, 4, ... up to the
largest call a batch makes (the batch's share of one device x the model's views) are timed
with zero inputs, best of `CALL_SIZE_TIMINGS` each (the first call of a shape is the warm-up on
every device kind); growing stops at a size slower per image than the best so
far, at one that runs out of memory, or once measuring has taken `CALL_SIZE_BUDGET` times the
estimated time of one call of the largest size. The fastest per image wins; the choice and the
seconds per call are recorded in profile.json `call_sizes`. Where the device set tunes the
layout (`memory_format = "auto"` on CUDA), the chosen call is then timed in each memory format
with cudnn.benchmark off and on (`tune_layout`), and the fastest kept for the model.

Under fp16/bf16 autocast each model is also run on a few real test images in both precisions
(`check_precision`): one whose low-precision output overflows where fp32 is finite runs in fp32.
The test forward also measures one image's activations for the GPU memory estimate
(`kernel_src.memory`).

How a model is built and its weight file read depends on its kind: `kernel_src.model_kinds`
(offline: no pretrained weights are downloaded; weights come from the bundle).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .devices import DeviceSet
from .errors import ModelError
from .memory import activation_bytes, estimate_peak, weight_bytes
from .model_kinds import ROLES, get_kind
from .model_kinds import load_state_dict_into as load_state_dict_into  # the build and tests load through it
from .preprocess import Preprocess, load_preprocess, model_input
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


# what an allocation failure says when it does not come as torch's OutOfMemoryError: the caching
# allocator's message, and cuDNN's / cuBLAS's own status codes (they allocate workspace themselves)
OUT_OF_MEMORY_MESSAGES = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, a MemoryError, or a RuntimeError saying "out of memory" or naming a
    cuDNN / cuBLAS allocation failure (`OUT_OF_MEMORY_MESSAGES`)."""
    if isinstance(error, OUT_OF_MEMORY):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in OUT_OF_MEMORY_MESSAGES)


def free_memory(devices: DeviceSet) -> None:
    """Hand cached CUDA blocks back after an out-of-memory error (nothing to do on CPU)."""
    if devices.cuda:
        torch.cuda.empty_cache()


@dataclass
class LoadedModel:
    """A model of the spec with one replica per device, the TTA views it uses now, and the most
    images (views included) one forward call gets (0: the whole stacked batch in one call).

    `replica_for[i]` is the replica that computes device i's share (empty: replica i): a model
    whose test forward failed on one device runs that device's share on another. `autocast` is
    False for a model found to overflow in fp16/bf16 at load (it runs in fp32); `channels_last`
    and `cudnn_benchmark` are its measured layout (`tune_layout`)."""

    spec: ModelSpec
    replicas: tuple[nn.Module, ...]
    views: tuple[str, ...]
    images_per_call: int = 0
    measured_s: dict[int, float] = field(default_factory=dict)  # call size -> best seconds per call
    preprocess: Preprocess | None = None  # the model's translated albumentations pipeline, if it has one
    replica_for: tuple[int, ...] = ()
    autocast: bool = True
    channels_last: bool = False
    cudnn_benchmark: bool = False
    activation_bytes: int = 0  # the activation peak of one image (its largest view size), measured by the test forward
    activation_exact: bool = True  # False: a TorchScript model, only its input and output counted

    def replica_index(self, device: int) -> int:
        return self.replica_for[device] if self.replica_for else device


@contextlib.contextmanager
def _cudnn_benchmark(flag: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = flag
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def call_context(entry: LoadedModel, devices: DeviceSet) -> contextlib.ExitStack:
    """What one of `entry`'s forward calls runs under: autocast (unless the model runs in fp32) and
    its cudnn.benchmark choice (on CUDA, or wherever the layout is tuned)."""
    stack = contextlib.ExitStack()
    stack.enter_context(devices.autocast(entry.autocast))
    if devices.cuda or devices.tune_layout:
        stack.enter_context(_cudnn_benchmark(entry.cudnn_benchmark))
    return stack


PRECISION_CHECK_IMAGES = 2  # real test images each model sees in fp16/bf16 and in fp32 at load


def load_models(
    spec: InferenceSpec,
    bundle_dir: Path,
    devices: DeviceSet,
    profiler: Profiler,
    samples: npt.NDArray[np.uint8] | None = None,
) -> tuple[list[LoadedModel], list[LoadedModel]]:
    """Every classifier and segmenter, one replica per device, each replica checked with a test
    forward under its own device context (a model that fails on some devices only runs on the
    others: profile.json `devices.replica_failures`), its call size measured on every working
    replica (the smallest choice kept), its layout tuned where the device set says so, and, under
    fp16/bf16 autocast, compared with fp32 on `samples` (a few real test images, uint8 NHWC): a
    model whose output overflows there runs in fp32 (`devices.precision_check`). Its memory is
    measured for the run's estimate (`resources.gpu_estimate`, `kernel_src.memory`).

    Raises `ModelError` naming the model and the key at fault before any image is touched.
    Classifiers are not loaded when gating is off (nothing would use them).
    """
    classifiers = spec.classifiers if spec.gating.mode != "off" else ()
    memory: dict[str, dict[str, Any]] = {}
    loaded = (
        load_role(spec, "classifier", classifiers, bundle_dir, devices, profiler, samples, memory),
        load_role(spec, "segmenter", spec.segmenters, bundle_dir, devices, profiler, samples, memory),
    )
    h, w = spec.image_height, spec.image_width
    profiler.memory_estimate = _estimate(spec, devices, memory, probs_bytes=spec.num_classes * h * w * 4)
    return loaded


def load_task_models(
    spec: InferenceSpec,
    bundle_dir: Path,
    devices: DeviceSet,
    profiler: Profiler,
    samples: npt.NDArray[np.uint8] | None = None,
) -> list[LoadedModel]:
    """The predicting models of an image-level task (its table: classifiers or regressors), loaded
    and checked as `load_models` does, each head checked against the task's classes or values."""
    task = spec.task.task
    memory: dict[str, dict[str, Any]] = {}
    loaded = load_role(spec, task.role, getattr(spec, task.table), bundle_dir, devices, profiler, samples, memory)
    profiler.memory_estimate = _estimate(spec, devices, memory, probs_bytes=spec.outputs(task.role) * 4)
    return loaded


def _estimate(
    spec: InferenceSpec, devices: DeviceSet, memory: dict[str, dict[str, Any]], *, probs_bytes: int
) -> dict[str, Any]:
    """The run's GPU memory estimate from each model's measured bytes (`kernel_src.memory`)."""
    return estimate_peak(
        memory,
        replicas=[devices.label(i) for i in range(devices.replicas)],
        batch_share=-(-spec.batch_size // devices.replicas),
        image_bytes=3 * spec.image_height * spec.image_width * 4,
        probs_bytes=probs_bytes,
        half_copies=devices.autocast_dtype is not None,
    )


def load_role(
    spec: InferenceSpec,
    role: str,
    specs: Sequence[ModelSpec],
    bundle_dir: Path,
    devices: DeviceSet,
    profiler: Profiler,
    samples: npt.NDArray[np.uint8] | None = None,
    memory: dict[str, dict[str, Any]] | None = None,
) -> list[LoadedModel]:
    """The models `specs` of `role`, as `load_models` says (replicas tested under their device
    context, call size measured, layout tuned, precision checked); each one's head is checked
    against `spec.outputs(role)` and its memory recorded in `memory` (profile.json `call_sizes`,
    `model_load_s`)."""
    share = -(-spec.batch_size // devices.replicas)
    loaded: list[LoadedModel] = []
    for m in specs:
        begin = time.perf_counter()
        replicas = []
        for i, device in enumerate(devices.devices):
            with devices.context(i):
                model = load_model(m, bundle_dir, spec.outputs(role), device)
                if devices.channels_last:
                    with contextlib.suppress(RuntimeError, TypeError):  # TorchScript may refuse: keep NCHW
                        model = model.to(memory_format=torch.channels_last)
            replicas.append(model)
        plan = load_preprocess(Path(bundle_dir) / m.preprocess, m.name) if m.preprocess else None
        entry = LoadedModel(m, tuple(replicas), m.tta, preprocess=plan, channels_last=devices.channels_last)
        working = _test_replicas(entry, role, spec, devices, profiler)
        largest = share * len(m.tta)
        if spec.images_per_call > 0:
            entry.images_per_call = spec.images_per_call
        else:
            choices = {}
            for r in working:
                choices[r] = measure_call_size(entry, spec, devices, largest, replica=r)
            entry.images_per_call = min(size for size, _ in choices.values())
            entry.measured_s = choices[working[0]][1]
        record: dict[str, Any] = {
            "chosen": entry.images_per_call,
            "measured_s": {str(n): round(s, 6) for n, s in entry.measured_s.items()},
            "reduced_by_oom": [],
        }
        if devices.tune_layout:
            size = min(entry.images_per_call or largest, largest)
            record["layout_s"] = tune_layout(entry, spec, devices, size, replica=working[0])
            record["memory_format"] = "channels_last" if entry.channels_last else "contiguous"
            record["cudnn_benchmark"] = entry.cudnn_benchmark
        profiler.call_sizes[m.name] = record
        if samples is not None and len(samples) and devices.autocast_dtype is not None:
            try:
                check = check_precision(entry, devices, samples, working[0])
            except Exception as e:  # the check is advice: a model that cannot take it keeps the run's precision
                check = {"images": len(samples), "error": f"{type(e).__name__}: {e}", "runs_in": devices.precision}
                free_memory(devices)
            profiler.devices.setdefault("precision_check", {})[m.name] = check
        if memory is not None:
            memory[m.name] = _memory(entry, entry.replicas[working[0]], spec.images_per_call, largest)
        profiler.model_loaded(m.name, time.perf_counter() - begin)
        loaded.append(entry)
    return loaded


def _test_replicas(
    entry: LoadedModel, role: str, spec: InferenceSpec, devices: DeviceSet, profiler: Profiler
) -> list[int]:
    """The replicas whose test forward passed (at least one, else the first one's ModelError);
    failed ones are recorded and their device's share goes to a working replica."""
    working: list[int] = []
    errors: dict[int, ModelError] = {}
    for i in range(devices.replicas):
        try:
            with devices.context(i):
                _test_forward(entry, role, spec, devices, i)
                devices.synchronize()
        except ModelError as e:
            errors[i] = e
        else:
            working.append(i)
    if not working:
        raise errors[0]
    if errors:
        entry.replica_for = tuple(i if i in working else working[i % len(working)] for i in range(devices.replicas))
        failures = profiler.devices.setdefault("replica_failures", {})
        failures[entry.spec.name] = {
            devices.label(i): f"{e}; its share runs on {devices.label(entry.replica_for[i])}" for i, e in errors.items()
        }
    return working


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
    entry: LoadedModel,
    spec: InferenceSpec,
    devices: DeviceSet,
    n: int,
    size: tuple[int, int] | None = None,
    replica: int = 0,
) -> torch.Tensor:
    h, w = size or input_size(entry, spec)
    x = torch.zeros(n, 3, h, w, device=devices.devices[replica])
    return x.contiguous(memory_format=torch.channels_last) if entry.channels_last else x


@torch.inference_mode()
def measure_call_size(
    entry: LoadedModel,
    spec: InferenceSpec,
    devices: DeviceSet,
    largest: int,
    clock: Callable[[], float] = time.perf_counter,
    replica: int = 0,
) -> tuple[int, dict[int, float]]:
    """(the call size fastest per image, {size: best seconds per call}) on `replica` as the module
    docstring says; (1, {}) when the largest call is one image (nothing to choose)."""
    if largest <= 1:
        return 1, {}
    model = entry.replicas[replica]
    measured: dict[int, float] = {}
    begin = clock()
    budget = float("inf")
    for n in call_sizes(largest):
        x = _zeros(entry, spec, devices, n, replica=replica)
        try:
            with devices.context(replica), call_context(entry, devices):
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
def _test_forward(entry: LoadedModel, role: str, spec: InferenceSpec, devices: DeviceSet, replica: int = 0) -> None:
    m = entry.spec
    base = input_size(entry, spec)
    # one forward per input size its views make (a scale view feeds another size)
    for factor, _ in view_groups(m.tta):
        h, w = scaled_size(base, factor)
        x = _zeros(entry, spec, devices, 1, (h, w), replica)
        try:
            with call_context(entry, devices):
                # the test forward also measures the activations of one image (kernel_src.memory)
                peak, exact, out = activation_bytes(entry.replicas[replica], x)
        except Exception as e:
            view = "" if factor == 1.0 else f" (its TTA view 'scale:{factor:g}')"
            where = f" on {devices.label(replica)}" if devices.replicas > 1 else ""
            raise ModelError(
                f"model {m.name!r}: a test forward{where} on one {h}x{w} image{view} failed ({type(e).__name__}: {e}); "
                "check its input_size or preprocess (smp models need multiples of 32), its tta and its kind/arch"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise ModelError(
                f"model {m.name!r}: returns {type(out).__name__}, not a tensor; export a single-output model"
            )
        check_output(m.name, role, out, 1, spec.outputs(role))
        entry.activation_bytes = max(entry.activation_bytes, peak)
        entry.activation_exact = entry.activation_exact and exact


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


LAYOUTS = ((True, False), (True, True), (False, False), (False, True))  # (channels_last, cudnn.benchmark)


@torch.inference_mode()
def tune_layout(
    entry: LoadedModel,
    spec: InferenceSpec,
    devices: DeviceSet,
    size: int,
    clock: Callable[[], float] = time.perf_counter,
    replica: int = 0,
) -> dict[str, float]:
    """Time a call of `size` images on `replica` (a working one) in each memory format with cudnn.benchmark
    off and on (best of CALL_SIZE_TIMINGS after a warm-up call, which is where cudnn autotunes);
    the fastest is kept on every replica (`entry.channels_last`, `entry.cudnn_benchmark`). Returns
    {"channels_last+benchmark": seconds, ...} for profile.json `call_sizes[name].layout_s`; a
    layout a model refuses (TorchScript may) or that runs out of memory is left out."""
    timed: dict[tuple[bool, bool], float] = {}
    for channels_last, benchmark in LAYOUTS:
        _set_memory_format(entry, channels_last)
        entry.cudnn_benchmark = benchmark
        x = _zeros(entry, spec, devices, max(size, 1), replica=replica)
        try:
            with devices.context(replica), call_context(entry, devices):
                entry.replicas[replica](x)  # warm-up: the autotuning call
                timings = []
                for _ in range(CALL_SIZE_TIMINGS):
                    devices.synchronize()
                    start = clock()
                    entry.replicas[replica](x)
                    devices.synchronize()
                    timings.append(clock() - start)
        except Exception:  # a refused layout is not a failure, only not a choice
            del x
            free_memory(devices)
            continue
        timed[(channels_last, benchmark)] = min(timings)
    best = min(timed, key=lambda k: (timed[k], LAYOUTS.index(k))) if timed else (entry.channels_last, False)
    _set_memory_format(entry, best[0])
    entry.cudnn_benchmark = best[1]
    return {
        f"{'channels_last' if cl else 'contiguous'}{'+benchmark' if bm else ''}": round(s, 6)
        for (cl, bm), s in timed.items()
    }


def _set_memory_format(entry: LoadedModel, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with contextlib.suppress(RuntimeError, TypeError):
        entry.replicas = tuple(r.to(memory_format=fmt) for r in entry.replicas)
    entry.channels_last = channels_last


@torch.inference_mode()
def check_precision(
    entry: LoadedModel, devices: DeviceSet, samples: npt.NDArray[np.uint8], replica: int = 0
) -> dict[str, Any]:
    """The model's output on `samples` (real test images) under the run's autocast against fp32 on
    `replica`: values non-finite in the low precision where fp32 is finite are an overflow, and the
    model then runs in fp32 (`entry.autocast` False). Returns profile.json's record."""
    device = devices.devices[replica]
    x = torch.from_numpy(np.ascontiguousarray(samples)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    x = model_input(x, entry.spec, entry.preprocess)
    if entry.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model = entry.replicas[replica]
    with devices.context(replica):
        reference = model(x).float()
        with devices.autocast():
            low = model(x).float()
    finite = torch.isfinite(reference)
    overflow = int((~torch.isfinite(low) & finite).sum())
    both = finite & torch.isfinite(low)
    diff = (torch.sigmoid(low[both]) - torch.sigmoid(reference[both])).abs()
    if overflow:
        entry.autocast = False
    return {
        "images": len(samples),
        f"nonfinite_in_{devices.precision}": overflow,
        "max_prob_diff": round(float(diff.max()) if diff.numel() else 0.0, 6),
        "runs_in": "fp32" if overflow else devices.precision,
    }


def _memory(entry: LoadedModel, replica: nn.Module, fixed: int, largest: int) -> dict[str, Any]:
    """One model's line of the memory estimate: weights, activations of one image (measured by the
    test forward), and the most images one call may get: a fixed `images_per_call` (at most the
    largest call), else the largest call (a call size measured here says nothing of the GPU's)."""
    per_call = min(fixed, largest) if fixed > 0 else largest
    return {
        "weights_bytes": weight_bytes(replica),
        "activation_bytes_per_image": entry.activation_bytes,
        "images_per_call": per_call,
        "exact": entry.activation_exact,
    }
