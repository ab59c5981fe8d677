"""Checkpoints -> bundle weight files: real tiny smp/timm models, saved the ways users save them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from bundler.config import ModelEntry
from bundler.dataset.dataset_folder import model_keys
from bundler.dataset.weights import convert, extract_state_dict, fit_to_model
from bundler.errors import WeightsError
from kernel_src.bundle import sha256_file
from kernel_src.models import build_model, load_state_dict_into
from kernel_src.spec import ModelSpec
from tests.tiny import make_pixel_head, make_torchscript_segmenter

NUM_CLASSES = 4
SEG_ENCODER = "tu-test_efficientnet"  # Linknet on it: ~95k parameters


def seg_spec(name: str = "seg", kind: str = "smp") -> ModelSpec:
    ext = "pt" if kind == "torchscript" else "safetensors"
    return ModelSpec(name=name, kind=kind, file=f"{name}.{ext}", arch="Linknet", encoder=SEG_ENCODER)


def cls_spec(name: str = "cls") -> ModelSpec:
    return ModelSpec(name=name, kind="timm", file=f"{name}.safetensors", arch="test_resnet")


def random_model(spec: ModelSpec, num_classes: int = NUM_CLASSES, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, num_classes)


def training_checkpoint(model: torch.nn.Module, key: str = "state_dict") -> dict[str, Any]:
    """What a training loop saves: the model, an Adam state after one step, the epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    out = out if isinstance(out, torch.Tensor) else out[0]
    out.mean().backward()
    opt.step()
    return {key: model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "best_score": 0.91}


def entry(spec: ModelSpec, checkpoint: Path, fp16: bool = False, role: str = "segmenter") -> ModelEntry:
    return ModelEntry(role=role, checkpoint=checkpoint, fp16=fp16, spec=spec)


def test_training_checkpoint_becomes_model_tensors_only(tmp_path: Path) -> None:
    spec = seg_spec()
    model = random_model(spec)
    torch.save(training_checkpoint(model), tmp_path / "ckpt.pth")
    steps: list[str] = []
    record = convert(entry(spec, tmp_path / "ckpt.pth"), "segmenters[0]", NUM_CLASSES, tmp_path, steps.append)

    saved = load_file(str(tmp_path / "seg.safetensors"))
    assert set(saved) == set(model.state_dict())  # no optimizer state, no epoch
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v), k
    assert all(t.is_contiguous() for t in saved.values())
    fresh = random_model(spec, seed=1)
    load_state_dict_into(fresh, saved, "seg")  # loads back into its architecture
    assert record.file == "seg.safetensors" and record.model == "seg" and record.kind == "smp"
    assert record.sha256 == sha256_file(tmp_path / "seg.safetensors")
    assert record.size == (tmp_path / "seg.safetensors").stat().st_size
    assert record.dtype == "float32"
    assert record.tensors == len(saved)
    assert record.parameters == sum(p.numel() for p in model.parameters())
    assert steps and steps[-1] == "writing"


def test_conversion_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    spec = cls_spec()
    torch.save(training_checkpoint(random_model(spec)), tmp_path / "c.pth")
    digests = set()
    for i in range(3):
        dest = tmp_path / str(i)
        dest.mkdir()
        record = convert(entry(spec, tmp_path / "c.pth", role="classifier"), "classifiers[0]", NUM_CLASSES, dest)
        digests.add(record.sha256)
    assert len(digests) == 1


@pytest.mark.parametrize("container", ["state_dict", "model", "model_state_dict"])
def test_every_container_key_is_read(tmp_path: Path, container: str) -> None:
    spec = cls_spec()
    model = random_model(spec)
    torch.save(training_checkpoint(model, container), tmp_path / "c.pth")
    record = convert(entry(spec, tmp_path / "c.pth", role="classifier"), "classifiers[0]", NUM_CLASSES, tmp_path)
    saved = load_file(str(tmp_path / record.file))
    assert set(saved) == set(model.state_dict())


