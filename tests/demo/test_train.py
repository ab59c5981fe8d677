from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bundler.config import ModelEntry
from bundler.dataset.weights import read_checkpoint
from bundler.demo.synthetic import make_dataset
from bundler.demo.train import (
    SplitData,
    TrainSettings,
    load_split,
    predict,
    save_checkpoint,
    segmentation_loss,
    train_model,
)
from bundler.errors import DemoError
from kernel_src.models import build_model, load_state_dict_into
from kernel_src.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from kernel_src.submission import read_masks

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def squares(n: int = 16, size: int = 32, seed: int = 0) -> SplitData:
    """A trivially learnable set: class 0 is a bright square, class 1 a dark one, on grey."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.full((n, 3, size, size), 0.5)
    masks = torch.zeros(n, 2, size, size)
    for i in range(n):
        for c, value in ((0, 1.0), (1, 0.0)):
            if torch.rand(1, generator=gen) < 0.5:
                y, x = (int(v) for v in torch.randint(0, size - 10, (2,), generator=gen))
                images[i, :, y : y + 10, x : x + 10] = value
                masks[i, c, y : y + 10, x : x + 10] = 1.0
    return SplitData(images=images, masks=masks, present=masks.flatten(2).amax(dim=2))


class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class TinyCls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x))
        pooled = torch.cat([f.amax(dim=(2, 3)), -(-f).amax(dim=(2, 3))], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out


def test_segmenter_learns_squares_and_loss_decreases() -> None:
    data = squares()
    model = TinySeg()
    steps: list[tuple[int, int]] = []
    report, optimizer = train_model(
        model,
        "segmenter",
        data,
        TrainSettings(epochs=30, batch_size=8, lr=0.03),
        mean=MEAN,
        std=STD,
        on_step=lambda done, total, _loss: steps.append((done, total)),
    )
    assert report.last_loss < 0.5 * report.first_loss
    assert steps[-1] == (60, 60) and report.steps == 60
    probs = predict(model, data.images, mean=MEAN, std=STD)
    pred = probs > 0.5
    truth = data.masks > 0.5
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert float(dice) > 0.8
    assert optimizer.state_dict()["state"]  # the optimizer really stepped


def test_classifier_loss_decreases() -> None:
    data = squares(seed=1)
    report, _ = train_model(
        TinyCls(), "classifier", data, TrainSettings(epochs=25, batch_size=8, lr=0.03), mean=MEAN, std=STD
    )
    assert report.last_loss < 0.6 * report.first_loss


def test_same_settings_give_the_same_weights() -> None:
    data = squares(n=8)
    weights = []
    for _ in range(2):
        torch.manual_seed(123)
        model = TinySeg()
        train_model(model, "segmenter", data, TrainSettings(epochs=2, batch_size=4, seed=5), mean=MEAN, std=STD)
        weights.append(model.state_dict())
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


def test_lone_last_sample_does_not_break_batchnorm() -> None:
    report, _ = train_model(
        TinySeg(), "segmenter", squares(n=5), TrainSettings(epochs=1, batch_size=4), mean=MEAN, std=STD
    )
    assert report.steps == 2


def test_settings_are_checked() -> None:
    with pytest.raises(DemoError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(DemoError, match="lr"):
        TrainSettings(lr=0.0)


def test_segmentation_loss_prefers_the_truth() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1.0
    good = segmentation_loss(target * 20 - 10, target)
    bad = segmentation_loss(-(target * 20 - 10), target)
    assert float(good) < 0.05 < float(bad)


def test_load_split_resizes_like_the_kernel(tmp_path: Path) -> None:
    syn = make_dataset(tmp_path / "s", 3, seed=3, height=64, width=96, clean_fraction=0.0)
    labels = read_masks(syn.labels_csv, 4, labels=True)
    split = load_split(syn.images_dir, labels, syn.image_ids, [(64, 96), (32, 48)], num_classes=4)
    full, small = split[(64, 96)], split[(32, 48)]
    assert full.images.shape == (3, 3, 64, 96) and small.images.shape == (3, 3, 32, 48)
    assert small.masks.shape == (3, 4, 32, 48)
    for i, image_id in enumerate(syn.image_ids):
        truth = syn.masks(image_id)
        assert torch.equal(full.masks[i], torch.from_numpy(truth.astype(np.float32)))
        assert full.present[i].tolist() == [float(m.any()) for m in truth]
        # area resizing by a whole factor keeps the defect fraction
        assert torch.allclose(small.masks[i].mean(dim=(1, 2)), full.masks[i].mean(dim=(1, 2)), atol=1e-5)
    assert float(small.images.min()) >= 0.0 and float(small.images.max()) <= 1.0


def test_load_split_names_an_unreadable_image(tmp_path: Path) -> None:
    syn = make_dataset(tmp_path / "s", 1, seed=0, height=32, width=32)
    (syn.images_dir / syn.image_ids[0]).write_bytes(b"not a jpeg")
    with pytest.raises(DemoError, match=syn.image_ids[0]):
        load_split(syn.images_dir, {}, syn.image_ids, [(32, 32)], num_classes=4)


def test_checkpoint_keeps_optimizer_and_loads_with_the_build_loader(tmp_path: Path) -> None:
    spec = ModelSpec(name="tiny-unet", kind="smp", file="tiny-unet.safetensors", arch="Unet", encoder="resnet18")
    model = build_model(spec, 4)
    data = SplitData(images=torch.rand(2, 3, 32, 32), masks=torch.zeros(2, 4, 32, 32), present=torch.zeros(2, 4))
    report, optimizer = train_model(
        model, "segmenter", data, TrainSettings(epochs=1, batch_size=2), mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    path = tmp_path / "models" / "tiny-unet.pth"
    save_checkpoint(path, model, optimizer, epoch=report.epochs, metrics=report.metrics())
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "optimizer", "epoch", "metrics"}
    assert raw["epoch"] == 1 and raw["optimizer"]["state"] and "last_loss" in raw["metrics"]
    assert not list(path.parent.glob("*.tmp"))

    entry = ModelEntry(role="segmenter", checkpoint=path, fp16=False, spec=spec)
    state, _ = read_checkpoint(entry.checkpoint, spec.name, "segmenters[0]")
    fresh = build_model(spec, 4)
    load_state_dict_into(fresh, state, spec.name)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
