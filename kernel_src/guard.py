"""The budget guard: after every batch, project the finish and step down before the budget breaks.

Projection: `elapsed + remaining_images * (classifiers + segmenters + rest)`, each part a cost
per image: the classifiers' stage seconds, each segmentation model's stage seconds, and the rest
of the batch's wall time (waiting for images, preprocessing, merging, post-processing, RLE,
writing). Each part is the MEDIAN of its per-image cost over a window of the last `window` (>= 3)
batches, so one slow batch (a garbage collection, a noisy neighbour) moves no estimate. The guard
never acts on one batch:

- the first batch is left out (warm-up: allocator, oneDNN kernels, cudnn autotuning), and so is
  the first batch after every step (new batch shapes are autotuned again); the window restarts
  after a step, since the batches before it ran with more views or models;
- it decides only once the window is full; before that it takes no step, with one exception
  that needs no estimate: a budget already spent (`elapsed >= budget_s`), where any projection
  is over (every step is taken and the rest is left empty at once).

When the projection is over `budget_s`, steps are taken in this order until it fits, each saving
only the measured cost of the segmentation model it touches (the classifiers and the rest stay):

1. `drop_tta`: one model at a time (lowest weight first), its views cut to identity alone
   (or to its first view when identity is not among them) - saves (V-1)/V of its cost;
2. `drop_model`: segmentation models, lowest weight first, always keeping one - saves its cost;
3. `empty_rest`: with nothing left to drop, images keep being predicted while the next batch
   still fits in the budget; then every image left gets empty masks without any prediction
   (its rows are still written).

Each step is recorded (`GuardStep`) for `profile.json`. The clock is injectable for tests.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import ModelSpec

ACTIONS = ("drop_tta", "drop_model", "empty_rest")
MIN_WINDOW = 3  # the fewest batches a projection is made from


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


@dataclass
class _Batch:
    """One batch's seconds, split: classifiers, each segmentation model, and the rest of its wall time."""

    images: int
    classifier_s: float
    model_s: dict[str, float]
    rest_s: float


@dataclass
class _Cost:
    """Seconds per image, split as `_Batch` is; `total` is what one more image costs."""

    classifiers: float
    models: dict[str, float]
    rest: float

    @property
    def total(self) -> float:
        return self.classifiers + sum(self.models.values()) + self.rest

    @classmethod
    def median(cls, batches: Sequence[_Batch]) -> _Cost:
        """Each part's median per-image cost over `batches` (a model absent from a batch cost 0 there)."""
        names = sorted({name for b in batches for name in b.model_s})
        return cls(
            classifiers=statistics.median(b.classifier_s / b.images for b in batches),
            models={n: statistics.median(b.model_s.get(n, 0.0) / b.images for b in batches) for n in names},
            rest=statistics.median(b.rest_s / b.images for b in batches),
        )


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
        window: int = MIN_WINDOW,
    ) -> None:
        if window < MIN_WINDOW:
            raise ValueError(f"the guard's window is {window} batches; it must be at least {MIN_WINDOW}")
        self.budget_s = budget_s
        self.started_at = started_at
        self.total_images = total_images
        self.clock = clock
        self.steps: list[GuardStep] = []
        self.empty_rest = False
        self._active = {m.name: _Active(m.name, m.weight, m.tta, i) for i, m in enumerate(segmenters)}
        self._window: deque[_Batch] = deque(maxlen=window)
        self._latest: _Batch | None = None  # the last batch, even one left out of the window
        self._warming = True  # the next batch is a warm-up one: left out of the window
        self._last: float | None = None

    def views(self, name: str) -> tuple[str, ...]:
        """The TTA views a segmentation model should use now."""
        return self._active[name].views

    @property
    def active(self) -> list[str]:
        """Segmentation models still in use, in spec order."""
        return [m.name for m in sorted(self._active.values(), key=lambda m: m.order)]

    def forget(self, name: str) -> None:
        """A model dropped for another reason (it failed): no longer a candidate, and its measured
        seconds leave the estimate (they will not recur)."""
        self._active.pop(name, None)
        for batch in (*self._window, *([self._latest] if self._latest else [])):
            batch.model_s.pop(name, None)

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

    def after_batch(
        self, images_done: int, batch_images: int, model_s: Mapping[str, float], classifier_s: float = 0.0
    ) -> list[GuardStep]:
        """Record a finished batch (`model_s`: seconds each segmentation model spent on it;
        `classifier_s`: seconds all classifiers spent on it) and return the steps taken now
        (already applied to `views`/`active`/`empty_rest`)."""
        now = self.clock()
        wall = now - (self._last if self._last is not None else now)
        self._last = now
        if batch_images > 0:
            rest = max(wall - classifier_s - sum(model_s.values()), 0.0)
            self._latest = _Batch(batch_images, classifier_s, dict(model_s), rest)
            if self._warming:
                self._warming = False
            else:
                self._window.append(self._latest)
        remaining = self.total_images - images_done
        elapsed = now - self.started_at
        if self.empty_rest or remaining <= 0:
            return []
        if len(self._window) == self._window.maxlen:
            cost = _Cost.median(self._window)
        elif elapsed >= self.budget_s and self._latest is not None:  # spent: no estimate needed
            cost = _Cost.median([self._latest])
        else:
            return []
        taken: list[GuardStep] = []

        while (projected := elapsed + remaining * cost.total) > self.budget_s:
            step = self._next_step()
            if step is None:
                break
            action, m = step
            if action == "drop_tta":
                old = m.views
                m.views = _reduced(old)
                cost.models[m.name] = cost.models.get(m.name, 0.0) * len(m.views) / len(old)
                detail = f"{m.name}: TTA {list(old)} -> {list(m.views)}"
            else:
                del self._active[m.name]
                cost.models.pop(m.name, None)
                detail = f"{m.name} (weight {m.weight:g}) dropped; {len(self._active)} left"
            views = m.views if action == "drop_tta" else ()
            taken.append(GuardStep(images_done, elapsed, projected, action, detail, m.name, views))

        if projected > self.budget_s and elapsed + batch_images * cost.total > self.budget_s:
            self.empty_rest = True
            detail = f"no time left: the {remaining} remaining images get empty masks"
            taken.append(GuardStep(images_done, elapsed, projected, "empty_rest", detail))
        if taken:
            self._window.clear()
            self._warming = True
            self.steps.extend(taken)
        return taken

    def to_dict(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "steps": [s.to_dict() for s in self.steps]}
