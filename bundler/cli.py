"""Thin command line: parse, call one core function, print, exit code.

A `BundlerError` is a user's mistake or an unmet precondition: it is printed as one message
(no traceback) and the process exits with the error's `exit_code`.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from bundler.config import DEFAULT_CONFIG, DRYRUN_RUNTIMES, BundleConfig, config_warnings, load_config
from bundler.display import labelled
from bundler.errors import BundlerError

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner's or an editor's stop, `kill`), raised where the command is so that it
    unwinds as Ctrl-C does: staging folders removed, the last good outputs kept."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(f"stopped by signal {signum}")


def _reports_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():  # signals are the main thread's to handle
            signal.signal(signal.SIGTERM, _terminate)
            # Ctrl-C's KeyboardInterrupt even where SIGINT was inherited ignored (a job started in the background
            # by a shell without job control, some CI runners): a SIGINT sent to the process group stops bundler
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return fn(*args, **kwargs)
        except BundlerError as e:
            err_console.print(labelled("error:", str(e)), soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:  # what was finished is kept, the rest discarded; 128 + the signal, as shells do
            terminated = isinstance(e, Terminated)
            err_console.print("terminated" if terminated else "interrupted", soft_wrap=True)
            sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))

    return wrapper  # type: ignore[return-value]


def _load(config_path: Path) -> BundleConfig:
    """`load_config`, then a warning line for each setting that contradicts what is known of the competition
    (the dry-run lists them with its inputs' warnings instead)."""
    cfg = load_config(config_path)
    for warning in config_warnings(cfg):
        err_console.print(labelled("warning:", warning, style="yellow"), soft_wrap=True)
    return cfg


runtime_option = click.option(
    "--runtime",
    type=click.Choice(DRYRUN_RUNTIMES),
    default=None,
    help="The dry-run's runtime. image: a cached twin of the Kaggle image (default where a target Python is "
    "found); local: this Python.",
)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The bundle's configuration file.",
)


@click.group()
@click.version_option(package_name="kaggle-bundler")
def main() -> None:
    """Ship segmentation models to an offline Kaggle code competition."""


@main.command()
@config_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Dataset folder (default: dataset.out).")
@click.option("--no-index", is_flag=True, help="Resolve from target.find_links only; never reach an index.")
@click.option("--force", is_flag=True, help="Rebuild even when the inputs are unchanged.")
@_reports_errors
def build(config_path: Path, out: Path | None, no_index: bool, force: bool) -> None:
    """Vendor the wheels the Kaggle image lacks and the model weights into one dataset folder."""
    from bundler.dataset import build_dataset

    cfg = _load(config_path)
    if out is not None:
        cfg = replace(cfg, dataset=replace(cfg.dataset, out=out.resolve()))
    if no_index:
        cfg = replace(cfg, target=replace(cfg.target, no_index=True))
    build_dataset(cfg, console=console, force=force)


@main.command("render-notebook")
@config_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Notebook path (default: kernel.notebook).")
@_reports_errors
def render_notebook_cmd(config_path: Path, out: Path | None) -> None:
    """Generate the offline inference notebook and kernel-metadata.json from kernel_src."""
    from bundler.notebook import render_notebook

    cfg = _load(config_path)
    if out is not None:
        cfg = replace(cfg, kernel=replace(cfg.kernel, notebook=out.resolve()))
    render_notebook(cfg, console=console)


@main.command("dry-run")
@config_option
@click.option(
    "--test-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of test images (an [input] file reader: the folder its path is relative to, or the file).",
)
@click.option("--sample-submission", type=click.Path(path_type=Path), default=None, help="The sample submission CSV.")
@click.option(
    "--labels", type=click.Path(path_type=Path), default=None, help="Ground truth (train.csv form) to score against."
)
@click.option(
    "--time-budget", type=float, default=None, help="Seconds; overrides the budget of the guard and the verdict."
)
@click.option("--calibrate", type=click.Path(path_type=Path), default=None, help="profile.json from a real Kaggle run.")
@click.option("--calibration", type=float, default=None, help="Kaggle seconds per local second.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: dryrun.out).")
@runtime_option
@_reports_errors
def dry_run_cmd(
    config_path: Path,
    test_dir: Path | None,
    sample_submission: Path | None,
    labels: Path | None,
    time_budget: float | None,
    calibrate: Path | None,
    calibration: float | None,
    out: Path | None,
    runtime: str | None,
) -> None:
    """Run the rendered notebook here, offline and timed; project it to the hidden test set."""
    from bundler.dryrun import dry_run, labels_of_the_set

    cfg = load_config(config_path)
    if test_dir is not None and labels is None:
        cfg, note = labels_of_the_set(cfg, test_dir.resolve())
        if note:
            console.print(labelled("note:", note, style="yellow"), soft_wrap=True)
    overrides: dict[str, Any] = {
        "test_dir": test_dir,
        "sample_submission": sample_submission,
        "labels": labels,
        "time_budget_s": time_budget,
        "calibration_profile": calibrate,
        "calibration": calibration,
        "out": out,
        "runtime": runtime,
    }
    cfg = _with_dryrun(
        cfg, {k: (v.resolve() if isinstance(v, Path) else v) for k, v in overrides.items() if v is not None}
    )
    result = dry_run(cfg, console=console)
    if not result.ok:
        err_console.print(labelled("dry-run failed:", result.reason), soft_wrap=True)
        sys.exit(1)


