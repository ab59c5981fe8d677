"""Smoke tests for `benchmarks/`: every benchmark runs at a tiny size, the naive pieces agree with
the engine's, and the naive and shipped pipelines write IDENTICAL submissions. No timing asserts:
the figures are only checked to exist and be positive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.bench_classify import bench_classify
from benchmarks.bench_cuda import bench_cuda
from benchmarks.bench_overhead import bench_overhead
from benchmarks.bench_pipeline import bench_pipeline, hidden_size_s
from benchmarks.bench_rebuild import bench_rebuild
from benchmarks.bench_rle import bench_rle
from benchmarks.bench_rss import bench_rss
from benchmarks.gpu_check import CheckConfig, Log, run_check, run_tests
from benchmarks.gpu_preflight import CARRIED, gather_command, pinned, unpack_wheel, version_tuple
from benchmarks.naive import NaiveResult, naive_postprocess, naive_rle
from benchmarks.report import BenchResult, Figure, Load, figure_lines
from benchmarks.workload import Models
from kernel_src.postprocess import postprocess
from kernel_src.rle import encode
from kernel_src.spec import ModelSpec, PostprocessSpec

ENCODER = "tu-mobilenetv3_small_050"
H, W = 64, 256


def tiny_models() -> Models:
    cls = ModelSpec(name="cls", kind="timm", file="cls.safetensors", arch="test_resnet", input_size=(32, 128))
    unet = ModelSpec(
        name="unet", kind="smp", file="unet.safetensors", arch="Unet", encoder=ENCODER, tta=("identity", "hflip")
    )
    fpn = ModelSpec(
        name="fpn",
        kind="smp",
        file="fpn.safetensors",
        arch="FPN",
        encoder=ENCODER,
        input_size=(32, 128),
        tta=("identity", "vflip"),
        weight=0.5,
    )
    return Models(classifiers=(cls,), segmenters=(unet, fpn), margin=float("inf"))


def _figures(result: BenchResult) -> dict[str, float]:
    assert not result.skipped
    values = {f.key: f.value for f in result.figures}
    assert values and all(v > 0 for v in values.values())
    return values


@pytest.mark.parametrize("order", ["F", "C"])
def test_naive_rle_matches_engine(order: str) -> None:
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((7, 5), np.uint8),
        np.ones((7, 5), np.uint8),
        (rng.random((7, 5)) > 0.5).astype(np.uint8),
        (rng.random((16, 40)) > 0.8).astype(np.uint8),
    ]
    masks[0][-1, -1] = 1  # a run ending on the last pixel
    for mask in masks:
        assert naive_rle(mask, order) == encode(mask, order)


def test_naive_postprocess_matches_engine() -> None:
    rng = np.random.default_rng(1)
    probs = rng.random((4, 40, 60)).astype(np.float32)
    spec = PostprocessSpec(threshold=(0.5, 0.7, 0.9, 0.3), min_component=(0, 3, 5, 40), min_area=(0, 10, 30, 900))
    expected = postprocess(probs, spec)
    for c in range(4):
        mask, _ = naive_postprocess(probs[c], spec.threshold[c], spec.min_component[c], spec.min_area[c])
        assert np.array_equal(mask.astype(bool), expected[c])


@pytest.mark.slow
def test_pipeline_vs_naive_writes_identical_submissions() -> None:
    # bench_pipeline raises when a single row differs; the tiny models gate half the images.
    result = bench_pipeline(quick=True, n=4, height=H, width=W, models=tiny_models(), warmup=False)
    keys = {"pipeline_vs_naive_gated", "pipeline_vs_naive_per_class", "pipeline_vs_naive_ungated"}
    assert set(_figures(result)) == keys | {f"{k}_at_5506" for k in keys}
    labels = {label: (value, note) for label, value, note in result.rows}
    assert "ours" in labels["gating off: at 5506 images"][1] and "N x" in labels["gating off: at 5506 images"][1]
    for mode in ("per_image", "per_class", "off"):
        assert labels[f"gating {mode}: submissions"][0] == "identical"
    assert "segmented 2/4 images" in labels["gating per_image: ours"][1]
    assert "segmented 2/4 images" in labels["gating per_class: ours"][1]  # no class passes the clean half
    assert "segmented 4/4 images" in labels["gating off: ours"][1]


def test_overhead_vs_forward_runs() -> None:
    result = bench_overhead(quick=True, n=3, height=H, width=W, models=tiny_models())
    assert set(_figures(result)) == {"overhead_vs_forward", "overhead_vs_forward_steady"}


def test_rle_vs_naive_runs() -> None:
    assert set(_figures(bench_rle(quick=True, n=2, height=H, width=W))) == {"rle_vs_naive"}


def test_noop_rebuild_runs_offline() -> None:
    result = bench_rebuild(quick=True, tiny=True)
    assert set(_figures(result)) == {"noop_rebuild_s"}


@pytest.mark.slow
def test_rss_growth_runs_in_fresh_interpreters() -> None:
    result = bench_rss(quick=True, n=1, height=H, width=W, models=tiny_models())
    assert set(_figures(result)) == {"rss_growth"}
    assert [label for label, _, _ in result.rows] == ["peak RSS, N = 1 images", "peak RSS, 4N = 4 images"]


def test_cuda_section_skips_or_runs() -> None:
    if not torch.cuda.is_available():
        result = bench_cuda(quick=True)
        assert "no CUDA" in result.skipped
        assert not result.figures


@pytest.mark.slow
def test_cuda_section_code_path_on_cpu() -> None:
    cls = [ModelSpec(name="c", kind="timm", file="c.safetensors", arch="test_resnet")]
    seg = [ModelSpec(name="s", kind="smp", file="s.safetensors", arch="Unet", encoder=ENCODER)]
    result = bench_cuda(quick=True, n=2, height=H, width=W, device="cpu", models=(cls, seg))
    figures = _figures(result)
    assert set(figures) == {
        "cpu_fp32_images_per_s",
        "cpu_fp32_projected_min",
        "cpu_naive_fp32_projected_min",
        "cpu_pipeline_vs_naive",
    }
    rows = {label: value for label, value, _ in result.rows}
    assert rows["submissions, ours vs naive"].endswith("of 8 rows differ")  # 2 images x 4 classes


def test_main_prints_figures_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--only", "cuda", "--only", "rle_vs_naive"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] in ("rle_vs_naive_load=quiet", "rle_vs_naive_load=under_load")
    assert lines[-2].startswith("rle_vs_naive=")
    assert float(lines[-2].split("=")[1]) > 0
    assert lines[-3] == "cuda_ensemble=skipped" or lines[-3].startswith("cuda_")
    assert "load average" in out and "at the start" in out and "at the end" in out


def test_a_ratio_taken_under_load_is_marked() -> None:
    assert not Load(0.3, 2.5, 2).under_load  # quiet before, only the benchmark's own threads after
    assert Load(1.5, 2.5, 2).under_load  # busy before it began
    assert Load(0.3, 3.5, 2).under_load  # busier at the end than its own threads explain
    result = BenchResult("x", figures=[Figure("x_ratio", 1.5)], load=Load(7.5, 7.3, 2))
    assert figure_lines([result]) == ["x_ratio=1.5", "x_load=under_load"]
    assert "UNDER LOAD" in Load(7.5, 7.3, 2).describe()


def test_hidden_size_projection_leaves_out_the_first_batch_and_image() -> None:
    profile = {"fixed_s": 10.0, "per_image_s": 2.0, "steady_per_image_s": 1.0}
    assert hidden_size_s(profile, images=100) == 110.0
    assert hidden_size_s({**profile, "steady_per_image_s": None}, images=100) == 210.0
    naive = NaiveResult(Path("x"), seconds=20.0, stages={"load_models": 4.0, "write": 0.4}, images=4)
    naive.image_done_s = [10.0, 12.0, 14.0, 16.0]  # a slow first image, then 2 s each
    assert naive.steady_per_image_s() == pytest.approx(2.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --gpu-check would really run (minutes)")
def test_gpu_check_without_a_gpu_says_so_and_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--gpu-check", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "gpu_check=no_gpu"
    assert "no CUDA device here" in captured.err and "nothing was measured" in captured.err
    steps = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["preflight", "no_gpu"]
    assert steps[0]["ok"] and steps[0]["versions"]["segmentation_models_pytorch"]


# Runs `python -m benchmarks ARGS` as on a bare GPU machine: the notebook packages, rich and smp
# cannot be imported from this venv's site-packages (smp only from wherever the check unpacks it).
BARE_MACHINE = r"""
import importlib.abc, importlib.machinery, runpy, sys

