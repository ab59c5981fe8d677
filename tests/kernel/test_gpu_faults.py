"""The GPU path's faults, contained and reproduced on CPU (issue 23): bf16 on a GPU without it
(compute capability given), cuDNN / cuBLAS allocation failures recognised as out of memory,
faults outside a model's forward (an injected out-of-memory or CUDA error in the merge), a
model that fails on one replica only, fp16 overflow found at load on real images, and the
+inf/-inf merge of `logit_mean`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kernel_src.predict as predict_module
from bundler.demo.synthetic import make_dataset
from kernel_src.devices import resolve_devices
from kernel_src.models import is_out_of_memory
from kernel_src.run import run
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, TinyModels, predictor, random_images, tiny_spec


def test_bf16_below_compute_capability_8_falls_back_to_fp16_and_says_so() -> None:
    t4 = resolve_devices("cuda", gpus=2, precision="bf16", capability=(7, 5))
    assert t4.autocast_dtype == torch.float16 and t4.precision == "fp16"
    record = t4.to_dict()
    assert record["precision"] == "fp16"
    assert "bf16 asked for, fp16 used" in record["precision_fallback"] and "7.5" in record["precision_fallback"]
    ampere = resolve_devices("cuda", gpus=1, precision="bf16", capability=(8, 0))
    assert ampere.autocast_dtype == torch.bfloat16 and "precision_fallback" not in ampere.to_dict()
    # fp16 and CPU bf16 are left alone whatever the capability
    assert resolve_devices("cuda", gpus=1, precision="fp16", capability=(7, 5)).precision_fallback is None
    assert resolve_devices("cpu", precision="bf16", capability=(7, 5)).autocast_dtype == torch.bfloat16


def test_cudnn_and_cublas_allocation_failures_are_out_of_memory() -> None:
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    assert not is_out_of_memory(ValueError("CUDNN_STATUS_ALLOC_FAILED"))  # only a RuntimeError says it


# --- Faults outside a model's forward (item 2): injected into the merge ---------------------------


def _merge_failing(monkeypatch: pytest.MonkeyPatch, error: Callable[[int], BaseException | None]) -> list[int]:
    """Make kernel_src.predict's merge raise `error(images)` when that is not None; the image counts
    of every merge call are returned."""
    real = predict_module.merge
    seen: list[int] = []

    def merge(outputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(int(outputs[0].shape[0]))
        fault = error(int(outputs[0].shape[0]))
        if fault is not None:
            raise fault
        return real(outputs, *args, **kwargs)

    monkeypatch.setattr(predict_module, "merge", merge)
    return seen


def test_out_of_memory_in_the_merge_halves_the_batch_and_predicts_the_same(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, classifiers, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=8)
    batch = random_images(4, seed=5)
    plain = predictor(spec, dest).predict(batch)

    p = predictor(spec, dest)
    _merge_failing(monkeypatch, lambda n: torch.OutOfMemoryError("CUDA out of memory in the merge") if n > 1 else None)
    result = p.predict(batch)
    np.testing.assert_allclose(result.probs, plain.probs, atol=1e-5)
    np.testing.assert_array_equal(result.allowed, plain.allowed)
    np.testing.assert_array_equal(result.segmented, plain.segmented)
    assert p.images_per_batch == 1 and p.profiler.to_dict()["batch_split_by_oom"] == [2, 1]
    assert [m.spec.name for m in p.segmenters] == ["unet-mnv3", "fpn-mnv3"]  # no model was dropped


def test_a_cuda_error_in_the_merge_empties_that_batch_is_recorded_and_the_run_goes_on(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dest, _, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=[], segmenters=segmenters, gating={"mode": "off"}, batch_size=2)
    data = make_dataset(tmp_path / "data", 5, seed=3, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    calls = {"n": 0}

    def second_batch(n: int) -> BaseException | None:
        calls["n"] += 1  # two segmenters merge per batch: calls 3 and 4 are the second batch's
        return RuntimeError("CUDA error: an illegal memory access was encountered") if calls["n"] == 3 else None

    _merge_failing(monkeypatch, second_batch)
    result = run(
        spec,
        bundle_dir=dest,
        test_dir=data.root / "test_images",
        sample_submission=data.root / "sample_submission.csv",
        out_dir=tmp_path / "out",
        progress=False,
    )
    profile = result.profile
    failures = profile["problems"]["batch_failures"]
    ids = sorted({line.split(",")[0].rsplit("_", 1)[0] for line in result.submission_path.read_text().splitlines()[1:]})
    assert len(failures) == 1 and failures[0]["after_images"] == 2 and len(failures[0]["images"]) == 2
    assert "illegal memory access" in failures[0]["error"]
    assert profile["problems"]["model_failures"] == [] and profile["images"] == 5 == len(ids)
    assert profile["gating"]["images_segmented"] == 3  # the first and last batches were predicted
    rows = [line.split(",") for line in result.submission_path.read_text().splitlines()[1:]]
    failed = {r[1] for r in rows if r[0].rsplit("_", 1)[0] in failures[0]["images"]}
    assert failed == {""}  # the failed batch's rows: empty masks