def _with_dryrun(cfg: BundleConfig, overrides: dict[str, Any]) -> BundleConfig:
    return replace(cfg, dryrun=replace(cfg.dryrun, **overrides))


@main.command("tune")
@config_option
@click.option("--test-dir", type=click.Path(path_type=Path), default=None, help="Labelled holdout images.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="The holdout's labels (train.csv form).")
@click.option("--folds", type=int, default=5, show_default=True, help="Cross-validation folds.")
@click.option("--margin", type=float, default=0.15, show_default=True, help="Share of the budget kept spare.")
@click.option("--write", is_flag=True, help="Write the tuned values into bundle.toml (comments kept); print the diff.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Cache and report folder (build/tune).")
@_reports_errors
def tune_cmd(
    config_path: Path,
    test_dir: Path | None,
    labels: Path | None,
    folds: int,
    margin: float,
    write: bool,
    out: Path | None,
) -> None:
    """Tune post-processing and gating on the labelled holdout with k-fold CV; plan the ensemble."""
    from bundler.tune import tune

    cfg = _load(config_path)
    if test_dir is not None:  # dryrun.labels and sample_submission belong to dryrun.test_dir, not to this one
        cfg = _with_dryrun(cfg, {"test_dir": test_dir.resolve(), "labels": None, "sample_submission": None})
    if labels is not None:
        cfg = _with_dryrun(cfg, {"labels": labels.resolve()})
    tune(
        cfg, console=console, folds=folds, margin=margin, write=write, config_path=config_path,
        out=out.resolve() if out is not None else None,
    )  # fmt: skip


@main.command()
@config_option
@click.option("--skip-dry-run", is_flag=True, help="Stop after build and render.")
@click.option(
    "--task",
    type=click.Choice(["segmentation", "classification"]),
    default="segmentation",
    show_default=True,
    help="segmentation: the Severstal-like demo on --config; classification: a synthetic Digit Recognizer "
    "in its own project folder (--dir).",
)
@click.option(
    "--dir",
    "project_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The classification demo's project folder (its bundle.toml, data and models) "
    "[default: demo-classification beside --config].",
)
@runtime_option
@_reports_errors
def demo(config_path: Path, skip_dry_run: bool, task: str, project_dir: Path | None, runtime: str | None) -> None:
    """Make synthetic data and small models, then build, render and dry-run the demo bundle."""
    if task == "classification":
        from bundler.demo.classification import run_classification_demo

        project = project_dir if project_dir is not None else config_path.resolve().parent / "demo-classification"
        digits = run_classification_demo(project.resolve(), console=console, dry_run=not skip_dry_run)
        if digits.steps.get("dry_run_ok") is False:
            reason = str(digits.steps.get("dry_run_reason"))
            err_console.print(labelled("demo failed: its dry-run failed:", reason), soft_wrap=True)
            sys.exit(1)
        return
    from bundler.demo import run_demo

    result = run_demo(config_path, console=console, dry_run=not skip_dry_run, runtime=runtime)
    if result.dry_run_ok is False:  # the demo's promise is a passing dry-run: a failed one fails the demo
        err_console.print(labelled("demo failed: its dry-run failed:", result.dry_run_reason), soft_wrap=True)
        sys.exit(1)


@main.group()
def baseline() -> None:
    """The image's package baseline (target.baseline)."""


@baseline.command("from-sources")
@click.option("--freeze", type=click.Path(path_type=Path), required=True, help="The Colab base's pip-freeze.gpu.txt.")
@click.option("--freeze-origin", required=True, help="Its repository, file, commit and date (goes in the header).")
@click.option("--layer", type=click.Path(path_type=Path), required=True, help="Kaggle's kaggle_requirements.txt.")
@click.option("--layer-origin", required=True, help="Its repository, file, commit and date (goes in the header).")
@click.option("--image-date", type=click.DateTime(["%Y-%m-%d"]), required=True, help="The image's build date.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The baseline file to write.")
@click.option("--python", "python_version", default="3.12", show_default=True, help="The image's Python.")
@click.option("--platform", default="x86_64-manylinux_2_35", show_default=True, help="uv's --python-platform.")
@click.option("--force-install", multiple=True, help="Installed after the layer (default: the Dockerfile's).")
@click.option("--uninstall", multiple=True, help="Uninstalled after the layer (default: the Dockerfile's).")
@click.option("--critical", default=None, help="The Dockerfile's grep of base pins (default: its pattern).")
@click.option("--replace", is_flag=True, help="Overwrite --out even if this command did not write it.")
@_reports_errors
def baseline_from_sources(**opts: Any) -> None:
    """Make a baseline from the public files the image is built from (reaches PyPI; for maintainers)."""
    from bundler.target import from_sources_command

    from_sources_command(opts, sys.argv, console=console)


poll_option = click.option(
    "--poll",
    "poll_s",
    type=float,
    default=None,
    help="Seconds between status polls (default: BUNDLER_POLL_S or 10-30).",
)
timeout_option = click.option(
    "--timeout", "timeout_s", type=float, default=None, help="Seconds each wait may take at most (dataset, run, score)."
)


@main.command("push")
@config_option
@click.option("--wait", is_flag=True, help="Follow the run to its end and download its outputs.")
@click.option("--no-run", is_flag=True, help="Save the notebook version without running it.")
@click.option("--rerun", is_flag=True, help="Push the notebook even when it is unchanged since the last push.")
@poll_option
@timeout_option
@_reports_errors
def push_cmd(
    config_path: Path, wait: bool, no_run: bool, rerun: bool, poll_s: float | None, timeout_s: float | None
) -> None:
    """Upload the bundle as a dataset version, wait until it is ready, pin it, push the notebook."""
    from bundler.remote import push

    cfg = load_config(config_path)
    push(cfg, console=console, wait=wait, no_run=no_run, poll_s=poll_s, timeout_s=timeout_s, rerun=rerun)


@main.command("status")
@config_option
@click.option("--version", "version", type=int, default=None, help="Notebook version (default: the last pushed).")
@click.option("--wait", is_flag=True, help="Poll until the run ends.")
@poll_option
@timeout_option
@_reports_errors
def status_cmd(
    config_path: Path, version: int | None, wait: bool, poll_s: float | None, timeout_s: float | None
) -> None:
    """A pushed notebook's run: its state; when it ended, its outputs in build/kaggle/v<N>/."""
    from bundler.remote import kernel_status

    kernel_status(
        load_config(config_path), console=console, version=version, wait=wait, poll_s=poll_s, timeout_s=timeout_s
    )


@main.command("submit")
@config_option
@click.option("--version", "version", type=int, default=None, help="Notebook version (default: the last pushed).")
@click.option("-m", "--message", default=None, help="Submission description (default: the version and bundle hash).")
@click.option("--wait", is_flag=True, help="Wait for the score and print it.")
@poll_option
@timeout_option
@_reports_errors
def submit_cmd(
    config_path: Path,
    version: int | None,
    message: str | None,
    wait: bool,
    poll_s: float | None,
    timeout_s: float | None,
) -> None:
    """Submit a notebook version's submission.csv to the code competition."""
    from bundler.remote import submit

    submit(
        load_config(config_path),
        console=console,
        version=version,
        message=message,
        wait=wait,
        poll_s=poll_s,
        timeout_s=timeout_s,
    )


@baseline.command("capture")
@config_option
@poll_option
@timeout_option
@_reports_errors
def baseline_capture(config_path: Path, poll_s: float | None, timeout_s: float | None) -> None:
    """Run a tiny internet-off notebook on Kaggle that records the image's Python and pip freeze."""
    from bundler.remote import capture

    capture(load_config(config_path), console=console, poll_s=poll_s, timeout_s=timeout_s)


@baseline.command("diff")
@click.argument("old")
@click.argument("new")
@config_option
@_reports_errors
def baseline_diff(old: str, new: str, config_path: Path) -> None:
    """What changed between two baselines (shipped names or files), and what it means for the bundle."""
    from bundler.remote import diff

    cfg = load_config(config_path) if config_path.is_file() else None
    if cfg is None:
        console.print(f"({config_path} not found: the packages only, not what they mean for a bundle)")
    diff(old, new, cfg, console=console)


if __name__ == "__main__":
    main()