SITE, ARGS = sys.argv[1], sys.argv[2:]
BLOCKED = {"nbformat", "nbclient", "papermill", "ipykernel", "rich", "segmentation_models_pytorch"}


class Bare(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if path is not None or name not in BLOCKED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if not p.startswith(SITE)])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (a bare GPU machine)", name=name)
        return spec


sys.meta_path.insert(0, Bare())
sys.argv = ["benchmarks", *ARGS]
runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
"""


def _smp_wheel(dest: Path) -> Path:
    """The installed smp packed as a pure-Python wheel (what `--gather` downloads from PyPI)."""
    import segmentation_models_pytorch as smp

    package = Path(smp.__file__).parent
    dist_info = next(package.parent.glob(f"segmentation_models_pytorch-{smp.__version__}.dist-info"))
    wheel = dest / f"segmentation_models_pytorch-{smp.__version__}-py3-none-any.whl"
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for folder in (package, dist_info):
            for path in folder.rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(package.parent).as_posix())
    return wheel


def _bare_run(tmp_path: Path, wheels: Path) -> subprocess.CompletedProcess[str]:
    import segmentation_models_pytorch as smp

    site = str(Path(smp.__file__).parent.parent)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("OUT", None)
    args = ["--gpu-check", "--out", str(tmp_path / "out"), "--wheels", str(wheels)]
    return subprocess.run(
        [sys.executable, "-c", BARE_MACHINE, site, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --gpu-check would really run (minutes)")
def test_gpu_check_on_a_bare_machine_installs_smp_from_the_wheels_then_says_no_gpu(tmp_path: Path) -> None:
    wheel = _smp_wheel(tmp_path / "wheels")
    done = _bare_run(tmp_path, wheel.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "gpu_check=no_gpu"
    assert "no CUDA device here" in done.stderr
    preflight = json.loads((tmp_path / "out" / "gpu_check.jsonl").read_text().splitlines()[0])
    assert preflight["ok"] and preflight["installed_from_wheels"] == [wheel.name]
    assert preflight["site"] and preflight["versions"]["segmentation_models_pytorch"] == wheel.name.split("-")[1]


def test_gpu_check_preflight_names_what_is_missing_and_how_to_bring_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = _bare_run(tmp_path, tmp_path / "empty")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "gpu_check=preflight_failed"
    assert "segmentation_models_pytorch cannot be imported" in done.stderr
    assert "python -m benchmarks.gpu_preflight --gather" in done.stderr
    assert "Traceback" not in done.stderr


def test_preflight_wheels_only_pure_python_and_only_inside_the_folder(tmp_path: Path) -> None:
    binary = tmp_path / "safetensors-0.8.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(binary, "w") as archive:
        archive.writestr("safetensors/__init__.py", "")
    with pytest.raises(ValueError, match="not a pure-Python wheel"):
        unpack_wheel(binary, tmp_path / "site")
    evil = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.py", "")
    with pytest.raises(ValueError, match="outside"):
        unpack_wheel(evil, tmp_path / "site")
    assert not (tmp_path / "outside.py").exists()


def test_preflight_versions_and_the_gather_command() -> None:
    assert version_tuple("2.11.0+cu130") == (2, 11, 0) and version_tuple("1.0rc1") == (1, 0)
    assert version_tuple("2.9.1") < version_tuple("2.10")
    pins = pinned()
    assert [p.split("==")[0] for p in pins] == list(CARRIED) and all("==" in p for p in pins)
    command = gather_command(Path("/tmp/w"), pins)
    assert command[command.index("--python-version") + 1] == "3.12" and "--no-deps" in command
    assert "manylinux_2_17_x86_64" in command and command[-len(pins) :] == pins


@pytest.mark.slow
def test_gpu_check_measures_every_step_on_cpu_at_a_tiny_size(tmp_path: Path) -> None:
    cls = [ModelSpec(name="c", kind="timm", file="c.safetensors", arch="test_resnet")]
    views = ("identity", "hflip", "vflip")
    seg = [ModelSpec(name="s", kind="smp", file="s.safetensors", arch="Unet", encoder=ENCODER, tta=views)]
    config = CheckConfig(
        device="cpu",
        height=H,
        width=W,
        images=4,
        compare_images=2,
        batch_size=2,
        memory_batches=(1, 2),
        tests=False,
        models=(cls, seg),
    )
    assert run_check(config, Log(tmp_path / "gpu_check.jsonl", time.perf_counter())) == 0
    records = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    for step in ("environment", "setup", "models", "run fp16", "run fp32", "memory", "run two replicas"):
        assert step in steps
    assert steps[-3:] == ["run cudnn.benchmark", "t4x2_projection", "summary"]
    by_step = {r["step"]: r for r in records}
    assert by_step["summary"]["passed"] and not by_step["summary"]["failed"]
    models = [r for r in records if r["step"] == "models"]
    assert [m["model"] for m in models] == ["c", "s"] and all(m["flops_per_view_image"] > 0 for m in models)
    assert by_step["run fp32"]["dice_vs_fp16"] == 1.0  # fp32 on CPU both times: the same masks
    assert by_step["run two replicas"]["replicas"] == 2 and by_step["run two replicas"]["dice_vs_fp16"] == 1.0
    assert by_step["run syncs on"]["stage_syncs"] is True and by_step["run fp16"]["stage_syncs"] is False
    assert by_step["run fp16"]["steady_per_image_s"] > 0
    projection = by_step["t4x2_projection"]
    assert "PROJECTION" in projection["label"] and len(projection["rates"]) == 4
    assert projection["flops_per_image"] == sum(m["flops_per_view_image"] * m["views"] for m in models)


GPU_TESTS_FILE = """
import time

