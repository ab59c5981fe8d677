"""`classify_vs_batched_loop` and `classify_vs_naive`: the image-level engine on a Digit
Recognizer-shaped workload (issue 22 item 7).

N images of 28x28 (28,000 in the full run, as Digit Recognizer's test set) through a small CNN
(TorchScript, 10 classes) with 2 flip views, batch 256, written as `ImageId,Label` rows by
`kernel_src.run.run` (task classification, the `digit-recognizer` preset). Measured in the same
process against:

- a plain batched torch loop at the same batch size: the same files read with `cv2.imread`, the
  batch stacked, both views in one forward, softmax averaged, argmax, the CSV written;
- a per-image loop: one image, one view per forward call (timed on a subset, per image).

The engine's call size is fixed at the batch's stacked views (`images_per_call = 512`, the loop's
one call per batch): measured at load, TorchScript's profiling executor makes the first calls of
each size of a model this small look slow, and the choice is noise.

`classify_vs_batched_loop` = loop seconds / engine seconds (>= 0.9: no slower), both charged
everything after the files exist (the engine's setup, model load and call-size measuring too);
`classify_vs_naive` = per-image seconds of the naive loop / the engine's (>= 3). The engine's and
the loop's labels must agree on every image.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from kernel_src.run import run
from kernel_src.spec import InferenceSpec

from .report import BenchResult, Figure, Target, seconds

SIDE = 28
CLASSES = 10
BATCH = 256


class _SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(32 * 7 * 7, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


def _write_images(folder: Path, n: int) -> None:
    """`n` grey digit-like images named by their row number ("0", "1", ...), PNG bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        grey = np.zeros((SIDE, SIDE), dtype=np.uint8)
        cv2.putText(grey, str(i % 10), (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
        grey = np.clip(grey.astype(np.int16) + rng.integers(0, 40, grey.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", grey)
        assert ok
        (folder / str(i)).write_bytes(buf.tobytes())


def _spec(file: str, workers: int) -> InferenceSpec:
    model = {"name": "cnn", "kind": "torchscript", "file": file, "tta": ["identity", "hflip"],
             "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # fmt: skip
    data = {
        "num_classes": CLASSES,
        "image_height": SIDE,
        "image_width": SIDE,
        "batch_size": BATCH,
        "device": "cpu",
        "loader_workers": workers,
        "image_channels": 1,
        "images_per_call": 2 * BATCH,
        "task": {"name": "classification"},
        "rows": {"preset": "digit-recognizer"},
        "classifiers": [model],
    }
    return InferenceSpec.from_dict(data)


def _read(path: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _labels(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [row["Label"] for row in csv.DictReader(f)]


@torch.inference_mode()
def _batched_loop(model: nn.Module, test: Path, n: int, out: Path) -> list[str]:
    labels: list[str] = []
    for start in range(0, n, BATCH):
        ids = range(start, min(start + BATCH, n))
        batch = np.stack([_read(test / str(i)) for i in ids])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        out_views = model(torch.cat([x, torch.flip(x, (-1,))]))
        probs = torch.softmax(out_views, dim=1).view(2, len(ids), CLASSES).mean(0)
        labels.extend(str(v) for v in probs.argmax(dim=1).tolist())
    out.write_text("ImageId,Label\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(labels)))
    return labels


@torch.inference_mode()
def _naive(model: nn.Module, test: Path, n: int) -> float:
    begin = time.perf_counter()
    for i in range(n):
        rgb = _read(test / str(i))
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
        probs = (torch.softmax(model(x), 1) + torch.softmax(model(torch.flip(x, (-1,))), 1)) / 2
        int(probs.argmax())
    return (time.perf_counter() - begin) / n


def bench_classify(*, quick: bool, n: int | None = None, naive_n: int | None = None) -> BenchResult:
    result = BenchResult("classify_vs_batched_loop")
    n = n or (2000 if quick else 28000)
    naive_n = min(n, naive_n or (200 if quick else 1000))
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        root = Path(tmp)
        _write_images(root / "test", n)
        (root / "bundle").mkdir()
        torch.manual_seed(0)
        torch.jit.script(_SmallCnn().eval()).save(str(root / "bundle" / "cnn.pt"))  # type: ignore[no-untyped-call]
        (root / "sample_submission.csv").write_text(
            "ImageId,Label\n" + "".join(f"{i + 1},0\n" for i in range(n)), encoding="utf-8"
        )
        model = torch.jit.load(str(root / "bundle" / "cnn.pt")).eval()  # type: ignore[no-untyped-call]
        _batched_loop(model, root / "test", min(n, 2 * BATCH), root / "warm.csv")  # warm-up: page cache, kernels
        begin = time.perf_counter()
        loop_labels = _batched_loop(model, root / "test", n, root / "loop.csv")
        loop_s = time.perf_counter() - begin
        begin = time.perf_counter()
        ran = run(_spec("cnn.pt", 2), bundle_dir=root / "bundle", test_dir=root / "test",
                  sample_submission=root / "sample_submission.csv", out_dir=root / "ours", progress=False)  # fmt: skip
        ours_s = time.perf_counter() - begin
        ours_labels = _labels(ran.submission_path)
        naive_per_image = _naive(model, root / "test", naive_n)
    if ours_labels != loop_labels:
        wrong = sum(a != b for a, b in zip(ours_labels, loop_labels, strict=True))
        raise AssertionError(f"classify_vs_batched_loop: {wrong} of {n} labels differ from the batched loop's")
    result.row("images", f"{n}", f"{SIDE}x{SIDE}, small CNN x 2 flip views, batch {BATCH}")
    result.row("engine (kernel_src.run.run)", seconds(ours_s), "setup, load, call sizes, loader, rows: everything")
    result.row("plain batched torch loop", seconds(loop_s), "cv2.imread per batch, one forward, softmax, argmax")
    result.row("per-image loop", seconds(naive_per_image * n), f"timed on {naive_n} images, one call per view")
    result.figures.append(Figure("classify_vs_batched_loop", loop_s / ours_s, Target(0.9, at_most=False)))
    result.figures.append(Figure("classify_vs_naive", naive_per_image * n / ours_s, Target(3.0, at_most=False)))
    return result
