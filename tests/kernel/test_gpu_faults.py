"""The GPU path's faults, contained and reproduced on CPU (issue 23): bf16 on a GPU without it
(compute capability given), cuDNN / cuBLAS allocation failures recognised as out of memory,
faults outside a model's forward (an injected out-of-memory or CUDA error in the merge), a
model that fails on one replica only, fp16 overflow found at load on real images, and the
+inf/-inf merge of `logit_mean`."""

from __future__ import annotations

import torch

from kernel_src.devices import resolve_devices
from kernel_src.models import is_out_of_memory


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
