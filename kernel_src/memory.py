"""GPU memory before the run: each model's weight bytes and activation bytes per image, measured at
load (on CPU too), and the per-device peak they add up to for the run's call sizes.

`activation_bytes(model, x)` runs one forward of `x` (one image) with a forward hook on every
module that keeps a weak reference to each output: after each module it sums the bytes of the
outputs still alive (a tensor the model let go of is gone under inference mode), and the largest
sum is the activation peak of that image. It counts what the modules return, not a kernel's
scratch space (cuDNN workspaces) nor the caching allocator's rounding, so the estimate is a floor
of what CUDA reserves; TorchScript modules take no hooks, and for them only the input and output
are counted (`exact` False).

`estimate_peak` adds, per device: every model's weights (each device holds a replica of every
model; under autocast also the half-precision copies autocast caches), the largest model's
activations times the most images one of its calls gets (models run one after another), and the
batch's own tensors (the uploaded share and the accumulated probabilities). profile.json
`resources.gpu_estimate` keeps the figures; the dry-run's verdict compares the estimate with
`[machine] gpu_memory_gb` where no GPU ran (the estimate is made at the run's own precision, so
an fp32 CPU run overstates an fp16 GPU's activations about twice).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> int:
    return int(t.numel()) * int(t.element_size())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (one replica)."""
    return sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())


def _outputs(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    return []


def activation_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, bool, Any]:
    """(the activation peak in bytes of one forward of `x`, exact, the output): see the module
    docstring. The caller sets the autocast and inference mode the run uses."""
    alive: list[weakref.ref[torch.Tensor]] = []
    peak = [tensor_bytes(x)]

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        alive.extend(weakref.ref(t) for t in _outputs(output))
        live = {id(t): t for ref in alive if (t := ref()) is not None}
        total = tensor_bytes(x) + sum(tensor_bytes(t) for t in live.values())
        peak[0] = max(peak[0], total)

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_hook(hook))
    except (RuntimeError, AttributeError, TypeError):  # a ScriptModule takes no hooks
        for h in handles:
            h.remove()
        out = model(x)
        return tensor_bytes(x) + sum(tensor_bytes(t) for t in _outputs(out)), False, out
    try:
        out = model(x)
        peak[0] = max(peak[0], tensor_bytes(x) + sum(tensor_bytes(t) for t in _outputs(out)))
    finally:
        for h in handles:
            h.remove()
    return peak[0], True, out


def estimate_peak(
    models: dict[str, dict[str, Any]],
    *,
    replicas: list[str],
    batch_share: int,
    image_bytes: int,
    probs_bytes: int,
    half_copies: bool,
) -> dict[str, Any]:
    """profile.json `resources.gpu_estimate`: `models` is {name: {"weights_bytes", "activation_bytes_per_image",
    "images_per_call"}}; `replicas` the devices' labels; `batch_share` the most images one device gets
    per batch; `image_bytes` / `probs_bytes` one image's uploaded float tensor and probabilities;
    `half_copies`: autocast keeps a half-precision copy of the weights it casts."""
    weights = sum(int(m["weights_bytes"]) for m in models.values())
    if half_copies:
        weights += weights // 2
    activations = max(
        (int(m["activation_bytes_per_image"]) * max(int(m["images_per_call"]), 1) for m in models.values()),
        default=0,
    )
    batch = batch_share * (image_bytes + probs_bytes)
    peak = weights + activations + batch
    return {
        "models": {name: dict(m) for name, m in models.items()},
        "weights_bytes": weights,
        "activation_bytes": activations,
        "batch_bytes": batch,
        "per_device_peak_bytes": dict.fromkeys(replicas, peak),
        "exact": all(bool(m.get("exact", True)) for m in models.values()),
    }
