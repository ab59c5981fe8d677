"""Smoke tests for `benchmarks/`: every benchmark runs at a tiny size, the naive pieces agree with
the engine's, and the naive and shipped pipelines write IDENTICAL submissions. No timing asserts:
the figures are only checked to exist and be positive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.bench_cuda import bench_cuda
from benchmarks.bench_overhead import bench_overhead
from benchmarks.bench_pipeline import bench_pipeline
from benchmarks.bench_rebuild import bench_rebuild
from benchmarks.bench_rle import bench_rle
from benchmarks.bench_rss import bench_rss
from benchmarks.gpu_check import run_tests
from benchmarks.naive import naive_postprocess, naive_rle
from benchmarks.report import BenchResult
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
    assert set(_figures(result)) == {
        "pipeline_vs_naive_gated",
        "pipeline_vs_naive_per_class",
        "pipeline_vs_naive_ungated",
    }
    labels = {label: (value, note) for label, value, note in result.rows}
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
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("rle_vs_naive=")
    assert float(lines[-1].split("=")[1]) > 0
    assert lines[-2] == "cuda_ensemble=skipped" or lines[-2].startswith("cuda_")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --gpu-check would really run (minutes)")
def test_gpu_check_without_a_gpu_says_so_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpu-check"]) == 2
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "gpu_check=no_gpu"
    assert "no CUDA device here" in captured.err and "nothing was checked" in captured.err


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


def test_classify_loops_agree_and_report() -> None:
    from benchmarks.bench_classify import bench_classify

    result = bench_classify(quick=True, n=40)
    assert set(_figures(result)) == {"classify_batched_vs_naive"}
    assert any(label == "outputs" and value == "identical labels" for label, value, _ in result.rows)
