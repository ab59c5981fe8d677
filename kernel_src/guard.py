"""The budget guard: after every batch, project the finish and step down before the budget breaks.

Projection: `elapsed + remaining_images * per_image_cost`, where the per-image cost is the wall
time of the last few batches (since the last step down) divided by their images. When the
projection is over `budget_s`, steps are taken in this order until it fits, each one estimated
from the measured per-image seconds of the segmentation model it touches:

1. `drop_tta`: one model at a time (lowest weight first), its views cut to identity alone
   (or to its first view when identity is not among them) - saves (V-1)/V of its cost;
2. `drop_model`: segmentation models, lowest weight first, always keeping one - saves its cost;
3. `empty_rest`: with nothing left to drop, images keep being predicted while the next batch
   still fits in the budget; then every image left gets empty masks without any prediction
   (its rows are still written).

Each step is recorded (`GuardStep`) for `profile.json`. The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import ModelSpec

ACTIONS = ("drop_tta", "drop_model", "empty_rest")


@dataclass(frozen=True)
class GuardStep:
    after_images: int
    elapsed_s: float
    projected_s: float  # the projection that called for this step
    action: str  # one of ACTIONS
    detail: str
    model: str | None = None  # the segmentation model touched (None for empty_rest)
    views: tuple[str, ...] = ()  # its views after a drop_tta

    def to_dict(self) -> dict[str, Any]:
        return {
            "after_images": self.after_images,
            "elapsed_s": round(self.elapsed_s, 3),
            "projected_s": round(self.projected_s, 3),
            "action": self.action,
            "detail": self.detail,
        }


@dataclass
class _Active:
    name: str
    weight: float
    views: tuple[str, ...]
    order: int  # position in the spec: among equal weights, later models go first


def _reduced(views: tuple[str, ...]) -> tuple[str, ...]:
    return ("identity",) if "identity" in views else views[:1]


class BudgetGuard:
    """Watches the time budget of a run over `total_images` images (see the module docstring)."""

    def __init__(
        self,
        budget_s: float,
        started_at: float,
        total_images: int,
        *,
        segmenters: Sequence[ModelSpec] = (),
        clock: Callable[[], float] = time.time,
        window: int = 3,
    ) -> None:
        self.budget_s = budget_s
        self.started_at = started_at
        self.total_images = total_images
        self.clock = clock
        self.steps: list[GuardStep] = []
        self.empty_rest = False
        self._active = {m.name: _Active(m.name, m.weight, m.tta, i) for i, m in enumerate(segmenters)}
        self._window: deque[tuple[int, float, dict[str, float]]] = deque(maxlen=max(1, window))
        self._last: float | None = None

    def views(self, name: str) -> tuple[str, ...]:
        """The TTA views a segmentation model should use now."""
        return self._active[name].views

    @property
    def active(self) -> list[str]:
        """Segmentation models still in use, in spec order."""
        return [m.name for m in sorted(self._active.values(), key=lambda m: m.order)]

    def forget(self, name: str) -> None:
        """A model dropped for another reason (it failed): no longer a candidate."""
        self._active.pop(name, None)

    def start(self) -> None:
        """Call as the first batch starts: its wall time is measured from here."""
        self._last = self.clock()

    def _next_step(self) -> tuple[str, _Active] | None:
        by_priority = sorted(self._active.values(), key=lambda m: (m.weight, -m.order))
        for m in by_priority:
            if _reduced(m.views) != m.views:
                return "drop_tta", m
        if len(by_priority) > 1:
            return "drop_model", by_priority[0]
        return None

    def after_batch(self, images_done: int, batch_images: int, model_s: Mapping[str, float]) -> list[GuardStep]:
        """Record a finished batch (`model_s`: seconds each segmentation model spent on it) and
        return the steps taken now (already applied to `views`/`active`/`empty_rest`)."""
        now = self.clock()
        wall = now - (self._last if self._last is not None else now)
        self._last = now
        if batch_images > 0:
            self._window.append((batch_images, wall, dict(model_s)))
        remaining = self.total_images - images_done
        if self.empty_rest or remaining <= 0 or not self._window:
            return []
        images = sum(n for n, _, _ in self._window)
        cost = sum(w for _, w, _ in self._window) / images
        per_model: dict[str, float] = {}
        for _, _, seconds in self._window:
            for name, s in seconds.items():
                per_model[name] = per_model.get(name, 0.0) + s / images
        elapsed = now - self.started_at
        taken: list[GuardStep] = []

        def record(action: str, detail: str, model: str | None = None, views: tuple[str, ...] = ()) -> None:
            projected = elapsed + remaining * cost
            taken.append(GuardStep(images_done, elapsed, projected, action, detail, model, views))

        while elapsed + remaining * cost > self.budget_s:
            step = self._next_step()
            if step is None:
                break
            action, m = step
            model_cost = min(per_model.get(m.name, 0.0), cost)
            if action == "drop_tta":
                old = m.views
                m.views = _reduced(old)
                saving = model_cost * (1 - len(m.views) / len(old))
                per_model[m.name] = model_cost - saving
                record(action, f"{m.name}: TTA {list(old)} -> {list(m.views)}", m.name, m.views)
            else:
                del self._active[m.name]
                saving = model_cost
                record(action, f"{m.name} (weight {m.weight:g}) dropped; {len(self._active)} left", m.name)
            cost = max(cost - saving, 0.0)

        if elapsed + remaining * cost > self.budget_s and elapsed + batch_images * cost > self.budget_s:
            self.empty_rest = True
            record("empty_rest", f"no time left: the {remaining} remaining images get empty masks")
        if taken:
            self._window.clear()
            self.steps.extend(taken)
        return taken

    def to_dict(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "steps": [s.to_dict() for s in self.steps]}
