"""Which tensors ship from a checkpoint holding several sets (model, EMA, SWA): `checkpoint_key`
chooses; without it the build takes the model's and says which candidates it left (issue 17.9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bundler.config import ModelEntry
from bundler.dataset.weights import convert, select_state_dict
from bundler.errors import WeightsError
from kernel_src.models import build_model
from kernel_src.spec import ModelSpec

NUM_CLASSES = 4


def spec() -> ModelSpec:
    return ModelSpec(name="cls", kind="timm", file="cls.safetensors", arch="test_resnet")


def two_sets(
    tmp_path: Path, ema_key: str = "model_ema"
) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A training checkpoint with the model's tensors and, under `ema_key`, other (averaged) ones."""
    torch.manual_seed(0)
    model = build_model(spec(), NUM_CLASSES).state_dict()
    torch.manual_seed(1)
    ema = build_model(spec(), NUM_CLASSES).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model, ema_key: ema, "epoch": 7, "optimizer": {"state": {}}}, path)
    return path, model, ema


def shipped(tmp_path: Path, path: Path, checkpoint_key: str = "") -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    entry = ModelEntry(role="classifier", checkpoint=path, fp16=False, spec=spec(), checkpoint_key=checkpoint_key)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    record = convert(entry, "classifiers[0]", NUM_CLASSES, out)
    return load_file(str(out / "cls.safetensors")), record.notes


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_without_a_key_the_model_ships_and_the_ema_left_behind_is_named(tmp_path: Path) -> None:
    path, model, ema = two_sets(tmp_path)
    tensors, notes = shipped(tmp_path, path)
    assert same(tensors, model) and not same(tensors, ema)
    assert len(notes) == 1
    assert "took the" in notes[0] and "under 'model'" in notes[0]
    assert "left 'model_ema' (averaged weights)" in notes[0]
    assert "checkpoint_key = 'model_ema'" in notes[0] and "classifiers[0]" in notes[0]


@pytest.mark.parametrize("ema_key", ["model_ema", "ema", "state_dict_ema", "ema_state_dict", "ema_shadow"])
def test_checkpoint_key_ships_the_named_tensors(tmp_path: Path, ema_key: str) -> None:
    path, model, ema = two_sets(tmp_path, ema_key)
    tensors, notes = shipped(tmp_path, path, ema_key)
    assert same(tensors, ema) and not same(tensors, model)
    assert any(f"under {ema_key!r} (checkpoint_key)" in n and "left 'model'" in n for n in notes)


def test_checkpoint_key_may_name_a_nested_training_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(2)
    swa = build_model(spec(), NUM_CLASSES).state_dict()
    path = tmp_path / "swa.pth"
    torch.save({"swa": {"state_dict": {f"module.{k}": v for k, v in swa.items()}, "n_averaged": 5}}, path)
    tensors, notes = shipped(tmp_path, path, "swa")
    assert same(tensors, swa)
    assert any("stripped the key prefix 'module.'" in n for n in notes)


def test_a_missing_key_lists_the_candidates(tmp_path: Path) -> None:
    path, _, _ = two_sets(tmp_path)
    with pytest.raises(WeightsError) as info:
        shipped(tmp_path, path, "ema")
    message = str(info.value)
    assert "classifiers[0].checkpoint_key = 'ema' is not in it" in message
    assert "keys holding tensors: 'model', 'model_ema' (averaged weights)" in message
    assert "\n" not in message


def test_a_key_without_tensors_is_refused(tmp_path: Path) -> None:
    path, _, _ = two_sets(tmp_path)
    with pytest.raises(WeightsError, match=r"checkpoint_key = 'epoch' holds no tensors"):
        shipped(tmp_path, path, "epoch")


def test_a_checkpoint_of_averaged_weights_only_names_them(tmp_path: Path) -> None:
    torch.manual_seed(3)
    path = tmp_path / "ema_only.pth"
    torch.save({"state_dict_ema": build_model(spec(), NUM_CLASSES).state_dict(), "epoch": 1}, path)
    with pytest.raises(WeightsError, match=r"keys holding tensors: 'state_dict_ema' \(averaged weights\): name one"):
        shipped(tmp_path, path)


def test_a_single_state_dict_gets_no_note() -> None:
    state = {"w": torch.zeros(2)}
    assert select_state_dict({"state_dict": state, "epoch": 1}, "m", Path("m.pth")) == (state, ())
    assert select_state_dict(state, "m", Path("m.pth")) == (state, ())


def test_a_safetensors_file_refuses_a_key(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(build_model(spec(), NUM_CLASSES).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match=r"safetensors file, which holds one set of tensors; remove"):
        shipped(tmp_path, tmp_path / "w.safetensors", "model_ema")


def test_bundle_toml_types_the_new_model_keys(tmp_path: Path) -> None:
    from bundler.config import load_config
    from bundler.errors import ConfigError
    from tests.projects import model_table, tiny_inference, tiny_project, write_project

    def load(**changes: object) -> ModelEntry:
        seg = model_table(
            ModelSpec(name="s", kind="smp", file="s.safetensors", arch="Unet", encoder="resnet18"), "s.pth", **changes
        )
        inference = tiny_inference(gating={"mode": "off"})
        cfg = load_config(write_project(tmp_path, tiny_project(inference=inference, segmenters=[seg])))
        return cfg.models[0]

    entry = load(checkpoint_key="model_ema", channels="bgr", tta=["identity", "scale:0.75"], tta_merge="max")
    assert entry.checkpoint_key == "model_ema" and entry.preprocess is None
    assert (entry.spec.channels, entry.spec.tta, entry.spec.tta_merge) == ("bgr", ("identity", "scale:0.75"), "max")
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.checkpoint_key = 3 must be a string \(found an integer\)"):
        load(checkpoint_key=3)
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.preprocess = true must be a string"):
        load(preprocess=True)
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.tta: 'scale:9'.*factor in \[0.25, 4.0\]"):
        load(tta=["scale:9"])
    with pytest.raises(ConfigError, match=r"segmenters\[0\]\.input_size is set by segmenters\[0\]\.preprocess"):
        load(preprocess="models/s.albu.json", input_size=[64, 256])
    entry = load(preprocess="models/s.albu.json")
    assert entry.preprocess == tmp_path / "models" / "s.albu.json" and entry.spec.preprocess == "s.preprocess.json"


def test_a_torchscript_model_refuses_a_key(tmp_path: Path) -> None:
    traced = torch.jit.trace(torch.nn.Conv2d(3, 4, 1), torch.zeros(1, 3, 8, 8))  # type: ignore[no-untyped-call]
    traced.save(str(tmp_path / "m.pt"))
    spec = ModelSpec(name="ts", kind="torchscript", file="ts.pt")
    entry = ModelEntry(role="segmenter", checkpoint=tmp_path / "m.pt", fp16=False, spec=spec, checkpoint_key="ema")
    with pytest.raises(WeightsError, match=r"TorchScript file holds one module; remove bundle.toml segmenters\[0\]"):
        convert(entry, "segmenters[0]", NUM_CLASSES, tmp_path / "out")
