"""Ordinal cut-points tuned for quadratic weighted kappa, with k-fold CV (issue 22 item 5, the
ordinal part).

An ordinal task predicts one value per image and cuts it into grades: a value below `cuts[0]` is
grade 0, one at or above `cuts[g-1]` and below `cuts[g]` grade g (kernel_src's `[task] cuts`).
Moving the cuts away from the halfway points is the usual trick of grading competitions: a model
trained with a squared loss pulls its values toward the mean, and kappa rewards undoing that.

`choose_cuts(values, grades)` searches by coordinate ascent: each cut in turn takes the candidate
of highest kappa among the distinct midpoints of the sorted values between its neighbours (the only
places where the grades change), for a few rounds or until nothing moves; ties keep the current
cut. `cross_validate_cuts` splits the rows into k seeded folds (the tune stage's `fold_rows`),
chooses on k-1 folds and scores the held-out one, against the current cuts on the same fold: no
fold's labels choose its own cuts. The cuts to ship are `choose_cuts` on every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bundler.errors import TuneError
from bundler.scoring.metrics import quadratic_weighted_kappa
from bundler.tune.search import fold_rows

ROUNDS = 4
MAX_CANDIDATES = 256  # per cut and round: evenly spaced among the midpoints when there are more

Floats = npt.NDArray[np.float64]
Grades = npt.NDArray[np.int64]


def default_cuts(grades: int) -> tuple[float, ...]:
    """The nearest grade: 0.5, 1.5, ..., grades - 1.5."""
    return tuple(g + 0.5 for g in range(grades - 1))


def apply_cuts(values: npt.ArrayLike, cuts: Sequence[float]) -> Grades:
    """Each value's grade: how many cuts are at or below it."""
    graded: Grades = np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(values), side="right").astype(
        np.int64
    )
    return graded


def _kappa(values: Floats, truth: Grades, cuts: Sequence[float]) -> float:
    return quadratic_weighted_kappa(truth, apply_cuts(values, cuts))


def _checked(values: npt.ArrayLike, grades: npt.ArrayLike) -> tuple[Floats, Grades]:
    v = np.asarray(values, dtype=np.float64)
    truth = np.asarray(grades, dtype=np.int64)
    if len(v) != len(truth) or len(v) < 2:
        raise TuneError(f"ordinal cuts: {len(v)} values for {len(truth)} grades; at least 2 labelled rows")
    if not np.isfinite(v).all():
        raise TuneError("ordinal cuts: a predicted value is NaN or infinite; fix the cache before tuning")
    return v, truth


def choose_cuts(values: npt.ArrayLike, grades: npt.ArrayLike, start: Sequence[float]) -> tuple[float, ...]:
    """The cuts of highest kappa on these rows, by coordinate ascent from `start`."""
    v, truth = _checked(values, grades)
    cuts = [float(c) for c in start]
    points = np.unique(v)
    midpoints = (points[1:] + points[:-1]) / 2 if len(points) > 1 else points
    best = _kappa(v, truth, cuts)
    for _ in range(ROUNDS):
        moved = False
        for i in range(len(cuts)):
            low = cuts[i - 1] if i > 0 else -np.inf
            high = cuts[i + 1] if i + 1 < len(cuts) else np.inf
            candidates = midpoints[(midpoints > low) & (midpoints < high)]
            if len(candidates) > MAX_CANDIDATES:
                candidates = candidates[np.linspace(0, len(candidates) - 1, MAX_CANDIDATES).astype(np.int64)]
            for c in candidates:
                trial = [*cuts[:i], float(c), *cuts[i + 1 :]]
                score = _kappa(v, truth, trial)
                if score > best + 1e-12:
                    best, cuts, moved = score, trial, True
        if not moved:
            break
    return tuple(cuts)


@dataclass(frozen=True)
class CutsFold:
    rows: int
    current: float  # held-out kappa of the current cuts
    tuned: float  # held-out kappa of the cuts chosen on the other folds
    cuts: tuple[float, ...]

    @property
    def gain(self) -> float:
        return self.tuned - self.current


@dataclass(frozen=True)
class CutsResult:
    current_cuts: tuple[float, ...]
    cuts: tuple[float, ...]  # chosen on every row: what to ship
    folds: tuple[CutsFold, ...]

    @property
    def current(self) -> float:
        return float(np.mean([f.current for f in self.folds]))

    @property
    def tuned(self) -> float:
        return float(np.mean([f.tuned for f in self.folds]))

    def spread(self) -> tuple[float, float, float]:
        """(standard deviation, min, max) of the per-fold gains (tuned - current)."""
        gains = np.asarray([f.gain for f in self.folds])
        return float(gains.std()), float(gains.min()), float(gains.max())


def cross_validate_cuts(
    values: npt.ArrayLike, grades: npt.ArrayLike, current: Sequence[float], folds: int = 5, seed: int = 0
) -> CutsResult:
    """Current vs tuned cuts, each fold scored with cuts chosen on the others; and the cuts on all."""
    v, truth = _checked(values, grades)
    if folds < 2 or folds > len(v):
        raise TuneError(f"ordinal cuts: {folds} folds for {len(v)} labelled rows; between 2 and the rows")
    parts = fold_rows(len(v), folds, seed)
    result = []
    for held in parts:
        train = np.setdiff1d(np.arange(len(v)), held)
        chosen = choose_cuts(v[train], truth[train], current)
        result.append(
            CutsFold(len(held), _kappa(v[held], truth[held], current), _kappa(v[held], truth[held], chosen), chosen)
        )
    return CutsResult(tuple(float(c) for c in current), choose_cuts(v, truth, current), tuple(result))
