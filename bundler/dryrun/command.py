"""`bundler dry-run`: the rendered notebook, run here offline and timed, projected and scored.

1. Check every input (`inputs`), before anything runs.
2. Lay out a Kaggle-like tree in a temporary folder (`tree`): the built bundle under
   `input/<dataset-slug>/`, the test images and the sample submission under
   `input/<competition-slug>/`, and `working/`, with `input/` read-only.
3. Execute the RENDERED notebook with nbclient from `working/`, in a child process with no
   network (`bundler.sandbox`; when that cannot be had it runs anyway, says so, and records it). Injected
   parameters point CONFIG at the tree, set `install_wheels: "auto"` and the time budget.
4. Write submission.csv, profile.json, the executed notebook, summary.json and report.html into
   a staging folder beside `dryrun.out` (`outputs`), in every case; then swap it into `dryrun.out`
   when the run passed, or into `<dryrun.out>.failed` when it failed, so `dryrun.out` always holds
   the last good run. Ctrl-C discards the unfinished run (the CLI exits 130).

The verdict (`verdict`) is strict: a pass only when the notebook ran, wrote a complete submission,
no model failed or gave NaN, no image was left empty, the images listed were there to predict,
no limit of the target machine (`[machine]`) was exceeded, and the projection fits the budget.
The kernel's temporary files (the `bundler_kernel_*` folder of the module cells) go to a `tmp/`
inside the tree, removed with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nbformat
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bundler.config import BundleConfig
from bundler.dataset.manifest import read_manifest
from bundler.dataset.parts import bundle_parts
from bundler.display import shown_path
from bundler.dryrun.estimate import Estimate, target_estimate
from bundler.dryrun.execution import Execution, run_notebook
from bundler.dryrun.inputs import Inputs, check_inputs
from bundler.dryrun.outputs import check_out, discard, keep, new_stage
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
from bundler.dryrun.runtime import Runtime, choose_runtime, make_overlay
from bundler.dryrun.tree import make_tree, remove_tree
from bundler.dryrun.verdict import Facts, judge, problem_summary, resources_against_limits
from bundler.errors import ConfigError, DryRunError, ScoringError
from bundler.notebook.failure import CellFailure
from bundler.sandbox import Isolation, probe
from bundler.scoring import mask_shapes, score_run, score_submission, submission_breakdown
from kernel_src.errors import InputError
from kernel_src.inputs import READERS, input_files
from kernel_src.paths import PROFILE_FILE, SUBMISSION_FILE
from kernel_src.profiler import folder_bytes, format_bytes
from kernel_src.readers import open_reader
from kernel_src.rows import RowSample
from kernel_src.submission import SampleSubmission, read_csv_strings

SAMPLE_IMAGES = 6


@dataclass(frozen=True)
class DryRunResult:
    ok: bool
    reason: str
    out: Path  # where this run's outputs are: dryrun.out when it passed, <dryrun.out>.failed when not
    summary: dict[str, Any]


def budget_of(cfg: BundleConfig) -> float:
    """`--time-budget` (dryrun.time_budget_s), else the inference budget; a budget that is not positive
    seconds is the user's setting at fault, named as they wrote it (exit 2), before anything runs."""
    given = cfg.dryrun.time_budget_s
    if given is not None and not given > 0:  # `--time-budget` passes no config check
        raise ConfigError(f"--time-budget (dryrun.time_budget_s) = {given:g} must be positive seconds")
    return float(given if given is not None else cfg.inference.time_budget_s)


