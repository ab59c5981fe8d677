"""Baselines (the image's `pip freeze --all`) and the target's tags and markers."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.tags import Tag
from packaging.version import Version

from bundler.cli import main
from bundler.config import TargetConfig
from bundler.errors import WheelsError
from bundler.target import baseline_sources
from bundler.target.baseline import BASELINES_DIR, is_protected, load_baseline, parse_freeze, shipped_baselines
from bundler.target.baseline_sources import (
    DOCKERFILE_CRITICAL,
    DOCKERFILE_FORCED,
    DOCKERFILE_UNINSTALLED,
    GENERATED_MARK,
    Change,
    MadeBaseline,
    Provenance,
    Source,
    UvInputs,
    compile_layer,
    make_baseline,
    merge,
    parse_forced,
    pin_line,
    read_colab_freeze,
    read_layer,
    render,
    uv_inputs,
)
from bundler.target.env import target_env
from bundler.target.resolve import REQUESTED, Resolved, parse_compile_output

SHIPPED = TargetConfig().baseline


def test_the_default_baseline_is_the_one_made_from_the_image_sources() -> None:
    assert SHIPPED == "kaggle-2026-08-12" and shipped_baselines() == [SHIPPED]


def test_shipped_baseline_holds_the_kaggle_image_facts() -> None:
    base = load_baseline(SHIPPED)
    expected = {  # the Colab freeze's versions, which Kaggle's layer keeps
        "torch": "2.10.0+cu128",
        "torchvision": "0.25.0+cu128",
        "timm": "1.0.26",
        "albumentations": "2.0.8",
        "albucore": "0.0.24",
        "opencv-python": "4.13.0.92",
        "opencv-python-headless": "4.13.0.92",
        "numpy": "2.0.2",
        "scikit-learn": "1.6.1",
        "pillow": "11.3.0",
        "safetensors": "0.7.0",
        "huggingface-hub": "1.11.0",
        "pip": "24.1.2",
        "absl-py": "1.4.0",
        "protobuf": "5.29.5",  # forced by the Dockerfile over Colab's 5.29.6
    }
    for name, version in expected.items():
        pin = base.get(name)
        assert pin is not None and pin.version == version, (name, pin)
    pandas = base.version("pandas")  # google-adk[eval] and others need pandas>=2.2.3: the layer lifts it
    assert pandas is not None and pandas > Version("2.2.2")
    for common in ("tqdm", "pyyaml", "requests", "six", "setuptools", "wheel", "pip", "typing-extensions"):
        assert base.get(common) is not None, common


def test_shipped_baseline_lacks_what_the_image_lacks() -> None:
    base = load_baseline(SHIPPED)
    for absent in (
        "executing",
        "pure-eval",
        "types-python-dateutil",
        "segmentation-models-pytorch",
        "ttach",
        "efficientnet-pytorch",
        "pretrainedmodels",
        "munch",
        "google-cloud-bigquery-storage",  # uninstalled by the Dockerfile
    ):
        assert base.get(absent) is None, absent


def test_every_line_of_the_shipped_baseline_parses() -> None:
    text = (BASELINES_DIR / f"{SHIPPED}.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    pins = parse_freeze(text, SHIPPED)
    assert len(pins) == len(lines) > 700  # one pin a line, no name twice
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^\s#]+(  # Kaggle layer \(.+\))?", line), line


def test_shipped_baseline_header_names_its_sources_and_the_command() -> None:
    text = (BASELINES_DIR / f"{SHIPPED}.txt").read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert header.startswith(GENERATED_MARK)
    for fact in (
        "googlecolab/backend-info, pip-freeze.gpu.txt, commit 0f0755b, 2026-05-14",
        "Kaggle/docker-python, kaggle_requirements.txt, commit 78aaa43, 2026-08-12",
        "bundler baseline from-sources --freeze",
        "--image-date 2026-08-12",
        "uv --config-file <work>/uv.toml pip compile",
        "--python-version 3.12 --python-platform x86_64-manylinux_2_35 --exclude-newer 2026-08-12T00:00:00Z",
        "protobuf==5.29.5, setuptools>=70,<82",
        "# Removed (uninstalled): google-cloud-bigquery-storage 2.37.0.",
        "Uncertain:",
        "jupyter_kernel_gateway @ git+",  # the freeze line left out, named
    ):
        assert fact in header, fact


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


# --- the generator (bundler baseline from-sources): its merge logic on small inputs, offline ---

FREEZE = """# Do not modify this file directly
absl-py==1.4.0
pandas==2.2.2
protobuf==5.29.6
torch==2.10.0+cu128
nvidia-cudnn-cu12==9.10.2.21
tensorflow==2.20.0
cucim-cu12 @ https://pypi.nvidia.com/cucim-cu12/cucim_cu12-26.2.0-cp312-cp312-manylinux_2_28_x86_64.whl
jupyter_kernel_gateway @ git+https://github.com/googlecolab/kernel_gateway@b134e99
"""
LAYER = """# Please keep this in alphabetical order
catboost
# a pin with a reason
jiter==0.10.0
google-adk[a2a,eval]>=1.21.0
"""


def test_reading_the_colab_freeze() -> None:
    freeze = read_colab_freeze(FREEZE, "colab.txt")
    assert freeze.pins["torch"].version == "2.10.0+cu128" and freeze.pins["cucim-cu12"].version == "26.2.0"
    assert freeze.unversioned == ("jupyter_kernel_gateway @ git+https://github.com/googlecolab/kernel_gateway@b134e99",)
    assert freeze.critical == ("torch==2.10.0", "tensorflow==2.20.0")  # the Dockerfile's grep, PyPI's version
    assert read_colab_freeze(FREEZE, "c", critical="absl").critical == ("absl-py==1.4.0",)
    with pytest.raises(WheelsError, match=r"colab\.txt, line 2: cannot read 'what is this'"):
        read_colab_freeze("ok==1.0\nwhat is this\n", "colab.txt")
    with pytest.raises(WheelsError, match=r"--critical '\(' is not a regular expression"):
        read_colab_freeze(FREEZE, "c", critical="(")
    with pytest.raises(WheelsError, match="lists no packages"):
        read_colab_freeze("# nothing\n", "c")


def test_reading_the_layer() -> None:
    layer = read_layer(LAYER, "layer.txt")
    assert [str(r) for r in layer] == ["catboost", "jiter==0.10.0", "google-adk[a2a,eval]>=1.21.0"]
    with pytest.raises(WheelsError, match=r"layer\.txt, line 2: 'not ok ==' is not a requirement"):
        read_layer("fine\nnot ok ==\n", "layer.txt")
    with pytest.raises(WheelsError, match=r"line 1: option line '-r other.txt'"):
        read_layer("-r other.txt\n", "layer.txt")
    with pytest.raises(WheelsError, match="lists no requirements"):
        read_layer("# only comments\n", "layer.txt")
    with pytest.raises(WheelsError, match="--force-install 'protobuf=5'"):
        parse_forced(("protobuf=5",))


def test_uv_inputs_model_the_dockerfile() -> None:
    freeze = read_colab_freeze(FREEZE, "c")
    inputs = uv_inputs(freeze, read_layer(LAYER, "l"), parse_forced(DOCKERFILE_FORCED))
    assert inputs.requirements.splitlines() == [
        "torch==2.10.0",
        "tensorflow==2.20.0",
        "catboost",
        "jiter==0.10.0",
        "google-adk[a2a,eval]>=1.21.0",
        "protobuf==5.29.5",
        "setuptools<82,>=70",
    ]
    assert "torch==2.10.0\n" in inputs.preferences and "cucim-cu12==26.2.0\n" in inputs.preferences
    assert "+cu128" not in inputs.preferences and "jupyter" not in inputs.preferences
    assert inputs.overrides.splitlines() == [
        "protobuf==5.29.5",
        "setuptools<82,>=70",
        "nvidia-cudnn-cu12==9.10.2.21",
        "torch==2.10.0",
    ]
    # torch and CUDA packages: dependencies taken as installed (their +cu128 builds are not on PyPI)
    assert 'name = "torch"\nversion = "2.10.0"\nrequires-dist = []' in inputs.uv_toml
    assert "pandas" not in inputs.uv_toml


def test_merge_keeps_the_freeze_where_the_layer_agrees() -> None:
    freeze = read_colab_freeze(FREEZE, "c")
    resolved = [
        Resolved("torch", "2.10.0", (REQUESTED,)),  # same public version: the freeze's +cu128 kept
        Resolved("absl-py", "1.4.0", ("tensorflow",)),
        Resolved("pandas", "2.3.3", ("catboost", "google-adk")),
        Resolved("protobuf", "5.29.5", (REQUESTED, REQUESTED, "a2a-sdk")),
        Resolved("catboost", "1.2.10", (REQUESTED,)),
    ]
    merged = merge(freeze.pins, resolved)
    assert {k: p.version for k, p in merged.pins.items()} == {
        "absl-py": "1.4.0",
        "catboost": "1.2.10",
        "cucim-cu12": "26.2.0",
        "nvidia-cudnn-cu12": "9.10.2.21",
        "pandas": "2.3.3",
        "protobuf": "5.29.5",
        "tensorflow": "2.20.0",
        "torch": "2.10.0+cu128",
    }
    assert list(merged.pins) == sorted(merged.pins)
    assert merged.changes == {
        "pandas": Change("2.2.2", "2.3.3", ("catboost", "google-adk")),
        "protobuf": Change("5.29.6", "5.29.5", (REQUESTED, REQUESTED, "a2a-sdk")),
        "catboost": Change(None, "1.2.10", (REQUESTED,)),
    }
    assert pin_line(merged.pins["torch"], None) == "torch==2.10.0+cu128"
    protobuf = pin_line(merged.pins["protobuf"], merged.changes["protobuf"])
    assert protobuf == "protobuf==5.29.5  # Kaggle layer (Colab 5.29.6; via the layer's list, a2a-sdk)"
    catboost = pin_line(merged.pins["catboost"], merged.changes["catboost"])
    assert catboost == "catboost==1.2.10  # Kaggle layer (not in Colab; via the layer's list)"


def test_merge_drops_what_the_dockerfile_uninstalls() -> None:
    freeze = read_colab_freeze(FREEZE, "c")
    resolved = [Resolved("catboost", "1.2.10", (REQUESTED,)), Resolved("pandas", "2.3.3", ("catboost",))]
    merged = merge(freeze.pins, resolved, ("Pandas", "catboost", "never-installed"))
    assert "pandas" not in merged.pins and "catboost" not in merged.pins and merged.changes == {}
    assert [(p.name, p.version) for p in merged.removed] == [("pandas", "2.3.3"), ("catboost", "1.2.10")]
    assert merge(freeze.pins, resolved).removed == ()


def _provenance(tmp_path: Path) -> Provenance:
    return Provenance(
        freeze=Source(tmp_path / "colab.txt", "googlecolab/backend-info, pip-freeze.gpu.txt, commit abc, 2026-05-14"),
        layer=Source(tmp_path / "layer.txt", "Kaggle/docker-python, kaggle_requirements.txt, commit def, 2026-08-12"),
        image_date=date(2026, 8, 12),
        python="3.12",
        platform="x86_64-manylinux_2_35",
        forced=DOCKERFILE_FORCED,
        uninstalled=DOCKERFILE_UNINSTALLED,
        critical=DOCKERFILE_CRITICAL,
        bundler_command="bundler baseline from-sources ...",
        uv_command="uv pip compile <work>/requirements.in --exclude-newer 2026-08-12T00:00:00Z",
        uv_version="uv 0.13.9",
    )


def test_render_reads_back_and_names_its_sources(tmp_path: Path) -> None:
    freeze = read_colab_freeze(FREEZE, "c")
    merged = merge(freeze.pins, [Resolved("pandas", "2.3.3", ("catboost",)), Resolved("catboost", "1.2.10", ())])
    text = render(merged, freeze, _provenance(tmp_path))
    assert parse_freeze(text, "rendered") == merged.pins
    assert text.startswith(GENERATED_MARK + "\n")
    for fact in (
        "commit abc, 2026-05-14",
        "commit def, 2026-08-12",
        "bundler baseline from-sources ...",
        "--exclude-newer 2026-08-12T00:00:00Z",
        "1 moved by the Kaggle layer, 1 added by it",
        "Moved: pandas 2.2.2 -> 2.3.3.",
        "jupyter_kernel_gateway @ git+",
    ):
        assert fact in text, fact


def test_make_baseline_writes_a_loadable_file_and_never_clobbers_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "colab.txt").write_text(FREEZE)
    (tmp_path / "layer.txt").write_text(LAYER)
    seen: list[UvInputs] = []

    def fake_compile(inputs: UvInputs, **kwargs: object) -> tuple[list[Resolved], str, str]:
        seen.append(inputs)
        return (
            [Resolved("pandas", "2.3.3", ("catboost",)), Resolved("catboost", "1.2.10", (REQUESTED,))],
            "uv x",
            "uv 0",
        )

    monkeypatch.setattr(baseline_sources, "compile_layer", fake_compile)
    prov = _provenance(tmp_path)
    out = tmp_path / "baselines" / "kaggle-test.txt"

    def make(replace: bool = False, origin: str = prov.freeze.origin) -> MadeBaseline:
        return make_baseline(
            Source(prov.freeze.path, origin),
            prov.layer,
            out=out,
            image_date=prov.image_date,
            python="3.12",
            platform=prov.platform,
            forced=DOCKERFILE_FORCED,
            uninstalled=("catboost", "Absl_Py", "not-there"),
            critical=DOCKERFILE_CRITICAL,
            bundler_command="bundler baseline from-sources",
            work=tmp_path / "work",
            cache_dir=tmp_path / "cache",
            replace=replace,
        )

    made = make()
    assert (made.pins, made.moved, made.added) == (6, 1, 0) and len(seen) == 1
    base = load_baseline(str(out))
    assert base.get("pandas") is not None and base.get("catboost") is None and base.get("absl-py") is None
    assert "# Removed (uninstalled): catboost 1.2.10, absl-py 1.4.0." in out.read_text()
    made = make()  # a file this command wrote is rewritten
    assert made.pins == 6
    with pytest.raises(WheelsError, match="--freeze-origin is empty"):
        make(origin=" ")
    out.write_text("absl-py==9.9\n")  # a hand-made file: refused, kept
    with pytest.raises(WheelsError, match=r"kaggle-test\.txt exists and was not written by .*--replace"):
        make()
    assert out.read_text() == "absl-py==9.9\n"
    assert make(replace=True).pins == 6


def test_cli_names_a_missing_source(tmp_path: Path) -> None:
    args = ["baseline", "from-sources", "--freeze", str(tmp_path / "nope.txt"), "--freeze-origin", "x"]
    args += ["--layer", str(tmp_path / "layer.txt"), "--layer-origin", "y", "--image-date", "2026-08-12"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out.txt")])
    assert result.exit_code == 1
    assert "--freeze" in result.output and "nope.txt: cannot read it (no such file)" in result.output
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.network
def test_compile_layer_against_pypi_keeps_the_preferred_versions(tmp_path: Path) -> None:
    freeze = read_colab_freeze("requests==2.31.0\nurllib3==2.0.7\nsix==1.16.0\n", "c")
    inputs = uv_inputs(freeze, read_layer("requests\nsix>=1.17\n", "l"), [])
    resolved, shown, _ = compile_layer(
        inputs,
        python="3.12",
        platform="x86_64-manylinux_2_35",
        exclude_newer=date(2026, 8, 12),
        work=tmp_path / "work",
        cache_dir=tmp_path / "cache",
    )
    versions = {r.name: r.version for r in resolved}
    assert versions["requests"] == "2.31.0" and versions["urllib3"] == "2.0.7"  # preferences kept
    assert Version(versions["six"]) >= Version("1.17")  # moved where the layer requires it
    assert "<work>/requirements.in" in shown and str(tmp_path) not in shown
