"""The search: per class pixel threshold, min_component, min_area and gate, with k-fold CV.

A `Choice` is one setting of everything tuned: the gating mode (off, per_class, per_image), one
class per pixel or not, and per class the indices into the `Grid` of its pixel threshold,
min_component, min_area and gate. `choose(evidence, rows)` picks, from the pairs of the images
at `rows` ONLY, the choice of highest mean Dice:

- off and per_class: each class independently; with a gate g, an image whose classifier
  probability is below g gets the empty mask's Dice instead (with the images sorted by that
  probability, every gate's total for every candidate comes from one cumulative sum);
- per_image: an image keeps every class when any class reaches its gate, which couples the
  classes' gates: coordinate ascent over the classes' gates (two rounds), each class's
  post-process the best for the images let through.

Ties keep the current mode and variant, and the lowest grid values; a gated mode whose every gate
is 0 (everything passes) becomes "off" (the same masks without running the classifiers). `cross_validate` splits the
images into k folds (seeded), chooses on k-1 folds, scores the chosen setting on the held-out
fold, and reports current vs tuned per fold; no fold's labels are used to choose its setting.
The values to ship are `choose` on every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from bundler.tune.evidence import Evidence, Grid
from kernel_src.spec import InferenceSpec, PostprocessSpec

Rows = npt.NDArray[np.int64]
COORDINATE_ROUNDS = 2


@dataclass(frozen=True)
class Choice:
    """Indices into the grid per class: (threshold, min_component, min_area, gate)."""

    mode: str
    variant: int  # 0: plain, 1: one class per pixel
    threshold: tuple[int, ...]
    min_component: tuple[int, ...]
    min_area: tuple[int, ...]
    gate: tuple[int, ...]

    def postprocess(self, grid: Grid) -> PostprocessSpec:
        """The kernel's post-process spec of this choice."""
        return PostprocessSpec(
            threshold=tuple(grid.thresholds[k] for k in self.threshold),
            min_component=tuple(grid.min_components[m] for m in self.min_component),
            min_area=tuple(grid.min_areas[a] for a in self.min_area),
            one_class_per_pixel=self.variant == 1,
        )

    def gates(self, grid: Grid) -> list[float]:
        return [grid.gates[g] for g in self.gate]

    def values(self, grid: Grid) -> dict[str, object]:
        """The bundle.toml values of this choice."""
        return {
            "mode": self.mode,
            "one_class_per_pixel": self.variant == 1,
            "threshold": [grid.thresholds[k] for k in self.threshold],
            "min_component": [grid.min_components[m] for m in self.min_component],
            "min_area": [grid.min_areas[a] for a in self.min_area],
            "thresholds": [grid.gates[g] for g in self.gate],
        }


def current_choice(spec: InferenceSpec, grid: Grid, has_classifiers: bool) -> Choice:
    """The settings of `spec` as a choice (the grid holds every current value)."""
    post, gating = spec.postprocess, spec.gating
    mode = gating.mode if has_classifiers else "off"
    gates = gating.thresholds or (0.5,) * spec.num_classes
    return Choice(
        mode=mode,
        variant=1 if post.one_class_per_pixel and spec.num_classes > 1 else 0,
        threshold=tuple(grid.thresholds.index(round(v, 4)) for v in post.threshold),
        min_component=tuple(grid.min_components.index(int(v)) for v in post.min_component),
        min_area=tuple(grid.min_areas.index(int(v)) for v in post.min_area),
        gate=tuple(grid.gates.index(round(v, 4)) for v in gates),
    )


def allowed(ev: Evidence, choice_mode: str, gates: Sequence[int], rows: Rows) -> npt.NDArray[np.bool_]:
    """[C, n]: the pairs the gate lets through."""
    c_n = ev.empty.shape[0]
    if choice_mode == "off" or ev.gate is None:
        return np.ones((c_n, len(rows)), dtype=np.bool_)
    g = np.asarray([ev.grid.gates[i] for i in gates], dtype=np.float32)
    passed: npt.NDArray[np.bool_] = np.asarray(ev.gate[rows] >= g[None, :])  # [n, C]
    if choice_mode == "per_image":
        any_class: npt.NDArray[np.bool_] = np.asarray(passed.any(axis=1))
        return np.broadcast_to(any_class[None, :], (c_n, len(rows))).copy()
    result: npt.NDArray[np.bool_] = passed.T.copy()
    return result


