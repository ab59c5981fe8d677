"""A bundle whose segmenter was trained with an albumentations validation pipeline: the build
translates, proves and ships it; the notebook's dry-run predicts through it (issue 15)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import albumentations as A  # type: ignore[import-untyped]
import pytest
import torch
from albumentations.pytorch import ToTensorV2  # type: ignore[import-untyped]
from rich.console import Console

from bundler.config import load_config
from bundler.dataset.dataset_folder import build_dataset
from bundler.errors import BuildError
from kernel_src.models import build_model
from kernel_src.preprocess import load_preprocess
from kernel_src.spec import ModelSpec
from tests.projects import model_table, quiet, tiny_inference, tiny_project, write_project
from tests.tiny import ENCODER, IMAGE_HEIGHT, IMAGE_WIDTH

SEG = ModelSpec(name="unet-albu", kind="smp", file="unet-albu.safetensors", arch="Unet", encoder=ENCODER)


def project(root: Path, pipeline: object) -> Path:
    """bundle.toml with one smp segmenter (a training checkpoint holding model and model_ema, BGR)
    whose validation pipeline is saved beside its checkpoint; a labelled synthetic holdout."""
    from bundler.demo.synthetic import make_dataset

    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(SEG, 4).state_dict()
    torch.manual_seed(1)
    ema = build_model(SEG, 4).state_dict()
    torch.save({"model": model, "model_ema": ema, "epoch": 3}, models / "unet.pth")
    A.save(pipeline, str(models / "unet.albu.json"))
    make_dataset(root / "holdout", 4, seed=5, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    seg = model_table(SEG, "models/unet.pth", tta=["identity", "hflip", "scale:1.5"])
    seg |= {"preprocess": "models/unet.albu.json", "channels": "bgr", "checkpoint_key": "model_ema"}
    seg["tta_merge"] = "logit_mean"
    seg.pop("input_size", None)
    data = tiny_project(
        inference=tiny_inference(batch_size=2, time_budget_s=None, gating={"mode": "off"}),
        segmenters=[seg],
        dryrun={
            "test_dir": "holdout/test_images",
            "sample_submission": "holdout/sample_submission.csv",
            "labels": "holdout/labels.csv",
            "out": "build/dryrun",
            "runtime": "local",
        },
    )
    return write_project(root, data)


def pipeline() -> object:
    # 64x256 images -> 32x128 -> padded to 64x128 (smp needs multiples of 32) -> normalised
    return A.Compose(
        [
            A.LongestMaxSize(max_size=128),
            A.PadIfNeeded(min_height=64, min_width=128, border_mode=0, fill=0),
            A.Normalize(mean=(0.3, 0.3, 0.3), std=(0.2, 0.2, 0.2)),
            ToTensorV2(),
        ]
    )


@pytest.mark.slow
def test_a_saved_pipeline_is_built_proved_shipped_and_dry_run(tmp_path: Path) -> None:
    from bundler.dryrun.command import dry_run
    from bundler.notebook.render import render_notebook

    cfg = load_config(project(tmp_path, pipeline()))
    buf = io.StringIO()
    result = build_dataset(cfg, console=Console(file=buf, width=200))
    out = cfg.dataset.out
    shipped = out / "unet-albu.preprocess.json"
    assert shipped.is_file()
    (record,) = result.manifest["preprocess"]
    assert record["file"] == "unet-albu.preprocess.json" and record["model"] == "unet-albu"
    assert record["transforms"] == ["LongestMaxSize", "PadIfNeeded", "Normalize", "ToTensorV2"]
    description = json.loads(shipped.read_text())
    assert description["proof"]["worst"]["max_levels"] <= 1.0
    assert description["albumentations"]["transform"]["__class_fullname__"] == "Compose"
    text = " ".join(buf.getvalue().split())
    assert "unet-albu.preprocess.json" in text and "proved against albumentations" in text
    assert "took the" in text and "under 'model_ema' (checkpoint_key)" in text
    plan = load_preprocess(shipped, "unet-albu")
    assert plan.output_size((IMAGE_HEIGHT, IMAGE_WIDTH)) == (64, 128)

    # a no-op rebuild keeps it; a changed pipeline rebuilds
    assert build_dataset(cfg, console=quiet()).up_to_date
    A.save(A.Compose([A.Resize(64, 128), A.Normalize()]), str(tmp_path / "models" / "unet.albu.json"))
    assert not build_dataset(cfg, console=quiet()).up_to_date
    A.save(pipeline(), str(tmp_path / "models" / "unet.albu.json"))
    build_dataset(cfg, console=quiet())

    render_notebook(cfg, console=quiet())
    log = io.StringIO()
    verdict = dry_run(cfg, console=Console(file=log, width=160))
    assert verdict.ok, verdict.reason + "\n" + log.getvalue()
    profile = json.loads((cfg.dryrun.out / "profile.json").read_text())
    assert profile["images"] == 4 and profile["problems"]["model_failures"] == []
    assert "segmenter:unet-albu" in profile["stages"]


def test_an_unsupported_pipeline_fails_the_build_naming_it(tmp_path: Path) -> None:
    bad = A.Compose([A.RandomResizedCrop(size=(64, 128)), A.Normalize()])
    cfg = load_config(project(tmp_path, bad))
    with pytest.raises(BuildError, match=r"segmenters\[0\]\.preprocess: RandomResizedCrop is not a deterministic") as e:
        build_dataset(cfg, console=quiet())
    assert str(e.value).count("bundle.toml") == 1, str(e.value)  # the file read is named once, not twice
    assert not cfg.dataset.out.exists()  # nothing half-built was left


def test_preprocess_with_mean_or_input_size_is_refused(tmp_path: Path) -> None:
    from bundler.errors import ConfigError

    path = project(tmp_path, pipeline())
    text = path.read_text().replace(
        'preprocess = "models/unet.albu.json"', 'preprocess = "models/unet.albu.json"\nmean = [0.5, 0.5, 0.5]'
    )
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.mean is set by segmenters\[0\]\.preprocess"):
        load_config(path)