def test_lightning_prefix_is_stripped_and_strays_ignored(tmp_path: Path) -> None:
    spec = seg_spec()
    model = random_model(spec)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.pos_weight"] = torch.ones(4)
    torch.save({"state_dict": state, "optimizer_states": [], "epoch": 1, "global_step": 10}, tmp_path / "l.ckpt")
    record = convert(entry(spec, tmp_path / "l.ckpt"), "segmenters[0]", NUM_CLASSES, tmp_path)
    saved = load_file(str(tmp_path / "seg.safetensors"))
    assert set(saved) == set(model.state_dict())
    assert any("'model.'" in n for n in record.notes) and any("ignored 1" in n for n in record.notes)


def test_nested_wrapper_prefixes_are_stripped() -> None:
    own = {"a.weight": torch.zeros(2), "b.bias": torch.zeros(1)}
    state = {f"model.module.{k}": v for k, v in own.items()}
    fitted, notes = fit_to_model(state, own)
    assert set(fitted) == set(own)
    assert notes == ("stripped the key prefix 'model.module.'",)
    common = {f"backbone.{k}": v for k, v in own.items()}
    assert set(fit_to_model(common, own)[0]) == set(own)


def test_fp16_halves_float_tensors_only(tmp_path: Path) -> None:
    spec = seg_spec()
    model = random_model(spec)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    full = convert(entry(spec, tmp_path / "plain.pth"), "segmenters[0]", NUM_CLASSES, tmp_path)
    half_dir = tmp_path / "half"
    half_dir.mkdir()
    half = convert(entry(spec, tmp_path / "plain.pth", fp16=True), "segmenters[0]", NUM_CLASSES, half_dir)
    saved = load_file(str(half_dir / "seg.safetensors"))
    assert half.dtype == "float16" and full.dtype == "float32"
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float16}
    assert any(t.dtype == torch.int64 for t in saved.values())  # BatchNorm counters stay integers
    assert half.size < full.size * 0.6
    load_state_dict_into(random_model(spec, seed=2), saved, "seg")


def test_wrong_class_count_fails_naming_the_model_and_key(tmp_path: Path) -> None:
    spec = seg_spec("unet-x")
    torch.save(random_model(spec, num_classes=3).state_dict(), tmp_path / "three.pth")
    with pytest.raises(WeightsError, match=r"model 'unet-x'.*segmentation_head.*\(3,.*segmenters\[1\]") as info:
        convert(entry(spec, tmp_path / "three.pth"), "segmenters[1]", NUM_CLASSES, tmp_path)
    assert "class count" in str(info.value)
    assert not (tmp_path / "unet-x.safetensors").exists()


def test_missing_checkpoint_names_the_bundle_toml_key(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"'cls'.*classifiers\[0\]\.checkpoint"):
        convert(entry(cls_spec(), tmp_path / "nope.pth", role="classifier"), "classifiers[0]", NUM_CLASSES, tmp_path)


def test_pickle_needing_more_than_weights_only_is_refused(tmp_path: Path) -> None:
    spec = cls_spec()
    ckpt = {"state_dict": random_model(spec).state_dict(), "hparams": argparse.Namespace(lr=0.1)}
    torch.save(ckpt, tmp_path / "hp.pth")
    with pytest.raises(
        WeightsError, match=r"argparse.Namespace.*weights_only=True.*torch\.save\(model\.state_dict\(\)"
    ):
        convert(entry(spec, tmp_path / "hp.pth", role="classifier"), "classifiers[0]", NUM_CLASSES, tmp_path)


def test_garbage_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(b"\x00\x01 not a pickle at all")
    with pytest.raises(WeightsError, match="not a checkpoint torch can read"):
        convert(entry(cls_spec(), tmp_path / "x.pth", role="classifier"), "classifiers[0]", NUM_CLASSES, tmp_path)


