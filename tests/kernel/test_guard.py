"""The budget guard with an injected clock: every batch below is 10 images of a 100-image run.

The guard's first batch is a warm-up one (left out), and it decides only from a full window of
3 batches, so the first projection comes after batch 4 (40 images). `NORMAL` is a batch at
1 s/image: segmenters a 0.3, b 0.2, c 0.1 s/image and 0.4 s/image of the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kernel_src.run as run_module
from kernel_src.guard import BudgetGuard, GuardStep
from kernel_src.spec import ModelSpec
from tests.tiny import make_tiny_models, tiny_spec, write_image, write_sample


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def seg(name: str, weight: float, tta: tuple[str, ...]) -> ModelSpec:
    return ModelSpec(
        name=name, kind="smp", file=f"{name}.safetensors", arch="Unet", encoder="x", tta=tta, weight=weight
    )


MODELS = [
    seg("a", 1.0, ("identity", "hflip", "vflip")),
    seg("b", 0.5, ("hflip", "vflip")),
    seg("c", 0.5, ("identity",)),
]


def guard(clock: Clock, budget: float, total: int = 100) -> BudgetGuard:
    g = BudgetGuard(budget, started_at=clock.now, total_images=total, segmenters=MODELS, clock=clock)
    g.start()
    return g


NORMAL = (10.0, {"a": 3.0, "b": 2.0, "c": 1.0})
Batch = tuple[float, Mapping[str, float]]  # (wall seconds, seconds per segmentation model)


def feed(g: BudgetGuard, clock: Clock, batches: Sequence[Batch], done: int = 0, **kw: float) -> list[GuardStep]:
    """Run `batches` of 10 images through the guard; every one but the last must take no step.
    Returns the last one's steps."""
    steps: list[GuardStep] = []
    for i, (wall, model_s) in enumerate(batches):
        if i:
            assert steps == [], f"a step after batch {i} of {len(batches)}"
        clock.now += wall
        done += 10
        steps = g.after_batch(done, 10, model_s, **kw)
    return steps


def test_no_step_while_the_projection_fits() -> None:
    clock = Clock()
    g = guard(clock, budget=200.0)
    assert feed(g, clock, [NORMAL] * 10) == []  # projected 100 s all along
    assert g.views("a") == ("identity", "hflip", "vflip") and g.active == ["a", "b", "c"] and not g.empty_rest


def test_a_window_shorter_than_three_batches_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        BudgetGuard(10.0, 0.0, 10, window=2)


def test_drops_tta_lowest_weight_first_until_it_fits() -> None:
    clock = Clock()
    g = guard(clock, budget=95.0)
    steps = feed(g, clock, [NORMAL] * 4)  # after 40 images: 40 + 60 x 1 = 100 s
    # b (weight 0.5, later than nothing else reducible) first: 2 views -> 1 saves 0.1 s/image -> 94 s fits.
    assert [(s.action, s.model) for s in steps] == [("drop_tta", "b")]
    assert g.views("b") == ("hflip",) and g.views("a") == ("identity", "hflip", "vflip")
    assert steps[0].projected_s == pytest.approx(100.0) and steps[0].after_images == 40
    assert steps[0].elapsed_s == pytest.approx(40.0) and steps[0].views == ("hflip",)
    assert steps[0].to_dict().keys() == {"after_images", "elapsed_s", "projected_s", "action", "detail"}


def test_then_drops_models_lowest_weight_first_keeping_one() -> None:
    clock = Clock()
    g = guard(clock, budget=65.0)
    steps = feed(g, clock, [NORMAL] * 4)  # projected 100 s; would need 0.42 s/image from 1 s
    assert [(s.action, s.model) for s in steps] == [
        ("drop_tta", "b"),  # -0.1 -> 0.9
        ("drop_tta", "a"),  # -0.2 -> 0.7
        ("drop_model", "c"),  # weight 0.5, later in the spec than b: -0.1 -> 0.6
        ("drop_model", "b"),  # -0.1 (its cost after TTA) -> 0.5
    ]
    assert g.active == ["a"] and g.views("a") == ("identity",)
    assert [s.projected_s for s in steps] == pytest.approx([100.0, 94.0, 82.0, 76.0])
    # 40 + 60 x 0.5 = 70 s > 65 s, but the next batch (10 images, 5 s) still fits: keep predicting.
    assert not g.empty_rest


