"""From the cache and the labels: the ensemble's probabilities, and every candidate's Dice per pair.

`ensemble(cache, plan, rows)` rebuilds what the engine's `Predictor` computes for those images:
each segmenter's views merged (its `tta_merge`, by the engine's own `kernel_src.tta.merge`),
resized to the image size (bilinear, as the engine), averaged over segmenters with their weights,
a segmenter whose output held NaN for an image left out of that image (weights renormalised); an
image every segmenter failed, or one that could not be read, has no prediction (`failed`).
`gate_probs` is the classifiers' weighted mean, NaN dropped per image; an image every classifier
gave NaN for passes every gate.

`build_evidence` then computes, once per image and class, for every pixel threshold of the grid:
the 8-connected components of the thresholded map (the engine's `cv2.connectedComponentsWithStats`)
with each component's area and its overlap with the label. Every (min_component, min_area) pair's
predicted area P and intersection I are sums over those components, so the Dice of every
candidate, `2I / (P + T)` (1 when both are empty), costs a few array operations: `dice[x, c, k, m,
a, i]` for variant x (0: plain, 1: one class per pixel), class c, threshold k, min_component m,
min_area a and image i, with `nonempty` beside it. Gating is applied later, per candidate gate, as
a choice between `dice` and `empty` (the Dice of an empty mask: 1 on a clean pair, else 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from bundler import scoring
from bundler.tune.cache import QUANT, HoldoutCache
from kernel_src.rle import decode
from kernel_src.tta import merge

Floats = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]
EPS = 0.5 / QUANT  # the smallest probability a stored 0 can stand for (log and logit merges)
BATCH = 8  # images rebuilt at once


@dataclass(frozen=True)
class Plan:
    """Which models run: each segmenter with the views it keeps, and the gating classifiers."""

    segmenters: tuple[tuple[str, tuple[str, ...]], ...]
    classifiers: tuple[str, ...]

    def describe(self) -> str:
        segs = " + ".join(f"{name}[{','.join(views)}]" for name, views in self.segmenters)
        gate = f" gated by {', '.join(self.classifiers)}" if self.classifiers else " ungated"
        return segs + gate


@dataclass(frozen=True)
class Models:
    """The ensemble's settings that the cache does not hold: weights and view merges."""

    weights: Mapping[str, float]
    merges: Mapping[str, str]


def _merged(cache: HoldoutCache, name: str, views: Sequence[str], mode: str, index: npt.NDArray[np.int64]) -> Floats:
    """A segmenter's views merged by the engine's own merge (`kernel_src.tta.merge`), [n, C, h, w]
    float32 at its model size, in units of 1/QUANT.

    The cache holds each view already undone, as a probability: the merge is given them as
    probabilities, seen through "identity" (nothing is left to undo). Where it works in log or
    logit space (gmean, logit_mean) a stored 0 or QUANT is taken as EPS from 0 or 1, the nearest
    value it can stand for, so that one saturated view does not make the merge 0 or NaN."""
    stored = [np.asarray(cache.view_probs(name, v)[index]) for v in views]
    if len(stored) == 1:  # one view: nothing to merge, every mode gives it back
        return stored[0].astype(np.float32)
    probs = [torch.from_numpy(s).float().mul_(1.0 / QUANT) for s in stored]
    if mode in ("gmean", "logit_mean"):
        probs = [p.clamp_(EPS, 1.0 - EPS) for p in probs]
    merged = merge(probs, ("identity",) * len(probs), mode, probabilities=True)
    result: Floats = merged.numpy() * np.float32(QUANT)
    return result


