"""Hostile inputs, second sweep (issue 27): outputs that must not destroy the user's files, a verdict
that must not flip with the machine's load, paths with spaces, stale leftovers, SIGTERM."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import nbformat
import pytest
from click.testing import CliRunner
from IPython.core.interactiveshell import InteractiveShell

from bundler.cli import main as cli
from bundler.config import MachineConfig
from bundler.dryrun.outputs import check_out, keep, new_stage
from bundler.dryrun.projection import factor_calibration, project
from bundler.dryrun.verdict import Facts, judge, resources_against_limits
from bundler.errors import DryRunError, RenderError
from bundler.notebook.render import kernel_src_dir, render_notebook
from bundler.outdir import remove_stale_temp
from tests.projects import demo_cfg, quiet

# --- 1. dry-run --out never replaces a folder the user keeps things in ----------------------


def _dryrun_cfg(root: Path, out: Path) -> Any:
    cfg = demo_cfg(root)
    return replace(cfg, dryrun=replace(cfg.dryrun, out=out))


def test_dry_run_out_dot_in_a_project_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    from bundler.dryrun import dry_run

    project = tmp_path / "proj"
    project.mkdir()
    (project / "bundle.toml").write_text("# mine\n")
    (project / "best.pth").write_bytes(b"weights")
    cfg = _dryrun_cfg(tmp_path / "cfg", project)
    with pytest.raises(DryRunError, match=r"is not empty and was not written by bundler, so it is not replaced"):
        dry_run(cfg, console=quiet())
    assert sorted(p.name for p in project.iterdir()) == ["best.pth", "bundle.toml"]
    assert (project / "best.pth").read_bytes() == b"weights"


def test_dry_run_out_build_via_the_cli_exits_1_naming_the_folder(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    build = cfg.dataset.out.parent  # holds the built dataset folder
    result = CliRunner().invoke(cli, ["dry-run", "--config", str(cfg.root / "bundle.toml"), "--out", str(build)])
    assert result.exit_code == 1, result.output
    assert "dry-run output folder" in result.output and "not replaced" in result.output
    assert (cfg.dataset.out / "bundle.json").is_file()


def test_a_previous_dry_runs_output_and_an_empty_folder_are_accepted(tmp_path: Path) -> None:
    previous = tmp_path / "dryrun"
    previous.mkdir()
    (previous / "summary.json").write_text(json.dumps({"ok": True, "reason": "r"}))
    (previous / "submission.csv").write_text("x\n")
    check_out(previous)
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty")
    check_out(tmp_path / "not-yet")


def test_a_failed_folder_the_user_owns_is_refused_too(tmp_path: Path) -> None:
    failed = tmp_path / "dryrun.failed"
    failed.mkdir()
    (failed / "notes.md").write_text("mine")
    with pytest.raises(DryRunError, match=r"dryrun\.failed"):
        check_out(tmp_path / "dryrun")


def test_an_unwritable_parent_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(DryRunError, match=r"cannot be written \(Read-only file system\)"):
        check_out(tmp_path / "dryrun")


def test_an_out_that_cannot_be_renamed_gets_its_contents_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount point (a Docker volume) cannot be renamed (EBUSY): the swap replaces what it holds."""
    out = tmp_path / "dryrun"
    out.mkdir()
    (out / "summary.json").write_text("old")
    (out / "old-only.txt").write_text("old")
    stage = new_stage(out)
    (stage / "summary.json").write_text("new")
    (stage / "report").mkdir()
    (stage / "report" / "page.html").write_text("new")
    real_replace = Path.replace

    def busy(self: Path, target: Any) -> Path:
        if self == out:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", busy)
    assert keep(stage, out, ok=True) == out
    assert sorted(p.name for p in out.iterdir()) == ["report", "summary.json"]
    assert (out / "summary.json").read_text() == "new" and (out / "report" / "page.html").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dryrun"]  # no hidden .new/.old folders left


