"""The tune's search on synthetic probabilities: known best values recovered, every candidate's Dice
equal to the project's metric on the engine's post-process, and no fold's labels used to tune it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from bundler.scoring.breakdown import loss_breakdown
from bundler.scoring.metric import dice_score
from bundler.tune import search
from bundler.tune.cache import QUANT
from bundler.tune.evidence import Evidence, Grid, Models, Plan, ensemble, image_dice
from kernel_src.postprocess import postprocess
from kernel_src.rle import encode
from kernel_src.spec import TTA_MERGES

H, W = 24, 40
GRID = Grid(
    thresholds=(0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8),
    min_components=(0, 10, 30),
    min_areas=(0, 20, 60),
    gates=(0.0, 0.4, 0.5, 0.6, 0.8),
)


def _evidence(probs: list[Any], truth: list[Any], gate: Any, grid: Grid = GRID, empty_pair: float = 1.0) -> Evidence:
    n, c_n = len(probs), probs[0].shape[0]
    shape = (2, c_n, len(grid.thresholds), len(grid.min_components), len(grid.min_areas), n)
    dice = np.zeros(shape, dtype=np.float32)
    nonempty = np.zeros(shape, dtype=np.bool_)
    for i in range(n):
        dice[..., i], nonempty[..., i] = image_dice(probs[i], truth[i], grid, 2, empty_pair)
    labelled = np.array([[t[c].any() for t in truth] for c in range(c_n)])
    empty = np.where(labelled, 0.0, empty_pair).astype(np.float32)
    return Evidence(tuple(f"img{i}.jpg" for i in range(n)), grid, dice, nonempty, empty, labelled, gate)


def _known_set(n: int = 24, seed: int = 0) -> tuple[list[Any], list[Any], npt.NDArray[np.float32]]:
    """Three classes whose best settings are known by construction:
    - class 1: defects at p=0.68, a broad haze at p=0.62 everywhere -> threshold in [0.62, 0.68): 0.65;
    - class 2: defects of 12x12 at p=0.9, specks of 3x3 at p=0.9 on every image -> min_component 10
      (the lowest that drops the specks and keeps the defects; min_area alone fails on a dirty image);
    - class 3: a 10x10 blob at p=0.9 on EVERY image, a defect only where the classifier says 0.75
      (0.35 elsewhere) -> only a gate in (0.35, 0.75] scores it: 0.4, gating per class."""
    rng = np.random.default_rng(seed)
    probs, truth = [], []
    gate = np.full((n, 3), 0.9, dtype=np.float32)
    for i in range(n):
        p = np.zeros((3, H, W), dtype=np.float32)
        t = np.zeros((3, H, W), dtype=np.bool_)
        p[0] = 0.62
        if i % 2:
            y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
            p[0, y : y + 8, x : x + 8] = 0.68
            t[0, y : y + 8, x : x + 8] = True
        p[1, 0:3, W - 3 : W] = 0.9  # a speck in the corner, never a defect
        if i % 3 == 0:
            p[1, 10:22, 5:17] = 0.9
            t[1, 10:22, 5:17] = True
        p[2, 2:12, 20:30] = 0.9
        dirty = i % 4 == 0
        t[2, 2:12, 20:30] = dirty
        gate[i, 2] = 0.75 if dirty else 0.35
        probs.append(p)
        truth.append(t)
    return probs, truth, gate


def test_synthetic_best_values_are_recovered() -> None:
    probs, truth, gate = _known_set()
    ev = _evidence(probs, truth, gate)
    rows = np.arange(len(probs), dtype=np.int64)
    current = search.Choice("per_class", 0, (2, 2, 2), (0, 0, 0), (0, 0, 0), (2, 2, 2))
    best = search.choose(ev, rows, current)
    values = best.values(GRID)
    assert search.score(ev, best, rows) == pytest.approx(1.0)
    assert values["threshold"][0] == 0.65  # type: ignore[index]
    assert values["min_component"][1] == 10  # type: ignore[index]
    assert values["mode"] == "per_class"
    assert values["thresholds"][2] == 0.4  # type: ignore[index]
    assert search.score(ev, current, rows) < 0.9
    cv = search.cross_validate(ev, current, folds=4)
    assert cv.tuned_mean == pytest.approx(1.0) and cv.current_mean < 0.9
    assert len(cv.folds) == 4 and sorted(np.concatenate([f.rows for f in cv.folds]).tolist()) == rows.tolist()


def test_no_fold_sees_its_own_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    probs, truth, gate = _known_set(n=20)
    ev = _evidence(probs, truth, gate)
    seen: list[set[int]] = []
    real_choose = search.choose

    def recording(evidence: Evidence, rows: Any, current: search.Choice) -> search.Choice:
        seen.append({int(r) for r in rows})
        # The choice may depend on these rows only: every other image's labels scrambled, same choice.
        scrambled = np.setdiff1d(np.arange(len(evidence.image_ids)), rows)
        noisy = Evidence(
            evidence.image_ids, evidence.grid, evidence.dice.copy(), evidence.nonempty, evidence.empty.copy(),
            evidence.labelled, evidence.gate,
        )  # fmt: skip
        rng = np.random.default_rng(1)
        noisy.dice[..., scrambled] = rng.random(noisy.dice[..., scrambled].shape)
        noisy.empty[:, scrambled] = 1.0 - noisy.empty[:, scrambled]
        choice = real_choose(evidence, rows, current)
        assert real_choose(noisy, rows, current) == choice
        return choice

    monkeypatch.setattr(search, "choose", recording)
    current = search.Choice("off", 0, (2, 2, 2), (0, 0, 0), (0, 0, 0), (0, 0, 0))
    cv = search.cross_validate(ev, current, folds=5)
    assert len(seen) == 5
    for fold, rows in zip(cv.folds, seen, strict=True):
        held = {int(r) for r in fold.rows}
        assert not held & rows
        assert held | rows == set(range(20))


@pytest.mark.parametrize("empty_pair", [1.0, 0.0])
def test_every_candidate_scores_as_the_metric_on_the_engine_postprocess(empty_pair: float) -> None:
    rng = np.random.default_rng(3)
    probs, truth, _ = _known_set(n=12, seed=2)
    probs = [np.clip(p + rng.normal(0, 0.08, p.shape).astype(np.float32), 0, 1) for p in probs]
    gate = rng.random((12, 3)).astype(np.float32)
    ev = _evidence(probs, truth, gate, empty_pair=empty_pair)
    rows = np.arange(12, dtype=np.int64)
    labels = pd.DataFrame(
        [(f"img{i}.jpg", c + 1, encode(truth[i][c], "F")) for i in range(12) for c in range(3) if truth[i][c].any()],
        columns=["ImageId", "ClassId", "EncodedPixels"],
    )
    from kernel_src.layout import SubmissionSpec

    rule = SubmissionSpec(empty_pair="one" if empty_pair else "zero")
    for trial in range(6):
        mode = ("off", "per_class", "per_image")[trial % 3]
        pick = [tuple(int(v) for v in rng.integers(0, n, 3)) for n in (7, 3, 3, 5)]
        choice = search.Choice(mode, trial % 2, *pick)  # type: ignore[arg-type]
        post, gates = choice.postprocess(GRID), np.asarray(choice.gates(GRID), dtype=np.float32)
        rows_out = []
        for i in range(12):
            masks = postprocess(probs[i], post)
            passed = gate[i] >= gates
            let = {"off": np.ones(3, bool), "per_class": passed, "per_image": np.repeat(passed.any(), 3)}[mode]
            masks &= let[:, None, None]
            rows_out += [(f"img{i}.jpg_{c + 1}", encode(masks[c], "F")) for c in range(3)]
        submission = pd.DataFrame(rows_out, columns=["ImageId_ClassId", "EncodedPixels"])
        metric = dice_score(submission, labels, num_classes=3, shape=(H, W), submission_spec=rule)
        dice, _ = search.pair_dice(ev, choice, rows)
        assert dice.mean(axis=1) == pytest.approx(metric.per_class, abs=1e-6)


def test_the_breakdown_counts_each_kind_of_loss() -> None:
    dice = np.array([[1.0, 0.0, 0.0, 0.6, 1.0]])
    truth = np.array([[False, False, True, True, True]])
    pred = np.array([[False, True, False, True, True]])
    (losses,) = loss_breakdown(["a", "b", "c", "d", "e"], dice, truth, pred)
    assert (losses.false_positive, losses.missed, losses.partial) == (1, 1, 2)
    assert losses.partial_loss == pytest.approx(0.4)
    assert losses.lost == pytest.approx(2.4)
    assert [w[:2] for w in losses.worst] == [("b", "false positive"), ("c", "missed"), ("d", "partial")]


def test_the_tune_benchmark_runs_at_a_tiny_size() -> None:
    from benchmarks.bench_tune import bench_tune

    result = bench_tune(quick=True, n=6, height=64, width=256)
    figures = {f.key: f.value for f in result.figures}
    assert figures["tune_s_per_1000"] > 0 and figures["tune_plans_s_per_1000"] > 0


class _Cache:
    """What `ensemble` reads of a HoldoutCache: one segmenter's stored views at the image size."""

    def __init__(self, views: dict[str, npt.NDArray[np.uint8]]) -> None:
        self.views = views
        self.height, self.width = next(iter(views.values())).shape[-2:]

    def view_probs(self, name: str, view: str) -> npt.NDArray[np.uint8]:
        return self.views[view]

    def nan_images(self, name: str) -> npt.NDArray[np.bool_]:
        return np.zeros(len(next(iter(self.views.values()))), dtype=np.bool_)

    def readable(self) -> npt.NDArray[np.bool_]:
        return ~self.nan_images("")


@pytest.mark.parametrize("mode", TTA_MERGES)
def test_ensemble_merges_the_cached_views_by_each_modes_closed_form(mode: str) -> None:
    rng = np.random.default_rng(3)
    stored = {v: rng.integers(0, QUANT + 1, (3, 2, H, W)).astype(np.uint8) for v in ("identity", "hflip", "vflip")}
    for s in stored.values():
        s[:, :, :2] = 0  # saturated stretches, as a confident model's
        s[:, :, -2:] = QUANT
    plan = Plan((("seg", tuple(stored)),), ())
    probs, failed = ensemble(_Cache(stored), plan, Models({"seg": 1.0}, {"seg": mode}), range(3))  # type: ignore[arg-type]
    p = np.stack(list(stored.values())).astype(np.float64) / QUANT
    clipped = np.clip(p, 0.5 / QUANT, 1 - 0.5 / QUANT)  # a stored 0 or QUANT in log space: half a step inside
    want = {
        "mean": p.mean(0),
        "gmean": np.exp(np.log(clipped).mean(0)),
        "max": p.max(0),
        "logit_mean": 1 / (1 + np.exp(-(np.log(clipped) - np.log1p(-clipped)).mean(0))),
    }[mode]
    assert not failed.any()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
