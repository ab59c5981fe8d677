"""`tune_s_per_1000`: `bundler tune`'s search from a complete holdout cache, per 1,000 images.

The workload is the issue's: 4 classes at Severstal's 256x1600, three segmenters (cached at a
64x416 model size, as the demo's) and a classifier. Labels are synthetic defects (ellipses on
about half of the images); each segmenter's cached map is the label plus smooth noise (sd 0.12
before a Gaussian blur, background around 0.03, so spurious blobs cross the lowest thresholds as
a real model's do), shifted and blurred differently per model, quantised as the cache stores it
(1/255). The cache folder is written in the documented format (`bundler.tune.cache`), so the
timed part is exactly what a second `bundler tune` does from its cache: every candidate's Dice
per pair (`build_evidence`, 2 threads) and the 5-fold search (`cross_validate` + the final
`choose`). Target: under 120 s per 1,000 images on 2 cores. One ensemble plan (its masks through
`kernel_src.postprocess`) is timed beside it as `tune_plans_s_per_1000`, without a target.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bundler.dryrun.projection import NO_CALIBRATION
from bundler.tune import search
from bundler.tune.cache import CACHE_FORMAT, META, QUANT, read_cache
from bundler.tune.command import GATES, MIN_AREAS, MIN_COMPONENTS, THRESHOLDS
from bundler.tune.evidence import Grid, Models, Plan, build_evidence
from bundler.tune.plan import Costs, evaluate_plans

from .report import BenchResult, Figure, Target, seconds

CLASSES = 4
SEGMENTERS = ("seg-a", "seg-b", "seg-c")
MODEL_SIZE = (64, 416)


Truth = Callable[[int], npt.NDArray[np.bool_]]


def synthetic_truth(height: int, width: int, seed: int) -> Truth:
    """Image index -> label masks [C, H, W] (half the images clean), made again on each call from a
    per-image seed, so 1,000 images need no 1.6 GB of masks in memory."""

    def truth(i: int) -> npt.NDArray[np.bool_]:
        rng = np.random.default_rng([seed, i])
        masks = np.zeros((CLASSES, height, width), dtype=np.bool_)
        if rng.random() < 0.5:
            return masks
        canvas = np.zeros((height, width), dtype=np.uint8)
        for c in rng.choice(CLASSES, size=int(rng.integers(1, 3)), replace=False):
            canvas[:] = 0
            for _ in range(int(rng.integers(1, 4))):
                centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
                axes = (int(rng.integers(10, 120)), int(rng.integers(5, 40)))
                cv2.ellipse(canvas, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
            masks[c] = canvas > 0
        return masks

    return truth


def write_synthetic_cache(folder: Path, truth: Truth, n: int, height: int, width: int, seed: int) -> None:
    """A complete cache folder for `n` images of `truth`: three segmenters and a classifier."""
    rng = np.random.default_rng(seed)
    c_n = CLASSES
    folder.mkdir(parents=True)
    dirty = np.zeros((n, c_n), dtype=np.bool_)
    for k, name in enumerate(SEGMENTERS):
        store = np.lib.format.open_memmap(folder / f"seg--{name}--0.npy", "w+", np.uint8, (n, c_n, *MODEL_SIZE))
        for i in range(n):
            masks = truth(i)
            dirty[i] = masks.reshape(c_n, -1).any(axis=1)
            small = np.stack(
                [cv2.resize(masks[c].astype(np.float32), MODEL_SIZE[::-1], interpolation=cv2.INTER_AREA)
                 for c in range(c_n)]
            )  # fmt: skip
            small = np.roll(small, k, axis=-1)
            noise = rng.normal(0, 0.12, small.shape).astype(np.float32)
            noisy = np.stack(
                [cv2.GaussianBlur(0.9 * m + e, (5, 5), 1.0 + k) for m, e in zip(small, noise, strict=True)]
            )
            noisy += 0.03
            store[i] = np.rint(np.clip(noisy, 0, 1) * QUANT).astype(np.uint8)
        store.flush()
        del store
        np.save(folder / f"nan--{name}.npy", np.zeros(n, dtype=np.bool_))
    probs = np.clip(np.where(dirty, 0.7, 0.3) + rng.normal(0, 0.15, dirty.shape), 0, 1).astype(np.float32)
    np.save(folder / "cls--cls.npy", probs)
    np.save(folder / "readable.npy", np.ones(n, dtype=np.bool_))
    meta = {
        "format": CACHE_FORMAT,
        "key": "benchmark",
        "image_ids": [f"{i:05d}.jpg" for i in range(n)],
        "num_classes": c_n,
        "height": height,
        "width": width,
        "classifiers": ["cls"],
        "segmenters": list(SEGMENTERS),
        "views": {name: ["identity"] for name in SEGMENTERS},
        "seconds_per_image": dict.fromkeys((*SEGMENTERS, "cls"), 0.01),
        "first_pass_s": 0.0,
        "unreadable": [],
    }
    (folder / META).write_text(json.dumps(meta), encoding="utf-8")


def bench_tune(*, quick: bool, n: int | None = None, height: int = 256, width: int = 1600) -> BenchResult:
    result = BenchResult("tune_s_per_1000")
    n = n or (60 if quick else 1000)
    truth = synthetic_truth(height, width, seed=5)
    grid = Grid(
        thresholds=THRESHOLDS, min_components=MIN_COMPONENTS, min_areas=MIN_AREAS, gates=tuple(sorted({*GATES, 0.5}))
    )
    models = Models(weights=dict.fromkeys((*SEGMENTERS, "cls"), 1.0), merges={})
    plan = Plan(tuple((name, ("identity",)) for name in SEGMENTERS), ("cls",))
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        folder = Path(tmp) / "cache"
        write_synthetic_cache(folder, truth, n, height, width, seed=6)
        cache = read_cache(folder)
        assert cache is not None
        begin = time.perf_counter()
        ev = build_evidence(cache, plan, models, truth, grid, threads=2)
        evidence_s = time.perf_counter() - begin
        current = search.Choice(
            mode="per_class",
            variant=0,
            threshold=(grid.thresholds.index(0.5),) * CLASSES,
            min_component=(grid.min_components.index(30),) * CLASSES,
            min_area=(grid.min_areas.index(100),) * CLASSES,
            gate=(grid.gates.index(0.5),) * CLASSES,
        )
        begin = time.perf_counter()
        cv = search.cross_validate(ev, current, folds=5)
        final = search.choose(ev, np.arange(n, dtype=np.int64), current)
        search_s = time.perf_counter() - begin
        plans = [Plan(tuple((s, ("identity",)) for s in segs), ("cls",)) for segs in (SEGMENTERS, SEGMENTERS[:1])]
        begin = time.perf_counter()
        evaluate_plans(
            cache, plans, models, truth, final.postprocess(grid), final.mode, final.gates(grid),
            costs=Costs(0.0, 0.0, {}, {}, "benchmark"), calibration=NO_CALIBRATION, hidden_images=5506,
            budget_s=3300.0, margin=0.15,
        )  # fmt: skip
        plans_s = (time.perf_counter() - begin) / len(plans)
        cache_mb = cache.size_bytes() / 1e6
    total = evidence_s + search_s
    per_1000 = total * 1000 / n
    k_m_a = len(grid.thresholds) * len(grid.min_components) * len(grid.min_areas)
    result.row("images", f"{n}", f"{CLASSES} classes at {height}x{width}, 3 segmenters at {MODEL_SIZE}, 1 classifier")
    result.row("cache on disk", f"{cache_mb:.0f} MB", "uint8 probabilities, 1/255")
    result.row("every candidate's Dice", seconds(evidence_s), f"{k_m_a} post-process candidates x 2 variants per pair")
    result.row("5-fold CV + final choice", seconds(search_s), f"{len(grid.gates)} gates x 3 modes")
    result.row("one ensemble plan", seconds(plans_s), "kernel_src.postprocess on every image")
    result.row("CV score", f"{cv.current_mean:.4f} -> {cv.tuned_mean:.4f}", "current -> tuned (held-out folds)")
    result.figures.append(Figure("tune_s_per_1000", per_1000, Target(120.0, at_most=True)))
    result.figures.append(Figure("tune_plans_s_per_1000", plans_s * 1000 / n))
    if quick:
        result.notes.append(f"--quick: {n} images, scaled to 1,000; the full run times 1,000")
    return result
