"""`bundler dry-run`: the rendered notebook, run here offline and timed, projected and scored.

1. Check every input (`inputs`), before anything runs.
2. Lay out a Kaggle-like tree in a temporary folder (`tree`): the built bundle under
   `input/<dataset-slug>/`, the test images and the sample submission under
   `input/<competition-slug>/`, and `working/`, with `input/` read-only.
3. Execute the RENDERED notebook with nbclient from `working/`, in a child process with no
   network (`bundler.sandbox`; when that cannot be had it runs anyway, says so, and records it). Injected
   parameters point CONFIG at the tree, set `install_wheels: "auto"` and the time budget.
4. Write to `dryrun.out`: submission.csv, profile.json, the executed notebook, summary.json and
   report.html, in every case (a failure is reported after its outputs are saved).

The verdict is a pass only when the notebook ran, wrote a complete submission, and the
projection to the hidden test set fits the budget.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from rich.console import Console

from bundler.config import BundleConfig
from bundler.dryrun._child import Execution, run_notebook
from bundler.dryrun.inputs import Inputs, check_inputs
from bundler.dryrun.metric import dice_score
from bundler.dryrun.projection import (
    NO_CALIBRATION,
    Calibration,
    Projection,
    factor_calibration,
    kaggle_run_calibration,
    latest_kaggle_profile,
    profile_calibration,
    project,
)
from bundler.dryrun.report import load_mask_samples, write_report
from bundler.dryrun.tree import make_tree, remove_tree
from bundler.errors import DryRunError
from bundler.sandbox import Isolation, probe
from kernel_src.submission import SampleSubmission, read_csv_strings

OUTPUTS = ("submission.csv", "profile.json", "summary.json", "report.html")
SAMPLE_IMAGES = 6


@dataclass(frozen=True)
class DryRunResult:
    ok: bool
    reason: str
    out: Path
    summary: dict[str, Any]


def budget_of(cfg: BundleConfig) -> float:
    """`--time-budget` (dryrun.time_budget_s), else the inference budget."""
    return float(cfg.dryrun.time_budget_s if cfg.dryrun.time_budget_s is not None else cfg.inference.time_budget_s)


def _prepare_out(out: Path, executed: Path) -> None:
    """An output folder with no stale result of an earlier run that could be taken for this one's."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUTS, executed.name, executed.stem + ".log"):
        (out / name).unlink(missing_ok=True)
    for tree in out.glob(".kaggle-tree-*"):  # left behind by a run that was killed
        remove_tree(tree)


def _execute(cfg: BundleConfig, inputs: Inputs, executed: Path, isolation: Isolation, console: Console) -> Execution:
    from bundler.notebook.parameters import with_parameters

    out = cfg.dryrun.out
    tree_root = Path(tempfile.mkdtemp(prefix=".kaggle-tree-", dir=out))  # beside the outputs: hard links work
    try:
        tree = make_tree(
            tree_root,
            bundle_src=cfg.dataset.out,
            dataset_id=cfg.dataset.id,
            competition_slug=cfg.competition.slug,
            test_dir=inputs.test_dir,
            test_images_name=cfg.competition.test_images,
            sample_submission_src=inputs.sample_submission,
            sample_submission_name=cfg.competition.sample_submission,
        )
        overrides = {
            "input_root": str(tree.input_root),
            "working_dir": str(tree.working),
            "install_wheels": "auto",
            "inference": {"time_budget_s": budget_of(cfg)},
        }
        notebook = tree.root / cfg.kernel.notebook.name
        nbformat.write(with_parameters(inputs.notebook, overrides), notebook)  # type: ignore[no-untyped-call]
        console.print(f"kaggle-like tree: {tree.root} (input files {tree.linked}ed, input/ read-only)")
        timeout = budget_of(cfg) * 1.5 + 600.0  # the guard keeps a healthy run near the budget; past this it hangs
        execution = run_notebook(
            notebook,
            executed,
            cwd=tree.working,
            console=console,
            isolation=isolation,
            readonly=[tree.input_root],
            timeout_s=timeout,
        )
        for name in ("submission.csv", "profile.json"):
            if (tree.working / name).is_file():
                shutil.copyfile(tree.working / name, out / name)
        return execution
    finally:
        remove_tree(tree_root)


