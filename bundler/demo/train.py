"""Small CPU training loops for a timm classifier and smp segmenters, writing training checkpoints.

What the demo trains its models with, and a template for a user's own loop. Inputs are prepared
exactly as the kernel prepares them (`kernel_src.predict`): RGB, `x / 255`, bilinear resize to the
model's `input_size` (`align_corners=False`), then `(x - mean) / std`. Masks are resized with area
averaging, so a target pixel holds the fraction of defect it covers.

A model with `preprocess` in bundle.toml is trained instead on what its albumentations validation
pipeline makes of each image and mask (`load_split_albumentations`); when that file is missing the
demo writes `demo_pipeline(...)` there first (longest side scaled, padded to multiples of 32,
ImageNet normalisation), so the build has a real `A.save` file beside the checkpoint to translate.

A checkpoint is what a user's training produces, not what the bundle ships:
`{"model": state_dict, "optimizer": optimizer.state_dict(), "epoch": int, "metrics": {...}}`.
`bundler build` strips everything but the model's tensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from bundler.errors import DemoError
from kernel_src.rle import decode

Task = Literal["classifier", "segmenter"]
Size = tuple[int, int]
StepCallback = Callable[[int, int, float], None]  # (step done, total steps, loss)


@dataclass(frozen=True)
class TrainSettings:
    """How one model is trained. Equal settings on equal data give the same weights (CPU, same threads)."""

    epochs: int = 4
    batch_size: int = 8
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise DemoError(f"training settings {self}: epochs and batch_size must be at least 1")
        if not self.lr > 0:
            raise DemoError(f"training settings {self}: lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SplitData:
    """One split at one input size, ready for training or evaluation."""

    images: torch.Tensor  # [N, 3, h, w] float32 in [0, 1], RGB
    masks: torch.Tensor  # [N, C, h, w] float32 defect coverage in [0, 1]
    present: torch.Tensor  # [N, C] float32: 1 where the image has the class

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    steps: int
    seconds: float
    first_loss: float  # mean loss of the first epoch
    last_loss: float  # mean loss of the last epoch

    def metrics(self) -> dict[str, float]:
        return {"first_loss": self.first_loss, "last_loss": self.last_loss, "seconds": round(self.seconds, 2)}


def read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """An image as uint8 RGB [H, W, 3], as the kernel's loader gives it."""
    raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if raw is None:
        raise DemoError(f"{path}: OpenCV cannot read this image; delete it and run again to regenerate it")
    rgb = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return np.asarray(rgb, dtype=np.uint8)


def load_split(
    images_dir: Path,
    labels: dict[str, list[str]],
    image_ids: Sequence[str],
    sizes: Sequence[Size],
    *,
    num_classes: int,
) -> dict[Size, SplitData]:
    """`image_ids` from `images_dir` with their masks (`labels`: id -> one RLE per class, "" for
    none; missing ids are defect-free), resized to each of `sizes`. Each image is decoded once."""
    if not image_ids:
        raise DemoError(f"{images_dir}: no images selected for training; generate more demo data")
    out: dict[Size, list[tuple[torch.Tensor, torch.Tensor]]] = {s: [] for s in sizes}
    present = torch.zeros(len(image_ids), num_classes)
    for i, image_id in enumerate(image_ids):
        rgb = read_rgb(images_dir / image_id)
        h, w = rgb.shape[:2]
        rles = labels.get(image_id, [""] * num_classes)
        full = torch.from_numpy(np.stack([decode(r, (h, w), "F") for r in rles]).astype(np.float32))[None]
        present[i] = (full[0].flatten(1).amax(dim=1) > 0).float()
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
        for size in sizes:
            x = image if (h, w) == size else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            m = full if (h, w) == size else F.interpolate(full, size=size, mode="area")
            out[size].append((x[0], m[0]))
    return {
        size: SplitData(
            images=torch.stack([x for x, _ in pairs]), masks=torch.stack([m for _, m in pairs]), present=present
        )
        for size, pairs in out.items()
    }


def demo_pipeline(image_size: Size) -> Any:
    """The demo's albumentations validation pipeline for images of `image_size`: the longest side
    to a fifth of the width (a multiple of 32, at least 64), padded to multiples of 32 (what smp
    needs), ImageNet normalisation, a CHW tensor."""
    import albumentations as A  # type: ignore[import-untyped]
    from albumentations.pytorch import ToTensorV2  # type: ignore[import-untyped]

    longest = max(64, round(max(image_size) / 5 / 32) * 32)
    return A.Compose(
        [
            A.LongestMaxSize(max_size=longest),
            A.PadIfNeeded(None, None, pad_height_divisor=32, pad_width_divisor=32, border_mode=cv2.BORDER_CONSTANT),
            A.Normalize(),
            ToTensorV2(),
        ]
    )