import pytest


@pytest.mark.gpu
def test_records(record_property):
    record_property("gpu_peak_mib", 12.5)


@pytest.mark.gpu
def test_fails():
    assert 1 == 2


@pytest.mark.gpu
def test_skips():
    pytest.skip("needs two CUDA devices")


@pytest.mark.slow
def test_hangs():
    time.sleep(120)


def test_unmarked():
    pass
"""


@pytest.mark.slow
def test_gpu_checks_child_pytest_counts_properties_and_timeout(tmp_path: Path) -> None:
    (tmp_path / "test_fake_gpu.py").write_text(GPU_TESTS_FILE, encoding="utf-8")
    run = run_tests(["test_fake_gpu.py"], marker="gpu", timeout_s=120, cwd=tmp_path)
    assert (run.tests, run.passed, run.failed, run.skipped) == (3, 1, 1, 1)
    assert run.properties == {"gpu_peak_mib": "12.5"}
    assert run.returncode == 1 and not run.ok
    stopped = run_tests(["test_fake_gpu.py"], marker="slow", timeout_s=5, cwd=tmp_path)
    assert not stopped.ok and "ran past 5 s" in stopped.problem


def test_classify_vs_batched_loop_runs_and_agrees_with_the_loop() -> None:
    # bench_classify raises when one label differs from the plain batched loop's
    result = bench_classify(quick=True, n=300, naive_n=10)
    assert set(_figures(result)) == {"classify_vs_batched_loop", "classify_vs_naive"}
