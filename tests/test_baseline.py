"""Baselines (the image's `pip freeze --all`) and the target's tags and markers."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.tags import Tag

from bundler.build.wheels.baseline import is_protected, load_baseline, parse_freeze, shipped_baselines
from bundler.build.wheels.resolve import parse_compile_output
from bundler.build.wheels.target import target_env
from bundler.config import TargetConfig
from bundler.errors import WheelsError


def test_shipped_baseline_holds_the_kaggle_image_facts() -> None:
    assert "kaggle-2026-08" in shipped_baselines()
    base = load_baseline("kaggle-2026-08")
    expected = {
        "torch": "2.10.0+cu128",
        "torchvision": "0.25.0+cu128",
        "timm": "1.0.26",
        "albumentations": "2.0.8",
        "opencv-python": "4.13.0.92",
        "opencv-python-headless": "4.13.0.92",
        "numpy": "2.0.2",
        "pandas": "2.2.2",
        "scikit-learn": "1.6.1",
        "pillow": "11.3.0",
        "safetensors": "0.7.0",
        "huggingface-hub": "1.11.0",
    }
    for name, version in expected.items():
        pin = base.get(name)
        assert pin is not None and pin.version == version, name
    assert base.get("segmentation-models-pytorch") is None
    for common in ("tqdm", "pyyaml", "requests", "six", "setuptools", "wheel", "pip", "typing-extensions"):
        assert base.get(common) is not None, common


def test_users_own_freeze_file(tmp_path: Path) -> None:
    path = tmp_path / "my-image.txt"
    path.write_text("# taken today\nNumPy==1.26.4\n-e git+https://x/y.git#egg=y\n\nPyYAML===6.0.1\n")
    base = load_baseline(str(path))
    assert base.name == "my-image" and base.get("numpy") is not None and base.get("pyyaml") is not None
    assert base.version("pyyaml") is not None and str(base.version("pyyaml")) == "6.0.1"


def test_url_lines_take_the_version_from_the_file_name() -> None:
    pins = parse_freeze(
        "torch @ file:///tmp/torch-2.10.0%2Bcu128-cp312-cp312-linux_x86_64.whl\n"
        "kaggle @ https://example.org/kaggle-1.7.4.5.tar.gz\n",
        "f",
    )
    versions = {str(k): pin.version for k, pin in pins.items()}
    assert versions == {"torch": "2.10.0+cu128", "kaggle": "1.7.4.5"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ok==1.0\nweird line here\n", r"line 2.*weird line here.*pip list --format=freeze"),
        ("x @ git+https://host/x.git\n", r"line 1"),
        ("x==not.a.version!\n", r"not a valid version for x"),
    ],
)
def test_unreadable_lines_are_named(text: str, match: str) -> None:
    with pytest.raises(WheelsError, match=match):
        parse_freeze(text, "f")


def test_missing_or_empty_baseline_says_how_to_take_one(tmp_path: Path) -> None:
    with pytest.raises(WheelsError, match=r"nope\.txt.*pip freeze --all"):
        load_baseline(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(WheelsError, match=r"lists no packages.*pip freeze --all"):
        load_baseline(str(tmp_path / "empty.txt"))


def test_protected_packages() -> None:
    for name in ("torch", "TorchVision", "torchaudio", "triton", "nvidia-cudnn-cu12", "cuda-bindings"):
        assert is_protected(name), name
    for name in ("timm", "numpy", "torchmetrics", "segmentation-models-pytorch"):
        assert not is_protected(name), name


def test_target_tags_widen_manylinux_like_pip_on_the_image() -> None:
    env = target_env(TargetConfig())
    tags = set(env.tags)
    assert env.describe == "cp312 manylinux glibc 2.35 x86_64" and env.uv_platform == "x86_64-manylinux_2_35"
    ok = ("cp312-cp312-manylinux_2_31_x86_64", "cp312-abi3-manylinux1_x86_64", "cp39-abi3-manylinux2014_x86_64")
    for text in (*ok, "py3-none-any"):
        assert Tag(*text.split("-")) in tags, text
    for bad in ("cp311-cp311-manylinux_2_17_x86_64", "cp312-cp312-manylinux_2_36_x86_64", "cp312-cp312-win_amd64"):
        assert Tag(*bad.split("-")) not in tags, bad
    assert env.markers["python_version"] == "3.12" and env.markers["platform_machine"] == "x86_64"


def test_target_platform_errors() -> None:
    with pytest.raises(WheelsError, match="win_amd64"):
        target_env(TargetConfig(platforms=("win_amd64",)))
    with pytest.raises(WheelsError, match="architectures"):
        target_env(TargetConfig(platforms=("manylinux_2_17_x86_64", "manylinux_2_17_aarch64")))
    assert target_env(TargetConfig(platforms=("manylinux_2_29_x86_64",))).uv_platform == "x86_64-manylinux_2_28"


def test_parse_uv_output_keeps_who_required_what() -> None:
    text = (
        "alpha==1.0\n    # via -r /tmp/x/requirements.in\n"
        "beta==2.0\n    # via\n    #   alpha\n    #   gamma\n"
        "gamma[fast]==3.0\n    # via -r /tmp/x/requirements.in\n"
    )
    out = parse_compile_output(text)
    assert [(r.name, r.version, r.via) for r in out] == [
        ("alpha", "1.0", ("target.requirements",)),
        ("beta", "2.0", ("alpha", "gamma")),
        ("gamma", "3.0", ("target.requirements",)),
    ]