def load_pipeline(path: Path, image_size: Size) -> Any:
    """The albumentations pipeline saved at `path`, written first (`demo_pipeline`) when missing."""
    import albumentations as A

    from bundler.dataset.preprocess import data_format, load_pipeline_file

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        A.save(demo_pipeline(image_size), str(path), data_format=data_format(path))
    try:
        return load_pipeline_file(path)
    except Exception as e:  # albumentations raises many kinds for a file it cannot use
        raise DemoError(
            f"{path}: albumentations cannot load it ({type(e).__name__}); delete it to get the demo's"
        ) from None


def load_split_albumentations(
    images_dir: Path, labels: dict[str, list[str]], image_ids: Sequence[str], transform: Any, *, num_classes: int
) -> SplitData:
    """`image_ids` with their masks as `transform` (an albumentations validation pipeline) makes them:
    the images are the model's input as is (already normalised), the masks follow its geometry."""
    if not image_ids:
        raise DemoError(f"{images_dir}: no images selected for training; generate more demo data")
    images, masks = [], []
    present = torch.zeros(len(image_ids), num_classes)
    for i, image_id in enumerate(image_ids):
        rgb = read_rgb(images_dir / image_id)
        h, w = rgb.shape[:2]
        rles = labels.get(image_id, [""] * num_classes)
        full = np.stack([decode(r, (h, w), "F") for r in rles], axis=-1).astype(np.uint8)  # [H, W, C]
        present[i] = torch.from_numpy(full.reshape(-1, num_classes).max(axis=0) > 0).float()
        out = transform(image=rgb, mask=full)
        image, mask = out["image"], out["mask"]
        image = image.float() if isinstance(image, torch.Tensor) else torch.from_numpy(image.transpose(2, 0, 1))
        mask = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
        images.append(image.float())
        masks.append(mask.permute(2, 0, 1).float())  # albumentations keeps masks HWC
    return SplitData(images=torch.stack(images), masks=torch.stack(masks), present=present)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(list(mean), dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _flip(x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random per-sample horizontal and vertical flips (the same for an image and its masks)."""
    for dim in (-1, -2):
        pick = torch.rand(x.shape[0], generator=gen) < 0.5
        if pick.any():
            x = x.clone()
            x[pick] = x[pick].flip(dim)
            if y is not None:
                y = y.clone()
                y[pick] = y[pick].flip(dim)
    return x, y


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice per class over the batch: BCE learns the background, Dice the small defects."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (total + 1.0)
    return bce + (1.0 - dice).mean()


def train_model(
    model: nn.Module,
    task: Task,
    data: SplitData,
    settings: TrainSettings,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    on_step: StepCallback | None = None,
) -> tuple[TrainReport, torch.optim.Optimizer]:
    """Train `model` in place with AdamW and a one-cycle schedule; returns the report and optimizer."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(data)
    per_epoch = math.ceil(n / settings.batch_size)
    total = per_epoch * settings.epochs
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
            if len(index) < 2 and n >= 2:  # BatchNorm needs two samples: fold a lone tail into the epoch
                index = torch.cat([index, order[:1]])
            x, y = _flip(data.images[index], data.masks[index] if task == "segmenter" else None, gen)
            out = model(_normalize(x, mean, std))
            if task == "segmenter":
                assert y is not None
                loss = segmentation_loss(out, y)
            else:
                loss = F.binary_cross_entropy_with_logits(out, data.present[index])
            step += 1
            value = optimizer_step(optimizer, schedule, loss, step)
            losses.append(value)
            if on_step is not None:
                on_step(step, total, value)
        epoch_losses.append(sum(losses) / len(losses))
    model.eval()
    return finished(settings, step, began, epoch_losses), optimizer


@torch.inference_mode()
def predict(
    model: nn.Module, images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], batch_size: int = 8
) -> torch.Tensor:
    """Sigmoid probabilities of `model` for prepared `images`: [N, C] or [N, C, h, w]."""
    model.eval()
    outs = [
        torch.sigmoid(model(_normalize(images[i : i + batch_size], mean, std)).float())
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(outs)


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int, metrics: dict[str, float]
) -> None:
    """Write a training checkpoint the way a user's loop would (atomically: no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "metrics": dict(metrics),
    }
    torch.save(checkpoint, tmp)
    tmp.replace(path)


def optimizer_step(optimizer: torch.optim.Optimizer, schedule: Any, loss: torch.Tensor, step: int) -> float:
    """One optimisation step on `loss` (the `step`-th); its value, or a DemoError when it is not finite."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    schedule.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DemoError(f"training diverged (loss {value}) at step {step}; lower lr in the demo settings")
    return value


def finished(settings: TrainSettings, steps: int, began: float, epoch_losses: Sequence[float]) -> TrainReport:
    """The report of a training loop that ran `steps` steps since `began`."""
    return TrainReport(
        epochs=settings.epochs,
        steps=steps,
        seconds=time.perf_counter() - began,
        first_loss=epoch_losses[0],
        last_loss=epoch_losses[-1],
    )
