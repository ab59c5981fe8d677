"""The dry-run's verdict from profile.json facts, the machine's limits, and the staged output folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bundler.config import MachineConfig, parse_config
from bundler.dryrun.outputs import discard, failed_dir, keep, new_stage, remove_stale
from bundler.dryrun.projection import project
from bundler.dryrun.verdict import Facts, judge, problem_summary, resources_against_limits
from bundler.errors import ConfigError
from tests.projects import tiny_inference, tiny_project

GB = 10**9
SEGMENTER = {"name": "unet", "kind": "smp", "arch": "Unet", "encoder": "resnet18", "checkpoint": "unet.pth"}


def _with_machine(**machine: Any) -> dict[str, Any]:
    inference = tiny_inference(gating={"mode": "off"})
    return tiny_project(inference=inference, segmenters=[SEGMENTER], **({"machine": machine} if machine else {}))


def _profile(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "images": 10,
        "images_predicted": 10,
        "fixed_s": 2.0,
        "per_image_s": 0.1,
        "counts": {"unreadable": 0, "missing": 0, "nonfinite": 0, "converted": 0},
        "problems": {"unreadable": [], "missing": [], "nonfinite": [], "converted": [], "model_failures": []},
        "problem_examples": {"unreadable": [], "missing": [], "nonfinite": [], "converted": []},
        "nonfinite_outputs": {"models": {}, "segmenter_dropped": 0, "classifier_dropped": 0, "ungated": 0},
        "guard": {"budget_s": 100.0, "steps": [], "images_left_empty": 0},
        "resources": {"peak_rss_bytes": 2 * GB, "gpu_peak_bytes": None, "working_bytes": 1000},
    }
    data.update(over)
    return data


def _judge(profile: dict[str, Any] | None, *, listed: int = 10, budget: float = 100.0, **facts: Any) -> Any:
    projection = None
    if profile is not None and profile.get("images_predicted") != 0:
        projection = project(profile, hidden_images=100, budget_s=budget)
    resources = resources_against_limits(profile, MachineConfig())
    return judge(Facts(facts.pop("execution_failure", ""), facts.pop("incomplete", ""), profile, projection,
                       listed, resources, **facts))  # fmt: skip


def test_a_clean_run_passes_with_no_warnings() -> None:
    verdict = _judge(_profile())
    assert verdict.ok and verdict.reason.startswith("within budget: projected 12 s for 100 images")
    assert verdict.failures == () and verdict.warnings == ()


def test_a_model_failure_fails_first_even_within_budget() -> None:
    failure = {"model": "unet", "after_images": 4, "error": "RuntimeError: boom"}
    problems = {**_profile()["problems"], "model_failures": [failure]}
    verdict = _judge(_profile(problems=problems, guard={"steps": [], "images_left_empty": 6}))
    assert not verdict.ok
    assert verdict.reason == "model 'unet' failed after 4 images and was dropped: RuntimeError: boom"
    assert "6 image(s) were left with empty masks after every segmentation model failed" in verdict.failures


def test_nan_output_fails() -> None:
    nan = {"models": {"fpn": 2}, "segmenter_dropped": 2, "classifier_dropped": 0, "ungated": 0}
    verdict = _judge(_profile(nonfinite_outputs=nan))
    assert not verdict.ok and verdict.reason == "model 'fpn' gave NaN output for 2 image(s)"


def test_images_left_empty_by_the_guard_fail_after_the_budget_reason() -> None:
    guard = {"steps": [{"action": "empty_rest"}], "images_left_empty": 3}
    verdict = _judge(_profile(guard=guard), budget=5.0)
    assert not verdict.ok and verdict.reason.startswith("over budget by")
    assert verdict.failures[1] == "3 image(s) were left with empty masks by the budget guard (out of time)"
    within = _judge(_profile(guard=guard))
    assert not within.ok and within.reason.startswith("3 image(s) were left with empty masks by the budget guard")


def test_most_images_missing_fails_and_few_missing_warns() -> None:
    counts = {"unreadable": 0, "missing": 1990, "nonfinite": 0, "converted": 0}
    verdict = _judge(_profile(images=2000, images_predicted=10, counts=counts), listed=2000)
    assert not verdict.ok
    assert verdict.reason.startswith("1990 of the 2000 images the sample submission lists are missing")
    few = _judge(_profile(counts={**counts, "missing": 2}), listed=12)
    assert few.ok and few.warnings == ("2 of 12 listed images are missing from the test folder (not counted)",)


def test_no_image_predicted_fails_without_a_projection() -> None:
    counts = {"unreadable": 1, "missing": 2, "nonfinite": 0, "converted": 0}
    verdict = _judge(_profile(images=3, images_predicted=0, per_image_s=0.0, counts=counts), listed=3)
    assert not verdict.ok
    assert verdict.reason.startswith("no image was predicted (2 of 3 listed images missing, 1 unreadable)")


def test_converted_images_and_guard_steps_only_warn() -> None:
    counts = {"unreadable": 0, "missing": 0, "nonfinite": 0, "converted": 3}
    guard = {"steps": [{"action": "drop_tta"}], "images_left_empty": 0}
    verdict = _judge(_profile(counts=counts, guard=guard))
    assert verdict.ok
    assert verdict.warnings == (
        "3 image(s) were converted before prediction (see problems)",
        "the budget guard stepped down 1 time(s) (fewer views or models)",
    )


def test_notebook_failure_and_no_profile() -> None:
    verdict = _judge(None, execution_failure="cell 9 failed: BundleError: pip could not install x")
    assert not verdict.ok and verdict.reason == "cell 9 failed: BundleError: pip could not install x"
    assert _judge(None).reason == "the notebook ran but wrote no profile.json, so nothing can be projected"


def test_each_resource_limit_fails_and_cpu_runs_have_no_gpu_figure() -> None:
    cpu = resources_against_limits(_profile(), MachineConfig())
    assert cpu["gpu"] == {"peak_bytes": None, "source": "", "limit_bytes_per_device": 15 * GB, "exceeded": False}
    assert cpu["ram"] == {"peak_bytes": 2 * GB, "limit_bytes": 29 * GB, "exceeded": False}
    heavy = {"peak_rss_bytes": 30 * GB, "gpu_peak_bytes": {"cuda:0": 1 * GB, "cuda:1": 16 * GB}, "working_bytes": 5}
    verdict = _judge(_profile(resources=heavy))
    assert not verdict.ok
    assert verdict.reason.startswith("peak memory 30.00 GB is over the target's 29.00 GB of RAM (machine.ram_gb)")
    assert any(f.startswith("peak GPU memory cuda:1 16.00 GB is over the target's 15.00 GB") for f in verdict.failures)
    disk = resources_against_limits(_profile(), MachineConfig(working_disk_gb=0.5), working_bytes=GB)
    assert disk["working_disk"] == {"bytes": GB, "limit_bytes": GB // 2, "exceeded": True}


def test_problem_summary_lists_each_reported_kind_with_counts_and_examples() -> None:
    problems = {
        "unreadable": ["noise.jpg"],
        "missing": [],
        "nonfinite": [],
        "converted": ["rgba.png", "deep.png", "wide.png", "grey.png"],
        "model_failures": [{"model": "fpn", "after_images": 2, "error": "boom"}],
    }
    examples = {"unreadable": ["noise.jpg: not an image OpenCV can decode (50000000 bytes)"],
                "converted": ["rgba.png: 4-channel image: alpha dropped", "deep.png: uint16 pixels scaled to uint8",
                              "wide.png: 800x128 resized to 1600x256", "grey.png: single-channel"]}  # fmt: skip
    summary = problem_summary(_profile(problems=problems, problem_examples=examples))
    assert summary == {
        "unreadable": {"count": 1, "examples": ["noise.jpg: not an image OpenCV can decode (50000000 bytes)"]},
        "converted": {"count": 4, "examples": examples["converted"][:3]},
        "model_failures": {"count": 1, "examples": ["fpn after 2 images: boom"]},
    }
    assert problem_summary(None) == {}


def test_machine_limits_have_kaggle_defaults_and_are_typed(tmp_path: Path) -> None:
    assert parse_config(_with_machine(), tmp_path).machine == MachineConfig(29.0, 15.0, 20.0)
    cfg = parse_config(_with_machine(ram_gb=13, gpu_memory_gb=7.5), tmp_path)
    assert cfg.machine == MachineConfig(ram_gb=13.0, gpu_memory_gb=7.5, working_disk_gb=20.0)
    with pytest.raises(ConfigError, match=r"machine\.ram_gb = '29' must be a number \(found a string\)"):
        parse_config(_with_machine(ram_gb="29"), tmp_path)
    with pytest.raises(ConfigError, match=r"machine\.working_disk_gb = 0\.0 must be a positive number of GB"):
        parse_config(_with_machine(working_disk_gb=0), tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key machine\.cpus"):
        parse_config(_with_machine(cpus=4), tmp_path)


# --- the output folder: staged, swapped in on a pass, kept aside on a failure ----------------------


def _run_into(out: Path, text: str, *, ok: bool) -> Path:
    stage = new_stage(out)
    (stage / "summary.json").write_text(text)
    return keep(stage, out, ok=ok)


def test_a_failed_run_lands_beside_the_last_good_one(tmp_path: Path) -> None:
    out = tmp_path / "dryrun"
    assert _run_into(out, "good", ok=True) == out
    assert _run_into(out, "bad", ok=False) == failed_dir(out) == tmp_path / "dryrun.failed"
    assert (out / "summary.json").read_text() == "good"
    assert (failed_dir(out) / "summary.json").read_text() == "bad"
    assert _run_into(out, "better", ok=True) == out
    assert (out / "summary.json").read_text() == "better" and not failed_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dryrun"]


def test_an_interrupted_run_is_discarded_and_a_killed_one_cleaned_next_time(tmp_path: Path) -> None:
    out = tmp_path / "dryrun"
    _run_into(out, "good", ok=True)
    stage = new_stage(out)
    (stage / "partial.csv").write_text("x")
    discard(stage)
    assert not stage.exists() and (out / "summary.json").read_text() == "good"
    # a dry-run process SIGKILLed while writing its stage: gone by the next run, a live one's stays
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".dryrun.new-{int(dead.stdout)}-abc123"
    (orphan / "input").mkdir(parents=True)
    (orphan / "input").chmod(0o555)
    live = tmp_path / f".dryrun.new-{os.getpid()}-def456"
    live.mkdir()
    assert remove_stale(out) == [orphan]
    assert live.exists() and (out / "summary.json").read_text() == "good"


def test_a_failed_offline_install_is_named_as_such(tmp_path: Path) -> None:
    from bundler.dryrun.command import _reason_of_failure
    from bundler.dryrun.execution import Execution
    from bundler.notebook.failure import CellFailure

    pip = "pip could not install the vendored wheel(s) timm-1.0.26-py3-none-any.whl from /kaggle/input/x (exit 1)"
    setup = CellFailure("setup", "BundleError", pip, traceback=["Traceback ..."], index=9)
    ex = Execution("cell_failed", 3.0, setup, tmp_path / "n.log")
    named = "the setup cell's offline install of the vendored wheels failed"
    assert _reason_of_failure(ex) == f"{named}: BundleError: {pip}"
    run = CellFailure("run", "ModelError", "unet: bad weights", index=10)
    other = Execution("cell_failed", 3.0, run, tmp_path / "n.log")
    assert _reason_of_failure(other) == "cell 10 ('run') failed: ModelError: unet: bad weights"
    assert _judge(None, execution_failure=_reason_of_failure(ex)).reason.startswith("the setup cell's")


def test_a_run_that_predicted_no_image_prints_no_projection() -> None:
    from bundler.dryrun.command import _print_summary
    from tests.projects import captured

    console, buf = captured()
    summary = {
        "ok": False,
        "reason": "cell 12 ('run') failed: ModelError: fpn cannot take 64x400",
        "failures": ["cell 12 ('run') failed: ModelError: fpn cannot take 64x400"],
        "warnings": [],
        "images": 0,
        "images_predicted": 0,
        "images_missing": 0,
        "seconds": 4.2,
        "projected_seconds": None,
        "hidden_test_images": 5506,
        "budget_seconds": 3300.0,
        "calibration": "none: figure is for this machine",
        "score": None,
        "guard_steps": [],
        "problems": {},
        "resources": {},
    }
    _print_summary(summary, console)
    printed = buf.getvalue()
    assert "ran 0 images in 4.2 s here; no projection (no image was timed)" in printed
    assert "projected" not in printed and "5506" not in printed
    assert "FAIL: cell 12 ('run') failed: ModelError: fpn cannot take 64x400" in printed


def test_a_batch_failure_in_the_profile_fails_the_verdict_naming_it() -> None:
    from bundler.dryrun.verdict import _model_failures, problem_summary

    profile = {"problems": {"batch_failures": [{"images": ["a", "b"], "after_images": 4, "error": "RuntimeError: x"}]}}
    assert _model_failures(profile) == [
        "a batch of 2 images failed after 4 images outside the models and got empty masks: RuntimeError: x"
    ]
    assert problem_summary(profile) == {
        "batch_failures": {"count": 1, "examples": ["2 images after 4: RuntimeError: x"]}
    }


def test_an_image_level_task_s_fallback_rows_are_reported_and_their_nan_cause_fails() -> None:
    task = {"name": "classification", "form": "label", "rows": 10, "images": 10, "aggregate": "mean",
            "fallback": [0.5, 0.5], "fallback_rows": 1, "fallback_examples": ["7"], "models_left_out": 0}  # fmt: skip
    problems = {**_profile()["problems"], "nonfinite": ["7"]}
    nan = {"models": {"cnn": 1}, "segmenter_dropped": 0, "classifier_dropped": 0, "ungated": 0}
    verdict = _judge(_profile(task=task, problems=problems, nonfinite_outputs=nan))
    assert not verdict.ok and verdict.failures == (
        "model 'cnn' gave NaN output for 1 image(s)",
        "1 image(s) got no prediction because every model gave NaN for them",
    )
    assert verdict.warnings == (
        "1 of 10 row(s) were written with the fallback [0.5, 0.5] ([task] fallback): none of their images was "
        "predicted (e.g. 7)",
    )
    assert _judge(_profile(task={**task, "fallback_rows": 0})).warnings == ()
