"""The ensemble plans: candidates, per-model per-view costs from profile.json, the Pareto front and
the recommendation within the budget's margin."""

from __future__ import annotations

import pytest

from bundler.tune.evidence import Plan
from bundler.tune.plan import PlanPoint, candidate_plans, costs_from_profile, pareto_front, recommend
from kernel_src.spec import InferenceSpec

SPEC = InferenceSpec.from_dict(
    {
        "classifiers": [{"name": "cls", "kind": "torchscript", "file": "cls.pt"}],
        "segmenters": [
            {"name": "a", "kind": "torchscript", "file": "a.pt", "tta": ["identity", "hflip"]},
            {"name": "b", "kind": "torchscript", "file": "b.pt"},
        ],
    }
)


def test_candidates_keep_view_prefixes_with_and_without_the_gate() -> None:
    plans = candidate_plans(SPEC)
    segmenter_parts = {p.segmenters for p in plans}
    assert segmenter_parts == {
        (("a", ("identity",)),),
        (("a", ("identity", "hflip")),),
        (("b", ("identity",)),),
        (("a", ("identity",)), ("b", ("identity",))),
        (("a", ("identity", "hflip")), ("b", ("identity",))),
    }
    assert len(plans) == 2 * len(segmenter_parts)  # each gated by the classifier and ungated
    assert {p.classifiers for p in plans} == {("cls",), ()}


def test_costs_come_per_model_and_view_from_the_profile() -> None:
    profile = {
        "images": 10,
        "per_image_s": 1.0,
        "fixed_s": 20.0,
        "gating": {"images_segmented": 5},
        "stages": {
            "classifier:cls": {"seconds": 1.0},
            "segmenter:a": {"seconds": 2.0},  # 5 segmented images x 2 views: 0.2 s per image and view
            "segmenter:b": {"seconds": 0.5},
            "tta_merge": {"seconds": 0.0},
        },
    }
    costs = costs_from_profile(profile, SPEC, "profile.json")
    assert costs is not None
    assert costs.classifier_s["cls"] == pytest.approx(0.1)
    assert costs.segmenter_view_s == pytest.approx({"a": 0.2, "b": 0.1})
    full = Plan((("a", ("identity", "hflip")), ("b", ("identity",))), ("cls",))
    # the measured run: half the images segmented -> the whole per-image cost is explained
    assert costs.per_image(full, 0.5) == pytest.approx(1.0)
    assert costs.per_image(Plan((("b", ("identity",)),), ()), 1.0) == pytest.approx(1.0 - 0.1 - 0.25 + 0.1)
    assert costs_from_profile({"images": 0, "per_image_s": 0}, SPEC, "x") is None


def _point(score: float, projected: float, within: bool) -> PlanPoint:
    return PlanPoint(Plan((("a", ("identity",)),), ()), score, projected / 100, projected, within, 1.0)


def test_pareto_front_and_recommendation() -> None:
    points = [_point(0.90, 100, True), _point(0.92, 200, True), _point(0.91, 300, True), _point(0.95, 900, False)]
    front = pareto_front(points)
    assert [(p.score, p.projected_s) for p in front] == [(0.90, 100), (0.92, 200), (0.95, 900)]
    best = recommend(points)
    assert best is not None and best.score == 0.92
    assert recommend([_point(0.9, 100, False)]) is None

