from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bundler.config import load_config
from bundler.demo.command import DemoSettings, empty_submission_score, make_demo_data, run_demo, train_demo_models
from bundler.demo.train import TrainSettings
from bundler.errors import DemoError
from tests.projects import quiet, tiny_inference, tiny_project, write_project

DEMO_PROJECT = tiny_project(
    bundle={"name": "tiny-demo"},
    competition={"slug": "tiny-comp", "hidden_test_images": 20},
    dataset={"id": "tester/tiny-demo-dataset", "title": "tiny demo bundle for tests"},
    kernel={"id": "tester/tiny-demo-notebook", "title": "Tiny demo notebook"},
    inference=tiny_inference(postprocess={"threshold": 0.5, "min_component": 4, "min_area": 8}),
    classifiers=[
        {
            "name": "cls-mnv3",
            "kind": "timm",
            "arch": "mobilenetv3_small_050",
            "checkpoint": "models/cls-mnv3.pth",
            "input_size": [32, 128],
        }
    ],
    segmenters=[
        {
            "name": "unet-mnv3",
            "kind": "smp",
            "arch": "Unet",
            "encoder": "tu-mobilenetv3_small_050",
            "checkpoint": "models/unet-mnv3.pth",
            "input_size": [32, 128],
            "tta": ["identity", "hflip"],
        },
        {
            "name": "fpn-mnv3",
            "kind": "smp",
            "arch": "FPN",
            "encoder": "tu-mobilenetv3_small_050",
            "checkpoint": "models/fpn-mnv3.pth",
            "preprocess": "models/fpn-mnv3.albu.json",  # written by the demo, then trained with (issue 15)
        },
    ],
    dryrun={
        "test_dir": "demo_data/holdout/test_images",
        "sample_submission": "demo_data/holdout/sample_submission.csv",
        "labels": "demo_data/holdout/labels.csv",
        "runtime": "local",  # nothing vendored (the venv has smp): the twin of the image would lack it
    },
)

TINY = DemoSettings(
    n_train=6,
    n_holdout=4,
    n_test=2,
    classifier=TrainSettings(epochs=1, batch_size=4),
    segmenter=TrainSettings(epochs=1, batch_size=4),
)


def test_demo_data_is_made_once_and_reused(tmp_path: Path) -> None:
    cfg = load_config(write_project(tmp_path, DEMO_PROJECT))
    first = make_demo_data(cfg, TINY, quiet())
    assert first.regenerated
    assert len(first.train_ids) == 6 and len(first.holdout_ids) == 4
    assert first.holdout_labels == cfg.dryrun.labels and first.holdout_sample == cfg.dryrun.sample_submission
    assert len(list(first.test_images.glob("*.jpg"))) == 2
    assert not (first.test_images.parent / "labels.csv").exists()  # the test split is unlabelled
    stamps = {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()}

    second = make_demo_data(cfg, TINY, quiet())
    assert not second.regenerated
    assert {p: p.stat().st_mtime_ns for p in second.root.rglob("*") if p.is_file()} == stamps
    assert second.holdout_ids == first.holdout_ids

    third = make_demo_data(cfg, DemoSettings(n_train=5, n_holdout=4, n_test=2), quiet())
    assert third.regenerated and len(third.train_ids) == 5


def test_demo_refuses_dryrun_paths_it_does_not_write(tmp_path: Path) -> None:
    elsewhere = {**DEMO_PROJECT, "dryrun": {**DEMO_PROJECT["dryrun"], "labels": "elsewhere/labels.csv"}}
    cfg = load_config(write_project(tmp_path, elsewhere))
    with pytest.raises(DemoError, match=r"dryrun\.labels.*demo_data/holdout/labels\.csv"):
        make_demo_data(cfg, TINY, quiet())


def test_empty_submission_scores_the_share_of_empty_pairs(tmp_path: Path) -> None:
    cfg = load_config(write_project(tmp_path, DEMO_PROJECT))
    data = make_demo_data(cfg, DemoSettings(n_train=2, n_holdout=6, n_test=1), quiet())
    labelled = {line.split(",")[0] + line.split(",")[1] for line in data.holdout_labels.read_text().splitlines()[1:]}
    assert empty_submission_score(cfg, data) == pytest.approx(1.0 - len(labelled) / (6 * 4))


def test_models_are_trained_once_then_reused(tmp_path: Path) -> None:
    cfg = load_config(write_project(tmp_path, DEMO_PROJECT))
    data = make_demo_data(cfg, TINY, quiet())
    trained, reused = train_demo_models(cfg, data, TINY, quiet())
    assert trained == ["cls-mnv3", "unet-mnv3", "fpn-mnv3"] and reused == []
    for entry in cfg.models:
        ckpt = torch.load(entry.checkpoint, map_location="cpu", weights_only=True)
        assert ckpt["optimizer"]["state"] and ckpt["epoch"] == 1
        sidecar = json.loads(entry.checkpoint.with_name(entry.checkpoint.name + ".json").read_text())
        assert sidecar["training"]["epochs"] == 1
    pipeline = tmp_path / "models" / "fpn-mnv3.albu.json"
    assert json.loads(pipeline.read_text())["transform"]["transforms"][0]["__class_fullname__"] == "LongestMaxSize"
    sidecar = json.loads((tmp_path / "models" / "fpn-mnv3.pth.json").read_text())
    assert set(sidecar["normalization"]) == {"preprocess"}
    trained, reused = train_demo_models(cfg, data, TINY, quiet())
    assert trained == [] and reused == ["cls-mnv3", "unet-mnv3", "fpn-mnv3"]

    longer = DemoSettings(
        n_train=6, n_holdout=4, n_test=2, classifier=TrainSettings(epochs=2, batch_size=4), segmenter=TINY.segmenter
    )
    trained, reused = train_demo_models(cfg, data, longer, quiet())
    assert trained == ["cls-mnv3"] and reused == ["unet-mnv3", "fpn-mnv3"]


@pytest.mark.slow
def test_run_demo_end_to_end_then_reuses_everything(tmp_path: Path) -> None:
    config = write_project(tmp_path, DEMO_PROJECT)
    result = run_demo(config, console=quiet(), settings=TINY)
    assert result.trained == ("cls-mnv3", "unet-mnv3", "fpn-mnv3")
    assert (result.dataset_dir / "bundle.json").is_file()
    assert {p.name for p in result.dataset_dir.iterdir()} >= {
        "cls-mnv3.safetensors",
        "unet-mnv3.safetensors",
        "fpn-mnv3.preprocess.json",  # its albumentations pipeline, translated and proved
    }
    assert result.notebook.is_file() and result.metadata.is_file()
    assert result.report is not None and result.report.is_file()
    assert result.score is not None and 0.0 <= result.score <= 1.0
    assert 0.0 < result.empty_score <= 1.0
    assert result.projected_s is not None and result.budget_s == 600
    summary = json.loads((tmp_path / "build" / "dryrun" / "summary.json").read_text())
    assert summary["score"] == result.score
    assert result.tune is not None and result.tune.report.is_file() and not result.tune.written

    again = run_demo(config, console=quiet(), settings=TINY, dry_run=False)
    assert again.trained == () and not again.data.regenerated
    assert again.score is None and again.report is None