def pair_dice(ev: Evidence, choice: Choice, rows: Rows) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """(Dice [C, n], predicted non-empty [C, n]) of `choice` on the images at `rows`."""
    let = allowed(ev, choice.mode, choice.gate, rows)
    c_n = ev.empty.shape[0]
    dice = np.zeros((c_n, len(rows)))
    nonempty = np.zeros((c_n, len(rows)), dtype=np.bool_)
    for c in range(c_n):
        k, m, a = choice.threshold[c], choice.min_component[c], choice.min_area[c]
        d = ev.dice[choice.variant, c, k, m, a][rows]
        ne = ev.nonempty[choice.variant, c, k, m, a][rows]
        dice[c] = np.where(let[c], d, ev.empty[c, rows])
        nonempty[c] = ne & let[c]
    return dice, nonempty


def score(ev: Evidence, choice: Choice, rows: Rows) -> float:
    """Mean Dice over the image x class pairs of `rows`."""
    return float(pair_dice(ev, choice, rows)[0].mean())


def _flat(ev: Evidence, variant: int, c: int, rows: Rows) -> npt.NDArray[np.float64]:
    """[K*M*A, n] Dice of every post-process candidate of class c."""
    d = ev.dice[variant, c][..., rows]
    result: npt.NDArray[np.float64] = d.reshape(-1, len(rows)).astype(np.float64)
    return result


def _unflat(ev: Evidence, j: int) -> tuple[int, int, int]:
    k_n, m_n, a_n = len(ev.grid.thresholds), len(ev.grid.min_components), len(ev.grid.min_areas)
    k, rest = divmod(j, m_n * a_n)
    m, a = divmod(rest, a_n)
    assert k < k_n
    return k, m, a


def _best_given(
    u: npt.NDArray[np.float64], e: npt.NDArray[np.float64], let: npt.NDArray[np.bool_]
) -> tuple[float, int]:
    """(total, candidate) maximising the sum of u over the pairs let through and e over the others,
    for one class. Sums, not matrix products: BLAS threads on a busy 2-core machine cost more than
    they save here."""
    totals = u[:, let].sum(axis=1) + float(e[~let].sum())
    j = int(np.argmax(totals))
    return float(totals[j]), j