def ensemble(cache: HoldoutCache, plan: Plan, models: Models, rows: Sequence[int]) -> tuple[Floats, Bools]:
    """(probabilities [n, C, H, W] float32, failed [n]) for the images at `rows`.

    The weighted sum is taken at each model size before the bilinear resize to the image size
    (one resize per size rather than per model): the resize is linear, so this is the engine's
    resize-then-average up to float rounding."""
    index = np.asarray(rows, dtype=np.int64)
    n, size = len(index), (cache.height, cache.width)
    covered = np.zeros(n, dtype=np.float64)
    weights = sum(models.weights[name] for name, _ in plan.segmenters)
    by_size: dict[tuple[int, int], Floats] = {}
    for name, views in plan.segmenters:
        merged = _merged(cache, name, views, models.merges.get(name, "mean"), index)
        bad = cache.nan_images(name)[index]
        if bad.any():
            merged[bad] = 0.0
        w = models.weights[name]
        merged *= np.float32(w / weights / QUANT)
        key = (int(merged.shape[-2]), int(merged.shape[-1]))
        if key in by_size:
            by_size[key] += merged
        else:
            by_size[key] = merged
        covered += (~bad) * w
    total: Floats | None = None
    for key, part in by_size.items():
        if key != size:
            part = F.interpolate(torch.from_numpy(part), size=size, mode="bilinear", align_corners=False).numpy()
        total = part if total is None else total + part
    assert total is not None, "a plan has at least one segmenter"
    partial = (covered > 0) & (covered < weights)
    if partial.any():  # some segmenter gave NaN for these images: renormalise the others' weights
        total[partial] *= (weights / covered[partial]).astype(np.float32)[:, None, None, None]
    failed = (covered <= 0) | ~cache.readable()[index]
    return total, failed


def gate_probs(cache: HoldoutCache, classifiers: Sequence[str], weights: Mapping[str, float]) -> Floats | None:
    """[N, C]: the classifiers' weighted mean per image, NaN outputs left out; +inf (passes every
    gate) where every classifier gave NaN. None without classifiers."""
    if not classifiers:
        return None
    total = np.zeros((len(cache.image_ids), cache.num_classes), dtype=np.float64)
    covered = np.zeros(len(cache.image_ids), dtype=np.float64)
    for name in classifiers:
        p = cache.classifier_probs(name).astype(np.float64)
        ok = ~np.isnan(p).any(axis=1)
        total[ok] += p[ok] * weights[name]
        covered[ok] += weights[name]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / covered[:, None]
    mean[covered <= 0] = np.inf
    return mean.astype(np.float32)


def truth_masks(
    labels: Mapping[str, Sequence[str]], image_ids: Sequence[str], shape: tuple[int, int], order: str, num_classes: int
) -> Callable[[int], Bools]:
    """A function: image index -> bool [C, H, W] label masks (decoded on demand)."""

    def masks(i: int) -> Bools:
        rles = labels.get(image_ids[i], [""] * num_classes)
        out = np.zeros((num_classes, *shape), dtype=np.bool_)
        for c, rle in enumerate(rles):
            if rle.strip():
                out[c] = decode(rle, shape, order).astype(np.bool_)
        return out

    return masks


@dataclass(frozen=True)
class Grid:
    """The candidate values searched (sorted, each class's current value included)."""

    thresholds: tuple[float, ...]
    min_components: tuple[int, ...]
    min_areas: tuple[int, ...]
    gates: tuple[float, ...]


@dataclass(frozen=True)
class Evidence:
    """Every candidate's Dice per image x class pair; see the module docstring."""

    image_ids: tuple[str, ...]
    grid: Grid
    dice: Floats  # [X, C, K, M, A, N]
    nonempty: Bools  # [X, C, K, M, A, N]: the candidate's mask is not empty
    empty: Floats  # [C, N]: the score of an empty mask (clean pair: the empty_pair rule's 1 or 0; else 0)
    labelled: Bools  # [C, N]: the label has a defect
    gate: Floats | None  # [N, C] the classifiers' probability, +inf: passes every gate

    @property
    def variants(self) -> int:
        return int(self.dice.shape[0])


def _components(mask: Bools, truth: Bools) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(area, overlap with `truth`) of each 8-connected component of `mask`."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    inter = np.bincount(labels[truth], minlength=count)[1:].astype(np.int64)
    return areas, inter