def test_empty_rest_when_the_next_batch_would_break_the_budget() -> None:
    clock = Clock()
    g = guard(clock, budget=210.0, total=100)
    slow = (50.0, {"a": 30.0, "b": 10.0, "c": 5.0})  # 5 s/image: hopeless
    steps = feed(g, clock, [slow] * 4)  # 200 s elapsed: 200 + 60 x 5 = 500 s
    assert [s.action for s in steps] == ["drop_tta", "drop_tta", "drop_model", "drop_model", "empty_rest"]
    # Left after the four steps: a at 1 s/image and the rest's 0.5: 200 + 60 x 1.5 = 290 s, and
    # the next batch alone would end at 215 s, past 210 s.
    assert steps[-1].projected_s == pytest.approx(290.0)
    assert g.empty_rest
    clock.now += 1.0
    assert g.after_batch(50, 10, {}) == []  # nothing more to decide
    assert g.to_dict()["steps"][-1]["action"] == "empty_rest"
    assert g.to_dict()["budget_s"] == 210.0


def test_the_first_batch_alone_takes_no_step() -> None:
    clock = Clock()
    g = guard(clock, budget=200.0)
    warm_up = (60.0, {"a": 40.0, "b": 10.0, "c": 5.0})  # 6 s/image: from it alone, 60 + 90 x 6 = 600 s
    assert feed(g, clock, [warm_up]) == []
    assert feed(g, clock, [NORMAL] * 3, done=10) == []  # 90 + 60 x 1 = 150 s: it fits
    assert g.steps == [] and g.active == ["a", "b", "c"]


def test_one_slow_batch_among_normal_ones_takes_no_step() -> None:
    clock = Clock()
    g = guard(clock, budget=150.0)
    slow = (50.0, {"a": 15.0, "b": 10.0, "c": 5.0})  # 5 s/image, once
    # After the slow batch: 80 + 60 x 1 = 140 s on the median; a mean over the window (2.33 s/image)
    # would project 220 s and step down.
    assert feed(g, clock, [NORMAL, NORMAL, NORMAL, slow, *[NORMAL] * 6]) == []
    assert g.steps == [] and not g.empty_rest


def test_a_sustained_slowdown_steps_down() -> None:
    clock = Clock()
    g = guard(clock, budget=150.0)
    slow = (50.0, {"a": 15.0, "b": 10.0, "c": 5.0})
    assert feed(g, clock, [NORMAL, NORMAL, NORMAL, slow]) == []
    steps = feed(g, clock, [slow], done=40)  # two slow batches of three: the median is 5 s/image
    assert steps and steps[0].after_images == 50 and steps[0].projected_s == pytest.approx(130.0 + 50 * 5.0)


def test_the_projection_includes_the_classifiers_and_never_saves_them() -> None:
    clock = Clock()
    g = guard(clock, budget=45.0)
    # 1 s/image: classifiers 0.5, a 0.3, b 0.1, c 0.05, the rest 0.05.
    steps = feed(g, clock, [(10.0, {"a": 3.0, "b": 1.0, "c": 0.5})] * 4, classifier_s=5.0)
    assert [s.action for s in steps] == ["drop_tta", "drop_tta", "drop_model", "drop_model", "empty_rest"]
    # All that dropping saves is segmenter time: what is left is the classifiers' 0.5 s/image, a's
    # one view (0.1) and the rest (0.05): 40 + 60 x 0.65 = 79 s, and the next batch ends past 45 s.
    assert [s.projected_s for s in steps] == pytest.approx([100.0, 97.0, 85.0, 82.0, 79.0])
    assert g.active == ["a"] and g.empty_rest


