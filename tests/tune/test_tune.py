"""`bundler tune` end to end on the tiny dry-run project: the first pass runs the engine's code once
(its probabilities match the engine's Predictor to the cache's 1/255), a second tune reads the
cache without calling the engine, `--write` keeps bundle.toml's comments, and the reports are written."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bundler.cli import main
from bundler.config import BundleConfig, load_config, parse_config
from bundler.errors import TuneError
from bundler.tune import command as tune_command
from bundler.tune import tune
from bundler.tune.cache import QUANT, read_cache
from bundler.tune.evidence import ensemble
from bundler.tune.write import updated_text, write_values
from kernel_src.devices import resolve_devices
from kernel_src.images import decode_image
from kernel_src.models import load_models
from kernel_src.predict import Predictor
from kernel_src.profiler import Profiler
from tests.projects import DRYRUN_IMAGES, ROOT, make_dryrun_project, quiet

COMMENT = "# keep this comment: tune must not drop it"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[BundleConfig, Path, Any]:
    """The dry-run project after `bundler tune --write` through the CLI (the first pass)."""
    cfg = make_dryrun_project(tmp_path_factory.mktemp("tune"))
    config = cfg.root / "bundle.toml"
    text = config.read_text().replace("[inference.postprocess]", f"{COMMENT}\n[inference.postprocess]")
    config.write_text(text)
    result = CliRunner().invoke(main, ["tune", "--config", str(config), "--folds", "3", "--write"])
    assert result.exit_code == 0, result.output
    return cfg, config, result


def test_tune_writes_its_reports_and_keeps_comments(tuned: tuple[BundleConfig, Path, Any]) -> None:
    cfg, config, result = tuned
    out = cfg.root / "build" / "tune"
    summary = json.loads((out / "tune.json").read_text())
    assert summary["images"] == DRYRUN_IMAGES and len(summary["cv"]["folds"]) == 3
    assert "3-fold CV" in result.output and "holdout cache" in result.output and "MB on disk" in result.output
    assert summary["engine_check"]["difference"] < 1e-6
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Where the points are lost" in html and "http" not in html.lower()
    text = config.read_text()
    assert COMMENT in text
    written = tomllib.loads(text)["inference"]["postprocess"]
    assert written["threshold"] == summary["tuned_values"]["threshold"]
    assert written["one_class_per_pixel"] == summary["tuned_values"]["one_class_per_pixel"]
    load_config(config)  # bundler still reads it
    assert any(p["recommended"] for p in summary["plans"]) or not any(p["within"] for p in summary["plans"])


def test_second_tune_reads_the_cache_without_the_engine(
    tuned: tuple[BundleConfig, Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cfg, config, _ = tuned

    def no_engine(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the engine ran although the cache was complete")

    monkeypatch.setattr(tune_command, "first_pass", no_engine)
    monkeypatch.setattr("kernel_src.models.load_models", no_engine)
    result = tune(load_config(config), console=quiet(), folds=2)
    assert result.cache_reused
    assert result.cache_bytes > 0


def test_the_cache_holds_the_engines_probabilities(tuned: tuple[BundleConfig, Path, Any]) -> None:
    cfg, _config, _ = tuned
    (folder,) = (cfg.root / "build" / "tune" / "cache").iterdir()
    cache = read_cache(folder)
    assert cache is not None
    spec = cfg.inference
    devices = resolve_devices("cpu", memory_format="contiguous", precision="fp32")
    _classifiers, segmenters = load_models(spec, cfg.dataset.out, devices, Profiler(0.0, torch_version=""))
    predictor = Predictor(spec, [], segmenters, devices, Profiler(0.0, torch_version=""))
    ids = list(cache.image_ids)
    size = (spec.image_height, spec.image_width)
    test_dir = cfg.dryrun.test_dir
    assert test_dir is not None
    decoded = [decode_image(test_dir / i, i, size).image for i in ids]
    images = np.stack([image for image in decoded if image is not None])
    with torch.inference_mode():
        engine = predictor.predict(images).probs
    plan = tune_command.full_plan(spec)
    rebuilt, failed = ensemble(cache, plan, tune_command.models_of(spec), range(len(ids)))
    assert not failed.any()
    assert np.abs(rebuilt - engine).max() <= 1.0 / QUANT  # quantised to 1/255: within half a step per view


def test_write_keeps_the_demo_configs_comments_and_layout(tmp_path: Path) -> None:
    text = (ROOT / "bundle.toml").read_text()
    values = {
        "mode": "per_image",
        "thresholds": [0.6, 0.5, 0.5, 0.7],
        "threshold": [0.45, 0.5, 0.55, 0.5],
        "min_component": [10, 30, 30, 100],
        "min_area": [600, 600, 900, 2000],
        "one_class_per_pixel": True,
    }
    new = updated_text(text, values, gating=True)
    old_comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    assert all(comment in new for comment in old_comments)
    assert len(new.splitlines()) == len(text.splitlines()) + 1  # one key added, nothing else moved
    parsed = parse_config(tomllib.loads(new), tmp_path)
    assert parsed.inference.gating.mode == "per_image" and parsed.inference.postprocess.one_class_per_pixel
    assert parsed.inference.postprocess.min_area == (600, 600, 900, 2000)
    path = tmp_path / "bundle.toml"
    path.write_text(text)
    diff = write_values(path, values, gating=True)
    assert "+min_area = [600, 600, 900, 2000]" in diff and path.read_text() == new
    assert write_values(path, values, gating=True) == ""  # already written: no change, no diff


def test_tune_refuses_missing_labels_and_bad_folds(tuned: tuple[BundleConfig, Path, Any]) -> None:
    cfg, config, _ = tuned
    from dataclasses import replace

    with pytest.raises(TuneError, match="--labels"):
        tune(replace(cfg, dryrun=replace(cfg.dryrun, labels=None)), console=quiet())
    with pytest.raises(TuneError, match="--folds"):
        tune(cfg, console=quiet(), folds=DRYRUN_IMAGES + 1)
    result = CliRunner().invoke(main, ["tune", "--config", str(config), "--margin", "1.5"])
    assert result.exit_code != 0 and "--margin" in result.output
    # another holdout folder does not borrow dryrun.labels, which belong to dryrun.test_dir
    result = CliRunner().invoke(main, ["tune", "--config", str(config), "--test-dir", str(cfg.dryrun.test_dir)])
    assert result.exit_code != 0 and "--labels" in result.output
