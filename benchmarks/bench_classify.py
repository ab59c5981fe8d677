"""`classify`: Digit-Recognizer-sized classification (28,000 grey 28 x 28 images, a small timm CNN,
2 TTA views: identity and hflip, softmax probabilities averaged) in three ways:

- naive: a per-image loop, one forward per image and view, as a first notebook writes it;
- batched: a plain batched torch loop, both views of `BATCH` images stacked into one forward
  under `torch.inference_mode()`, at the batch size the engine is given;
- the shipped engine (`kernel_src.image_run`, with the CSV pixel-row reader): NOT measured yet —
  it is on branches t1-tasks and t2-readers, not merged here. Once they are, this module runs the
  engine on the same test.csv and reports `classify_vs_batched_loop` (batched time / engine
  time, target >= 0.9) and `classify_vs_naive` (naive / engine, >= 3.0).

Until then the figure is `classify_batched_vs_naive` (naive / batched): what a batched loop gains
over a per-image one on this machine, the room the engine has to meet its targets. The images come
from `bundler.demo.digits` (the same generator as the classification demo); the model has random
weights (speed does not depend on them). Both loops must agree: the same predicted labels and
probabilities within 1e-4 (float32 sums in another order), else the benchmark fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from bundler.demo.digits import make_digits

from .report import BenchResult, Figure, seconds

IMAGES = 28_000
QUICK_IMAGES = 2_800
BATCH = 256
ARCH = "test_resnet"
MEAN = STD = 0.5

Probabilities = npt.NDArray[np.float32]


def _model() -> torch.nn.Module:
    import timm  # type: ignore[import-untyped]

    torch.manual_seed(0)
    model: torch.nn.Module = timm.create_model(ARCH, pretrained=False, num_classes=10).eval()
    return model


def _prepare(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """grey uint8 [n, 28, 28] -> normalised RGB float [n, 3, 28, 28], as the kernel prepares them."""
    x = torch.from_numpy(images).float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
    return (x - MEAN) / STD


@torch.inference_mode()
def batched_loop(model: torch.nn.Module, images: npt.NDArray[np.uint8], batch: int = BATCH) -> Probabilities:
    """Both views of `batch` images in one forward; the views' softmax averaged."""
    out = []
    for start in range(0, len(images), batch):
        x = _prepare(images[start : start + batch])
        n = x.shape[0]
        probs = torch.softmax(model(torch.cat([x, x.flip(-1)])), dim=1)
        out.append(((probs[:n] + probs[n:]) / 2).numpy())
    return np.concatenate(out)


@torch.inference_mode()
def naive_loop(model: torch.nn.Module, images: npt.NDArray[np.uint8]) -> Probabilities:
    """One image at a time, one forward per view."""
    out = []
    for image in images:
        x = _prepare(image[None])
        views = [torch.softmax(model(v), dim=1) for v in (x, x.flip(-1))]
        out.append(((views[0] + views[1]) / 2)[0].numpy())
    return np.stack(out)


def _timed(fn: Callable[[], Probabilities]) -> tuple[float, Probabilities]:
    begin = time.perf_counter()
    result = fn()
    return time.perf_counter() - begin, result


def bench_classify(*, quick: bool, n: int | None = None) -> BenchResult:
    result = BenchResult("classify")
    count = n or (QUICK_IMAGES if quick else IMAGES)
    began = time.perf_counter()
    images, _ = make_digits(count, seed=28)
    made = time.perf_counter() - began
    model = _model()
    batched_loop(model, images[: min(BATCH, count)])  # warm-up: first-call allocations out of the timing
    batched_s, batched = _timed(lambda: batched_loop(model, images))
    naive_s, naive = _timed(lambda: naive_loop(model, images))
    worst = float(np.abs(batched - naive).max())
    if worst > 1e-4 or not np.array_equal(batched.argmax(axis=1), naive.argmax(axis=1)):
        raise AssertionError(f"classify: the batched and per-image loops disagree (max difference {worst:.2e})")
    weights = sum(p.numel() for p in model.parameters())
    result.row("images", f"{count:,}", f"28x28 grey, drawn in {made:.1f} s; timm {ARCH} ({weights:,} weights)")
    result.row("naive per-image loop", seconds(naive_s), f"{1e6 * naive_s / count:.0f} us/image, 2 forwards each")
    result.row(f"batched torch loop (batch {BATCH})", seconds(batched_s), f"{1e6 * batched_s / count:.0f} us/image")
    result.row("outputs", "identical labels", f"probabilities within {worst:.1e}")
    result.row("shipped engine", "not measured", "kernel_src.image_run and the CSV reader are not merged here")
    result.figures.append(Figure("classify_batched_vs_naive", naive_s / batched_s))
    result.notes.append(
        "classify_vs_batched_loop (>= 0.9) and classify_vs_naive (>= 3.0) wait for the image engine "
        "(branch t1-tasks) and the CSV pixel-row reader (branch t2-readers)"
    )
    return result