def test_a_build_whose_out_cannot_be_renamed_gets_its_contents_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundler.dataset import dataset_folder

    out = tmp_path / "dataset"
    out.mkdir()
    (out / "bundle.json").write_text("old")
    (out / "old.whl").write_text("old")
    staging = tmp_path / "dataset.partial-1"
    staging.mkdir()
    (staging / "bundle.json").write_text("new")
    real_rename = Path.rename

    def busy(self: Path, target: Any) -> Path:
        if self == out:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", busy)
    dataset_folder._swap(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json"] and (out / "bundle.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


# --- 2. render-notebook --out never overwrites what it did not write -------------------------


def test_render_out_onto_a_checkpoint_is_refused_before_writing(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    checkpoint = tmp_path / "best_model.pth"
    checkpoint.write_bytes(b"\x80weights")
    args = ["render-notebook", "--config", str(cfg.root / "bundle.toml"), "--out", str(checkpoint)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "must end in .ipynb" in result.output, result.output
    assert checkpoint.read_bytes() == b"\x80weights"


def test_render_out_a_folder_or_a_foreign_notebook_is_refused(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    folder = tmp_path / "somedir"
    folder.mkdir()
    with pytest.raises(RenderError, match=r"is a folder; give a file path ending in \.ipynb"):
        render_notebook(replace(cfg, kernel=replace(cfg.kernel, notebook=folder)), console=quiet())
    assert list(tmp_path.glob("somedir*")) == [folder] and not any(folder.iterdir())
    foreign = tmp_path / "analysis.ipynb"
    foreign.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    with pytest.raises(RenderError, match=r"is a file bundler did not render"):
        render_notebook(replace(cfg, kernel=replace(cfg.kernel, notebook=foreign)), console=quiet())
    assert "bundler" not in foreign.read_text()


def test_render_replaces_its_own_notebook(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    render_notebook(cfg, console=quiet())  # its own: replaced (here: unchanged)
    assert cfg.kernel.notebook.is_file()


# --- 3. the verdict does not flip with the machine's load -------------------------------------

PROFILE: dict[str, Any] = {
    "device": "cpu",
    "images": 10,
    "images_predicted": 10,
    "fixed_s": 20.0,
    "per_image_s": 0.7,  # a loaded CPU
    "counts": {},
    "problems": {},
    "guard": {"steps": [], "images_left_empty": 0},
    "resources": {},
}


def _verdict(projection: Any, estimate: str = "") -> Any:
    resources = resources_against_limits(PROFILE, MachineConfig())
    return judge(Facts("", "", PROFILE, projection, 10, resources, estimate=estimate))


def test_a_cpu_projection_for_a_gpu_kernel_warns_with_its_basis_and_never_fails_by_itself() -> None:
    projection = project(PROFILE, hidden_images=5506, budget_s=3300.0, target_device="cuda")
    assert not projection.within_budget and not projection.decides
    verdict = _verdict(projection, estimate="about 12 s of model compute on the target (stated rate)")
    assert verdict.ok, verdict.reason
    assert verdict.failures == ()
    (warning,) = verdict.warnings
    assert "over budget" in warning and "this machine's cpu" in warning and "--calibration" in warning
    assert "about 12 s of model compute on the target" in warning


def test_a_calibrated_or_same_device_projection_over_budget_still_fails() -> None:
    calibrated = project(PROFILE, hidden_images=5506, budget_s=3300.0, calibration=factor_calibration(1.0),
                         target_device="cuda")  # fmt: skip
    same_device = project(PROFILE, hidden_images=5506, budget_s=3300.0, target_device="cpu")
    for projection in (calibrated, same_device):
        assert projection.decides
        verdict = _verdict(projection)
        assert not verdict.ok and verdict.reason.startswith("over budget by")


def test_the_target_estimate_counts_every_model_and_view(tmp_path: Path) -> None:
    from bundler.dryrun.estimate import T4_FP16_FLOPS, T4_GPUS, model_flops, target_estimate
    from tests.tiny import tiny_spec

    spec = tiny_spec(tmp_path)
    flops = model_flops(spec, tmp_path)
    assert flops > 0
    fewer = replace(spec, segmenters=spec.segmenters[:1])
    assert model_flops(fewer, tmp_path) < flops
    estimate = target_estimate(spec, tmp_path, 1000)
    assert estimate.seconds == pytest.approx(1000 * flops / (T4_FP16_FLOPS * T4_GPUS))
    assert "T4 x2" in estimate.describe()


# --- 9. a project folder whose path holds a space ---------------------------------------------


def test_the_module_cells_write_into_a_folder_whose_path_holds_spaces(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    nb = nbformat.read(cfg.kernel.notebook, as_version=4)
    target = tmp_path / "My Projects" / "OneDrive - X" / "kernel_src"
    target.mkdir(parents=True)
    shell = InteractiveShell.instance()
    shell.user_ns["KERNEL_SRC_DIR"] = target
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%writefile")]
    assert cells
    for cell in cells:
        result = shell.run_cell(cell.source, silent=True)
        assert result.success, result.error_in_exec or result.error_before_exec
    source = kernel_src_dir()
    for written in target.rglob("*.py"):
        assert written.read_bytes() == (source / written.relative_to(target)).read_bytes()
    assert len(list(target.rglob("*.py"))) == len(cells)


# --- 11. leftovers and SIGTERM -----------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_wheel_work_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"bundler-wheels-{_dead_pid()}-abc"
    alive = tmp_path / f"bundler-wheels-{os.getpid()}-def"
    other = tmp_path / "bundler-wheels-notapid"
    for folder in (dead, alive, other):
        folder.mkdir()
    assert remove_stale_temp("bundler-wheels-", tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()


def test_an_up_to_date_build_still_removes_a_dead_builds_staging_folder(tmp_path: Path) -> None:
    from bundler.dataset import dataset_folder

    out = tmp_path / "dataset"
    out.mkdir()
    stale = tmp_path / f"dataset.partial-{_dead_pid()}"
    stale.mkdir()
    dataset_folder._remove_stale(out)
    assert not stale.exists()


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(tmp_path: Path) -> None:
    """A command stopped with SIGTERM says so, exits 128 + 15 and runs its cleanup (here: a
    `finally` inside the command, as the build's staging and the dry-run's stage have)."""
    marker = tmp_path / "cleaned"
    script = f"""
import sys, time
from pathlib import Path
import bundler.cli as cli

@cli._reports_errors
def command():
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        Path({str(marker)!r}).write_text("yes")

command()
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert marker.read_text() == "yes"


# --- 5. a budget that is not positive seconds is named as the user wrote it ---------------------


def test_a_negative_dryrun_budget_in_bundle_toml_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    from bundler.config import parse_config
    from bundler.errors import ConfigError
    from tests.projects import tiny_inference, tiny_project

    segmenter = {"name": "unet", "kind": "smp", "arch": "Unet", "encoder": "resnet18", "checkpoint": "unet.pth"}
    data = tiny_project(inference=tiny_inference(gating={"mode": "off"}), segmenters=[segmenter],
                        dryrun={"time_budget_s": -5})  # fmt: skip
    with pytest.raises(ConfigError, match=r"dryrun\.time_budget_s = -5 must be positive seconds"):
        parse_config(data, tmp_path / "bundle.toml")


@pytest.mark.parametrize("command", ["dry-run", "tune"])
def test_a_negative_time_budget_flag_exits_2_naming_the_flag_before_anything_runs(tmp_path: Path, command: str) -> None:
    cfg = demo_cfg(tmp_path)
    args = [command, "--config", str(cfg.root / "bundle.toml")]
    if command == "dry-run":
        args += ["--time-budget", "-5"]
    else:
        config = cfg.root / "bundle.toml"
        text = config.read_text()
        config.write_text(text.replace("[dryrun]", "[dryrun]\ntime_budget_s = -5", 1) if "[dryrun]" in text
                              else text + "\n[dryrun]\ntime_budget_s = -5\n")  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "time_budget_s" in result.output and "-5" in result.output and "CONFIG['inference']" not in result.output


# --- 6. a setting that contradicts a competition the formats table knows ----------------------


def test_rle_order_contradicting_severstal_is_a_warning_naming_both(tmp_path: Path) -> None:
    from bundler.config import config_warnings

    cfg = demo_cfg(tmp_path)
    assert cfg.competition.slug == "severstal-steel-defect-detection" and config_warnings(cfg) == []
    wrong = replace(cfg, inference=replace(cfg.inference, rle_order="C"))
    (warning,) = config_warnings(wrong)
    assert "inference.rle_order = 'C'" in warning and "severstal-steel-defect-detection" in warning
    assert "set rle_order = 'F'" in warning
    carvana = replace(wrong, competition=replace(cfg.competition, slug="carvana-image-masking-challenge"))
    assert config_warnings(carvana) == []  # row-major there
    unknown = replace(wrong, competition=replace(cfg.competition, slug="some-new-competition"))
    assert config_warnings(unknown) == []


def test_the_warning_reaches_the_cli(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    config = cfg.root / "bundle.toml"
    text = config.read_text()
    assert 'rle_order = "F"' in text
    config.write_text(text.replace('rle_order = "F"', 'rle_order = "C"'))
    result = CliRunner().invoke(cli, ["render-notebook", "--config", str(config)])
    assert "warning:" in result.output and "contradicts competition.slug" in result.output, result.output


# --- 12. messages that say what is true -------------------------------------------------------


def test_a_truncated_checkpoint_is_called_truncated(tmp_path: Path) -> None:
    import torch

    from bundler.dataset.weights import read_checkpoint
    from bundler.errors import WeightsError

    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(3)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cut\.pth is truncated: .* copy or download the checkpoint again"):
        read_checkpoint(cut, "unet", "bundle.toml segmenters[0]")


def test_no_image_predicted_after_a_failed_run_does_not_blame_the_test_folder() -> None:
    profile = {**PROFILE, "images_predicted": 0, "counts": {"missing": 0, "unreadable": 0}}
    verdict = judge(Facts("the notebook could not run: 'cuda' was asked for but no GPU is visible", "", profile,
                          None, 10, resources_against_limits(profile, MachineConfig())))  # fmt: skip
    assert not verdict.ok and "cuda" in verdict.reason
    assert not any("--test-dir" in f for f in verdict.failures), verdict.failures
    missing = {**profile, "counts": {"missing": 10, "unreadable": 0}}
    verdict = judge(Facts("", "", missing, None, 10, resources_against_limits(missing, MachineConfig())))
    assert any("point --test-dir" in f for f in verdict.failures)


def test_the_demo_takes_the_dry_runs_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bundler.demo

    seen: dict[str, Any] = {}

    def fake_run_demo(config_path: Path, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise KeyboardInterrupt  # the options were taken; nothing else to run here

    monkeypatch.setattr(bundler.demo, "run_demo", fake_run_demo)
    result = CliRunner().invoke(cli, ["demo", "--runtime", "local", "--config", str(demo_cfg(tmp_path).root)])
    assert result.exit_code == 130 and seen["runtime"] == "local", result.output
    bad = CliRunner().invoke(cli, ["demo", "--runtime", "gpu"])
    assert bad.exit_code == 2 and "'gpu' is not one of 'image', 'local'" in bad.output


def test_unknown_key_lists_offer_what_a_user_may_write() -> None:
    from bundler.config import parse_config
    from bundler.errors import ConfigError
    from tests.projects import tiny_inference, tiny_project

    segmenter = {"name": "unet", "kind": "smp", "arch": "Unet", "encoder": "resnet18", "checkpoint": "unet.pth"}
    root = Path("/nonexistent-project")

    def error(**changes: Any) -> str:
        data = tiny_project(inference=tiny_inference(gating={"mode": "off"}), segmenters=[{**segmenter, **changes}])
        with pytest.raises(ConfigError) as e:
            parse_config(data, root)
        return str(e.value)

    model = error(typo=1)
    assert "checkpoint" in model and "checkpoint_key" in model and "'file'" not in model and "'sha256'" not in model
    assert "sha256 is set by the build" in error(sha256="abc")
    data = tiny_project(inference=tiny_inference(gating={"mode": "off"}, typo=1), segmenters=[segmenter])
    with pytest.raises(ConfigError) as e:
        parse_config(data, root)
    assert "'fp16'" not in str(e.value) and "cpu_micro_batch" not in str(e.value) and "precision" in str(e.value)
