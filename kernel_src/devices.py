"""Where and how the models run: CPU, one GPU, or every GPU present (Kaggle's T4 x2), as one `DeviceSet`.

A batch is split into contiguous chunks, one per device; each device holds its own replica of
every model. CUDA work is queued on every device before anything waits for a result, so two
GPUs compute at the same time.

Every setting that differs on CUDA is a field a caller (a test) can switch on for CPU:
`channels_last` (models and inputs in torch.channels_last), `autocast_dtype` (None = fp32;
float16 / bfloat16 = `torch.autocast` on the devices' type; CPU autocast runs both), the number
of replicas (`devices`, several CPU devices allowed), and `pin_memory` (pinned host buffers and
non_blocking copies; where pinning is impossible, e.g. no CUDA, the engine falls back to plain
copies and notes it once in profile.json), and `tune_layout` (each model's memory format and
cudnn.benchmark chosen by timing at load, `kernel_src.models.tune_layout`). `resolve_devices`
makes the per-device "auto" choice: CUDA = fp16 autocast + pinned memory + every GPU, the memory
format measured per model at load (starting from channels_last for fp16/bf16, contiguous for
fp32, where channels_last rarely helps on a T4); CPU = contiguous + fp32 + no pinning + one device
(the fastest on CPU). Each device's work runs under its own device context (`context(i)`: the
current CUDA device set to replica i's, so kernels and allocations a model makes without naming
a device land on its own GPU).

bf16 needs compute capability 8.0 (Ampere) or later: below it (a T4 is 7.5) there are no bf16
tensor-core kernels, and torch emulates bf16 convolutions slowly or refuses them at load. A
`precision = "bf16"` asked for on such a GPU runs in fp16 instead, and profile.json's
`devices.precision_fallback` says so (`resolve_devices(..., capability=...)`; tests pass the
capability, the notebook asks torch). Falling back rather than refusing: the notebook is scored on
whatever GPU Kaggle gives, where a refusal would cost the whole submission, and fp16 is what
`auto` picks there anyway.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from .errors import SpecError
from .spec import DEVICES, MEMORY_FORMATS, PRECISIONS

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceSet:
    devices: tuple[torch.device, ...]  # one model replica per device; the batch is split across them
    channels_last: bool = False  # models and inputs in torch.channels_last
    autocast_dtype: torch.dtype | None = None  # None = fp32; float16 / bfloat16 = autocast on the devices' type
    pin_memory: bool = False  # pinned host buffers + non_blocking copies (plain copies where pinning fails)
    precision_fallback: str | None = None  # why the precision asked for was replaced (profile.json)
    tune_layout: bool = False  # memory format and cudnn.benchmark per model chosen by timing at load

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError("a DeviceSet needs at least one device")
        if len({d.type for d in self.devices}) > 1:
            raise ValueError(f"a DeviceSet cannot mix device types: {[str(d) for d in self.devices]}")
        if self.autocast_dtype not in AUTOCAST_DTYPES.values():
            raise ValueError(
                f"autocast_dtype {self.autocast_dtype} is not supported; use None (fp32), float16 or bfloat16"
            )

    @property
    def device_type(self) -> str:
        """ "cuda" or "cpu" (the type of every device of the set; profile.json `devices.kind`)."""
        return self.devices[0].type

    @property
    def cuda(self) -> bool:
        return self.device_type == "cuda"

    @property
    def replicas(self) -> int:
        return len(self.devices)

    @property
    def precision(self) -> str:
        """ "fp32", "fp16" or "bf16" (the spec's names)."""
        return next(name for name, dtype in AUTOCAST_DTYPES.items() if dtype == self.autocast_dtype)

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def describe(self) -> str:
        if self.cuda:
            names = sorted({torch.cuda.get_device_name(d) for d in self.devices})
            return f"cuda x{len(self.devices)} ({', '.join(names)})"
        return "cpu" if self.replicas == 1 else f"cpu x{self.replicas}"

    def to_dict(self) -> dict[str, Any]:
        """profile.json's "devices" record."""
        return {
            "kind": self.device_type,
            "replicas": self.replicas,
            "memory_format": self.memory_format,
            "precision": self.precision,
            "pin_memory": self.pin_memory,
            "tune_layout": self.tune_layout,
        } | ({"precision_fallback": self.precision_fallback} if self.precision_fallback else {})

    def split(self, n: int) -> list[tuple[int, int, int]]:
        """(device index, start, stop) chunks covering range(n), as even as possible, none empty."""
        if n <= 0:
            return []
        per = -(-n // len(self.devices))
        return [(i, start, min(start + per, n)) for i, start in enumerate(range(0, n, per))]

    def label(self, index: int) -> str:
        """Replica `index`'s name in profile.json: "cuda:1", "cpu:0"."""
        device = self.devices[index]
        return f"{self.device_type}:{device.index if self.cuda and device.index is not None else index}"

    def context(self, index: int) -> contextlib.AbstractContextManager[object]:
        """Replica `index`'s device as the current CUDA device (nothing on CPU)."""
        if self.cuda:
            return torch.cuda.device(self.devices[index])
        return contextlib.nullcontext()

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager[object]:
        """`torch.autocast` on the devices' type with `autocast_dtype`; nothing for fp32, or when not
        `enabled` (a model found to overflow in fp16 at load runs in fp32)."""
        if self.autocast_dtype is not None and enabled:
            return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def event(self) -> StageEvent:
        """A timing event over every device of the set (CUDA events; the CPU stand-in on CPU)."""
        if self.cuda:
            return StageEvent(tuple(torch.device(d) for d in dict.fromkeys(self.devices)))
        return StageEvent(())

    def synchronize(self) -> None:
        """Wait for every queued CUDA kernel on every device (no-op on CPU)."""
        if self.cuda:
            for d in self.devices:
                torch.cuda.synchronize(d)


class StageEvent:
    """A point in time on every CUDA device given (`torch.cuda.Event` per device, recorded on its
    current stream: nothing waits), or, with no device, `time.perf_counter` at `record()`: the CPU
    stand-in that runs the same code path. `elapsed_s(end)` is the longest time between this event
    and `end` on any device (valid once `end.synchronize()` returned)."""

    def __init__(self, devices: tuple[torch.device, ...]) -> None:
        self.devices = devices
        self.cuda_events: list[Any] = []
        self.at = 0.0

    def record(self) -> None:
        if not self.devices:
            self.at = time.perf_counter()
            return
        for d in self.devices:
            with torch.cuda.device(d):
                event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                event.record()
            self.cuda_events.append(event)

    def synchronize(self) -> None:
        for event in self.cuda_events:
            event.synchronize()

    def elapsed_s(self, end: StageEvent) -> float:
        if not self.devices:
            return max(end.at - self.at, 0.0)
        return float(max(a.elapsed_time(b) for a, b in zip(self.cuda_events, end.cuda_events, strict=True))) / 1000.0


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


BF16_CAPABILITY = (8, 0)  # the first compute capability with native bf16 (Ampere)


def lowest_capability(gpus: int) -> tuple[int, int] | None:
    """The lowest CUDA compute capability among the first `gpus` GPUs; None when torch cannot say."""
    try:
        if not torch.cuda.is_available():
            return None
        return min(tuple(torch.cuda.get_device_capability(i)) for i in range(gpus))  # type: ignore[return-value]
    except Exception:  # a broken CUDA state: leave the choice as asked
        return None


def resolve_devices(
    device: str,
    *,
    memory_format: str = "auto",
    precision: str = "auto",
    replicas: int | None = None,
    gpus: int | None = None,
    capability: tuple[int, int] | None = None,
) -> DeviceSet:
    """The DeviceSet for the spec's `device` ("auto": every GPU present, else CPU; "cuda"; "cpu"),
    `memory_format` and `precision` ("auto": the per-device choice in the module docstring) and
    `replicas` (None: every GPU on CUDA, one on CPU; N: N devices; on CUDA at most the GPUs
    present). `gpus` is the number of visible GPUs (None: asked of torch; tests pass a count);
    `capability` the lowest compute capability among them (None: asked of torch; unknown keeps
    the precision asked for): bf16 below 8.0 falls back to fp16 (module docstring)."""
    if device not in DEVICES:
        raise SpecError("device", f"{device!r} must be one of {list(DEVICES)}")
    if memory_format not in MEMORY_FORMATS:
        raise SpecError("memory_format", f"{memory_format!r} must be one of {list(MEMORY_FORMATS)}")
    if precision not in PRECISIONS:
        raise SpecError("precision", f"{precision!r} must be one of {list(PRECISIONS)}")
    if replicas is not None and replicas < 1:
        raise SpecError("replicas", f"must be at least 1 (or None for the per-device default), got {replicas}")
    gpus = visible_gpus() if gpus is None else gpus
    if device == "cuda" and gpus == 0:
        raise SpecError(
            "device",
            "'cuda' was asked for but no GPU is visible; turn the notebook's accelerator on, or set device = 'auto'",
        )
    cuda = device != "cpu" and gpus > 0
    if cuda:
        n = gpus if replicas is None else replicas
        if n > gpus:
            raise SpecError("replicas", f"{n} CUDA replicas asked for but only {gpus} GPU(s) are visible")
        devices = tuple(torch.device("cuda", i) for i in range(n))
    else:
        devices = tuple(torch.device("cpu") for _ in range(replicas or 1))
    chosen = ("fp16" if cuda else "fp32") if precision == "auto" else precision
    fallback = None
    if cuda and chosen == "bf16":
        capability = lowest_capability(len(devices)) if capability is None else capability
        if capability is not None and tuple(capability) < BF16_CAPABILITY:
            chosen = "fp16"
            fallback = (
                f"bf16 asked for, fp16 used: the GPU's compute capability {capability[0]}.{capability[1]} "
                f"is below {BF16_CAPABILITY[0]}.{BF16_CAPABILITY[1]} (no native bf16)"
            )
    return DeviceSet(
        devices,
        channels_last=memory_format == "channels_last" or (memory_format == "auto" and cuda and chosen != "fp32"),
        autocast_dtype=AUTOCAST_DTYPES[chosen],
        pin_memory=cuda,
        precision_fallback=fallback,
        tune_layout=memory_format == "auto" and cuda,
    )
