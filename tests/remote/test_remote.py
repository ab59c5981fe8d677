"""push / status / submit against a stand-in of Kaggle's API, in a network namespace: never Kaggle.

Each scenario runs `python -m tests.kaggle_standin` under `unshare -n` (loopback only): the
stand-in serves port 80 there and the bundler commands run in the same namespace with
`KAGGLE_API_ENVIRONMENT=LOCALHOST`, so the real kaggle package makes its real HTTP calls to it.
Polls are 0.05 s apart (`BUNDLER_POLL_S`), so a scenario takes seconds.
"""

from __future__ import annotations

import email.utils
import enum
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bundler.config import BundleConfig
from bundler.dataset.manifest import dataset_metadata, write_json
from bundler.dryrun.projection import kaggle_run_calibration, latest_kaggle_profile
from bundler.errors import DryRunError, KaggleHTTPError, RemoteError
from bundler.notebook.failure import failing_cell
from bundler.remote.baseline import capture_notebook, diff
from bundler.remote.client import Kaggle, Retry, poll_interval, state_name
from bundler.remote.diagnose import (
    EXCEPTION,
    NO_SUBMISSION,
    OUT_OF_RESOURCES,
    TIMEOUT,
    classify,
    log_text,
)
from bundler.remote.push import compare_files, version_message
from bundler.remote.state import load_state
from bundler.sandbox import probe
from bundler.target.baseline import parse_freeze
from tests.projects import ROOT, captured, demo_cfg, write_fake_manifest
from tests.wheelhouse import make_wheel

