"""Configuration problems stop `run` at once, naming the model and the key, before any image."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bundler.demo.synthetic import make_dataset
from kernel_src.errors import BundleError, ModelError, SpecError
from kernel_src.run import run
from kernel_src.spec import InferenceSpec, ModelSpec
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, TinyModels, make_torchscript_segmenter, tiny_spec, write_sample


@pytest.fixture(scope="module")
def setup(
    tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[ModelSpec], list[ModelSpec], Path]:
    dest, classifiers, segmenters = tiny_models
    segmenters = [*segmenters, make_torchscript_segmenter(dest)]
    data = make_dataset(tmp_path_factory.mktemp("data"), 2, seed=0, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    return dest, classifiers, segmenters, data.root


Edit = Callable[[list[ModelSpec], list[ModelSpec]], tuple[list[ModelSpec], list[ModelSpec], dict[str, object]]]

CASES: dict[str, tuple[Edit, list[str]]] = {
    "missing weight file": (
        lambda c, s: (c, [replace(s[0], file="nowhere.safetensors"), s[1]], {}),
        ["'unet-mnv3'", "nowhere.safetensors", "missing"],
    ),
    "checkpoint of another architecture": (
        lambda c, s: (c, [replace(s[0], file=s[1].file), s[1]], {}),
        ["'unet-mnv3'", "does not fit"],
    ),
    "checkpoint of another encoder": (
        lambda c, s: (c, [replace(s[0], encoder="resnet18"), s[1]], {}),
        ["'unet-mnv3'", "does not fit"],
    ),
    "checkpoint with another class count": (
        lambda c, s: (c, s[:2], {"num_classes": 3, "gating": {"mode": "per_class", "thresholds": 0.5}}),
        ["'cls-mnv3'", "shape", "class count"],
    ),
    "unknown encoder": (
        lambda c, s: (c, [replace(s[0], encoder="resnet999"), s[1]], {}),
        ["'unet-mnv3'", "encoder", "resnet999"],
    ),
    "unknown architecture": (
        lambda c, s: (c, [replace(s[0], arch="Unet9000"), s[1]], {}),
        ["'unet-mnv3'", "arch", "Unet9000"],
    ),
    "unknown timm model": (
        lambda c, s: ([replace(c[0], arch="no_such_net"), c[1]], s[:2], {}),
        ["'cls-mnv3'", "arch", "no_such_net"],
    ),
    "torchscript with another class count": (
        lambda c, s: ([], [s[2]], {"num_classes": 3}),
        ["'ts-seg'", "3 classes", "num_classes"],
    ),
    "not a torchscript file": (
        lambda c, s: ([], [replace(s[2], file=s[0].file)], {}),
        ["'ts-seg'", "not a TorchScript file"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_problem_raises_before_any_image(
    setup: tuple[Path, list[ModelSpec], list[ModelSpec], Path], tmp_path: Path, case: str
) -> None:
    dest, classifiers, segmenters, data = setup
    edit, expected = CASES[case]
    cls, seg, extra = edit(list(classifiers), list(segmenters))
    spec = tiny_spec(dest, classifiers=cls, segmenters=seg, **extra)
    ids = [p.name for p in sorted((data / "test_images").iterdir())]
    sample = write_sample(tmp_path / "sample.csv", ids, num_classes=spec.num_classes)
    with pytest.raises(ModelError) as info:
        run(spec, bundle_dir=dest, test_dir=data / "test_images", sample_submission=sample,
            out_dir=tmp_path / "out", progress=False)  # fmt: skip
    for text in expected:
        assert text in str(info.value), (text, str(info.value))
    profile = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert profile["images"] == 0 and "decode" not in profile["stages"]
    assert profile["error"].startswith("ModelError")
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_missing_test_folder_and_cuda_without_gpu_are_named(
    setup: tuple[Path, list[ModelSpec], list[ModelSpec], Path], tmp_path: Path
) -> None:
    dest, _, segmenters, data = setup
    spec = tiny_spec(dest, classifiers=[], segmenters=segmenters[:1])
    with pytest.raises(BundleError, match=r"test_dir .* is not a folder; point test_dir at the test images"):
        run(spec, bundle_dir=dest, test_dir=tmp_path / "nope", sample_submission=data / "sample_submission.csv",
            out_dir=tmp_path / "out", progress=False)  # fmt: skip
    if torch.cuda.is_available():
        return
    cuda = InferenceSpec.from_dict({**spec.to_dict(), "device": "cuda"})
    with pytest.raises(SpecError, match="no GPU") as info:
        run(cuda, bundle_dir=dest, test_dir=data / "test_images", sample_submission=data / "sample_submission.csv",
            out_dir=tmp_path / "out2", progress=False)  # fmt: skip
    assert info.value.key == "device"


def test_weights_copied_elsewhere_load_from_bundle_dir(
    setup: tuple[Path, list[ModelSpec], list[ModelSpec], Path], tmp_path: Path
) -> None:
    dest, _, segmenters, data = setup
    moved = tmp_path / "bundle"
    moved.mkdir()
    shutil.copy(dest / segmenters[2].file, moved / segmenters[2].file)
    spec = tiny_spec(moved, classifiers=[], segmenters=[segmenters[2]])
    sample = data / "sample_submission.csv"
    result = run(spec, bundle_dir=moved, test_dir=data / "test_images", sample_submission=sample,
                 out_dir=tmp_path / "out", progress=False)  # fmt: skip
    assert result.profile["images"] == 2 and result.submission_path.is_file()
