"""The ensemble plan: which segmenters x TTA views (and classifiers) to ship within the budget.

Candidate plans: each segmenter left out or kept with the first 1, 2, ... of its views (the order
the budget guard drops them in reverse), at least one segmenter kept; with classifiers, each
segmenter part both gated by every classifier (the tuned mode and gates) and ungated.

Score: the plan's ensemble rebuilt from the cache (`evidence.ensemble`), post-processed by the
engine's own `kernel_src.postprocess.postprocess` with the tuned values, gated, and scored as the
metric does (mean Dice over every image x class pair). The post-process values are the ones
tuned for the full ensemble, not re-tuned per plan.

Time: per-model, per-view costs measured by the dry-run (profile.json: each `segmenter:<name>`
stage per segmented image and view, `tta_merge` shared out per view, each `classifier:<name>`
per image, the rest of `per_image_s` as a cost every plan pays, `fixed_s`), or, without a dry-run
profile, the first pass's own forward timings (then decode, post-process and loading are not
counted, and the plan says so). The per-image figure is projected to the hidden test set by
`bundler.dryrun.projection.project` with the dry-run's calibration (a Kaggle profile or a factor).
A plan fits when its projection is at most the budget less the safety margin (15% by default).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bundler import scoring
from bundler.dryrun.projection import Calibration, project
from bundler.tune.cache import HoldoutCache
from bundler.tune.evidence import BATCH, Bools, Models, Plan, ensemble, gate_probs
from kernel_src.postprocess import postprocess
from kernel_src.spec import InferenceSpec, PostprocessSpec

MAX_SEGMENTER_PLANS = 64  # beyond this, only "all views" or left out per segmenter


@dataclass(frozen=True)
class Costs:
    """Seconds on this machine: what a plan's projection is made of."""

    fixed_s: float
    overhead_per_image_s: float  # paid by every plan: decode, post-process, RLE, write, ...
    classifier_s: Mapping[str, float]  # per image
    segmenter_view_s: Mapping[str, float]  # per segmented image, per view
    source: str

    def per_image(self, plan: Plan, segmented: float) -> float:
        segs = sum(self.segmenter_view_s.get(name, 0.0) * len(views) for name, views in plan.segmenters)
        classes = sum(self.classifier_s.get(name, 0.0) for name in plan.classifiers)
        return self.overhead_per_image_s + classes + segmented * segs


def _stage(profile: Mapping[str, Any], name: str) -> float:
    stage = (profile.get("stages") or {}).get(name) or {}
    return float(stage.get("seconds", 0.0))


def costs_from_profile(profile: Mapping[str, Any], spec: InferenceSpec, source: str) -> Costs | None:
    """Per-model, per-view costs from a dry-run's profile.json; None when it timed no image."""
    images = int(profile.get("images") or 0)
    per_image = float(profile.get("per_image_s") or 0.0)
    if images <= 0 or per_image <= 0:
        return None
    segmented = int((profile.get("gating") or {}).get("images_segmented") or images) or images
    views_total = sum(len(m.tta) for m in spec.segmenters) or 1
    merge_per_view = _stage(profile, "tta_merge") / segmented / views_total
    seg = {
        m.name: _stage(profile, f"segmenter:{m.name}") / segmented / len(m.tta) + merge_per_view
        for m in spec.segmenters
    }
    cls = {m.name: _stage(profile, f"classifier:{m.name}") / images for m in spec.classifiers}
    frac = segmented / images
    modelled = sum(cls.values()) + frac * sum(seg[m.name] * len(m.tta) for m in spec.segmenters)
    return Costs(
        fixed_s=float(profile.get("fixed_s") or 0.0),
        overhead_per_image_s=max(0.0, per_image - modelled),
        classifier_s=cls,
        segmenter_view_s=seg,
        source=f"dry-run profile {source}",
    )


def costs_from_cache(cache: HoldoutCache) -> Costs:
    """Forward seconds of the first pass only (no decode, post-process or loading counted)."""
    seg = {name: cache.seconds_per_image.get(name, 0.0) / len(views) for name, views in cache.views.items()}
    cls = {name: cache.seconds_per_image.get(name, 0.0) for name in cache.classifiers}
    return Costs(0.0, 0.0, cls, seg, "first-pass forward timings only (run `bundler dry-run` for whole-run costs)")


def candidate_plans(spec: InferenceSpec) -> list[Plan]:
    options: list[list[tuple[str, tuple[str, ...]] | None]] = [
        [None, *[(m.name, m.tta[:k]) for k in range(1, len(m.tta) + 1)]] for m in spec.segmenters
    ]
    if np.prod([len(o) for o in options]) > MAX_SEGMENTER_PLANS:
        options = [[None, (m.name, m.tta)] for m in spec.segmenters]
    seg_parts = [tuple(s for s in combo if s is not None) for combo in itertools.product(*options)]
    seg_parts = [p for p in seg_parts if p]
    cls_parts: list[tuple[str, ...]] = [tuple(m.name for m in spec.classifiers)]
    if spec.classifiers:
        cls_parts.append(())
    return [Plan(s, c) for s in seg_parts for c in cls_parts]


