"""The model kinds' contract (`kernel_src.model_kinds.MODEL_KINDS`), one parametrised test per kind.

Every registered kind needs a `CASES` entry: a tiny model of that kind whose checkpoint goes
through the dataset stage's converter (`bundler.dataset.weights.convert`) and the notebook's loader
(`kernel_src.models.load_model`) and gives the logits it gave before; bundle.toml takes the kind
in its roles only and requires its keys. A kind added without a case fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn

from bundler.config import BundleConfig, ModelEntry, parse_config
from bundler.dataset.weights import CONVERTERS, convert
from bundler.demo.command import DemoData, DemoSettings, train_demo_models
from bundler.errors import ConfigError, DemoError, WeightsError
from kernel_src.errors import ModelError
from kernel_src.model_kinds import MODEL_KINDS, ROLES, get_kind, kinds_for
from kernel_src.models import build_model, check_output, load_model
from kernel_src.spec import ModelSpec
from tests.projects import quiet, tiny_inference, tiny_project
from tests.tiny import make_torchscript_segmenter

NUM_CLASSES = 3
SIZE = (64, 64)  # the tiny input: smp's Linknet takes multiples of 32
CPU = torch.device("cpu")


def _save_training_checkpoint(spec: ModelSpec, folder: Path) -> tuple[Path, nn.Module]:
    """A model of a kind built from an architecture, saved as a training loop saves it."""
    torch.manual_seed(0)
    model = build_model(spec, NUM_CLASSES)
    path = folder / f"{spec.name}.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
    return path, model


def _save_torchscript(spec: ModelSpec, folder: Path) -> tuple[Path, nn.Module]:
    made = make_torchscript_segmenter(folder, name=f"{spec.name}-trained", num_classes=NUM_CLASSES)
    path = folder / made.file
    return path, cast(nn.Module, torch.jit.load(str(path)))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Case:
    """A tiny model of one kind: the role it is tried in, its bundle.toml keys besides name and kind,
    and how its checkpoint is made (the checkpoint's path and the model that made it)."""

    role: str
    keys: dict[str, Any]
    save: Callable[[ModelSpec, Path], tuple[Path, nn.Module]]


CASES = {
    "smp": Case("segmenter", {"arch": "Linknet", "encoder": "tu-test_efficientnet"}, _save_training_checkpoint),
    "timm": Case("classifier", {"arch": "test_resnet"}, _save_training_checkpoint),
    "torchscript": Case("segmenter", {}, _save_torchscript),
}
TABLES = {"classifier": "classifiers", "segmenter": "segmenters", "regressor": "regressors"}
FILLER = {"name": "filler", "kind": "torchscript", "checkpoint": "filler.pt"}  # the segmenter a project needs


def test_every_registered_kind_has_a_contract_case_and_a_converter() -> None:
    assert sorted(CASES) == sorted(MODEL_KINDS)
    for kind in MODEL_KINDS.values():
        assert kind.weights.name in CONVERTERS, kind.name
        assert kind.roles and set(kind.roles) <= set(ROLES), kind.name
        assert CASES[kind.name].role in kind.roles


def _config(tmp_path: Path, role: str, table: dict[str, Any]) -> BundleConfig:
    """The tiny project with `table` as its only model of `role` (gating off: no classifier needed)."""
    if role == "regressor":  # a regression task's own models: no segmenter
        data = tiny_project(inference=tiny_inference(gating={"mode": "off"}), regressors=[table])
        return parse_config(data | {"task": {"name": "regression"}}, tmp_path)
    models = {"segmenters": [FILLER]} | {TABLES[role]: [table]}
    data = tiny_project(inference=tiny_inference(gating={"mode": "off"}), **models)
    return parse_config(data, tmp_path)


@pytest.mark.parametrize("name", sorted(MODEL_KINDS))
def test_a_checkpoint_of_each_kind_is_shipped_and_loads_back_with_the_same_logits(tmp_path: Path, name: str) -> None:
    kind, case = MODEL_KINDS[name], CASES[name]
    table = {"name": "m", "kind": name, "checkpoint": "m.ckpt", **case.keys}
    entry = next(e for e in _config(tmp_path, case.role, table).models if e.spec.name == "m")
    assert entry.spec.file == "m" + kind.weights.suffix  # the bundle file the kind writes and reads

    (tmp_path / "models").mkdir()
    checkpoint, made = case.save(entry.spec, tmp_path / "models")
    entry = ModelEntry(role=case.role, checkpoint=checkpoint, fp16=False, spec=entry.spec)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    record = convert(entry, f"{TABLES[case.role]}[0]", NUM_CLASSES, bundle, image_size=SIZE)
    assert (record.kind, record.file) == (name, entry.spec.file)
    assert [p.name for p in bundle.iterdir()] == [entry.spec.file]

    loaded = load_model(entry.spec, bundle, NUM_CLASSES, CPU)
    assert not loaded.training
    x = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want, got = made.eval()(x), loaded(x)
    check_output("m", case.role, got, 2, NUM_CLASSES)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("name", sorted(MODEL_KINDS))
def test_bundle_toml_takes_a_kind_only_in_its_roles(tmp_path: Path, name: str, role: str) -> None:
    table = {"name": "m", "kind": name, "checkpoint": "m.ckpt", **CASES[name].keys}
    if role in MODEL_KINDS[name].roles:
        assert [e.role for e in _config(tmp_path, role, table).models if e.spec.name == "m"] == [role]
        return
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, role, table)
    assert str(e.value) == f"bundle.toml: {TABLES[role]}[0].kind: {name!r} is not one of {list(kinds_for(role))}"


