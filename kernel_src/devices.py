"""Where the models run: CPU, one GPU, or every GPU present (Kaggle's T4 x2), as one `DeviceSet`.

A batch is split into contiguous chunks, one per device; each device holds its own replica of
every model. CUDA work is queued on every device before anything waits for a result, so two
GPUs compute at the same time. On CUDA, fp16 autocast and channels_last are used; on CPU,
neither. A `DeviceSet` of several CPU devices is allowed: it exercises the same splitting logic
in tests on machines without GPUs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import SpecError
from .spec import DEVICES


@dataclass(frozen=True)
class DeviceSet:
    devices: tuple[torch.device, ...]
    fp16: bool = False  # autocast to float16 (CUDA only; ignored on CPU)

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError("a DeviceSet needs at least one device")

    @property
    def kind(self) -> str:
        """ "cuda" or "cpu" (the type of the first device; a set never mixes them in practice)."""
        return self.devices[0].type

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.cuda

    def describe(self) -> str:
        if self.cuda:
            names = sorted({torch.cuda.get_device_name(d) for d in self.devices})
            return f"cuda x{len(self.devices)} ({', '.join(names)})"
        return "cpu"

    def split(self, n: int) -> list[tuple[int, int, int]]:
        """(device index, start, stop) chunks covering range(n), as even as possible, none empty."""
        if n <= 0:
            return []
        per = -(-n // len(self.devices))
        return [(i, start, min(start + per, n)) for i, start in enumerate(range(0, n, per))]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """fp16 autocast on CUDA when enabled; otherwise nothing."""
        if self.cuda and self.fp16:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for every queued CUDA kernel on every device (no-op on CPU)."""
        if self.cuda:
            for d in self.devices:
                torch.cuda.synchronize(d)


def resolve_devices(setting: str, fp16: bool) -> DeviceSet:
    """`setting` is the spec's `device`: "auto" (every GPU present, else CPU), "cuda", or "cpu"."""
    if setting not in DEVICES:
        raise SpecError("device", f"{setting!r} must be one of {list(DEVICES)}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == "cuda" and gpus == 0:
        raise SpecError(
            "device",
            "'cuda' was asked for but no GPU is visible; turn the notebook's accelerator on, or set device = 'auto'",
        )
    if setting == "cpu" or gpus == 0:
        return DeviceSet((torch.device("cpu"),), fp16=False)
    return DeviceSet(tuple(torch.device("cuda", i) for i in range(gpus)), fp16=fp16)