def _calibration(cfg: BundleConfig, inputs: Inputs, profile: Mapping[str, Any], console: Console) -> Calibration:
    if inputs.calibration_profile is not None:
        if cfg.dryrun.calibration is not None:
            console.print("[yellow]warning:[/] both a calibration profile and a factor were given; using the profile")
        return profile_calibration(inputs.calibration_profile, profile, str(cfg.dryrun.calibration_profile))
    if cfg.dryrun.calibration is not None:
        return factor_calibration(cfg.dryrun.calibration)
    latest = latest_kaggle_profile(cfg.root)  # the newest run `bundler status` downloaded
    return kaggle_run_calibration(latest, profile) if latest is not None else NO_CALIBRATION


def _complete(submission: Path, sample: SampleSubmission) -> str:
    """'' when `submission` has every row the sample asks for, else what is wrong."""
    frame = read_csv_strings(submission)
    if len(frame) != sample.rows:
        return f"submission.csv has {len(frame)} rows, the sample submission needs {sample.rows}"
    if [str(c) for c in frame.columns] != list(sample.columns):
        return f"submission.csv header {list(frame.columns)} differs from the sample's {list(sample.columns)}"
    return ""


def _failed_cell(ex: Execution) -> dict[str, Any] | None:
    if ex.ok:
        return None
    return {
        "index": ex.cell,
        "status": ex.status,
        "ename": ex.ename,
        "evalue": ex.evalue,
        "traceback": ex.traceback,
    }


def _reason_of_failure(ex: Execution) -> str:
    where = f"cell {ex.cell}" if ex.cell is not None else "the notebook"
    error = f"{ex.ename}: {ex.evalue}".strip(": ") or "no message"
    first = error.splitlines()[0] if error else ""
    if ex.status == "kernel_died":
        return f"the kernel died in {where} ({first}); see {ex.log.name}"
    if ex.status == "timeout":
        return f"{where} did not finish in time ({first})"
    if ex.status == "interrupted":
        return f"the run was stopped in {where} ({first})"
    if ex.status == "cell_failed":
        return f"{where} failed: {first}"
    return f"the notebook could not run: {first}; see {ex.log.name}"