@pytest.mark.parametrize("name", sorted(MODEL_KINDS))
def test_bundle_toml_requires_each_key_of_a_kind(tmp_path: Path, name: str) -> None:
    case, kind = CASES[name], MODEL_KINDS[name]
    assert set(kind.keys) <= set(case.keys)
    for key, example in kind.keys.items():
        table = {"name": "m", "kind": name, "checkpoint": "m.ckpt", **case.keys}
        del table[key]
        with pytest.raises(ConfigError) as e:
            _config(tmp_path, case.role, table)
        hint = f" (e.g. {example!r})" if example else ""
        assert str(e.value) == f"bundle.toml: {TABLES[case.role]}[0].{key}: is required for kind {name!r}{hint}"


def test_an_unknown_kind_is_one_line_listing_the_registered_ones(tmp_path: Path) -> None:
    registered = list(MODEL_KINDS)
    with pytest.raises(ModelError) as e:
        get_kind("onnx")
    assert str(e.value) == f"model kind 'onnx' is not registered; registered kinds: {registered}"
    spec = ModelSpec(name="m", kind="onnx", file="m.onnx")
    with pytest.raises(ModelError, match=r"^model kind 'onnx' is not registered; registered kinds: \["):
        build_model(spec, NUM_CLASSES)
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"^model kind 'onnx' is not registered"):
        load_model(spec, tmp_path, NUM_CLASSES, CPU)
    entry = ModelEntry(role="segmenter", checkpoint=tmp_path / "m.onnx", fp16=False, spec=spec)
    with pytest.raises(WeightsError, match=r"^segmenters\[0\]: model kind 'onnx' is not registered"):
        convert(entry, "segmenters[0]", NUM_CLASSES, tmp_path)
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.kind: 'onnx' is not one of \['smp', 'torchscript'\]$"):
        _config(tmp_path, "segmenter", {"name": "m", "kind": "onnx", "checkpoint": "m.onnx"})


def test_smp_architectures_come_from_smp_s_own_table() -> None:
    import segmentation_models_pytorch as smp

    spec = ModelSpec(name="m", kind="smp", file="m.safetensors", arch="NoSuchNet", encoder="resnet18")
    with pytest.raises(ModelError) as e:
        build_model(spec, NUM_CLASSES)
    names = sorted(a.__name__ for a in smp.MODEL_ARCHITECTURES_MAPPING.values())
    assert "Unet" in names and str(e.value).endswith(f"architecture; choose one of {names}")
    # the mapping's lower-case keys: an architecture is found whatever its case
    model = build_model(ModelSpec(name="m", kind="smp", file="m.safetensors", arch="linknet", encoder="resnet18"), 2)
    assert type(model).__name__ == "Linknet"


def test_a_kind_without_an_architecture_is_not_built_nor_trained_by_the_demo(tmp_path: Path) -> None:
    assert MODEL_KINDS["torchscript"].builder is None  # the file is the whole model
    with pytest.raises(ModelError, match=r"^model 'm': kind 'torchscript' has no architecture to build$"):
        build_model(ModelSpec(name="m", kind="torchscript", file="m.pt"), NUM_CLASSES)
    cfg = _config(tmp_path, "segmenter", {"name": "m", "kind": "torchscript", "checkpoint": "m.pt"})
    with pytest.raises(DemoError) as e:
        train_demo_models(cfg, cast(DemoData, None), DemoSettings(), quiet())
    assert str(e.value).startswith("bundle.toml: model 'm' has kind 'torchscript'; the demo trains only ")
    for kind in (k for k in MODEL_KINDS.values() if k.builder is not None):  # e.g. 'smp' segmenters
        assert f"{kind.name!r} {' or '.join(role + 's' for role in kind.roles)}" in str(e.value)