@dataclass(frozen=True)
class PlanPoint:
    plan: Plan
    score: float
    per_image_s: float  # on this machine
    projected_s: float  # on the target, for the hidden test set
    within: bool  # projected <= budget x (1 - margin)
    segmented: float  # share of images the gate sends to segmentation

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.describe(),
            "segmenters": {name: list(views) for name, views in self.plan.segmenters},
            "classifiers": list(self.plan.classifiers),
            "score": self.score,
            "per_image_s": self.per_image_s,
            "projected_s": self.projected_s,
            "within": self.within,
            "segmented": self.segmented,
        }


def _pair_dice(masks: Bools, truth: Bools, empty_pair: float) -> tuple[npt.NDArray[np.float64], Bools]:
    c_n = masks.shape[0]
    m, t = masks.reshape(c_n, -1), truth.reshape(c_n, -1)
    inter = np.count_nonzero(m & t, axis=1)
    p, q = np.count_nonzero(m, axis=1), np.count_nonzero(t, axis=1)
    return scoring.dice(inter, p, q, empty_pair), p > 0


def evaluate_plans(
    cache: HoldoutCache,
    plans: Sequence[Plan],
    models: Models,
    truth: Callable[[int], Bools],
    post: PostprocessSpec,
    mode: str,
    gates: Sequence[float],
    *,
    costs: Costs,
    calibration: Calibration,
    hidden_images: int,
    budget_s: float,
    margin: float,
    empty_pair: float = 1.0,
    on_plan_done: Callable[[int, int], None] | None = None,
) -> list[PlanPoint]:
    """Every plan's holdout score (tuned post-process and gates) and projected time."""
    n, c_n = len(cache.image_ids), cache.num_classes
    empty = np.zeros((c_n, n))
    for i in range(n):
        empty[:, i] = np.where(truth(i).reshape(c_n, -1).any(axis=1), 0.0, empty_pair)
    by_segmenters: dict[tuple[tuple[str, tuple[str, ...]], ...], list[Plan]] = {}
    for plan in plans:
        by_segmenters.setdefault(plan.segmenters, []).append(plan)
    points: list[PlanPoint] = []
    done = 0
    g = np.asarray(gates, dtype=np.float32)
    for segs, group in by_segmenters.items():
        dice = np.zeros((c_n, n))
        for start in range(0, n, BATCH):
            rows = list(range(start, min(n, start + BATCH)))
            probs, failed = ensemble(cache, Plan(segs, ()), models, rows)
            for j, i in enumerate(rows):
                if failed[j]:
                    dice[:, i] = empty[:, i]
                else:
                    dice[:, i] = _pair_dice(postprocess(probs[j], post), truth(i), empty_pair)[0]
        for plan in group:
            gate = gate_probs(cache, plan.classifiers, models.weights)
            if gate is None or mode == "off":
                let = np.ones((c_n, n), dtype=np.bool_)
            else:
                passed = gate >= g[None, :]
                let = passed.T if mode == "per_class" else np.broadcast_to(passed.any(axis=1), (c_n, n))
            segmented = float(let.any(axis=0).mean()) if n else 1.0
            score = float(np.where(let, dice, empty).mean())
            per_image = costs.per_image(plan, segmented)
            projection = project(
                {"fixed_s": costs.fixed_s, "per_image_s": per_image},
                hidden_images=hidden_images,
                budget_s=budget_s,
                calibration=calibration,
            )
            within = projection.projected_s <= budget_s * (1.0 - margin)
            points.append(PlanPoint(plan, score, per_image, projection.projected_s, within, segmented))
            done += 1
            if on_plan_done is not None:
                on_plan_done(done, len(plans))
    return points


def pareto_front(points: Sequence[PlanPoint]) -> list[PlanPoint]:
    """The plans no other plan beats on both score and time, fastest first."""
    front: list[PlanPoint] = []
    for p in sorted(points, key=lambda p: (p.projected_s, -p.score)):
        if not front or p.score > front[-1].score:
            front.append(p)
    return front


def recommend(points: Sequence[PlanPoint]) -> PlanPoint | None:
    """The best-scoring plan within the budget and its margin (the faster one on a tie)."""
    fitting = [p for p in points if p.within]
    if not fitting:
        return None
    return max(fitting, key=lambda p: (round(p.score, 9), -p.projected_s))
