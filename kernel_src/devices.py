"""Where and how the models run: CPU, one GPU, or every GPU present (Kaggle's T4 x2), as one `DeviceSet`.

A batch is split into contiguous chunks, one per device; each device holds its own replica of
every model. CUDA work is queued on every device before anything waits for a result, so two
GPUs compute at the same time.

Every setting that differs on CUDA is a field a caller (a test) can switch on for CPU:
`channels_last` (models and inputs in torch.channels_last), `autocast_dtype` (None = fp32;
float16 / bfloat16 = `torch.autocast` on the devices' type; CPU autocast runs both), the number
of replicas (`devices`, several CPU devices allowed), and `pin_memory` (pinned host buffers and
non_blocking copies; where pinning is impossible, e.g. no CUDA, the engine falls back to plain
copies and notes it once in profile.json). `resolve_devices` makes the per-device "auto" choice:
CUDA = channels_last + fp16 autocast + pinned memory + every GPU; CPU = contiguous + fp32 + no
pinning + one device (the fastest on CPU).
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
    def kind(self) -> str:
        """ "cuda" or "cpu" (the type of every device of the set)."""
        return self.devices[0].type

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

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
            "kind": self.kind,
            "replicas": self.replicas,
            "memory_format": self.memory_format,
            "precision": self.precision,
            "pin_memory": self.pin_memory,
        }

    def split(self, n: int) -> list[tuple[int, int, int]]:
        """(device index, start, stop) chunks covering range(n), as even as possible, none empty."""
        if n <= 0:
            return []
        per = -(-n // len(self.devices))
        return [(i, start, min(start + per, n)) for i, start in enumerate(range(0, n, per))]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """`torch.autocast` on the devices' type with `autocast_dtype`; nothing for fp32."""
        if self.autocast_dtype is not None:
            return torch.autocast(device_type=self.kind, dtype=self.autocast_dtype)
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


def resolve_devices(
    device: str,
    *,
    memory_format: str = "auto",
    precision: str = "auto",
    replicas: int | None = None,
    gpus: int | None = None,
) -> DeviceSet:
    """The DeviceSet for the spec's `device` ("auto": every GPU present, else CPU; "cuda"; "cpu"),
    `memory_format` and `precision` ("auto": the per-device choice in the module docstring) and
    `replicas` (None: every GPU on CUDA, one on CPU; N: N devices; on CUDA at most the GPUs
    present). `gpus` is the number of visible GPUs (None: asked of torch; tests pass a count)."""
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
    return DeviceSet(
        devices,
        channels_last=memory_format == "channels_last" or (memory_format == "auto" and cuda),
        autocast_dtype=AUTOCAST_DTYPES[("fp16" if cuda else "fp32") if precision == "auto" else precision],
        pin_memory=cuda,
    )
