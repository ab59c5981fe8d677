"""`rle_vs_naive`: the vectorised `kernel_src.rle.encode` against a per-pixel Python loop.

Masks are the defect masks of the shared synthetic Severstal-like set (`bundler.demo.synthetic`) at
the full 256x1600, decoded from its labels, plus their empty class masks in the proportion the
set has (a submission encodes every image x class pair). Both encoders must give the same string
for every mask; the ratio is naive time / vectorised time over the same list of masks.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kernel_src.rle import decode, encode
from kernel_src.submission import read_masks

from .naive import naive_rle
from .report import BenchResult, Figure, Target, seconds
from .workload import make_images

Mask = npt.NDArray[np.uint8]


def defect_masks(n_images: int, *, height: int, width: int, seed: int) -> list[Mask]:
    """Every image x class mask (4 classes) of a synthetic set of `n_images`, empty ones included."""
    with tempfile.TemporaryDirectory(prefix="bench-rle-") as tmp:
        data = make_images(Path(tmp), n_images, height=height, width=width, seed=seed, clean_fraction=0.25)
        labelled = read_masks(data.labels_csv, 4, labels=True)
    masks: list[Mask] = []
    for image_id in data.image_ids:
        for rle in labelled.get(image_id, [""] * 4):
            masks.append(decode(rle, (height, width), "F") if rle else np.zeros((height, width), np.uint8))
    return masks


def _time(fn: Callable[[Mask], str], masks: list[Mask], repeats: int) -> tuple[float, list[str]]:
    best = float("inf")
    out: list[str] = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = [fn(m) for m in masks]
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_rle(*, quick: bool, n: int | None = None, height: int = 256, width: int = 1600) -> BenchResult:
    result = BenchResult("rle_vs_naive")
    masks = defect_masks(n or (4 if quick else 16), height=height, width=width, seed=7)
    fast_s, fast = _time(lambda m: encode(m, "F"), masks, repeats=5)
    naive_s, naive = _time(lambda m: naive_rle(m, "F"), masks, repeats=1 if quick else 2)
    mismatched = sum(a != b for a, b in zip(fast, naive, strict=True))
    if mismatched:
        raise AssertionError(f"rle_vs_naive: {mismatched} of {len(masks)} masks encode differently; a bug in one RLE")
    defects = sum(bool(s) for s in fast)
    runs = sum(len(s.split()) // 2 for s in fast)
    result.row("masks", f"{len(masks)}", f"{height}x{width}, {defects} with a defect, {runs} runs in all")
    result.row("naive per-pixel loop", seconds(naive_s), f"{1000 * naive_s / len(masks):.1f} ms/mask")
    result.row("kernel_src.rle.encode", seconds(fast_s), f"{1000 * fast_s / len(masks):.2f} ms/mask")
    result.row("outputs", "identical", f"{len(masks)} strings compared")
    with_defect = [m for m, s in zip(masks, fast, strict=True) if s]
    if with_defect:
        d_fast, _ = _time(lambda m: encode(m, "F"), with_defect, repeats=5)
        d_naive, _ = _time(lambda m: naive_rle(m, "F"), with_defect, repeats=1)
        result.row("defect masks only", f"{d_naive / d_fast:.0f}x", f"{len(with_defect)} masks: naive / vectorised")
    result.figures.append(Figure("rle_vs_naive", naive_s / fast_s, Target(30.0, at_most=False)))
    return result