def _verdict(ex: Execution, incomplete: str, projection: Projection | None) -> tuple[bool, str]:
    if not ex.ok:
        return False, _reason_of_failure(ex)
    if incomplete:
        return False, incomplete
    if projection is None:
        return False, "the notebook ran but wrote no profile.json, so nothing can be projected"
    n, p, b = projection.images, projection.projected_s, projection.budget_s
    if not projection.within_budget:
        return (
            False,
            f"over budget by {-projection.margin_s:.1f} s: projected {p:.0f} s for {n} images, budget {b:.0f} s",
        )
    return (
        True,
        f"within budget: projected {p:.0f} s for {n} images, budget {b:.0f} s ({projection.margin_s:.0f} s spare)",
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def dry_run(cfg: BundleConfig, *, console: Console) -> DryRunResult:
    """Run the rendered notebook on a Kaggle-like tree here, offline; write and return the verdict."""
    inputs = check_inputs(cfg)
    for warning in inputs.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    out = cfg.dryrun.out
    executed = out / cfg.kernel.notebook.name
    _prepare_out(out, executed)
    isolation = probe()
    if isolation.isolated:
        console.print("network: [green]none[/] (a namespace with loopback only, as on Kaggle's rerun)")
    else:
        console.print(
            f"[bold red]WARNING: running WITH network[/]: {isolation.reason}. A download that would fail on "
            "Kaggle succeeds here; this dry-run does not prove the notebook works offline."
        )
    budget = budget_of(cfg)
    console.print(
        f"dry-run of {cfg.kernel.notebook.name}: {len(inputs.sample.image_ids)} images, budget {budget:.0f} s"
    )

    execution = _execute(cfg, inputs, executed, isolation, console)
    profile = _read_json(out / "profile.json")
    submission = out / "submission.csv"
    incomplete = "" if not submission.is_file() else _complete(submission, inputs.sample)
    if execution.ok and not submission.is_file():
        incomplete = "the notebook ran but wrote no submission.csv"

    projection: Projection | None = None
    calibration_note = NO_CALIBRATION.describe()
    problems: list[str] = []
    if profile is not None:
        try:
            calibration = _calibration(cfg, inputs, profile, console)
            calibration_note = calibration.describe()
            projection = project(
                profile, hidden_images=cfg.competition.hidden_test_images, budget_s=budget, calibration=calibration
            )
        except DryRunError as e:
            problems.append(str(e))

    score: float | None = None
    per_class: list[float] | None = None
    if inputs.labels is not None and submission.is_file() and not incomplete:
        try:
            metric = dice_score(
                submission,
                inputs.labels,
                num_classes=cfg.inference.num_classes,
                shape=(cfg.inference.image_height, cfg.inference.image_width),
                order=cfg.inference.rle_order,
                image_ids=inputs.sample.image_ids,
            )
            score, per_class = metric.mean, list(metric.per_class)
        except ValueError as e:
            problems.append(f"the submission could not be scored: {e}")

    ok, reason = _verdict(execution, incomplete, projection)
    if ok and problems:
        ok, reason = False, problems[0]
    guard = (profile or {}).get("guard") or {}
    summary: dict[str, Any] = {
        "ok": ok,
        "reason": reason,
        "bundle": cfg.name,
        "bundle_hash": inputs.manifest.get("hash"),
        "notebook": str(cfg.kernel.notebook),
        "executed_notebook": executed.name,
        "status": execution.status,
        "images": (profile or {}).get("images", len(inputs.sample.image_ids)),
        "seconds": execution.seconds,
        "profile_total_s": (profile or {}).get("total_s"),
        "fixed_s": (profile or {}).get("fixed_s"),
        "per_image_s": (profile or {}).get("per_image_s"),
        "hidden_test_images": cfg.competition.hidden_test_images,
        "projected_seconds": None if projection is None else projection.projected_s,
        "projected_fixed_s": None if projection is None else projection.fixed_s,
        "projected_per_image_s": None if projection is None else projection.per_image_s,
        "budget_seconds": budget,
        "within_budget": bool(projection is not None and projection.within_budget),
        "calibration": calibration_note,
        "score": score,
        "per_class_score": per_class,
        "num_classes": cfg.inference.num_classes,
        "network": isolation.network,
        "network_note": isolation.reason,
        "guard_steps": list(guard.get("steps") or []),
        "failed_cell": _failed_cell(execution),
        "problems": problems + list(inputs.warnings),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    samples = []
    if submission.is_file():
        try:
            samples = load_mask_samples(
                submission,
                inputs.test_dir,
                inputs.labels,
                num_classes=cfg.inference.num_classes,
                shape=(cfg.inference.image_height, cfg.inference.image_width),
                order=cfg.inference.rle_order,
                limit=SAMPLE_IMAGES,
            )
        except ValueError as e:
            console.print(f"[yellow]warning:[/] masks left out of the report: {e}")
    write_report(out / "report.html", summary, profile, samples)
    _print_summary(summary, console)
    return DryRunResult(ok=ok, reason=reason, out=out, summary=summary)


def _print_summary(summary: Mapping[str, Any], console: Console) -> None:
    def fmt(v: Any, unit: str = "") -> str:
        return "-" if v is None else (f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    console.print(
        f"ran {fmt(summary['images'])} images in {fmt(summary['seconds'], ' s')} here; "
        f"projected {fmt(summary['projected_seconds'], ' s')} for {summary['hidden_test_images']} images "
        f"against {fmt(summary['budget_seconds'], ' s')} ({summary['calibration']})"
    )
    if summary["score"] is not None:
        per = ", ".join(f"{v:.3f}" for v in summary["per_class_score"])
        console.print(f"score (mean Dice): {summary['score']:.4f}  per class: {per}")
    for step in summary["guard_steps"]:
        console.print(f"[yellow]guard:[/] after {step.get('after_images')} images: {step.get('action')}")
    colour = "green" if summary["ok"] else "red"
    console.print(f"[{colour}]{'PASS' if summary['ok'] else 'FAIL'}[/]: {summary['reason']}")
