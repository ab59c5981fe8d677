from __future__ import annotations

import pytest

from kernel_src.guard import BudgetGuard
from kernel_src.spec import ModelSpec


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


def test_no_step_while_the_projection_fits() -> None:
    clock = Clock()
    g = guard(clock, budget=200.0)
    clock.now += 10.0  # 10 images at 1 s each: projected 10 + 90 = 100 s
    assert g.after_batch(10, 10, {"a": 3.0, "b": 2.0, "c": 1.0}) == []
    assert g.views("a") == ("identity", "hflip", "vflip") and g.active == ["a", "b", "c"] and not g.empty_rest


def test_drops_tta_lowest_weight_first_until_it_fits() -> None:
    clock = Clock()
    g = guard(clock, budget=95.0)
    clock.now += 10.0  # projected 100 s; per image a=0.3 s, b=0.2 s, c=0.1 s
    steps = g.after_batch(10, 10, {"a": 3.0, "b": 2.0, "c": 1.0})
    # b (weight 0.5, later than nothing else reducible) first: 2 views -> 1 saves 0.1 s/image -> 91 s fits.
    assert [(s.action, s.model) for s in steps] == [("drop_tta", "b")]
    assert g.views("b") == ("hflip",) and g.views("a") == ("identity", "hflip", "vflip")
    assert steps[0].projected_s == pytest.approx(100.0) and steps[0].after_images == 10
    assert steps[0].elapsed_s == pytest.approx(10.0)
    assert steps[0].to_dict().keys() == {"after_images", "elapsed_s", "projected_s", "action", "detail"}


def test_then_drops_models_lowest_weight_first_keeping_one() -> None:
    clock = Clock()
    g = guard(clock, budget=40.0)
    clock.now += 10.0  # projected 100 s; needs 0.33 s/image from 1 s
    steps = g.after_batch(10, 10, {"a": 3.0, "b": 2.0, "c": 1.0})
    assert [(s.action, s.model) for s in steps] == [
        ("drop_tta", "b"),  # -0.1 -> 0.9
        ("drop_tta", "a"),  # -0.2 -> 0.7
        ("drop_model", "c"),  # weight 0.5, later in the spec than b: -0.1 -> 0.6
        ("drop_model", "b"),  # -0.1 (its cost after TTA) ... -> 0.5
    ]
    assert g.active == ["a"] and g.views("a") == ("identity",)
    # 10 + 90 * 0.5 = 55 s > 40 s, but the next batch (10 images, 5 s) still fits: keep predicting.
    assert not g.empty_rest
    projections = [s.projected_s for s in steps]
    assert projections == sorted(projections, reverse=True)


def test_empty_rest_when_the_next_batch_would_break_the_budget() -> None:
    clock = Clock()
    g = guard(clock, budget=60.0, total=100)
    clock.now += 50.0  # 10 images took 50 s: hopeless
    steps = g.after_batch(10, 10, {"a": 30.0, "b": 10.0, "c": 5.0})
    assert [s.action for s in steps][-1] == "empty_rest"
    assert [s.action for s in steps][:4] == ["drop_tta", "drop_tta", "drop_model", "drop_model"]
    assert g.empty_rest
    clock.now += 1.0
    assert g.after_batch(20, 10, {}) == []  # nothing more to decide
    assert g.to_dict()["steps"][-1]["action"] == "empty_rest"
    assert g.to_dict()["budget_s"] == 60.0


def test_window_restarts_after_a_step() -> None:
    clock = Clock()
    g = guard(clock, budget=70.0)
    clock.now += 10.0  # projected 100 s -> drop TTA of b and a, drop c: 0.6 s/image, 64 s
    assert [s.action for s in g.after_batch(10, 10, {"a": 3.0, "b": 2.0, "c": 1.0})] == [
        "drop_tta",
        "drop_tta",
        "drop_model",
    ]
    # The next batch is fast (0.5 s/image): projected from it alone, 15 + 80 * 0.5 = 55 s fits.
    # Averaged with the slow batch before the step it would be 15 + 80 * 0.75 = 75 s: a step.
    clock.now += 5.0
    assert g.after_batch(20, 10, {"a": 2.0, "b": 1.0}) == []
    assert g.active == ["a", "b"]


def test_a_forgotten_model_is_never_stepped_on() -> None:
    clock = Clock()
    g = guard(clock, budget=40.0)
    g.forget("b")
    clock.now += 10.0
    steps = g.after_batch(10, 10, {"a": 3.0, "c": 1.0})
    assert "b" not in {s.model for s in steps}
    assert g.active == ["a"]


def test_no_projection_after_the_last_image() -> None:
    clock = Clock()
    g = guard(clock, budget=1.0, total=10)
    clock.now += 100.0
    assert g.after_batch(10, 10, {"a": 1.0}) == []