ISOLATION = probe()
needs_netns = pytest.mark.skipif(
    not ISOLATION.isolated, reason=f"no network namespace here, so no port 80 for the stand-in: {ISOLATION.reason}"
)
KEY = "not-a-real-key-0123456789"
DATASET = "your-kaggle-name/bundler-severstal-demo"
KERNEL = "your-kaggle-name/severstal-bundler-inference"
PROFILE = {"format": 1, "started_at": 1796140000.0, "fixed_s": 40.0, "per_image_s": 0.2, "total_s": 100.0}
OOM_LOG = [
    ["stdout", "kernel_src ready\n"],
    ["stderr", "Traceback (most recent call last):\n"],
    ["stderr", '  File "/tmp/kernel_src/predict.py", line 80, in forward\n'],
    ["stderr", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"],
]


def project(tmp_path: Path) -> BundleConfig:
    """The demo bundle.toml with a fake built bundle (bundle.json, dataset-metadata.json)."""
    cfg = demo_cfg(tmp_path / "project")
    write_json(cfg.dataset.out / "dataset-metadata.json", dataset_metadata(cfg.dataset))
    for model in cfg.models:  # the fake manifest's weights: 10 bytes each
        (cfg.dataset.out / model.spec.file).write_bytes(b"0123456789")
    return cfg


def run_scenario(
    tmp_path: Path,
    cfg: BundleConfig,
    scenario: dict[str, Any],
    commands: list[list[str]],
    credentials: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run `bundler <command>` for each of `commands` against the stand-in; (results, API calls)."""
    work = tmp_path / "standin"
    work.mkdir(exist_ok=True)
    (work / "scenario.json").write_text(json.dumps(scenario))
    config = str(cfg.root / "bundle.toml")
    argvs = [  # a command starting with "!" is run as it is (a change between two pushes)
        {"argv": c[1:] if c[0] == "!" else [sys.executable, "-m", "bundler.cli", *c, "--config", config],
         "cwd": str(cfg.root)}
        for c in commands
    ]
    (work / "commands.json").write_text(json.dumps(argvs))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(ROOT),
        KAGGLE_API_ENVIRONMENT="LOCALHOST",
        BUNDLER_POLL_S="0.05",
        BUNDLER_RETRY_BASE_S="0.05",
        COLUMNS="200",
    )
    env.pop("XDG_CONFIG_HOME", None)
    env.update({"KAGGLE_USERNAME": "your-kaggle-name", "KAGGLE_KEY": KEY} if credentials is None else credentials)
    argv = [ISOLATION.unshare, "-n", "--", sys.executable, "-m", "tests.kaggle_standin"]
    done = subprocess.run(
        [*argv, str(work / "scenario.json"), str(work), str(work / "commands.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((work / "results.json").read_text())
    calls_file = work / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.is_file() else []
    return results, calls


def endpoints(calls: list[dict[str, Any]]) -> list[str]:
    return [c["endpoint"].rsplit("/", 1)[-1] if "/" in c["endpoint"] else c["endpoint"] for c in calls]


def completed_scenario(**dataset: Any) -> dict[str, Any]:
    return {
        "dataset": {"statuses": ["blobs_received", "blobs_decompressed", "ready"], **dataset},
        "kernels": {
            "*": {
                "statuses": ["queued", "running", "complete"],
                "outputs": {"submission.csv": "ImageId,EncodedPixels,ClassId\n", "profile.json": json.dumps(PROFILE)},
                "log": [["stdout", "wrote submission.csv\n"]],
            }
        },
        "submission": {"statuses": ["pending", "pending", "complete"], "public_score": "0.91234"},
    }


@needs_netns
def test_push_wait_status_submit_and_an_unchanged_bundle(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    results, calls = run_scenario(
        tmp_path,
        cfg,
        completed_scenario(),
        [["push", "--wait"], ["status"], ["submit", "--wait"], ["push", "--no-run"], ["push", "--no-run", "--rerun"]],
    )
    push, status, submit, again, rerun = results
    assert push["returncode"] == 0, push["stderr"] + push["stdout"]
    out = push["stdout"]
    # the dataset's processing states and the run's states, in order, as progress
    for word in ("creating it", "blobs_received", "blobs_decompressed", "ready", "queued", "running", "complete"):
        assert word in out, out
    assert out.index("blobs_received") < out.index("v1 ready") < out.index("v1: queued") < out.index("v1: running")
    assert "inference.ipynb was missing: rendered for bundle abababababab" in out
    assert out.rstrip().endswith("submit it with: bundler submit --version 1 --wait")
    kaggle = cfg.root / "build" / "kaggle"
    assert json.loads((kaggle / "v1" / "profile.json").read_text()) == PROFILE
    assert (kaggle / "v1" / "submission.csv").is_file()
    assert (kaggle / "v1" / "severstal-bundler-inference.log").is_file()
    meta = json.loads(cfg.kernel.metadata.read_text())
    assert meta["dataset_sources"] == [f"{DATASET}/1"]

    save = next(c["body"] for c in calls if c["endpoint"].endswith("/SaveKernel"))
    assert save["slug"] == KERNEL
    assert save["datasetDataSources"] == [f"{DATASET}/1"]
    assert save["enableInternet"] is False
    assert save["dockerImagePinningType"] == "original"
    assert json.loads(save["text"])["metadata"]["bundler"]["bundle"] == cfg.name
    order = endpoints(calls)
    # the notebook is pushed only after the dataset version is ready and its number known
    assert order.index("GetDataset") < order.index("SaveKernel")
    assert all(c.get("auth", True) for c in calls)

    assert status["returncode"] == 0, status["stderr"]
    assert "complete" in status["stdout"]

    assert submit["returncode"] == 0, submit["stderr"] + submit["stdout"]
    assert "0.91234" in submit["stdout"]
    body = next(c["body"] for c in calls if c["endpoint"].endswith("/CreateCodeSubmission"))
    assert body["fileName"] == "submission.csv"
    assert body["competitionName"] == cfg.competition.slug
    assert (body["kernelOwner"], body["kernelSlug"]) == ("your-kaggle-name", "severstal-bundler-inference")
    assert body["kernelVersion"] == 1

    assert again["returncode"] == 0, again["stderr"]
    assert "unchanged since v1" in again["stdout"]
    assert "rendered" not in again["stdout"]  # the notebook is fresh: not rendered again
    # issue 27 item 7: nothing changed, so no new kernel version (no GPU quota spent) ...
    assert "unchanged since v1 (notebook, metadata and sources); not pushed" in again["stdout"]
    assert endpoints(calls).count("SaveKernel") == 2  # the first push and the --rerun, not the unchanged one
    # ... unless asked to
    assert rerun["returncode"] == 0, rerun["stderr"]
    assert "v2 saved without running" in rerun["stdout"]
    uploads = [c["name"] for c in calls if c["endpoint"] == "PUT upload"]
    assert sorted(uploads) == sorted(p.name for p in cfg.dataset.out.iterdir() if p.name != "dataset-metadata.json")
    assert "CreateDatasetVersion" not in endpoints(calls)  # the unchanged bundle is not uploaded again
    state = json.loads((kaggle / "state.json").read_text())
    assert state["last_kernel_version"] == 2
    assert state["kernels"]["2"]["status"] == "saved"
    assert state["submissions"][0]["public_score"] == "0.91234"
    # credentials never land under build/
    for path in (cfg.root / "build").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


@needs_netns
def test_a_new_bundle_is_a_new_dataset_version_with_hash_and_message(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    results, calls = run_scenario(tmp_path, cfg, completed_scenario(exists=True, version=4), [["push", "--no-run"]])
    assert results[0]["returncode"] == 0, results[0]["stderr"]
    version = next(c["body"] for c in calls if c["endpoint"].endswith("/CreateDatasetVersion"))
    assert version["body"]["versionNotes"].startswith("bundle abababababab")
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == [f"{DATASET}/5"]


@needs_netns
def test_an_upload_waits_for_a_version_still_processing_and_a_fresh_session_may_be_unlisted(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario(exists=True, version=2, initial_statuses=["blobs_copied_to_sds", "ready"])
    scenario["kernels"]["*"]["not_found_polls"] = 2
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push", "--wait"]])
    assert results[0]["returncode"] == 0, results[0]["stderr"] + results[0]["stdout"]
    assert "still blobs_copied_to_sds" in results[0]["stdout"]
    order = endpoints(calls)
    assert order.index("GetDatasetStatus") < order.index("StartBlobUpload")
    assert "v1: not_found" in results[0]["stdout"] and "v1: complete" in results[0]["stdout"]
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == [f"{DATASET}/3"]


@needs_netns
def test_rate_limits_server_errors_and_a_busy_dataset_are_waited_out(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    # the first status answer says ready, then Kaggle refuses the version (403) while the previous one processes
    scenario = completed_scenario(exists=True, version=4, initial_statuses=["ready", "blobs_received", "ready"])
    scenario["refuse"] = {"GetDataset": [429], "GetKernelSessionStatus": [503, 502]}
    scenario["retry_after"] = 1
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push", "--wait"]])
    out = results[0]["stdout"]
    assert results[0]["returncode"] == 0, results[0]["stderr"] + out
    assert "refused the new version while the previous one is blobs_received; waiting" in out
    assert "rate limited (HTTP 429); trying again in 1.0 s, as Retry-After asks (try 2 of 6)" in out
    assert "HTTP 503; trying again in" in out and "HTTP 502; trying again in" in out and "backing off" in out
    refused = [(c["endpoint"].rsplit("/", 1)[-1], c["refused"]) for c in calls if "refused" in c]
    assert refused == [("GetDataset", 429), ("GetKernelSessionStatus", 503), ("GetKernelSessionStatus", 502)]
    assert endpoints(calls).count("CreateDatasetVersion") == 2  # refused once (403), then accepted
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == [f"{DATASET}/5"]
    assert "v1: complete" in out  # COMPLETE from the API, compared by name


@needs_netns
def test_a_partial_upload_fails_naming_the_file_and_the_next_push_uploads_again(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    lost = cfg.models[0].spec.file
    scenario = completed_scenario(exists=True, version=1, lose_files=[lost])
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push", "--no-run"], ["push", "--no-run"]])
    first, second = results
    assert first["returncode"] == 1
    err = first["stderr"].strip()
    assert len(err.splitlines()) == 1, err
    assert f"dataset {DATASET} v2 on Kaggle is not what was uploaded ({lost} (10 bytes) is missing)" in err
    assert "SaveKernel" not in endpoints(calls)[: endpoints(calls).index("CreateDatasetVersion") + 5]
    assert second["returncode"] == 0, second["stderr"] + second["stdout"]
    assert endpoints(calls).count("CreateDatasetVersion") == 2  # not trusted: uploaded again
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == [f"{DATASET}/3"]


@needs_netns
def test_internet_kept_on_by_kaggle_after_the_push_is_an_error(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario()
    scenario["kernels"]["*"]["internet_after_push"] = True
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push", "--no-run"]])
    assert results[0]["returncode"] == 1
    assert "Kaggle reports internet ON although kernel-metadata.json says false" in results[0]["stderr"]
    save = next(c["body"] for c in calls if c["endpoint"].endswith("/SaveKernel"))
    assert save["enableInternet"] is False  # bundler sent it off; the read-back caught Kaggle's answer
    assert endpoints(calls).index("SaveKernel") < endpoints(calls).index("GetKernel")
    # a read-back Kaggle cannot answer does not undo a push that went through: it is a warning
    scenario = {**completed_scenario(), "refuse": {"GetKernel": [404]}}
    (tmp_path / "unread").mkdir()
    results, _ = run_scenario(tmp_path / "unread", cfg, scenario, [["push", "--no-run", "--rerun"]])  # same notebook
    assert results[0]["returncode"] == 0, results[0]["stderr"]
    assert "its settings could not be read back" in results[0]["stdout"]


@needs_netns
def test_a_p100_request_is_refused_before_anything_reaches_kaggle(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    toml = cfg.root / "bundle.toml"
    toml.write_text(toml.read_text().replace('machine_shape = "NvidiaTeslaT4"', 'machine_shape = "NvidiaTeslaP100"'))
    results, calls = run_scenario(tmp_path, cfg, completed_scenario(), [["push"]])
    assert results[0]["returncode"] == 2
    err = results[0]["stderr"].strip()
    assert len(err.splitlines()) == 1 and "NvidiaTeslaP100 is retired" in err and "'NvidiaTeslaT4'" in err, err
    assert calls == []


WHEELS = "your-kaggle-name/bundler-severstal-wheels"
WHEEL = "tinypkg-1.0-py3-none-any.whl"


def parts_project(tmp_path: Path) -> BundleConfig:
    """The demo project shipping its wheels apart (`dataset.wheels_id`), with one 7-byte wheel."""
    cfg = project(tmp_path)
    toml = cfg.root / "bundle.toml"
    toml.write_text(toml.read_text().replace('[dataset]\n', f'[dataset]\nwheels_id = "{WHEELS}"\n', 1))
    write_fake_manifest(cfg, wheels=[{"file": WHEEL, "name": "tinypkg", "sha256": "cd" * 32, "size": 7}])
    (cfg.dataset.out / WHEEL).write_bytes(b"0123456")
    return replace(cfg, dataset=replace(cfg.dataset, wheels_id=WHEELS))


def _changed_model(cfg: BundleConfig) -> list[str]:
    """A command that retrains one model: its weight's sha256 and the bundle hash change, the wheels do not."""
    manifest = json.loads((cfg.dataset.out / "bundle.json").read_text())
    manifest["weights"][0]["sha256"] = "ef" * 32
    manifest["hash"] = "12" * 32
    path = str(cfg.dataset.out / "bundle.json")
    code = f"import pathlib; pathlib.Path({path!r}).write_text({json.dumps(manifest)!r})"
    return ["!", sys.executable, "-c", code]


def _changed_threshold(cfg: BundleConfig) -> list[str]:
    toml = str(cfg.root / "bundle.toml")
    code = (
        f"import pathlib; p = pathlib.Path({toml!r}); "
        "p.write_text(p.read_text().replace('threshold = [0.5, 0.5, 0.5, 0.5]', 'threshold = [0.4, 0.5, 0.5, 0.5]'))"
    )
    return ["!", sys.executable, "-c", code]


@needs_netns
def test_parts_upload_only_what_changed_and_each_version_is_pinned(tmp_path: Path) -> None:
    cfg = parts_project(tmp_path)
    commands = [
        ["push", "--no-run"],
        _changed_threshold(cfg),
        ["push", "--no-run"],
        _changed_model(cfg),
        ["push", "--no-run"],
        ["status"],
    ]
    results, calls = run_scenario(tmp_path, cfg, completed_scenario(), commands)
    first, _, threshold, _, model, status = results
    for r in (first, threshold, model):
        assert r["returncode"] == 0, r["stderr"] + r["stdout"]
    saves = [c["body"] for c in calls if c["endpoint"].endswith("/SaveKernel")]
    assert saves[0]["datasetDataSources"] == [f"{DATASET}/1", f"{WHEELS}/1"]
    assert "inference.ipynb was stale: rendered" in threshold["stdout"]
    assert "0.4" in json.dumps(json.loads(saves[1]["text"])["cells"])  # the new threshold went with the notebook
    assert saves[1]["datasetDataSources"] == [f"{DATASET}/1", f"{WHEELS}/1"]  # and nothing was uploaded
    assert saves[2]["datasetDataSources"] == [f"{DATASET}/2", f"{WHEELS}/1"]  # the new model: weights only
    uploads = [(c["name"], c["size"]) for c in calls if c["endpoint"] == "PUT upload"]
    weights = sorted(m.spec.file for m in cfg.models)
    first_round = sorted(n for n, _ in uploads[: len(weights) + 4])
    assert first_round == sorted([WHEEL, "bundle.json", "bundle-part.json", "bundle-part.json", *weights])
    later = sorted(n for n, _ in uploads[len(weights) + 4 :])
    assert later == sorted(["bundle.json", "bundle-part.json", *weights])  # the wheel never again
    created = [c["body"].get("slug") for c in calls if c["endpoint"].endswith("/CreateDataset")]
    assert sorted(created) == ["bundler-severstal-demo", "bundler-severstal-wheels"]
    assert endpoints(calls).count("CreateDatasetVersion") == 1
    assert "part wheels" in threshold["stdout"] and "unchanged since v1" in threshold["stdout"]
    assert status["returncode"] == 0, status["stderr"]
    assert f"wheels: {WHEELS} v1" in status["stdout"] and f"weights: {DATASET} v2" in status["stdout"]
    assert "v3 runs on weights v2, wheels v1" in status["stdout"]
    part = json.loads((cfg.root / "build" / "parts" / "wheels" / "bundle-part.json").read_text())
    assert part["part"] == "wheels" and [r["file"] for r in part["files"]] == [WHEEL]


MODEL = "your-kaggle-name/severstal-unet/pyTorch/default"


def model_project(tmp_path: Path, handle: str = MODEL, licence: str = "Apache 2.0") -> BundleConfig:
    """The parts project with its weights as a Kaggle Model variation (`dataset.weights_model`)."""
    cfg = parts_project(tmp_path)
    toml = cfg.root / "bundle.toml"
    extra = f'weights_model = "{handle}"\nmodel_license = "{licence}"\n'
    toml.write_text(toml.read_text().replace("[dataset]\n", "[dataset]\n" + extra, 1))
    return replace(cfg, dataset=replace(cfg.dataset, weights_model=handle, model_license=licence))


@needs_netns
def test_weights_as_a_kaggle_model_are_created_versioned_and_pinned(tmp_path: Path) -> None:
    cfg = model_project(tmp_path)
    commands = [["push", "--no-run"], _changed_model(cfg), ["push", "--no-run"], ["push", "--no-run"], ["status"]]
    results, calls = run_scenario(tmp_path, cfg, completed_scenario(), commands)
    first, _, second, third, status = results
    for r in (first, second, third):
        assert r["returncode"] == 0, r["stderr"] + r["stdout"]
    order = endpoints(calls)
    assert order.index("CreateModel") < order.index("CreateModelInstance") < order.index("CreateModelInstanceVersion")
    instance = next(c["body"] for c in calls if c["endpoint"].endswith("/CreateModelInstance"))
    assert instance["body"]["instanceSlug"] == "default" and instance["body"]["licenseName"] == "Apache 2.0"
    saves = [c["body"] for c in calls if c["endpoint"].endswith("/SaveKernel")]
    # the third push changed nothing: no part uploaded and no kernel version pushed (issue 27 item 7)
    assert [s["modelDataSources"] for s in saves] == [[f"{MODEL}/1"], [f"{MODEL}/2"]]
    assert [s["datasetDataSources"] for s in saves] == [[f"{WHEELS}/1"]] * 2  # the wheels went up once
    assert "unchanged since v2 (notebook, metadata and sources); not pushed" in third["stdout"]
    assert order.count("CreateModelInstanceVersion") == 1  # the third push uploaded nothing
    assert "unchanged since v2; not uploaded" in third["stdout"]
    meta = json.loads(cfg.kernel.metadata.read_text())
    assert meta["model_sources"] == [f"{MODEL}/2"] and meta["dataset_sources"] == [f"{WHEELS}/1"]
    assert f"weights: {MODEL} v2" in status["stdout"]


@needs_netns
def test_a_model_of_someone_else_and_an_unknown_licence_are_one_line_each(tmp_path: Path) -> None:
    cfg = model_project(tmp_path / "theirs", handle="someone-else/severstal-unet/pyTorch/default")
    results, calls = run_scenario(tmp_path / "theirs", cfg, completed_scenario(), [["push"]])
    err = results[0]["stderr"].strip()
    assert results[0]["returncode"] == 1 and len(err.splitlines()) == 1, err
    assert "the model's owner 'someone-else' is not the account pushing ('your-kaggle-name')" in err
    assert not any(e.endswith("Model") or "ModelInstance" in e for e in endpoints(calls))
    cfg = model_project(tmp_path / "licence", licence="Made Up 1.0")
    results, calls = run_scenario(tmp_path / "licence", cfg, completed_scenario(), [["push"]])
    err = results[0]["stderr"].strip()
    assert results[0]["returncode"] == 1 and len(err.splitlines()) == 1, err
    assert "HTTP 400" in err and "dataset.model_license = 'Made Up 1.0'" in err
    assert "SaveKernel" not in endpoints(calls)


@needs_netns
def test_a_partial_model_version_fails_naming_the_file(tmp_path: Path) -> None:
    cfg = model_project(tmp_path)
    scenario = {**completed_scenario(), "models": {"lose_files": ["bundle.json"]}}
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push"]])
    err = results[0]["stderr"].strip()
    assert results[0]["returncode"] == 1 and len(err.splitlines()) == 1, err
    assert f"model {MODEL} v1 on Kaggle is not what was uploaded (bundle.json (" in err and "is missing" in err
    assert "SaveKernel" not in endpoints(calls)
    assert json.loads((cfg.root / "build" / "kaggle" / "state.json").read_text())["parts"]["weights"] == {}


@needs_netns
def test_a_part_over_kaggles_limit_is_one_line_with_the_limit_and_its_size(tmp_path: Path) -> None:
    cfg = parts_project(tmp_path)
    os.environ["BUNDLER_PART_LIMIT_BYTES"] = "600"  # the wheels part fits, the weights part (bundle.json) does not
    try:
        results, calls = run_scenario(tmp_path, cfg, completed_scenario(), [["push"]])
    finally:
        del os.environ["BUNDLER_PART_LIMIT_BYTES"]
    err = results[0]["stderr"].strip()
    assert results[0]["returncode"] == 1 and len(err.splitlines()) == 1, err
    assert f"part weights ({DATASET}) is" in err and "over Kaggle's limit of 600 bytes per version" in err, err
    assert not any(c["endpoint"] == "PUT upload" for c in calls)


@needs_netns
def test_an_incomplete_dataset_folder_is_not_uploaded(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    weight = cfg.dataset.out / cfg.models[0].spec.file
    weight.write_bytes(b"012")
    results, calls = run_scenario(tmp_path, cfg, completed_scenario(), [["push"]])
    assert results[0]["returncode"] == 1
    assert f"{weight.name} is 3 bytes, bundle.json says 10" in results[0]["stderr"]
    assert "bundler build" in results[0]["stderr"]
    assert calls == []


def test_the_version_message_carries_the_hash_and_git_describe(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path / "project")
    assert version_message(cfg, "ab" * 32) == "bundle abababababab"
    git = ["git", "-C", str(cfg.root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "bundle.toml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    subprocess.run([*git, "tag", "v1.2"], check=True)
    assert version_message(cfg, "ab" * 32).startswith("bundle abababababab (v1.2")


@needs_netns
def test_failed_processing_stops_before_the_notebook(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario(exists=True, version=2, statuses=["blobs_received", "failed"])
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push"]])
    assert results[0]["returncode"] == 1
    assert "FAILED" in results[0]["stderr"]
    assert len(results[0]["stderr"].strip().splitlines()) == 1
    assert "SaveKernel" not in endpoints(calls)


@needs_netns
def test_a_dataset_that_never_gets_ready_times_out_with_the_way_on(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario(statuses=["blobs_received"])
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push", "--timeout", "0.3"]])
    assert results[0]["returncode"] == 1
    assert "still blobs_received" in results[0]["stderr"]
    assert "run `bundler push` again" in results[0]["stderr"]
    assert "SaveKernel" not in endpoints(calls)


@needs_netns
def test_invalid_sources_in_the_push_response_fail_naming_them(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario()
    scenario["kernels"]["*"]["invalid"] = {"dataset": ["someone/missing-weights"], "model": ["a/b/pytorch/c/1"]}
    results, _ = run_scenario(tmp_path, cfg, scenario, [["push"]])
    assert results[0]["returncode"] == 1
    err = results[0]["stderr"]
    assert "someone/missing-weights" in err and "a/b/pytorch/c/1" in err and "dropped invalid" in err
    assert "fix them in kernel-metadata.json" in err


@needs_netns
def test_our_own_dataset_refused_says_to_forget_the_recorded_version(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario()
    scenario["kernels"]["*"]["invalid"] = {"dataset": [f"{DATASET}/1"]}
    results, _ = run_scenario(tmp_path, cfg, scenario, [["push"]])
    assert results[0]["returncode"] == 1
    assert "delete build/kaggle/state.json and push again" in results[0]["stderr"]


@needs_netns
def test_a_kernel_error_shows_the_traceback_the_log_tail_and_the_error_class(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario()
    scenario["kernels"]["*"] = {"statuses": ["running", "error"], "outputs": {}, "log": OOM_LOG}
    results, _ = run_scenario(tmp_path, cfg, scenario, [["push", "--wait"], ["submit"]])
    push, submit = results
    assert push["returncode"] == 1
    assert "torch.OutOfMemoryError" in push["stdout"] and "log tail" in push["stdout"]
    assert "predict.py" in push["stdout"]
    assert "likely Notebook Exceeded Allowed Compute" in push["stderr"]
    assert len(push["stderr"].strip().splitlines()) == 1
    assert (cfg.root / "build" / "kaggle" / "v1" / "severstal-bundler-inference.log").is_file()
    assert "ended in error" in submit["stdout"]  # submitting it anyway is allowed, with a warning


@needs_netns
def test_a_scoring_error_is_reported_as_such(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = completed_scenario()
    scenario["submission"] = {"statuses": ["pending", "error"], "error": "Submission Scoring Error"}
    results, _ = run_scenario(tmp_path, cfg, scenario, [["push", "--no-run"], ["submit", "--wait"]])
    assert results[1]["returncode"] == 1
    assert "likely Submission Scoring Error" in results[1]["stderr"]


@needs_netns
def test_missing_credentials_are_one_line_naming_the_fix(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    results, calls = run_scenario(tmp_path, cfg, completed_scenario(), [["push"]], credentials={})
    assert results[0]["returncode"] == 1
    err = results[0]["stderr"].strip()
    assert len(err.splitlines()) == 1, err
    assert "KAGGLE_USERNAME" in err and "kaggle.json" in err and "KAGGLE_API_TOKEN" in err
    assert calls == []


@needs_netns
def test_wrong_credentials_are_one_line_and_nothing_is_half_pushed(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = {**completed_scenario(), "key": "the-right-key"}
    results, calls = run_scenario(tmp_path, cfg, scenario, [["push"]])
    err = results[0]["stderr"].strip()
    assert results[0]["returncode"] == 1 and len(err.splitlines()) == 1, err
    assert "Kaggle refused the credentials or the access (HTTP 401" in err
    assert [c.get("refused") for c in calls] == [401]  # a 401 is not tried again
    assert not (cfg.root / "build" / "kaggle" / "state.json").exists()


@needs_netns
def test_an_access_token_authenticates_and_stays_out_of_build(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = {**completed_scenario(), "token": KEY}
    results, calls = run_scenario(
        tmp_path, cfg, scenario, [["push", "--no-run"]], credentials={"KAGGLE_API_TOKEN": KEY}
    )
    assert results[0]["returncode"] == 0, results[0]["stderr"]
    assert endpoints(calls)[0] == "IntrospectToken"
    assert all(c.get("auth", True) for c in calls)
    for path in (cfg.root / "build").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in results[0]["stdout"] + results[0]["stderr"]


@needs_netns
def test_status_and_submit_need_a_push_or_a_version(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    results, _ = run_scenario(tmp_path, cfg, completed_scenario(), [["status"], ["submit"]])
    for result in results:
        assert result["returncode"] == 1
        assert "no notebook version pushed" in result["stderr"] and "--version N" in result["stderr"]


def test_poll_interval_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUNDLER_POLL_S", raising=False)
    assert poll_interval(None, 30.0) == 30.0
    assert poll_interval(2.0, 30.0) == 2.0
    monkeypatch.setenv("BUNDLER_POLL_S", "0.5")
    assert poll_interval(None, 30.0) == 0.5
    monkeypatch.setenv("BUNDLER_POLL_S", "soon")
    with pytest.raises(RemoteError, match="BUNDLER_POLL_S"):
        poll_interval(None, 30.0)
    with pytest.raises(RemoteError, match="--poll"):
        poll_interval(0.0, 30.0)


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (("Notebook Timeout",), TIMEOUT),
        (("", "RuntimeError: CUDA out of memory"), OUT_OF_RESOURCES),
        (("", "OSError: [Errno 28] No space left on device"), OUT_OF_RESOURCES),
        (("", "FileNotFoundError: /kaggle/working/submission.csv not found"), NO_SUBMISSION),
        (("", "ValueError: bad"), EXCEPTION),
    ],
)
def test_error_classes(texts: tuple[str, ...], expected: object) -> None:
    assert classify(*texts) is expected


def test_the_failing_cell_comes_from_the_executed_notebook_first(tmp_path: Path) -> None:
    nb = {
        "cells": [
            {"cell_type": "code", "id": "setup", "outputs": [{"output_type": "stream", "text": "ok"}]},
            {
                "cell_type": "code",
                "id": "run",
                "outputs": [
                    {
                        "output_type": "error",
                        "ename": "KeyError",
                        "evalue": "'x'",
                        "traceback": ["\x1b[31mKeyError\x1b[0m"],
                    }
                ],
            },
        ]
    }
    path = tmp_path / "__notebook__.ipynb"
    path.write_text(json.dumps(nb))
    log = log_text(json.dumps([{"stream_name": "stderr", "time": 1, "data": "Traceback (most recent call last):\n"}]))
    failure = failing_cell([path], log)
    assert failure is not None and (failure.cell, failure.ename, failure.traceback) == ("run", "KeyError", ["KeyError"])
    from_log = failing_cell([], "x\nTraceback (most recent call last):\n  File 'a'\nValueError: nope\nafter\n")
    assert from_log is not None and (from_log.cell, from_log.ename, from_log.evalue) == ("log", "ValueError", "nope")


def test_status_reports_the_dry_runs_cell_failure_from_a_marked_notebook(tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from bundler.notebook.failure import failure_in_notebook, mark_failure
    from bundler.remote.kernel import _report_failure
    from bundler.remote.state import version_dir

    cfg = demo_cfg(tmp_path / "project", manifest=False)
    error = new_output("error", ename="ValueError", evalue="threshold 2", traceback=["\x1b[31mValueError\x1b[0m: x"])
    nb = new_notebook(cells=[new_code_cell("setup()", id="setup"), new_code_cell("run()", id="run", outputs=[error])])
    failure = failure_in_notebook(nb)
    assert failure is not None
    mark_failure(nb, failure)  # saved as the dry-run saves it: marker cells before the failing one
    out = version_dir(cfg, 3)
    out.mkdir(parents=True)
    nbformat.write(nb, out / "__notebook__.ipynb")
    records = [{"stream_name": "stdout", "time": 1, "data": f"line {i}\n"} for i in range(30)]
    (out / "run.log").write_text(json.dumps(records))
    files = [out / "__notebook__.ipynb", out / "run.log"]
    assert failing_cell(files, log_text((out / "run.log").read_text())) == replace(
        failure, log_tail=[f"line {i}" for i in range(10, 30)]
    )
    console, buf = captured()
    error_line = str(_report_failure(cfg, 3, "", files, console))
    printed = buf.getvalue()
    assert "failing cell (cell run): ValueError: threshold 2" in printed
    assert "log tail (20 lines of" in printed and "line 29" in printed and "line 9\n" not in printed
    assert error_line.endswith("likely Notebook Threw Exception; " + EXCEPTION.fix)


CAPTURED = (
    "# Kaggle image baseline captured by `bundler baseline capture` on 2026-12-01\n"
    "# python 3.12.13 (Linux-6.6-x86_64-with-glibc2.35)\n"
    "# torch @ file:///tmp/torch-2.10.0-cp312-cp312-linux_x86_64.whl\n"
    "torch==2.10.0\nnumpy==2.0.2\npip==24.1.2\n"
)


@needs_netns
def test_baseline_capture_pushes_the_capture_notebook_and_writes_a_dated_baseline(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    scenario = {
        "kernels": {
            "bundler-image-baseline": {"statuses": ["running", "complete"], "outputs": {"baseline.txt": CAPTURED}}
        }
    }
    results, calls = run_scenario(tmp_path, cfg, scenario, [["baseline", "capture"]])
    assert results[0]["returncode"] == 0, results[0]["stderr"] + results[0]["stdout"]
    written = cfg.root / "baselines" / "kaggle-2026-12-01.txt"
    assert written.read_text() == CAPTURED
    assert 'target.baseline = "baselines/kaggle-2026-12-01.txt"' in results[0]["stdout"]
    save = next(c["body"] for c in calls if c["endpoint"].endswith("/SaveKernel"))
    assert save["slug"] == "your-kaggle-name/bundler-image-baseline"
    assert save["enableInternet"] is False
    assert "pip" in json.loads(save["text"])["cells"][0]["source"]


def test_the_capture_notebook_records_python_and_freeze(tmp_path: Path) -> None:
    source = capture_notebook()["cells"][0]["source"]
    working = tmp_path / "working"
    working.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", source.replace("/kaggle/working", str(working))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = (working / "baseline.txt").read_text()
    assert f"# python {sys.version_info.major}.{sys.version_info.minor}" in text
    pins = parse_freeze(text, "captured")  # every line readable as name==version
    assert "pip" in pins


def test_baseline_diff_says_what_the_change_means_for_the_bundle(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path / "project")
    smp = make_wheel(cfg.dataset.out, "segmentation-models-pytorch", "0.6.0", ["timm>=1", "huggingface-hub", "munch"])
    munch = make_wheel(cfg.dataset.out, "munch", "4.0.0", ["pytest; extra == 'test'"])
    write_fake_manifest(
        cfg,
        wheels=[
            {"file": w.name, "name": n, "version": v, "sha256": "cd" * 32, "size": 1}
            for w, n, v in ((smp, "segmentation-models-pytorch", "0.6.0"), (munch, "munch", "4.0.0"))
        ],
    )
    old = tmp_path / "old.txt"
    old.write_text("# python 3.12.13\ntimm==1.0.26\nhuggingface-hub==1.11.0\ntorch==2.10.0\npip==24.1.2\n")
    new = tmp_path / "new.txt"
    new.write_text("# python 3.13.1\ntimm==1.0.30\nmunch==4.0.0\ntorch==2.11.0\npip==24.1.2\n")
    console, buf = captured()
    result = diff(str(old), str(new), cfg, console=console)
    assert result.python == ("3.12", "3.13")
    assert {(c.name, c.old, c.new) for c in result.changes} == {
        ("timm", "1.0.26", "1.0.30"),
        ("huggingface-hub", "1.11.0", ""),
        ("munch", "", "4.0.0"),
        ("torch", "2.10.0", "2.11.0"),
    }
    assert result.no_longer_needed == ["munch (vendored 4.0.0, the new image has 4.0.0)"]
    assert result.to_vendor == ["huggingface-hub (the old image had 1.11.0)"]
    assert result.to_check == ["timm (1.0.26 -> 1.0.30)"]
    text = buf.getvalue()
    assert "python 3.12 -> 3.13" in text and "torch 2.10.0 -> 2.11.0" in text


def test_baseline_diff_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match=r"nope\.txt"):
        diff("kaggle-2026-08-12", str(tmp_path / "nope.txt"), None, console=captured()[0])


def test_the_newest_downloaded_run_is_the_default_calibration(tmp_path: Path) -> None:
    assert latest_kaggle_profile(tmp_path) is None
    for version, per_image in ((2, 0.4), (10, 0.1)):
        folder = tmp_path / "build" / "kaggle" / f"v{version}"
        folder.mkdir(parents=True)
        (folder / "profile.json").write_text(json.dumps({**PROFILE, "per_image_s": per_image}))
    (tmp_path / "build" / "kaggle" / "baseline").mkdir()
    latest = latest_kaggle_profile(tmp_path)
    assert latest == tmp_path / "build" / "kaggle" / "v10" / "profile.json"  # v10 after v2: by number
    calibration = kaggle_run_calibration(latest, {"fixed_s": 5.0, "per_image_s": 0.5})
    assert calibration.per_image_factor == pytest.approx(0.2)
    assert calibration.fixed_s == 40.0
    assert calibration.describe().startswith("calibrated from Kaggle run v10 of 2026-12-01: per-image x0.2")
    latest.write_text("[1]")
    with pytest.raises(DryRunError, match="bundler status"):
        kaggle_run_calibration(latest, {"fixed_s": 5.0, "per_image_s": 0.5})


def test_a_papermill_failure_in_the_log_names_its_cell() -> None:
    log = (
        'Traceback (most recent call last):\n  File "papermill/execute.py", line 1\n'
        "papermill.exceptions.PapermillExecutionError: \n"
        "---------------------------------------------------------------------------\n"
        'Exception encountered at "In [7]":\n'
        "\x1b[0;31mFileNotFoundError\x1b[0m                 Traceback (most recent call last)\n"
        "Cell In[7], line 3\n"
        "FileNotFoundError: [Errno 2] No such file: '/kaggle/input/x/bundle.json'\n"
    )
    failure = failing_cell([], log_text(log))
    assert failure is not None
    assert (failure.cell, failure.ename) == ("In [7]", "FileNotFoundError")
    assert failure.evalue.startswith("[Errno 2]") and failure.traceback[-1].startswith("FileNotFoundError:")


def test_a_dry_run_without_a_calibration_takes_the_downloaded_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bundler.dryrun.command import _calibration

    cfg = demo_cfg(tmp_path / "project")
    local = {"fixed_s": 5.0, "per_image_s": 0.5}
    no_profile: Any = SimpleNamespace(calibration_profile=None)
    assert _calibration(cfg, no_profile, local, captured()[0]).method == "none"
    run = cfg.root / "build" / "kaggle" / "v3"
    run.mkdir(parents=True)
    (run / "profile.json").write_text(json.dumps(PROFILE))
    assert (
        _calibration(cfg, no_profile, local, captured()[0])
        .describe()
        .startswith("calibrated from Kaggle run v3 of 2026-12-01")
    )
    given: Any = SimpleNamespace(calibration_profile={**PROFILE, "per_image_s": 1.0})
    assert _calibration(cfg, given, local, captured()[0]).method == "profile"  # one given by the user wins


def test_a_stale_notebook_is_rendered_again_before_a_push(tmp_path: Path) -> None:
    from bundler.remote.push import _fresh_notebook

    cfg = demo_cfg(tmp_path / "project")
    console, buf = captured()
    _fresh_notebook(cfg, console)
    assert "was missing" in buf.getvalue()
    fresh = cfg.kernel.notebook.read_bytes()
    _fresh_notebook(cfg, console)
    assert buf.getvalue().count("rendered") == 1  # fresh: left alone
    cfg.kernel.notebook.write_bytes(fresh.replace(b"abababababab", b"cdcdcdcdcdcd", 1))
    _fresh_notebook(cfg, console)
    assert "was stale" in buf.getvalue()
    assert cfg.kernel.notebook.read_bytes() == fresh


def test_an_unreadable_state_file_names_the_fix(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path / "project")
    state = load_state(cfg)
    assert state.last_kernel_version is None
    state.kernel(4).update(status="complete")
    state.last_kernel_version = 4
    state.save()
    assert load_state(cfg).kernels == {"4": {"status": "complete"}}
    state.path.write_text("{broken")
    with pytest.raises(RemoteError, match=r"state\.json: unreadable .*delete it"):
        load_state(cfg)


def test_waiting_lines_print_names_and_states_as_written() -> None:
    """A name or a state from Kaggle with square brackets is not read as rich markup."""
    import io

    from rich.console import Console

    from bundler.remote.wait import wait_for

    out = io.StringIO()
    states = iter(["[queued]", "models/[bold]ready"])
    status, _ = wait_for(
        lambda: next(states),
        lambda s: s.endswith("ready"),
        what="dataset [extra]/x",
        interval=0.0,
        timeout_s=10.0,
        resume="run it again",
        console=Console(file=out, width=200),
    )
    assert status == "models/[bold]ready"
    text = out.getvalue()
    assert "dataset [extra]/x: [queued] after" in text and "dataset [extra]/x: models/[bold]ready after" in text



@needs_netns
def test_submit_waits_for_a_queued_version_to_complete_and_says_which_one_can_be_submitted(tmp_path: Path) -> None:
    """Issue 27 item 8: `bundler submit --wait` right after a push waits for that version to complete,
    then submits, then waits for the score; without --wait it says the state and fails, submitting nothing."""
    cfg = project(tmp_path)
    results, calls = run_scenario(
        tmp_path, cfg, completed_scenario(), [["push"], ["submit"], ["submit", "--wait"]]
    )
    push, early, waited = results
    assert push["returncode"] == 0, push["stderr"] + push["stdout"]
    assert early["returncode"] == 1
    line = early["stderr"].strip().splitlines()[-1]
    assert "v1 is queued on Kaggle" in line and "only a version that completed can be submitted" in line, line
    assert "`bundler submit --wait` waits for it" in line
    assert waited["returncode"] == 0, waited["stderr"] + waited["stdout"]
    out = waited["stdout"]
    assert "waiting for it to complete before submitting" in out and "0.91234" in out
    assert out.index("complete") < out.index("submitting")
    assert endpoints(calls).count("CreateCodeSubmission") == 1  # the early one submitted nothing


class _Answer:
    """What `requests` hands an HTTPError: a status and headers."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}


def _failing(*statuses: int, headers: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    """An api whose calls fail with `statuses` in turn, then answer 'ok'; and the list of calls made."""
    import requests

    made: list[str] = []
    queue = list(statuses)

    def call(*_: Any, **__: Any) -> str:
        made.append("call")
        if queue:
            raise requests.HTTPError(f"HTTP {queue[0]}", response=_Answer(queue.pop(0), headers))  # type: ignore[arg-type]
        return "ok"

    class Api:
        dataset_status = staticmethod(call)
        competition_submit_code = staticmethod(call)

    return Api(), made


def _client(api: Any, retry: Retry | None = None) -> tuple[Kaggle, list[str], list[float]]:
    said: list[str] = []
    slept: list[float] = []
    return Kaggle(api, say=said.append, retry=retry or Retry(base_s=0.5), sleep=slept.append), said, slept


def test_a_429_waits_what_retry_after_says_in_seconds_or_as_a_date() -> None:
    api, made = _failing(429, headers={"Retry-After": "7"})
    kaggle, said, slept = _client(api)
    assert kaggle.dataset_status("o/d") == "ok"
    assert slept == [7.0] and len(made) == 2
    assert said == [
        "  status of dataset o/d: rate limited (HTTP 429); trying again in 7.0 s, as Retry-After asks (try 2 of 6)"
    ]
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    api, _ = _failing(429, headers={"Retry-After": when})
    kaggle, _, slept = _client(api)
    kaggle.dataset_status("o/d")
    assert 25 < slept[0] <= 30


def test_server_errors_back_off_with_jitter_bounded_in_count_and_in_time() -> None:
    api, made = _failing(*[503] * 10)
    kaggle, said, slept = _client(api, Retry(attempts=4, base_s=1.0, cap_s=3.0))
    with pytest.raises(KaggleHTTPError, match=r"HTTP 503.*gave up after 4 tries") as info:
        kaggle.dataset_status("o/d")
    assert info.value.status == 503 and len(made) == 4 and len(said) == 3
    for n, wait in enumerate(slept):  # base * 2**n capped, times a factor in [0.5, 1]
        assert min(3.0, 2.0**n) * 0.5 <= wait <= min(3.0, 2.0**n)
    api, made = _failing(429, headers={"Retry-After": "120"})
    kaggle, said, slept = _client(api, Retry(total_s=60))
    with pytest.raises(KaggleHTTPError, match="HTTP 429"):  # the wait would end past the total: not waited
        kaggle.dataset_status("o/d")
    assert slept == [] and len(made) == 1


def test_a_submission_is_tried_again_after_a_429_only() -> None:
    api, made = _failing(503)
    kaggle, _, slept = _client(api)
    with pytest.raises(KaggleHTTPError, match="HTTP 503"):
        kaggle.submit_code(competition="c", kernel="o/k", version=1, file_name="submission.csv", message="m")
    assert len(made) == 1 and slept == []
    api, made = _failing(429, headers={"Retry-After": "2"})
    kaggle, _, slept = _client(api)
    kaggle.submit_code(competition="c", kernel="o/k", version=1, file_name="submission.csv", message="m")
    assert len(made) == 2 and slept == [2.0]


@pytest.mark.parametrize("value", ["KernelWorkerStatus.COMPLETE", "COMPLETE", "complete", " Complete "])
def test_states_are_compared_by_name(value: str) -> None:
    assert state_name(value) == "complete"
    assert state_name(enum.Enum("KernelWorkerStatus", "QUEUED COMPLETE").COMPLETE) == "complete"  # type: ignore[attr-defined]


def test_the_file_list_comparison_names_each_difference() -> None:
    assert compare_files({"a.whl": 3, "b.pt": 10}, {"a.whl": 3, "b.pt": 10}) == []
    assert compare_files({"a.whl": 3, "b.pt": 10}, {"b.pt": 9, "c": 1}) == [
        "a.whl (3 bytes) is missing",
        "b.pt is 9 bytes, the bundle's is 10",
        "c was never part of the bundle",
    ]
