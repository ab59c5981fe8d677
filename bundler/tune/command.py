"""`bundler tune`: honest holdout CV of the post-process and gating, and the plan that fits the budget.

1. The labelled holdout (`[dryrun]` test_dir and labels, or the CLI's) runs once through the
   shipped engine's code (`bundler.tune.cache`); the probabilities are cached and reused while
   the models, their specs, the holdout and kernel_src are unchanged.
2. Every candidate's Dice per image x class pair (`bundler.tune.evidence`), then the k-fold
   search (`bundler.tune.search`): current vs tuned, per class and overall, with the fold spread.
3. Where the points are lost (`bundler.scoring.breakdown`), for the current and tuned settings.
4. The ensemble plans (`bundler.tune.plan`): score and projected time, the recommended plan.
5. `tune.json` and `report.html` in the output folder; with `write`, bundle.toml updated in place
   (`bundler.tune.write`) and the diff printed, else the proposed values printed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bundler.config import BundleConfig
from bundler.display import shown_path
from bundler.dryrun.projection import NO_CALIBRATION, Calibration, factor_calibration, profile_calibration
from bundler.errors import DryRunError, TuneError
from bundler.scoring import ClassLosses, loss_breakdown
from bundler.tune import search
from bundler.tune.cache import HoldoutCache, cache_key, first_pass, holdout_fingerprint, read_cache
from bundler.tune.evidence import Evidence, Grid, Models, Plan, build_evidence, grid_with, truth_masks
from bundler.tune.plan import (
    Costs,
    candidate_plans,
    costs_from_cache,
    costs_from_profile,
    evaluate_plans,
    pareto_front,
    recommend,
)
from bundler.tune.report import write_tune_report
from kernel_src.errors import SubmissionFormatError
from kernel_src.paths import PROFILE_FILE
from kernel_src.spec import InferenceSpec
from kernel_src.submission import read_masks, read_sample_submission

THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
MIN_COMPONENTS = (0, 10, 30, 100, 200, 400, 800, 1600)
MIN_AREAS = (0, 100, 300, 600, 900, 1200, 2000, 3000, 4000)
GATES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MARGIN = 0.15
OUT = Path("build/tune")


@dataclass(frozen=True)
class TuneResult:
    out: Path
    cache: Path
    cache_bytes: int
    cache_reused: bool
    first_pass_s: float
    tune_s: float  # evidence + search + CV, from the cache
    current: float  # cross-validated mean Dice of the current settings (every image held out once)
    tuned: float  # the same for the tuned settings, each fold tuned on the others
    current_per_class: tuple[float, ...]
    tuned_per_class: tuple[float, ...]
    current_values: dict[str, Any]
    values: dict[str, Any]  # tuned on every image: what --write writes
    diff: str
    written: bool
    recommended: dict[str, Any] | None
    report: Path
    summary: dict[str, Any]


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield progress


def _holdout(cfg: BundleConfig) -> tuple[Path, Path, tuple[str, ...], dict[str, list[str]]]:
    """(test_dir, labels, image ids, labels by image), each checked."""
    from bundler.dryrun.tree import image_files

    test_dir, labels = cfg.dryrun.test_dir, cfg.dryrun.labels
    if test_dir is None or not test_dir.is_dir():
        raise TuneError(f"no holdout images folder ({test_dir}): pass --test-dir DIR or set dryrun.test_dir")
    if labels is None or not labels.is_file():
        raise TuneError(f"no holdout labels ({labels}): pass --labels CSV (train.csv form) or set dryrun.labels")
    n = cfg.inference.num_classes
    present = {p.name for p in image_files(test_dir)}
    if cfg.dryrun.sample_submission is not None and cfg.dryrun.sample_submission.is_file():
        try:
            ids = tuple(i for i in read_sample_submission(cfg.dryrun.sample_submission, n).image_ids if i in present)
        except ValueError as e:
            raise TuneError(f"sample submission {cfg.dryrun.sample_submission}: {e}") from None
    else:
        ids = tuple(sorted(present))
    if not ids:
        raise TuneError(f"{test_dir} holds no images of the holdout: point --test-dir at the labelled images")
    try:
        by_image = read_masks(labels, n, labels=True, submission=cfg.inference.submission)
    except (SubmissionFormatError, ValueError) as e:
        raise TuneError(f"labels {e}") from None
    outside = sorted(set(by_image) - set(ids))
    if outside:
        raise TuneError(
            f"labels {labels} name {len(outside)} image(s) not in {test_dir} (e.g. {outside[:3]}): "
            "give the labels of exactly these images"
        )
    return test_dir, labels, ids, by_image


EMPTY_PAIR = {"one": 1.0, "zero": 0.0}


def _metric_rule(spec: InferenceSpec) -> float:
    """The score of a pair empty on both sides; settings tune cannot score exactly are refused."""
    rule = str(getattr(spec.submission, "empty_pair", "one"))
    if rule not in EMPTY_PAIR:
        raise TuneError(
            f"submission.empty_pair = {rule!r}: tune scores 'one' or 'zero' (a skipped pair makes the mean a "
            "ratio the search does not optimise); tune with 'one' or score with `bundler dry-run`"
        )
    if getattr(spec, "encode_size", None) is not None or getattr(spec, "image_sizes", "fixed") == "own":
        raise TuneError(
            "inference.encode_size / image_sizes = 'own': tune scores masks at the fixed image size "
            "(image_height x image_width); unset them to tune, or score with `bundler dry-run`"
        )
    return EMPTY_PAIR[rule]


def _model_hashes(cfg: BundleConfig) -> dict[str, str]:
    from bundler.dataset.manifest import read_manifest

    manifest = read_manifest(cfg.dataset.out, cfg.name)
    # weights, and the translated preprocessing pipelines a model may carry beside them
    records = [*manifest.get("weights", []), *manifest.get("preprocess", [])]
    return {str(r["file"]): str(r["sha256"]) for r in records if isinstance(r, dict) and "file" in r}


def _cache(
    cfg: BundleConfig, out: Path, test_dir: Path, ids: Sequence[str], console: Console
) -> tuple[HoldoutCache, bool]:
    spec = cfg.inference
    key = cache_key(spec, _model_hashes(cfg), holdout_fingerprint(test_dir, ids))
    folder = out / "cache" / key[:24]
    cache = read_cache(folder)
    if cache is not None and cache.key == key:
        return cache, True
    for stale in (out / "cache").glob("*") if (out / "cache").is_dir() else ():
        if stale != folder and stale.is_dir():
            shutil.rmtree(stale)  # another model, holdout or engine: never read again
    console.print(f"first pass of the shipped engine over {len(ids)} holdout images (cached for the next tune)")
    with _progress(console) as progress:
        task = progress.add_task("first pass", total=len(ids))
        cache = first_pass(
            spec,
            bundle_dir=cfg.dataset.out,
            test_dir=test_dir,
            image_ids=ids,
            folder=folder,
            key=key,
            on_batch_done=lambda done, total: progress.update(task, completed=done),
        )
    return cache, False


def make_grid(spec: InferenceSpec) -> Grid:
    post, gating = spec.postprocess, spec.gating
    return Grid(
        thresholds=grid_with(THRESHOLDS, post.threshold),
        min_components=tuple(int(v) for v in grid_with(MIN_COMPONENTS, post.min_component)),
        min_areas=tuple(int(v) for v in grid_with(MIN_AREAS, post.min_area)),
        gates=grid_with(GATES, gating.thresholds or (0.5,)),
    )


def models_of(spec: InferenceSpec) -> Models:
    every = (*spec.classifiers, *spec.segmenters)
    return Models(
        weights={m.name: m.weight for m in every},
        merges={m.name: str(getattr(m, "tta_merge", "mean")) for m in spec.segmenters},
    )


def full_plan(spec: InferenceSpec) -> Plan:
    return Plan(tuple((m.name, m.tta) for m in spec.segmenters), tuple(m.name for m in spec.classifiers))


def _costs(cfg: BundleConfig, cache: HoldoutCache) -> tuple[Costs, Calibration]:
    profile_path = cfg.dryrun.out / PROFILE_FILE
    profile: dict[str, Any] | None = None
    if profile_path.is_file():
        try:
            profile = json.loads(profile_path.read_text(encoding="utf-8"))
        except ValueError:
            profile = None
    costs = costs_from_profile(profile, cfg.inference, shown_path(profile_path)) if profile else None
    try:
        if costs is not None and profile is not None and cfg.dryrun.calibration_profile is not None:
            kaggle = json.loads(cfg.dryrun.calibration_profile.read_text(encoding="utf-8"))
            return costs, profile_calibration(kaggle, profile, str(cfg.dryrun.calibration_profile))
        calibration = factor_calibration(cfg.dryrun.calibration) if cfg.dryrun.calibration else NO_CALIBRATION
    except (OSError, ValueError, DryRunError) as e:
        raise TuneError(f"calibration: {e}") from None
    return (costs or costs_from_cache(cache)), calibration


def _cv_dict(cv: search.CVResult, grid: Grid) -> dict[str, Any]:
    return {
        "current": list(cv.current),
        "tuned": list(cv.tuned),
        "current_mean": cv.current_mean,
        "tuned_mean": cv.tuned_mean,
        "gain_spread": list(cv.spread()),
        "folds": [
            {
                "images": len(f.rows),
                "current": float(np.mean(f.current)),
                "tuned": float(np.mean(f.tuned)),
                "values": f.choice.values(grid),
            }
            for f in cv.folds
        ],
    }


def _losses(ev: Evidence, choice: search.Choice) -> list[ClassLosses]:
    rows = np.arange(len(ev.image_ids), dtype=np.int64)
    dice, nonempty = search.pair_dice(ev, choice, rows)
    return loss_breakdown(ev.image_ids, dice, ev.labelled, nonempty)


def tune(
    cfg: BundleConfig,
    *,
    console: Console,
    folds: int = 5,
    write: bool = False,
    margin: float = MARGIN,
    config_path: Path | None = None,
    out: Path | None = None,
    seed: int = 0,
    threads: int = 2,
) -> TuneResult:
    """Everything `bundler tune` does; see the module docstring."""
    from bundler.dryrun.command import budget_of

    if not 0.0 <= margin < 1.0:
        raise TuneError(f"--margin {margin} must be a share of the budget in [0, 1), e.g. 0.15")
    budget_of(cfg)  # a budget that is not positive seconds is named as the user wrote it, before the first pass
    out = out or cfg.root / OUT
    spec = cfg.inference
    if spec.task.task.image_level:
        raise TuneError(
            f"bundler tune searches a segmentation's post-processing and gating; for [task] name = "
            f"{spec.task.name!r} it has no search yet (ensemble weights, thresholds and cut-points are left): "
            "set them in bundle.toml, and read the holdout score from `bundler dry-run --labels`"
        )
    empty_pair = _metric_rule(spec)
    test_dir, _, ids, labels = _holdout(cfg)
    if not 2 <= folds <= len(ids):
        raise TuneError(f"--folds {folds}: give 2 to {len(ids)} folds (one image at least in each)")
    began = time.perf_counter()
    cache, reused = _cache(cfg, out, test_dir, ids, console)
    read_s = time.perf_counter() - began
    size = cache.size_bytes()
    what = "reused" if reused else f"written in {cache.first_pass_s:.1f} s"
    console.print(f"holdout cache {escape(shown_path(cache.folder))}: {size / 1e6:.1f} MB on disk, {escape(str(what))}")

    shape = (spec.image_height, spec.image_width)
    truth = truth_masks(labels, ids, shape, spec.rle_order, spec.num_classes)
    grid = make_grid(spec)
    models = models_of(spec)
    tune_began = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("candidates per image", total=len(ids))
        ev = build_evidence(
            cache, full_plan(spec), models, truth, grid, threads=threads, empty_pair=empty_pair,
            on_batch_done=lambda done, total: progress.update(task, completed=done),
        )  # fmt: skip
    current = search.current_choice(spec, grid, has_classifiers=bool(spec.classifiers))
    cv = search.cross_validate(ev, current, folds, seed)
    final = search.choose(ev, np.arange(len(ids), dtype=np.int64), current)
    tune_s = time.perf_counter() - tune_began

    values, current_values = final.values(grid), current.values(grid)
    losses_current, losses_tuned = _losses(ev, current), _losses(ev, final)

    costs, calibration = _costs(cfg, cache)
    budget = budget_of(cfg)
    with _progress(console) as progress:
        plans = candidate_plans(spec)
        task = progress.add_task("ensemble plans", total=len(plans))
        points = evaluate_plans(
            cache, plans, models, truth, final.postprocess(grid), final.mode, final.gates(grid),
            costs=costs, calibration=calibration, hidden_images=cfg.competition.hidden_test_images,
            budget_s=budget, margin=margin, empty_pair=empty_pair,
            on_plan_done=lambda done, total: progress.update(task, completed=done),
        )  # fmt: skip
    front = {id(p) for p in pareto_front(points)}
    best = recommend(points)
    full = next(p for p in points if p.plan == full_plan(spec))
    evidence_score = search.score(ev, final, np.arange(len(ids), dtype=np.int64))
    check = abs(full.score - evidence_score)

    diff_text, written = "", False
    path = config_path or cfg.root / "bundle.toml"
    if write:
        from bundler.tune.write import write_values

        diff_text = write_values(path, values, gating=bool(spec.classifiers))
        written = bool(diff_text)
    else:
        from bundler.tune.write import diff, updated_text

        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        diff_text = diff(old, updated_text(old, values, gating=bool(spec.classifiers)), path.name) if old else ""

    summary: dict[str, Any] = {
        "bundle": cfg.name,
        "images": len(ids),
        "cache": shown_path(cache.folder),
        "cache_bytes": size,
        "cache_reused": reused,
        "cache_read_s": read_s,
        "first_pass_s": cache.first_pass_s,
        "tune_s": tune_s,
        "grid": {
            "threshold": list(grid.thresholds),
            "min_component": list(grid.min_components),
            "min_area": list(grid.min_areas),
            "gate": list(grid.gates),
        },
        "cv": _cv_dict(cv, grid),
        "current_values": current_values,
        "tuned_values": values,
        "tuned_in_sample": evidence_score,
        "engine_check": {"postprocess_score": full.score, "evidence_score": evidence_score, "difference": check},
        "losses_current": [c.to_dict() for c in losses_current],
        "losses_tuned": [c.to_dict() for c in losses_tuned],
        "plans": [{**p.to_dict(), "pareto": id(p) in front, "recommended": p is best} for p in points],
        "budget_s": budget,
        "margin": margin,
        "costs_source": costs.source,
        "calibration": calibration.describe(),
        "written": written,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    report = write_tune_report(out / "report.html", summary)
    result = TuneResult(
        out=out,
        cache=cache.folder,
        cache_bytes=size,
        cache_reused=reused,
        first_pass_s=cache.first_pass_s,
        tune_s=tune_s,
        current=cv.current_mean,
        tuned=cv.tuned_mean,
        current_per_class=cv.current,
        tuned_per_class=cv.tuned,
        current_values=current_values,
        values=values,
        diff=diff_text,
        written=written,
        recommended=best.to_dict() if best else None,
        report=report,
        summary=summary,
    )
    print_tune(result, console, write=write)
    return result


def print_tune(result: TuneResult, console: Console, *, write: bool) -> None:
    s = result.summary
    cv = s["cv"]
    table = Table(title=f"{len(cv['folds'])}-fold CV: each fold tuned on the others", title_justify="left")
    for column in ("", "current", "tuned (held-out)", "gain"):
        table.add_column(column, justify="right" if column else "left")
    for c, (cur, tun) in enumerate(zip(cv["current"], cv["tuned"], strict=True)):
        table.add_row(f"class {c + 1}", f"{cur:.4f}", f"{tun:.4f}", f"{tun - cur:+.4f}")
    std, lo, hi = cv["gain_spread"]
    table.add_row(
        "[bold]mean Dice[/]",
        f"{cv['current_mean']:.4f}",
        f"[bold]{cv['tuned_mean']:.4f}[/]",
        f"{cv['tuned_mean'] - cv['current_mean']:+.4f} (folds {lo:+.4f} .. {hi:+.4f}, sd {std:.4f})",
    )
    console.print(table)
    console.print(f"searched from the cache in {result.tune_s:.1f} s")
    check = s["engine_check"]
    ok = "[green]agrees[/]" if check["difference"] < 1e-6 else "[red]DIFFERS[/]"
    console.print(
        f"tuned values on every image: {check['evidence_score']:.4f}; kernel_src.postprocess on the same "
        f"probabilities {ok} ({check['postprocess_score']:.4f})"
    )
    for c in s["losses_tuned"]:
        console.print(
            f"class {c['class_id']}: {c['lost']:.1f} points lost of {c['pairs']} (false positives on clean "
            f"images {c['false_positive']}, missed {c['missed']}, partial {c['partial_loss']:.1f}): {c['advice']}"
        )
    best = result.recommended
    if best is not None:
        console.print(
            f"ensemble plan: [bold]{escape(best['plan'])}[/] scores {best['score']:.4f}, projected "
            f"{best['projected_s'] / 60:.1f} min of {s['budget_s'] / 60:.1f} ({s['margin']:.0%} margin kept)"
        )
    else:
        console.print(f"[red]no ensemble plan fits {s['budget_s'] / 60:.1f} min with a {s['margin']:.0%} margin[/]")
    if write:
        if result.written:
            console.print(f"[green]bundle.toml updated[/]:\n{escape(result.diff)}")
        else:
            console.print("bundle.toml already holds the tuned values")
    else:
        console.print("proposed values (write them with --write):")
        for key, value in result.values.items():
            mark = "" if value == result.current_values[key] else "   [yellow](changed)[/]"
            console.print(f"  {key} = {json.dumps(value)}{mark}")
    console.print(f"report: {escape(shown_path(result.report))}")