def test_window_restarts_after_a_step() -> None:
    clock = Clock()
    g = guard(clock, budget=81.0)
    assert [s.action for s in feed(g, clock, [NORMAL] * 4)] == ["drop_tta", "drop_tta", "drop_model"]  # -> 76 s
    # Then a slow warm-up batch for the new shapes (1.5 s/image: from it alone, 55 + 50 x 1.5 = 130 s),
    # and fast batches (0.5 s/image): none of them counts before a new window is full, and that
    # window holds only batches run without c: 70 + 20 x 0.5 = 80 s fits.
    after_step = [(15.0, {"a": 10.0, "b": 4.0}), *[(5.0, {"a": 3.0, "b": 1.0})] * 3]
    assert feed(g, clock, after_step, done=40) == []
    assert g.active == ["a", "b"]


def test_a_forgotten_model_is_never_stepped_on() -> None:
    clock = Clock()
    g = guard(clock, budget=55.0)
    g.forget("b")
    steps = feed(g, clock, [(10.0, {"a": 3.0, "c": 1.0})] * 4)  # 100 s -> a's TTA 88 s -> c dropped 82 s
    assert [(s.action, s.model) for s in steps] == [("drop_tta", "a"), ("drop_model", "c")]
    assert g.active == ["a"]


def test_a_forgotten_models_seconds_leave_the_estimate() -> None:
    clock = Clock()
    g = guard(clock, budget=95.0)
    assert feed(g, clock, [NORMAL] * 3) == []
    g.forget("b")  # it failed: its 0.2 s/image will not recur
    # Window: two batches at 0.8 s/image without b, one measured so: 38 + 60 x 0.8 = 86 s fits
    # (counting b's old seconds, 98 s would not).
    assert feed(g, clock, [(8.0, {"a": 3.0, "c": 1.0})], done=30) == []


def test_a_spent_budget_needs_no_window() -> None:
    clock = Clock()
    g = guard(clock, budget=5.0)
    steps = feed(g, clock, [NORMAL])  # 10 s elapsed of 5 s: whatever the estimate, it is over
    assert [s.action for s in steps] == ["drop_tta", "drop_tta", "drop_model", "drop_model", "empty_rest"]
    assert g.empty_rest


def test_no_projection_after_the_last_image() -> None:
    clock = Clock()
    g = guard(clock, budget=1.0, total=10)
    clock.now += 100.0
    assert g.after_batch(10, 10, {"a": 1.0}) == []


def test_the_engine_passes_the_classifiers_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[dict[str, float], float]] = []
    original = BudgetGuard.after_batch

    def spy(self: BudgetGuard, done: int, n: int, model_s: Mapping[str, float], classifier_s: float = 0.0) -> Any:
        calls.append((dict(model_s), classifier_s))
        return original(self, done, n, model_s, classifier_s)

    monkeypatch.setattr(BudgetGuard, "after_batch", spy)
    classifiers, segmenters = make_tiny_models(tmp_path / "bundle")
    spec = tiny_spec(tmp_path / "bundle", classifiers=classifiers[:1], segmenters=segmenters[:1], batch_size=2)
    ids = [f"img{i}.jpg" for i in range(4)]
    for i, image_id in enumerate(ids):
        write_image(tmp_path / "test" / image_id, np.full((64, 256, 3), 60 * i, np.uint8))
    sample = write_sample(tmp_path / "sample.csv", ids)
    result = run_module.run(
        spec, bundle_dir=tmp_path / "bundle", test_dir=tmp_path / "test", sample_submission=sample,
        out_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    stages = result.profile["stages"]
    assert len(calls) == 2 and all(set(m) == {segmenters[0].name} for m, _ in calls)
    assert sum(c for _, c in calls) == pytest.approx(stages[f"classifier:{classifiers[0].name}"]["seconds"], abs=1e-3)
    assert sum(m[segmenters[0].name] for m, _ in calls) == pytest.approx(
        stages[f"segmenter:{segmenters[0].name}"]["seconds"], abs=1e-3
    )