def _gated_totals(
    u: npt.NDArray[np.float64],
    e: npt.NDArray[np.float64],
    gate: npt.NDArray[np.float32],
    g_values: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    """[G, KMA]: each gate's total for every candidate of one class. Images sorted by classifier
    probability, highest first: a gate lets through a prefix of them, so one cumulative sum
    serves every gate."""
    order = np.argsort(-gate, kind="stable")
    cum_u = np.zeros((u.shape[0], len(order) + 1))
    np.cumsum(u[:, order], axis=1, out=cum_u[:, 1:])
    cum_e = np.concatenate(([0.0], np.cumsum(e[order])))
    passed = np.count_nonzero(gate[None, :] >= g_values[:, None], axis=1)  # [G]: the prefix length
    result: npt.NDArray[np.float64] = cum_u[:, passed].T + (cum_e[-1] - cum_e[passed])[:, None]
    return result


def _search_mode(
    ev: Evidence, mode: str, variant: int, rows: Rows, us: list[npt.NDArray[np.float64]]
) -> tuple[float, Choice]:
    """The best choice of one mode and variant; `us` are `_flat` of each class (shared by the modes)."""
    c_n = ev.empty.shape[0]
    es = [ev.empty[c, rows].astype(np.float64) for c in range(c_n)]
    post: list[int] = []
    gates: list[int] = []
    total = 0.0
    if mode == "off" or ev.gate is None:
        for u, e in zip(us, es, strict=True):
            best, j = _best_given(u, e, np.ones(len(rows), dtype=np.bool_))
            total += best
            post.append(j)
            gates.append(0)
    else:
        g_values = np.asarray(ev.grid.gates, dtype=np.float32)
        gate = ev.gate[rows]
        for c, (u, e) in enumerate(zip(us, es, strict=True)):
            totals = _gated_totals(u, e, gate[:, c], g_values)  # [G, KMA]
            best_g, best_j = np.unravel_index(int(np.argmax(totals)), totals.shape)
            total += float(totals[best_g, best_j])
            post.append(int(best_j))
            gates.append(int(best_g))
        if mode == "per_image":
            total, post, gates = _coordinate_ascent(us, es, gate, g_values, gates)
    k, m, a = zip(*(_unflat(ev, j) for j in post), strict=True)
    return total, Choice(mode, variant, tuple(k), tuple(m), tuple(a), tuple(gates))


def _coordinate_ascent(
    us: list[npt.NDArray[np.float64]],
    es: list[npt.NDArray[np.float64]],
    gate: npt.NDArray[np.float32],
    g_values: npt.NDArray[np.float32],
    gates: list[int],
) -> tuple[float, list[int], list[int]]:
    """per_image gating: the classes' gates improved one at a time, each class's post-process the
    best for the images let through."""

    def evaluate(gs: Sequence[int]) -> tuple[float, list[int]]:
        let: npt.NDArray[np.bool_] = np.asarray((gate >= g_values[list(gs)][None, :]).any(axis=1))
        results = [_best_given(u, e, let) for u, e in zip(us, es, strict=True)]
        return sum(r[0] for r in results), [r[1] for r in results]

    gs = list(gates)
    best, post = evaluate(gs)
    for _ in range(COORDINATE_ROUNDS):
        improved = False
        for c in range(len(gs)):
            for g in range(len(g_values)):
                if g == gs[c]:
                    continue
                trial = [*gs[:c], g, *gs[c + 1 :]]
                total, p = evaluate(trial)
                if total > best + 1e-9:
                    best, post, gs, improved = total, p, trial, True
        if not improved:
            break
    return best, post, gs


def choose(ev: Evidence, rows: Rows, current: Choice) -> Choice:
    """The choice of highest mean Dice on the images at `rows` (and only those)."""
    modes = ["off"] if ev.gate is None else ["off", "per_class", "per_image"]
    order = [(current.mode, current.variant)] + [
        (m, x) for x in range(ev.variants) for m in modes if (m, x) != (current.mode, current.variant)
    ]
    best: tuple[float, Choice] | None = None
    flat: dict[int, list[npt.NDArray[np.float64]]] = {}
    for mode, variant in order:
        if mode not in modes or variant >= ev.variants:
            continue
        if variant not in flat:
            flat[variant] = [_flat(ev, variant, c, rows) for c in range(ev.empty.shape[0])]
        total, choice = _search_mode(ev, mode, variant, rows, flat[variant])
        if best is None or total > best[0] + 1e-9:
            best = (total, choice)
    assert best is not None
    choice = best[1]
    if choice.mode != "off" and all(ev.grid.gates[g] <= 0.0 for g in choice.gate):
        choice = replace(choice, mode="off")  # a gate that lets everything through: skip the classifiers
    return choice


@dataclass(frozen=True)
class FoldResult:
    rows: Rows
    current: tuple[float, ...]  # per class, held-out fold
    tuned: tuple[float, ...]
    choice: Choice

    @property
    def gain(self) -> float:
        return float(np.mean(self.tuned) - np.mean(self.current))


@dataclass(frozen=True)
class CVResult:
    folds: tuple[FoldResult, ...]
    current: tuple[float, ...]  # per class, every image (each scored once, on its held-out fold)
    tuned: tuple[float, ...]

    @property
    def current_mean(self) -> float:
        return float(np.mean(self.current))

    @property
    def tuned_mean(self) -> float:
        return float(np.mean(self.tuned))

    def spread(self) -> tuple[float, float, float]:
        """(standard deviation, min, max) of the per-fold gains (tuned - current)."""
        gains = np.asarray([f.gain for f in self.folds])
        return float(gains.std()), float(gains.min()), float(gains.max())


def fold_rows(n: int, folds: int, seed: int = 0) -> list[Rows]:
    """`folds` disjoint, seeded, near-equal parts of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[f::folds]).astype(np.int64) for f in range(folds)]


def cross_validate(ev: Evidence, current: Choice, folds: int, seed: int = 0) -> CVResult:
    """Choose on k-1 folds, score on the held-out one, for each fold."""
    n = len(ev.image_ids)
    parts = fold_rows(n, folds, seed)
    results = []
    tuned_sum = np.zeros(ev.empty.shape[0])
    current_sum = np.zeros(ev.empty.shape[0])
    for held in parts:
        train = np.setdiff1d(np.arange(n, dtype=np.int64), held)
        choice = choose(ev, train, current)
        tuned, _ = pair_dice(ev, choice, held)
        cur, _ = pair_dice(ev, current, held)
        tuned_sum += tuned.sum(axis=1)
        current_sum += cur.sum(axis=1)
        results.append(FoldResult(held, tuple(cur.mean(axis=1)), tuple(tuned.mean(axis=1)), choice))
    return CVResult(tuple(results), tuple(current_sum / n), tuple(tuned_sum / n))
