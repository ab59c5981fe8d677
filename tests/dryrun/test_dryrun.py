"""Real dry-runs: a tiny bundle (real timm/smp models, random weights), a rendered notebook,
a small synthetic holdout, executed by a real kernel with no network."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import nbformat
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from bundler.config import BundleConfig
from bundler.sandbox import NETWORK_AVAILABLE, Isolation, probe
from bundler.scoring.metric import dice_score
from kernel_src.submission import read_csv_strings
from tests.projects import DRYRUN_HIDDEN, DRYRUN_IMAGES, quiet
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH


def _fresh(cfg: BundleConfig, name: str, **dryrun: Any) -> BundleConfig:
    """`cfg` writing to its own output folder, its notebook re-rendered (kernel_src may have moved on)."""
    from bundler.notebook.render import render_notebook

    render_notebook(cfg, console=quiet())
    return replace(cfg, dryrun=replace(cfg.dryrun, out=cfg.root / "build" / name, **dryrun))


@pytest.mark.slow
def test_within_budget_with_labels_passes_and_scores_the_written_submission(project: BundleConfig) -> None:
    from bundler.dryrun.command import dry_run

    cfg = _fresh(project, "ok")
    buf = io.StringIO()
    result = dry_run(cfg, console=Console(file=buf, width=160))
    out = cfg.dryrun.out
    assert result.ok, result.reason + "\n" + buf.getvalue()
    assert result.reason.startswith("within budget")
    for name in ("submission.csv", "profile.json", "summary.json", "report.html", "inference.ipynb"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True
    assert summary["images"] == summary["images_predicted"] == DRYRUN_IMAGES
    assert summary["failures"] == [] and summary["warnings"] == [] and summary["problems"] == {}
    resources = summary["resources"]
    # no GPU ran: the verdict holds the load-time estimate, said to be one
    assert resources["gpu"]["source"] == "estimated" and all(b > 0 for b in resources["gpu"]["peak_bytes"].values())
    assert 50_000_000 < resources["ram"]["peak_bytes"] < resources["ram"]["limit_bytes"] == 29 * 10**9
    assert 0 < resources["working_disk"]["bytes"] < resources["working_disk"]["limit_bytes"]
    assert summary["seconds"] > 0
    assert summary["within_budget"] is True
    assert summary["budget_seconds"] == project.inference.time_budget_s
    assert summary["projected_seconds"] <= summary["budget_seconds"]
    assert summary["network"] == probe().network
    assert summary["calibration"] == "none: figure is for this machine"
    assert summary["failed_cell"] is None
    assert summary["guard_steps"] == []
    expected = dice_score(
        out / "submission.csv",
        cfg.dryrun.labels,  # type: ignore[arg-type]
        num_classes=4,
        shape=(IMAGE_HEIGHT, IMAGE_WIDTH),
        order="F",
        image_ids=read_csv_strings(cfg.dryrun.sample_submission)["ImageId_ClassId"].str.rsplit("_", n=1).str[0],  # type: ignore[arg-type]
    )
    assert summary["score"] == expected.mean
    assert summary["per_class_score"] == list(expected.per_class)
    losses = summary["loss_breakdown"]  # where the points are lost, per class (bundler.scoring.breakdown)
    assert [c["score"] for c in losses] == pytest.approx(list(expected.per_class))
    assert sum(c["lost"] for c in losses) == pytest.approx((1 - expected.mean) * expected.pairs)
    profile = json.loads((out / "profile.json").read_text())
    fixed, per = profile["fixed_s"], profile["per_image_s"]
    assert summary["projected_seconds"] == pytest.approx(fixed + per * DRYRUN_HIDDEN)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "PASS" in html and "Where the points are lost" in html
    assert not list(out.glob(".kaggle-tree-*"))  # the temporary tree is gone
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith((".ok", "ok"))) == ["ok"]  # no stage left
    # the module cells' bundler_kernel_* folder was made in the tree's tmp/, and went with the tree
    executed = nbformat.read(out / "inference.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    ready = re.search(r"ready in (\S+)", printed)
    assert ready and "/.kaggle-tree-" in ready.group(1) and "/tmp/bundler_kernel_" in ready.group(1)
    assert not Path(ready.group(1)).exists()


@pytest.mark.slow
def test_tiny_budget_via_the_cli_steps_down_writes_every_row_and_fails(project: BundleConfig) -> None:
    from bundler.cli import main

    _fresh(project, "tiny-budget")
    out = project.root / "build" / "tiny-budget"
    args = ["dry-run", "--config", str(project.root / "bundle.toml"), "--time-budget", "0.5", "--out", str(out)]
    args += ["--calibration", "1"]  # calibrated: over budget decides the verdict (uncalibrated CPU runs only warn)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "dry-run failed: over budget by" in result.output
    assert not out.exists()  # no good run yet: the failed one lands beside where it would go
    out = out.with_name("tiny-budget.failed")
    assert "this failed run's outputs:" in result.output and "tiny-budget.failed" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is False
    assert summary["budget_seconds"] == 0.5
    assert summary["within_budget"] is False
    assert summary["guard_steps"], "the in-notebook guard should have stepped down"
    assert all(step["action"] in ("drop_tta", "drop_model", "empty_rest") for step in summary["guard_steps"])
    rows = read_csv_strings(out / "submission.csv")
    assert len(rows) == DRYRUN_IMAGES * 4
    assert "over budget" in (out / "report.html").read_text()


@pytest.mark.slow
def test_failing_cell_is_reported_with_its_traceback_and_network_fallback_recorded(
    project: BundleConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bundler.dryrun.command as dryrun_module

    monkeypatch.setattr(dryrun_module, "probe", lambda: Isolation(NETWORK_AVAILABLE, False, "no unshare (test)"))
    # a bundle whose weight file was damaged after the build: the setup cell fails, naming it
    dataset = tmp_path / "dataset"
    shutil.copytree(project.dataset.out, dataset)
    weight = next(dataset.glob("*.safetensors"))
    weight.write_bytes(b"\0" * weight.stat().st_size)
    cfg = _fresh(replace(project, dataset=replace(project.dataset, out=dataset)), "failing")
    console = quiet()
    result = dryrun_module.dry_run(cfg, console=console)
    assert not result.ok
    assert result.out == cfg.dryrun.out.with_name("failing.failed")
    summary = json.loads((result.out / "summary.json").read_text())
    failed = summary["failed_cell"]
    assert failed is not None and failed["id"] == "setup"
    assert result.reason.startswith(f"cell {failed['index']} ('setup') failed: BundleError")
    assert "corrupt" in failed["evalue"]
    assert "Traceback" in failed["traceback"] or "BundleError" in failed["traceback"]
    assert "setup(CONFIG)" in failed["traceback"]
    assert summary["network"] == "available"
    assert summary["network_note"] == "no unshare (test)"
    assert "WARNING: running WITH network" in console.file.getvalue()  # type: ignore[attr-defined]
    html = (result.out / "report.html").read_text()
    assert f"Failure in cell {failed['index']}" in html
    assert "corrupt" in html
    assert (result.out / "inference.ipynb").is_file()  # saved although it failed


@pytest.mark.slow
def test_problem_images_are_listed_and_a_mostly_missing_set_fails_beside_the_last_good_run(
    project: BundleConfig, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from bundler.dryrun.command import dry_run

    assert project.dryrun.test_dir is not None and project.dryrun.sample_submission is not None
    test_dir = tmp_path / "test_images"
    shutil.copytree(project.dryrun.test_dir, test_dir)
    (test_dir / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(5_000_000))  # random bytes named .jpg
    cv2.imwrite(str(test_dir / "rgba.png"), np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 4), 200, np.uint8))
    cv2.imwrite(str(test_dir / "deep.png"), np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 3), 40000, np.uint16))
    cv2.imwrite(str(test_dir / "wide.png"), np.full((16, 200, 3), 90, np.uint8))
    listed = project.dryrun.sample_submission.read_text()
    sample = tmp_path / "sample.csv"
    sample.write_text(listed + "".join(f"{i},\n" for i in PROBLEM_ROWS))
    cfg = _fresh(project, "problems", test_dir=test_dir, sample_submission=sample)
    console = Console(file=io.StringIO(), width=200)
    result = dry_run(cfg, console=console)
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert result.ok, result.reason + "\n" + printed
    problems = result.summary["problems"]
    assert problems["unreadable"]["count"] == 1 and problems["unreadable"]["examples"][0].startswith("noise.jpg: ")
    assert problems["converted"]["count"] == 3
    examples = " ".join(problems["converted"]["examples"])
    assert "alpha dropped" in examples and "uint16" in examples and "200x16 resized" in examples
    assert "WARN: 3 image(s) were converted before prediction" in printed and "problems and resources" in printed
    assert result.summary["images_predicted"] == DRYRUN_IMAGES + 3
    assert json.loads((cfg.dryrun.out / "summary.json").read_text())["problems"] == problems
    assert "Problems the notebook reported" in (cfg.dryrun.out / "report.html").read_text()

    # 40 more listed images the folder lacks: most are missing, a FAIL kept beside the good run above
    mostly_missing = tmp_path / "missing.csv"
    gone = "".join(f"gone{i}.jpg_{c},\n" for i in range(40) for c in range(1, 5))
    mostly_missing.write_text(sample.read_text() + gone)
    capfd.readouterr()
    failed = dry_run(replace(cfg, dryrun=replace(cfg.dryrun, sample_submission=mostly_missing)), console=quiet())
    captured = capfd.readouterr()
    assert not failed.ok
    assert failed.reason.startswith("40 of the 50 images the sample submission lists are missing from the test folder")
    assert failed.out == cfg.dryrun.out.with_name("problems.failed")
    assert failed.summary["images_predicted"] == DRYRUN_IMAGES + 3 and failed.summary["images_missing"] == 40
    assert json.loads((cfg.dryrun.out / "summary.json").read_text())["ok"] is True  # the last good run stays
    assert json.loads((failed.out / "summary.json").read_text())["ok"] is False
    assert "imread_" not in captured.out + captured.err  # the report's image loading is silent about missing files


PROBLEM_ROWS = [f"{name}_{c}" for name in ("noise.jpg", "rgba.png", "deep.png", "wide.png") for c in range(1, 5)]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in proc.joinpath("cmdline").read_bytes().decode(errors="replace"):
                state = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_mid_run_exits_130_and_keeps_the_last_good_run(project: BundleConfig) -> None:
    import signal
    import subprocess
    import sys
    import time

    _fresh(project, "interrupted")
    out = project.root / "build" / "interrupted"
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"ok": true, "reason": "the last good run"}')
    argv = [sys.executable, "-m", "bundler.cli", "dry-run", "--config", str(project.root / "bundle.toml")]
    proc = subprocess.Popen(
        [*argv, "--out", str(out), "--runtime", "local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell's foreground job: Ctrl-C reaches all of it
        # a shell without job control starts background jobs with SIGINT ignored, and an ignored signal is
        # inherited across exec (python then installs no KeyboardInterrupt handler): undo that, as a
        # foreground terminal job has it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    stage: Path | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        stages = list(out.parent.glob(".interrupted.new-*"))
        logs = [s / "inference.log" for s in stages if (s / "inference.log").is_file()]
        if logs and "[cell" in logs[0].read_text(errors="replace"):
            stage = logs[0].parent
            break
        time.sleep(0.2)
    assert stage is not None, "the notebook never started printing"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert json.loads((out / "summary.json").read_text())["reason"] == "the last good run"
    assert not stage.exists() and not out.with_name("interrupted.failed").exists()
    time.sleep(1.0)
    assert _processes_mentioning(stage.name) == []  # the notebook runner did not outlive the run


@pytest.mark.slow
def test_a_bundle_in_parts_with_the_weights_as_a_model_passes(project: BundleConfig) -> None:
    """The weights part mounted where Kaggle mounts a Model (6 levels down): found, joined, verified, run."""
    from bundler.dryrun.command import dry_run

    model = "tester/tiny-model/pyTorch/default"
    cfg = _fresh(replace(project, dataset=replace(project.dataset, weights_model=model)), "parts")
    buf = io.StringIO()
    result = dry_run(cfg, console=Console(file=buf, width=160))
    assert result.ok, result.reason + "\n" + buf.getvalue()
    executed = nbformat.read(cfg.dryrun.out / "inference.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "/input/models/tester/tiny-model/pyTorch/default/1 verified" in printed, printed[:2000]