def _execute(
    cfg: BundleConfig, inputs: Inputs, executed: Path, isolation: Isolation, console: Console, runtime: Runtime
) -> tuple[Execution, int | None]:
    """Run the notebook on a Kaggle-like tree made beside `executed`; copy its outputs there.
    Returns the execution and the bytes left under the working folder when it ended."""
    from bundler.notebook.parameters import with_parameters

    out = executed.parent
    tree_root = Path(tempfile.mkdtemp(prefix=".kaggle-tree-", dir=out))  # beside the outputs: hard links work
    try:
        split = cfg.dataset.wheels_id or cfg.dataset.weights_model
        parts = bundle_parts(cfg, read_manifest(cfg.dataset.out, cfg.name)) if split else []
        tree = make_tree(
            tree_root,
            parts=[(part.id, part.folder) for part in parts],
            bundle_src=cfg.dataset.out,
            dataset_id=parts[-1].id if parts else cfg.dataset.id,  # the weights part carries bundle.json
            competition_slug=cfg.competition.slug,
            test_dir=inputs.test_dir,
            test_images_name=cfg.competition.test_images,
            sample_submission_src=inputs.sample_submission,
            sample_submission_name=cfg.competition.sample_submission,
            input_files=input_files(cfg.inference.input),
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
        kernel_tmp = tree.root / "tmp"  # the kernel's tempfile folder: the module cells' bundler_kernel_* goes here
        kernel_tmp.mkdir()
        kernelspec = dict(inputs.notebook.metadata.get("kernelspec") or {})
        overlay = make_overlay(runtime, tree.root / "runtime", str(kernelspec.get("name") or "python3"))
        jupyter_path = os.pathsep.join(p for p in (str(overlay.jupyter_path), os.environ.get("JUPYTER_PATH", "")) if p)
        execution = run_notebook(
            notebook,
            executed,
            cwd=tree.working,
            console=console,
            isolation=isolation,
            readonly=[tree.input_root, *runtime.readonly],
            timeout_s=timeout,
            engine=runtime.engine,
            env={"TMPDIR": str(kernel_tmp), "JUPYTER_PATH": jupyter_path},
        )
        for name in (SUBMISSION_FILE, PROFILE_FILE):
            if (tree.working / name).is_file():
                shutil.copyfile(tree.working / name, out / name)
        return execution, folder_bytes(tree.working)
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


def _complete(submission: Path, sample: SampleSubmission | RowSample) -> str:
    """'' when `submission` has every row the sample asks for, else what is wrong."""
    frame = read_csv_strings(submission)
    if isinstance(sample, RowSample):  # an image-level task: one row per key, in the sample's header
        keys = [str(k) for k in frame[sample.header[0]]] if sample.header[0] in frame.columns else []
        if [str(c) for c in frame.columns] != list(sample.header):
            return f"submission.csv header {list(frame.columns)} differs from the sample's {list(sample.header)}"
        if sorted(keys) != sorted(sample.keys):
            return f"submission.csv has {len(keys)} rows for {len(set(keys))} keys, the sample lists {len(sample.keys)}"
        return ""
    if sample.resolved.per_object:  # one row per object: at least one per pair
        if len(frame) < sample.rows:
            return f"submission.csv has {len(frame)} rows, the sample submission needs at least {sample.rows}"
    elif len(frame) != sample.rows:
        return f"submission.csv has {len(frame)} rows, the sample submission needs {sample.rows}"
    if [str(c) for c in frame.columns] != list(sample.columns):
        return f"submission.csv header {list(frame.columns)} differs from the sample's {list(sample.columns)}"
    return ""


def _failed_cell(ex: Execution) -> dict[str, Any] | None:
    """summary.json's `failed_cell`: the run's `CellFailure` and status."""
    if ex.failure is None:
        return None
    f = ex.failure
    return {
        "index": f.index,
        "id": f.cell,
        "status": ex.status,
        "ename": f.ename,
        "evalue": f.evalue,
        "traceback": "\n".join(f.traceback),
        "log_tail": list(f.log_tail),
    }


def _reason_of_failure(ex: Execution) -> str:
    f = ex.failure or CellFailure(None, "", "")
    where = f"cell {f.index}" if f.index is not None else "the notebook"
    if f.cell:
        where += f" ({f.cell!r})"
    first = f.message.splitlines()[0] if f.message else "no message"
    if ex.status == "cell_failed" and f.cell == "setup" and "pip" in f.evalue and "install" in f.evalue:
        return f"the setup cell's offline install of the vendored wheels failed: {first}"
    if ex.status == "kernel_died":
        return f"the kernel died in {where} ({first}); see {ex.log.name}"
    if ex.status == "timeout":
        return f"{where} did not finish in time ({first})"
    if ex.status == "interrupted":
        return f"the run was stopped in {where} ({first})"
    if ex.status == "cell_failed":
        return f"{where} failed: {first}"
    return f"the notebook could not run: {first}; see {ex.log.name}"


def image_task(cfg: BundleConfig) -> tuple[str | None, str | None]:
    """(task, metric) of an image-level task (classification, regression, ...), (None, None) for
    segmentation. The task is `task` of `[inference]` or `[competition]` wherever the config
    declares it, as a name or as a table with a `name` (the `[task]` table of issue 22); the metric
    is that table's `metric`, or the section's (None: the task's default)."""
    for section in (cfg.inference, cfg.competition):
        task = getattr(section, "task", None)
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if isinstance(name, str) and name != "segmentation":
            metric = getattr(task, "metric", None) or getattr(section, "metric", None)
            return name, metric if isinstance(metric, str) and metric else None
    return None, None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def dry_run(cfg: BundleConfig, *, console: Console) -> DryRunResult:
    """Run the rendered notebook on a Kaggle-like tree here, offline; write and return the verdict.

    The outputs go to a staging folder first, then where the verdict puts them (see the module doc);
    an interrupt (Ctrl-C) or an error in bundler itself leaves the last good run as it was."""
    check_out(cfg.dryrun.out)
    budget_of(cfg)
    inputs = check_inputs(cfg)
    for warning in inputs.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    out = cfg.dryrun.out
    stage = new_stage(out)
    try:
        result = _run(cfg, inputs, stage, console)
    except BaseException:
        discard(stage)
        raise
    where = keep(stage, out, ok=result.ok)
    if not result.ok:
        kept = f"; the last good run stays in {shown_path(out)}" if out.exists() else ""
        console.print(f"this failed run's outputs: {escape(shown_path(where))}{escape(kept)}", soft_wrap=True)
    return replace(result, out=where)


def _run(cfg: BundleConfig, inputs: Inputs, stage: Path, console: Console) -> DryRunResult:
    """The dry-run proper, every output written into `stage`."""
    executed = stage / cfg.kernel.notebook.name
    isolation = probe()
    if isolation.isolated:
        console.print("network: [green]none[/] (a namespace with loopback only, as on Kaggle's rerun)")
    else:
        console.print(
            f"[bold red]WARNING: running WITH network[/]: {escape(isolation.reason)}. A download that would fail "
            "on Kaggle succeeds here; this dry-run does not prove the notebook works offline."
        )
    budget = budget_of(cfg)
    console.print(
        f"dry-run of {cfg.kernel.notebook.name}: {len(inputs.sample.image_ids)} images, budget {budget:.0f} s"
    )

    runtime = choose_runtime(cfg, inputs.manifest, console=console)
    console.print(f"runtime: {escape(runtime.describe())}: {escape(runtime.detail)}")
    execution, working_bytes = _execute(cfg, inputs, executed, isolation, console, runtime)
    profile = _read_json(stage / PROFILE_FILE)
    submission = stage / SUBMISSION_FILE
    incomplete = "" if not submission.is_file() else _complete(submission, inputs.sample)
    if execution.ok and not submission.is_file():
        incomplete = "the notebook ran but wrote no submission.csv"

    projection: Projection | None = None
    calibration_note = NO_CALIBRATION.describe()
    failures: list[str] = []
    predicted = (profile or {}).get("images_predicted")
    if profile is not None and predicted != 0:  # nothing predicted: nothing to project
        try:
            calibration = _calibration(cfg, inputs, profile, console)
            calibration_note = calibration.describe()
            projection = project(
                profile,
                hidden_images=cfg.competition.hidden_test_images,
                budget_s=budget,
                calibration=calibration,
                target_device="cuda" if cfg.kernel.enable_gpu else "cpu",
            )
        except DryRunError as e:
            failures.append(str(e))
    estimate: Estimate | None = None
    estimate_note = ""
    if projection is not None and not projection.decides:
        try:
            estimate = target_estimate(cfg.inference, cfg.dataset.out, cfg.competition.hidden_test_images)
            estimate_note = estimate.describe()
        except Exception as e:  # an estimate beside the projection: never a reason to fail the run
            estimate_note = f"no estimate for the target ({type(e).__name__}: {e})"

    score: float | None = None
    per_class: list[float] | None = None
    losses: list[dict[str, Any]] | None = None  # where the points are lost (bundler.scoring.breakdown)
    row_score: dict[str, Any] | None = None  # an image-level task's score (bundler.scoring.rows)
    task, task_metric = image_task(cfg)
    if task is not None and inputs.labels is not None and submission.is_file() and not incomplete:
        try:
            scored = score_submission(
                submission, inputs.labels, sample=inputs.sample_submission, task=task, metric=task_metric
            )
            score, row_score = scored.score, scored.to_dict()
        except ScoringError as e:
            failures.append(f"the submission could not be scored: {e}")
    elif inputs.labels is not None and submission.is_file() and not incomplete:
        try:
            # layout, RLE order, each image's encode size and the empty-pair rule from the spec (issue 16)
            metric = score_run(
                cfg.inference, submission, inputs.labels, test_dir=inputs.test_dir, image_ids=inputs.sample.image_ids
            )
            score, per_class = metric.mean, list(metric.per_class)
            losses = [c.to_dict() for c in submission_breakdown(
                submission, inputs.labels, num_classes=cfg.inference.num_classes, image_ids=inputs.sample.image_ids,
                shape=mask_shapes(cfg.inference, inputs.test_dir, inputs.sample.image_ids),
                submission_spec=cfg.inference.submission,
            )]  # fmt: skip
        except ValueError as e:
            failures.append(f"the submission could not be scored: {e}")

    resources = resources_against_limits(profile, cfg.machine, working_bytes)
    verdict = judge(
        Facts(
            execution_failure="" if execution.ok else _reason_of_failure(execution),
            incomplete=incomplete,
            profile=profile,
            projection=projection,
            listed=len(inputs.sample.image_ids),
            resources=resources,
            other_failures=failures,
            other_warnings=inputs.warnings if profile is None else (),  # else the notebook's own counts say it
            estimate=estimate_note,
        )
    )
    guard = (profile or {}).get("guard") or {}
    counts = (profile or {}).get("counts") or {}
    summary: dict[str, Any] = {
        "ok": verdict.ok,
        "reason": verdict.reason,
        "failures": list(verdict.failures),
        "warnings": list(verdict.warnings),
        "bundle": cfg.name,
        "bundle_hash": inputs.manifest.get("hash"),
        "notebook": str(cfg.kernel.notebook),
        "executed_notebook": executed.name,
        "status": execution.status,
        "images": (profile or {}).get("images", len(inputs.sample.image_ids)),
        "images_predicted": predicted,
        "images_missing": counts.get("missing"),
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
        "projection_decides": bool(projection is not None and projection.decides),
        "projection_basis": None if projection is None else projection.basis(),
        "target_estimate_s": None if estimate is None else estimate.seconds,
        "target_estimate_basis": estimate_note or None,
        "calibration": calibration_note,
        "score": score,
        "per_class_score": per_class,
        "loss_breakdown": losses,
        "row_score": row_score,
        "num_classes": cfg.inference.num_classes,
        "runtime": runtime.summary(),
        "network": isolation.network,
        "network_note": isolation.reason,
        "guard_steps": list(guard.get("steps") or []),
        "images_left_empty": guard.get("images_left_empty"),
        "failed_cell": _failed_cell(execution),
        "problems": problem_summary(profile),
        "resources": resources,
    }
    (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    samples = []
    if submission.is_file() and task is None:  # mask overlays: segmentation only
        try:
            with ExitStack() as stack:
                image_of = None
                if READERS[cfg.inference.input.reader].file:  # the images are rows of a file: the reader's
                    reader = stack.enter_context(open_reader(cfg.inference.input, inputs.test_dir))
                    image_of = lambda image_id: reader.load(image_id, None, None).image  # noqa: E731
                samples = load_mask_samples(
                    submission,
                    inputs.test_dir,
                    inputs.labels,
                    num_classes=cfg.inference.num_classes,
                    shape=mask_shapes(cfg.inference, inputs.test_dir, inputs.sample.image_ids),
                    order=cfg.inference.rle_order,
                    limit=SAMPLE_IMAGES,
                    submission_spec=cfg.inference.submission,
                    image_of=image_of,
                )
        except (ValueError, InputError) as e:
            console.print(f"[yellow]warning:[/] masks left out of the report: {escape(str(e))}")
    write_report(stage / "report.html", summary, profile, samples)
    _print_summary(summary, console)
    return DryRunResult(ok=verdict.ok, reason=verdict.reason, out=stage, summary=summary)


def _print_summary(summary: Mapping[str, Any], console: Console) -> None:
    def fmt(v: Any, unit: str = "") -> str:
        return "-" if v is None else (f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    predicted, images = summary.get("images_predicted"), summary["images"]
    ran = f"ran {fmt(images)} images" + (f" ({predicted} predicted)" if predicted not in (None, images) else "")
    if summary["projected_seconds"] is None:
        console.print(f"{ran} in {fmt(summary['seconds'], ' s')} here; no projection (no image was timed)")
    else:
        console.print(
            f"{ran} in {fmt(summary['seconds'], ' s')} here; "
            f"projected {fmt(summary['projected_seconds'], ' s')} for {summary['hidden_test_images']} images "
            f"against {fmt(summary['budget_seconds'], ' s')} ({escape(summary['calibration'])})"
        )
        if not summary.get("projection_decides"):
            console.print(f"  that figure does not decide the verdict: {escape(str(summary['projection_basis']))}")
            if summary.get("target_estimate_basis"):
                console.print(f"  beside it: {escape(str(summary['target_estimate_basis']))}")
    if summary.get("images_missing"):
        console.print(
            f"{summary['images_missing']} of the listed images were missing from the test folder "
            "(not predicted, not counted)"
        )
    if summary["score"] is not None and summary.get("row_score"):
        console.print(f"score ({summary['row_score']['metric']}): {summary['score']:.4f}")
    elif summary["score"] is not None:
        per = ", ".join(f"{v:.3f}" for v in summary["per_class_score"])
        console.print(f"score (mean Dice): {summary['score']:.4f}  per class: {per}")
    for step in summary["guard_steps"]:
        console.print(f"[yellow]guard:[/] after {step.get('after_images')} images: {step.get('action')}")
    problems = summary.get("problems") or {}
    resources = summary.get("resources") or {}
    if problems or resources:
        table = Table(title="problems and resources", show_lines=False, title_justify="left")
        table.add_column("what")
        table.add_column("count / used", justify="right")
        table.add_column("examples / limit", overflow="fold")
        for kind, entry in problems.items():
            table.add_row(escape(kind), str(entry["count"]), escape("; ".join(entry["examples"])))
        ram, gpu, disk = (resources.get(k) or {} for k in ("ram", "gpu", "working_disk"))
        if ram:
            table.add_row("peak RAM", format_bytes(ram.get("peak_bytes")), format_bytes(ram.get("limit_bytes")))
        if gpu:
            peaks = gpu.get("peak_bytes")
            used = ", ".join(f"{d} {format_bytes(b)}" for d, b in peaks.items()) if peaks else "not used (CPU run)"
            if peaks and gpu.get("source") == "estimated":
                used += " (estimated at load: no GPU ran)"
            table.add_row("peak GPU memory", used, f"{format_bytes(gpu.get('limit_bytes_per_device'))} per GPU")
        if disk:
            table.add_row("working folder", format_bytes(disk.get("bytes")), format_bytes(disk.get("limit_bytes")))
        console.print(table)
    for line in summary.get("warnings") or []:
        console.print(f"[yellow]WARN[/]: {escape(line)}", soft_wrap=True)
    rt = summary.get("runtime") or {}
    console.print(
        f"runtime: {rt.get('name')} (Python {rt.get('python')}, torch {rt.get('torch')}, numpy {rt.get('numpy')})"
    )
    colour = "green" if summary["ok"] else "red"
    console.print(f"[{colour}]{'PASS' if summary['ok'] else 'FAIL'}[/]: {escape(summary['reason'])}", soft_wrap=True)
    for line in (summary.get("failures") or [])[1:]:
        console.print(f"[red]also[/]: {escape(line)}", soft_wrap=True)
