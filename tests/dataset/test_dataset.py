"""`bundler build`'s folder: manifest, atomic swap, no-op rebuild, refusals. Tiny real models, no network."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bundler.config import load_config
from bundler.dataset.manifest import bundle_hash
from bundler.errors import BuildError, CredentialError, WeightsError
from kernel_src.bundle import sha256_file
from tests.projects import build, leftovers, save_checkpoints, snapshot, write_bundle


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    save_checkpoints(root)
    return root / "models"


@pytest.fixture
def project(tmp_path: Path, checkpoints: Path) -> Path:
    (tmp_path / "models").mkdir()
    for p in checkpoints.iterdir():
        (tmp_path / "models" / p.name).write_bytes(p.read_bytes())
    return tmp_path


def test_build_writes_a_flat_folder_and_a_manifest_that_checks_out(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    result, text = build(cfg)
    out = project / "out" / "dataset"
    assert result.out == out and not result.up_to_date
    assert sorted(p.name for p in out.iterdir()) == [
        "bundle.json",
        "cls-tiny.safetensors",
        "dataset-metadata.json",
        "seg-tiny.safetensors",
    ]
    assert leftovers(out) == []  # no staging folder behind
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta == {
        "id": "someone/tiny-bundle-data",
        "title": "tiny bundle for tests",
        "licenses": [{"name": "CC0-1.0"}],
        "isPrivate": True,
    }
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest == result.manifest
    assert manifest["format"] == 1 and manifest["bundle"] == "tiny-bundle"
    assert manifest["created_by"].startswith("bundler ")
    assert manifest["target"]["python"] == "3.12" and "manylinux_2_35_x86_64" in manifest["target"]["platforms"]
    assert manifest["baseline"] == "kaggle-2026-08-12" and manifest["requirements"] == [] and manifest["wheels"] == []
    assert len(manifest["inputs"]) == 64
    files = []
    for w in manifest["weights"]:
        assert w["sha256"] == sha256_file(out / w["file"])
        assert w["size"] == (out / w["file"]).stat().st_size
        files.append((w["file"], w["sha256"]))
    assert manifest["hash"] == bundle_hash(files)
    seg = load_file(str(out / "seg-tiny.safetensors"))
    assert not any(k.startswith("model.") for k in seg)  # Lightning prefix stripped
    assert "kaggle datasets create -p" in text and "kaggle datasets version -p" in text
    assert "stripped the key prefix 'model.'" in text
    assert "total" in text and result.total_bytes == sum(p.stat().st_size for p in out.iterdir())


def test_noop_rebuild_writes_nothing_and_says_so(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    build(cfg)
    out = cfg.dataset.out
    before, folder_mtime = snapshot(out), out.stat().st_mtime_ns
    cache = project / "build" / ".cache" / "sha256.json"
    cache_mtime = cache.stat().st_mtime_ns

    result, text = build(cfg)
    assert result.up_to_date
    assert "is up to date" in text and "nothing was downloaded, converted or written" in text
    assert snapshot(out) == before and out.stat().st_mtime_ns == folder_mtime
    assert cache.stat().st_mtime_ns == cache_mtime  # checkpoints were not re-hashed either
    assert leftovers(out) == []


def test_a_changed_input_rebuilds(project: Path) -> None:
    build(load_config(write_bundle(project)))
    result, _ = build(load_config(write_bundle(project, fp16=True)))
    assert not result.up_to_date
    cls = next(w for w in result.manifest["weights"] if w["model"] == "cls-tiny")
    assert cls["dtype"] == "float16"


def test_a_damaged_folder_is_rebuilt(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    build(cfg)
    (cfg.dataset.out / "seg-tiny.safetensors").write_bytes(b"truncated")
    result, _ = build(cfg)
    assert not result.up_to_date
    assert (cfg.dataset.out / "seg-tiny.safetensors").stat().st_size == next(
        w["size"] for w in result.manifest["weights"] if w["model"] == "seg-tiny"
    )


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_build_leaves_the_previous_folder_intact(
    project: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    cfg = load_config(write_bundle(project))
    build(cfg)
    out = cfg.dataset.out
    before = snapshot(out)

    from bundler.dataset import weights

    real = weights.convert
    calls: list[str] = []

    def convert_then_fail(*args: Any, **kwargs: Any) -> Any:
        calls.append("x")
        if len(calls) == 2:  # the first model's file is already in the staging folder
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(weights, "convert", convert_then_fail)
    with pytest.raises(type(error)):
        build(load_config(write_bundle(project, fp16=True)))
    assert len(calls) == 2
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_planted_kaggle_json_is_refused_and_nothing_is_written(project: Path) -> None:
    (project / "kaggle.json").write_text('{"username": "me", "key": "0123456789abcdef0123456789abcdef"}')
    cfg = load_config(write_bundle(project, seg_checkpoint="kaggle.json"))
    with pytest.raises(CredentialError, match=r"segmenters\[0\]\.checkpoint.*kaggle\.json.*credential"):
        build(cfg)
    assert not (project / "out").exists()


def test_key_inside_a_checkpoint_is_refused(project: Path) -> None:
    torch.save({"w": torch.zeros(2), "note": "hf_" + "Ab1" * 11 + "x"}, project / "models" / "leaky.pth")
    cfg = load_config(write_bundle(project, seg_checkpoint="models/leaky.pth"))
    with pytest.raises(CredentialError, match=r"leaky\.pth contains what looks like a Hugging Face token"):
        build(cfg)
    assert not (project / "out" / "dataset").exists() and leftovers(project / "out" / "dataset") == []


def test_checkpoint_that_does_not_fit_fails_naming_the_model(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    build(cfg)
    before = snapshot(cfg.dataset.out)
    three = replace(cfg, inference=replace(cfg.inference, num_classes=3))
    with pytest.raises(WeightsError, match=r"model 'cls-tiny'.*classifiers\[0\]"):
        build(three)
    assert snapshot(cfg.dataset.out) == before and leftovers(cfg.dataset.out) == []


def test_missing_checkpoint_names_the_key(project: Path) -> None:
    cfg = load_config(write_bundle(project, seg_checkpoint="models/gone.pth"))
    with pytest.raises(WeightsError, match=r"'seg-tiny'.*gone\.pth does not exist.*segmenters\[0\]\.checkpoint"):
        build(cfg)


def test_refuses_to_replace_a_folder_it_did_not_build(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    mine = project / "out" / "dataset"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(BuildError, match="was not written by bundler, so it is not replaced"):
        build(cfg)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_stale_staging_of_a_dead_build_is_removed(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    out = cfg.dataset.out
    out.parent.mkdir(parents=True)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (out.parent / f"dataset.partial-{dead}").mkdir()
    alive = out.parent / f"dataset.partial-{os.getpid()}-not-ours"
    alive.mkdir()
    build(cfg)
    assert leftovers(out) == [alive.name]


def test_public_dataset_gets_public_create_command(project: Path) -> None:
    cfg = load_config(write_bundle(project))
    cfg = replace(cfg, dataset=replace(cfg.dataset, private=False))
    _, text = build(cfg)
    assert "--public" in text
    assert json.loads((cfg.dataset.out / "dataset-metadata.json").read_text())["isPrivate"] is False
