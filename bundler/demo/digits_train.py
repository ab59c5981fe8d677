"""The classification demo's training loop: a timm classifier on Digit-Recognizer-shaped images.

In the style of `bundler.demo.train` (AdamW, a one-cycle schedule, the same `TrainSettings`,
`TrainReport` and training checkpoint), with a softmax head trained by cross-entropy. Inputs are
prepared as the kernel prepares a grey image: the grey channel repeated to RGB, `x / 255`,
bilinear resize to the model's `input_size` (`align_corners=False`), then `(x - mean) / std`.
Augmentation is a random shift of up to 2 pixels (no flips: a flipped digit is another digit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from bundler.demo.train import StepCallback, TrainReport, TrainSettings, finished, optimizer_step
from bundler.errors import DemoError

MAX_SHIFT = 2


def prepare(images: npt.NDArray[np.uint8], size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 grey images [N, H, W] as float RGB [N, 3, h, w] in [0, 1] at `size` (default: as is)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.contiguous()


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(list(mean), dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The whole batch moved by one random shift of up to MAX_SHIFT pixels, zeros filling in."""
    dy, dx = (int(v) for v in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=gen))
    if dy == 0 and dx == 0:
        return x
    padded = F.pad(x, (MAX_SHIFT, MAX_SHIFT, MAX_SHIFT, MAX_SHIFT))
    h, w = x.shape[-2:]
    return padded[..., MAX_SHIFT + dy : MAX_SHIFT + dy + h, MAX_SHIFT + dx : MAX_SHIFT + dx + w]


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    on_step: StepCallback | None = None,
) -> tuple[TrainReport, torch.optim.Optimizer]:
    """Train `model` (logits [N, C]) in place on prepared `images` and class indices `labels`."""
    n = int(images.shape[0])
    if n < 2 or n != int(labels.shape[0]):
        raise DemoError(f"{n} training images for {int(labels.shape[0])} labels; the demo needs at least 2 of each")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    total = math.ceil(n / settings.batch_size) * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=total, pct_start=0.2)
    model.train()
    began = time.perf_counter()
    epoch_losses: list[float] = []
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        losses = []
        for start in range(0, n, settings.batch_size):
            index = order[start : start + settings.batch_size]
            if len(index) < 2:  # BatchNorm needs two samples: fold a lone tail into the epoch
                index = torch.cat([index, order[:1]])
            x = _shift(images[index], gen)
            loss = F.cross_entropy(model(_normalize(x, mean, std)), labels[index])
            step += 1
            value = optimizer_step(optimizer, schedule, loss, step)
            losses.append(value)
            if on_step is not None:
                on_step(step, total, value)
        epoch_losses.append(sum(losses) / len(losses))
    model.eval()
    return finished(settings, step, began, epoch_losses), optimizer


@torch.inference_mode()
def predict_proba(
    model: nn.Module, images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], batch_size: int = 256
) -> torch.Tensor:
    """Softmax probabilities [N, C] of `model` for prepared `images`."""
    model.eval()
    outs = [
        torch.softmax(model(_normalize(images[i : i + batch_size], mean, std)).float(), dim=1)
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(outs)
