"""kernel-metadata.json: bundler's fields, the user's kept, and the Kaggle CLI's push-time rules."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bundler.config import load_config
from bundler.errors import ConfigError, MetadataError
from bundler.notebook.kernel_metadata import kernel_metadata, title_warning, validate_metadata, write_metadata
from bundler.notebook.render import render_notebook
from tests.projects import demo_cfg, quiet


def test_written_fields(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    meta = json.loads(cfg.kernel.metadata.read_text())
    assert meta == {
        "id": "your-kaggle-name/severstal-bundler-inference",
        "title": "Severstal bundler inference",
        "code_file": "build/inference.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "machine_shape": "NvidiaTeslaT4",
        "dataset_sources": ["your-kaggle-name/bundler-severstal-demo"],
        "competition_sources": ["severstal-steel-defect-detection"],
        "docker_image_pinning_type": "original",
    }
    assert validate_metadata(meta, cfg.kernel.metadata.parent) == []


def test_hand_added_fields_survive_a_rerender(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    meta = json.loads(cfg.kernel.metadata.read_text())
    meta.update(
        keywords=["gpu", "segmentation"],
        enable_tpu=False,
        kernel_sources=["someone/useful-utils"],
        model_sources=["someone/unet/pytorch/default/3"],
        dataset_sources=[*meta["dataset_sources"], "someone/extra-weights/2"],
        competition_sources=["severstal-steel-defect-detection", "another-competition"],
        is_private=False,
        enable_internet=True,  # a code competition refuses it: always written back as false
        title="An old title",
    )
    cfg.kernel.metadata.write_text(json.dumps(meta, indent=4))
    render_notebook(cfg, console=quiet())
    after = json.loads(cfg.kernel.metadata.read_text())
    assert after["keywords"] == ["gpu", "segmentation"]
    assert after["enable_tpu"] is False
    assert after["kernel_sources"] == ["someone/useful-utils"]
    assert after["model_sources"] == ["someone/unet/pytorch/default/3"]
    assert after["dataset_sources"] == ["your-kaggle-name/bundler-severstal-demo", "someone/extra-weights/2"]
    assert after["competition_sources"] == ["severstal-steel-defect-detection", "another-competition"]
    assert after["is_private"] is False
    assert after["enable_internet"] is False
    assert after["title"] == "Severstal bundler inference"
    first = cfg.kernel.metadata.read_bytes()
    render_notebook(cfg, console=quiet())
    assert cfg.kernel.metadata.read_bytes() == first


def test_code_file_is_relative_to_the_metadata_folder(tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = demo_cfg(tmp_path)
    cfg = replace(cfg, kernel=replace(cfg.kernel, metadata=tmp_path / "kaggle" / "kernel-metadata.json"))
    render_notebook(cfg, console=quiet())
    meta = json.loads(cfg.kernel.metadata.read_text())
    assert meta["code_file"] == "../build/inference.ipynb"
    assert (cfg.kernel.metadata.parent / meta["code_file"]).resolve() == cfg.kernel.notebook.resolve()


def good(folder: Path) -> dict[str, Any]:
    (folder / "nb.ipynb").write_text('{"cells": []}')
    (folder / "nb.py").write_text("print(1)\n")
    return {
        "id": "owner/my-kernel",
        "title": "My kernel",
        "code_file": "nb.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "dataset_sources": ["owner/data", "owner/data/3"],
        "competition_sources": ["severstal-steel-defect-detection"],
        "kernel_sources": ["owner/other"],
        "model_sources": ["owner/model/pytorch/default/1"],
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "no-slash"}, "id"),
        ({"id": "owner/abcd"}, "id"),
        ({"id": "/my-kernel"}, "id"),
        ({"id": None}, "id is missing"),
        ({"title": "abcd"}, "title"),
        ({"code_file": "missing.ipynb"}, "code_file"),
        ({"code_file": ""}, "code_file is missing"),
        ({"code_file": "nb.py"}, "code_file"),
        ({"code_file": "broken.ipynb"}, "code_file"),
        ({"language": "julia"}, "language"),
        ({"kernel_type": "app"}, "kernel_type"),
        ({"dataset_sources": ["no-slash"]}, "dataset_sources"),
        ({"dataset_sources": ["a/b/c/d"]}, "dataset_sources"),
        ({"dataset_sources": "owner/data"}, "dataset_sources"),
        ({"kernel_sources": ["owner/abc"]}, "kernel_sources"),
        ({"model_sources": ["owner/model"]}, "model_sources"),
        ({"model_sources": ["owner/model/pytorch/default/latest"]}, "model_sources"),
        ({"competition_sources": [3]}, "competition_sources"),
        ({"enable_internet": "no"}, "enable_internet"),
        ({"is_private": 1}, "is_private"),
        ({"enable_gpu": "yes"}, "enable_gpu"),
        ({"docker_image_pinning_type": "pinned"}, "docker_image_pinning_type"),
        ({"enable_internet": True}, "enable_internet must be false"),
        ({"enable_internet": "True"}, "enable_internet must be false"),
        ({"enable_internet": None}, "enable_internet"),
        ({"machine_shape": "NvidiaTeslaP100"}, "machine_shape NvidiaTeslaP100 is retired"),
        ({"machine_shape": "NvidiaK80"}, "machine_shape 'NvidiaK80' is not a Kaggle machine shape"),
        ({"title": "Another title"}, "title 'Another title' does not slugify"),
    ],
)
def test_each_cli_rule_is_enforced(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    meta = good(tmp_path)
    assert validate_metadata(meta, tmp_path) == []
    (tmp_path / "broken.ipynb").write_text("{not json")
    meta.update(change)
    problems = validate_metadata(meta, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(field), problems


def test_a_bad_hand_added_field_stops_the_render_naming_it(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    cfg.kernel.metadata.write_text(json.dumps({"model_sources": ["owner/model"], "keywords": ["x"]}))
    with pytest.raises(MetadataError, match=r"kernel-metadata\.json: model_sources entry 'owner/model'"):
        render_notebook(cfg, console=quiet())


def test_unreadable_existing_metadata_is_reported(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    cfg.kernel.metadata.write_text("{oops")
    with pytest.raises(MetadataError, match="not valid JSON"):
        write_metadata(cfg)
    cfg.kernel.metadata.write_text("[1, 2]")
    with pytest.raises(MetadataError, match="must hold a JSON object"):
        write_metadata(cfg)


def test_the_title_must_slugify_to_the_id_as_the_cli_slugifies_it(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    meta = kernel_metadata(cfg)
    assert title_warning(meta) == ""
    assert title_warning({**meta, "id": "owner/bobs-kernel", "title": "Bob's  kernel!"}) == ""
    assert "does not slugify" in title_warning({**meta, "title": "Something else"})


def test_an_absent_enable_internet_is_refused_as_the_cli_would_turn_it_on(tmp_path: Path) -> None:
    meta = good(tmp_path)
    del meta["enable_internet"]
    assert [p.split(" (")[0] for p in validate_metadata(meta, tmp_path)] == ["enable_internet must be false"]


def test_a_retired_machine_shape_in_bundle_toml_is_one_line_naming_the_replacement(tmp_path: Path) -> None:
    cfg_path = demo_cfg(tmp_path).root / "bundle.toml"
    text = cfg_path.read_text()
    assert 'machine_shape = "NvidiaTeslaT4"' in text
    cfg_path.write_text(text.replace('machine_shape = "NvidiaTeslaT4"', 'machine_shape = "NvidiaTeslaP100"'))
    with pytest.raises(ConfigError) as info:
        load_config(cfg_path)
    assert str(info.value) == f"{cfg_path}: " + (
        "kernel.machine_shape: NvidiaTeslaP100 is retired on Kaggle (sessions run on NvidiaTeslaT4 instead); "
        "use 'NvidiaTeslaT4'"
    )


@pytest.mark.parametrize("value", ["true", "false", "True", "FALSE"])
def test_string_booleans_are_accepted_as_the_cli_does(tmp_path: Path, value: str) -> None:
    meta = {**good(tmp_path), "is_private": value, "enable_gpu": value}
    assert validate_metadata(meta, tmp_path) == []


def test_push_pins_our_dataset_and_a_rerender_keeps_the_pin(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    render_notebook(cfg, console=quiet())
    meta = json.loads(cfg.kernel.metadata.read_text())
    meta["dataset_sources"] = [*meta["dataset_sources"], "someone/extra-weights/2"]
    cfg.kernel.metadata.write_text(json.dumps(meta))
    write_metadata(cfg, pins={cfg.dataset.id: 7})
    pinned = json.loads(cfg.kernel.metadata.read_text())
    assert pinned["dataset_sources"] == ["your-kaggle-name/bundler-severstal-demo/7", "someone/extra-weights/2"]
    assert pinned["docker_image_pinning_type"] == "original"
    render_notebook(cfg, console=quiet())
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == pinned["dataset_sources"]
    write_metadata(cfg, pins={cfg.dataset.id: 8})
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"][0].endswith("/bundler-severstal-demo/8")


def test_each_part_is_pinned_and_a_rerender_keeps_every_pin(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path)
    wheels = "your-kaggle-name/bundler-severstal-wheels"
    cfg = replace(cfg, dataset=replace(cfg.dataset, wheels_id=wheels))
    render_notebook(cfg, console=quiet())
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == [cfg.dataset.id, wheels]
    write_metadata(cfg, pins={cfg.dataset.id: 4, wheels: 2})
    render_notebook(cfg, console=quiet())
    expected = [f"{cfg.dataset.id}/4", f"{wheels}/2"]
    assert json.loads(cfg.kernel.metadata.read_text())["dataset_sources"] == expected