@pytest.mark.parametrize(
    ("data", "said"),
    [(b"\x80\x02" + bytes(range(7, 90)), r"is not a.*checkpoint"), (b"PK\x03\x04" + b"\x00" * 40, r"is truncated")],
)
def test_a_damaged_checkpoint_fails_in_one_line_whatever_torch_raises(tmp_path: Path, data: bytes, said: str) -> None:
    (tmp_path / "x.pth").write_bytes(data)
    with pytest.raises(WeightsError, match=r"x\.pth " + said):
        convert(entry(cls_spec(), tmp_path / "x.pth", role="classifier"), "classifiers[0]", NUM_CLASSES, tmp_path)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_is_verified_and_copied(tmp_path: Path) -> None:
    model = random_model(seg_spec()).eval()
    traced = torch.jit.trace(model, torch.rand(1, 3, 64, 64))  # type: ignore[no-untyped-call]
    traced.save(str(tmp_path / "traced.pt"))
    spec = seg_spec("ts", kind="torchscript")
    record = convert(entry(spec, tmp_path / "traced.pt", fp16=True), "segmenters[0]", NUM_CLASSES, tmp_path)
    assert (tmp_path / "ts.pt").read_bytes() == (tmp_path / "traced.pt").read_bytes()
    assert record.kind == "torchscript" and record.file == "ts.pt"
    assert record.parameters == sum(p.numel() for p in model.parameters())
    assert any("fp16 is ignored" in n for n in record.notes)

    with pytest.raises(
        WeightsError, match=r'TorchScript file; set kind = "torchscript" in bundle.toml segmenters\[2\]'
    ):
        convert(entry(seg_spec(), tmp_path / "traced.pt"), "bundle.toml segmenters[2]", NUM_CLASSES, tmp_path)


def test_state_dict_declared_as_torchscript_is_refused(tmp_path: Path) -> None:
    torch.save(random_model(seg_spec()).state_dict(), tmp_path / "plain.pth")
    with pytest.raises(WeightsError, match=r"'ts'.*not a TorchScript file.*segmenters\[0\]\.kind"):
        convert(entry(seg_spec("ts", "torchscript"), tmp_path / "plain.pth"), "segmenters[0]", NUM_CLASSES, tmp_path)


def test_extract_names_what_it_found() -> None:
    with pytest.raises(WeightsError, match=r"no state dict \(top-level keys: 'epoch', 'weights'\)"):
        extract_state_dict({"epoch": 1, "weights": [1, 2]}, "m", Path("m.pth"))
    with pytest.raises(WeightsError, match="holds a list"):
        extract_state_dict([torch.zeros(1)], "m", Path("m.pth"))


def test_model_keys_count_per_role(tmp_path: Path) -> None:
    models = (
        entry(cls_spec("a"), tmp_path, role="classifier"),
        entry(seg_spec("b"), tmp_path),
        entry(seg_spec("c"), tmp_path),
    )
    assert model_keys(models) == ["classifiers[0]", "segmenters[0]", "segmenters[1]"]


def test_a_torchscript_model_s_output_is_checked_at_build_time(tmp_path: Path) -> None:
    spec = make_torchscript_segmenter(tmp_path / "made", name="ts3", num_classes=3, input_size=None)
    made = entry(spec, tmp_path / "made" / "ts3.pt")
    with pytest.raises(WeightsError, match=r"model 'ts3': output shape \(1, 3, 32, 64\) is not .* 4 classes"):
        convert(made, "segmenters[0]", NUM_CLASSES, tmp_path, image_size=(32, 64))
    assert convert(made, "segmenters[0]", 3, tmp_path, image_size=(32, 64)).file == "ts3.pt"


def test_a_classifier_head_is_checked_against_the_task_s_classes_at_build_time(tmp_path: Path) -> None:
    spec = make_pixel_head(tmp_path / "made", "cnn9", 9)
    made = entry(spec, tmp_path / "made" / "cnn9.pt", role="classifier")
    with pytest.raises(WeightsError, match=r"^model 'cnn9': its head has 9 outputs but the task has 10 classes"):
        convert(made, "classifiers[0]", 10, tmp_path, image_size=(4, 16))
    regressor = make_pixel_head(tmp_path / "made", "reg2", 2)
    made = entry(regressor, tmp_path / "made" / "reg2.pt", role="regressor")
    with pytest.raises(WeightsError, match=r"model 'reg2': its head has 2 outputs but the task has 1 value"):
        convert(made, "regressors[0]", 1, tmp_path, image_size=(4, 16))
    assert convert(made, "regressors[0]", 2, tmp_path, image_size=(4, 16)).file == "reg2.pt"