def image_dice(
    probs: Floats, truth: Bools, grid: Grid, variants: int, empty_pair: float = 1.0
) -> tuple[Floats, Bools]:
    """(dice [X, C, K, M, A], nonempty) of every candidate for one image; a pair empty on both
    sides scores `empty_pair` (the metric's rule: 1 for Severstal)."""
    c_n = probs.shape[0]
    k_n, m_n, a_n = len(grid.thresholds), len(grid.min_components), len(grid.min_areas)
    dice = np.zeros((variants, c_n, k_n, m_n, a_n), dtype=np.float32)
    nonempty = np.zeros(dice.shape, dtype=np.bool_)
    mins = np.asarray(grid.min_components, dtype=np.int64)[:, None]
    areas_needed = np.maximum(np.asarray(grid.min_areas, dtype=np.int64), 1)[None, :]
    lowest = min(grid.thresholds)
    for c in range(c_n):
        t_area = int(np.count_nonzero(truth[c]))
        clean = float(scoring.dice(0, 0, t_area, empty_pair))  # every empty candidate's Dice
        dice[:, c] = clean
        above = probs[c] > lowest
        ys, xs = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
        if not ys.size:
            continue  # nothing above the lowest threshold: every candidate's mask is empty
        # Every component, in either variant, lies inside the box of the pixels above the lowest threshold.
        box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        crop, crop_truth = probs[c][box], np.ascontiguousarray(truth[c][box])
        for x in range(variants):
            if x == 1:
                # kernel_src.postprocess.winning_class on the box: a lower class wins ties
                lower, higher = probs[:c][(slice(None), *box)], probs[c + 1 :][(slice(None), *box)]
                lost = (lower >= crop).any(axis=0) | (higher > crop).any(axis=0)
                if not (lost & (crop > lowest)).any():  # no pixel of this class is taken by another
                    dice[1, c], nonempty[1, c] = dice[0, c], nonempty[0, c]
                    continue
                crop = np.where(lost, np.float32(0.0), crop)
            for k, t in enumerate(grid.thresholds):
                mask = np.ascontiguousarray(crop > t)
                if not mask.any():
                    break  # the grid is sorted: higher thresholds keep nothing either
                areas, inter = _components(mask, crop_truth)
                keep = areas[None, :] >= mins  # [M, J]
                p = keep @ areas  # [M]
                i = keep @ inter
                ne = p[:, None] >= areas_needed  # [M, A]
                d = np.where(ne, scoring.dice(i[:, None], p[:, None], t_area, clean), clean)
                dice[x, c, k], nonempty[x, c, k] = d, ne
    return dice, nonempty


def build_evidence(
    cache: HoldoutCache,
    plan: Plan,
    models: Models,
    truth: Callable[[int], Bools],
    grid: Grid,
    *,
    variants: int = 2,
    threads: int = 2,
    empty_pair: float = 1.0,
    on_batch_done: Callable[[int, int], None] | None = None,
) -> Evidence:
    """Every candidate's Dice for every image x class pair of the cache."""
    n, c_n = len(cache.image_ids), cache.num_classes
    variants = variants if c_n > 1 else 1
    shape = (variants, c_n, len(grid.thresholds), len(grid.min_components), len(grid.min_areas), n)
    dice = np.zeros(shape, dtype=np.float32)
    nonempty = np.zeros(shape, dtype=np.bool_)
    empty = np.zeros((c_n, n), dtype=np.float32)
    labelled = np.zeros((c_n, n), dtype=np.bool_)

    def one(i: int, probs: Floats, failed: bool) -> None:
        t = truth(i)
        labelled[:, i] = t.reshape(c_n, -1).any(axis=1)
        empty[:, i] = np.where(labelled[:, i], 0.0, empty_pair)
        if failed:  # the engine writes empty masks for it
            dice[..., i] = empty[None, :, None, None, None, i]
            return
        d, ne = image_dice(probs, t, grid, variants, empty_pair)
        dice[..., i], nonempty[..., i] = d, ne

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, n, BATCH):
            rows = list(range(start, min(n, start + BATCH)))
            probs, failed = ensemble(cache, plan, models, rows)
            jobs = [pool.submit(one, i, probs[j], bool(failed[j])) for j, i in enumerate(rows)]
            for job in jobs:
                job.result()
            if on_batch_done is not None:
                on_batch_done(rows[-1] + 1, n)
    gate = gate_probs(cache, plan.classifiers, models.weights)
    return Evidence(cache.image_ids, grid, dice, nonempty, empty, labelled, gate)


def grid_with(base: Sequence[float], current: Sequence[float], digits: int = 4) -> tuple[float, ...]:
    """`base` and every `current` value, rounded, sorted, without repeats."""
    return tuple(sorted({round(float(v), digits) for v in (*base, *current) if math.isfinite(float(v))}))
