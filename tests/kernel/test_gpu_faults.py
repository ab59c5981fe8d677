"""The GPU path's faults, contained and reproduced on CPU (issue 23): bf16 on a GPU without it
(compute capability given), cuDNN / cuBLAS allocation failures recognised as out of memory,
faults outside a model's forward (an injected out-of-memory or CUDA error in the merge), a
model that fails on one replica only, fp16 overflow found at load on real images, and the
+inf/-inf merge of `logit_mean`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kernel_src.models as models_module
import kernel_src.predict as predict_module
from bundler.config import MachineConfig
from bundler.demo.synthetic import make_dataset
from bundler.dryrun.verdict import resources_against_limits
from kernel_src.devices import DeviceSet, resolve_devices
from kernel_src.errors import ModelError
from kernel_src.memory import activation_bytes, weight_bytes
from kernel_src.models import LoadedModel, is_out_of_memory, load_model, tune_layout
from kernel_src.profiler import gpu_memory
from kernel_src.run import run
from kernel_src.spec import InferenceSpec, ModelSpec
from kernel_src.tta import merge
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, TinyModels, predictor, random_images, tiny_spec

CPU = torch.device("cpu")


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


# --- Every replica tested (item 3): a model that fails on replica 1 only ---------------------------


class _FailsAlways(nn.Module):
    """A replica whose every forward fails as a TorchScript traced on another GPU does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cuda:1")


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        out: torch.Tensor = self.inner(x)
        return out


def test_a_model_failing_on_one_replica_only_runs_its_share_on_the_other(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, classifiers, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=8)
    batch = random_images(4, seed=6)
    plain = predictor(spec, dest).predict(batch)

    loads: dict[str, int] = {}
    good: list[_Counting] = []

    def load(m: ModelSpec, *args: Any) -> nn.Module:
        loads[m.name] = loads.get(m.name, 0) + 1
        if m.name != "unet-mnv3":
            return load_model(m, *args)
        if loads[m.name] == 2:  # replica 1
            return _FailsAlways()
        good.append(_Counting(load_model(m, *args)))
        return good[-1]

    monkeypatch.setattr(models_module, "load_model", load)
    two = DeviceSet((CPU, CPU))
    p = predictor(spec, dest, two)
    failures = p.profiler.devices["replica_failures"]
    assert list(failures) == ["unet-mnv3"] and list(failures["unet-mnv3"]) == ["cpu:1"]
    assert "on cpu:1" in failures["unet-mnv3"]["cpu:1"] and "runs on cpu:0" in failures["unet-mnv3"]["cpu:1"]
    good[0].images = 0
    result = p.predict(batch)
    np.testing.assert_allclose(result.probs, plain.probs, atol=1e-5)
    assert good[0].images == 4 * 2  # both devices' shares (2 images x 2 views each) ran on replica 0
    assert [m.spec.name for m in p.segmenters] == ["unet-mnv3", "fpn-mnv3"]


def test_a_model_failing_on_every_replica_is_a_load_error(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, _, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=[], segmenters=segmenters, gating={"mode": "off"}, images_per_call=2)
    monkeypatch.setattr(
        models_module, "load_model", lambda m, *a: _FailsAlways() if m.name == "fpn-mnv3" else load_model(m, *a)
    )
    with pytest.raises(ModelError, match=r"model 'fpn-mnv3': a test forward on cpu:0"):
        predictor(spec, dest, DeviceSet((CPU, CPU)))


def test_each_replica_runs_under_its_own_cuda_device_context() -> None:
    gpus = DeviceSet((torch.device("cuda", 0), torch.device("cuda", 1)))
    context = gpus.context(1)
    assert isinstance(context, torch.cuda.device) and context.idx == 1  # entered only on a GPU machine
    assert [gpus.label(i) for i in range(2)] == ["cuda:0", "cuda:1"]
    assert not isinstance(DeviceSet((CPU, CPU)).context(1), torch.cuda.device)


# --- fp16 overflow found at load on real images (item 4) -------------------------------------------


class _Overflow(nn.Module):
    """Finite in fp32 (logits about 12 x mean pixel - 6); its first convolution passes 65,504 in
    fp16 on any image brighter than about 0.05, never on zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Conv2d(3, 4, 1)
        self.down = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.up.weight.fill_(1e5)
            self.up.bias.zero_()
            self.down.weight.fill_(1e-5)
            self.down.bias.fill_(-6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down(self.up(x))
        return out


def test_a_model_overflowing_in_fp16_on_real_images_runs_in_fp32_said_in_the_profile(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    dest.mkdir()
    overflow = ModelSpec(
        name="seg-overflow", kind="torchscript", file="seg-overflow.pt", input_size=(32, 128),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    torch.jit.script(_Overflow().eval()).save(str(dest / overflow.file))  # type: ignore[no-untyped-call]
    spec = tiny_spec(dest, classifiers=[], segmenters=[overflow], gating={"mode": "off"}, images_per_call=4)
    data = make_dataset(tmp_path / "data", 3, seed=4, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    paths = {"test_dir": data.root / "test_images", "sample_submission": data.root / "sample_submission.csv"}
    fp32 = run(spec, bundle_dir=dest, out_dir=tmp_path / "fp32", progress=False, **paths)
    fp16 = run(
        spec,
        bundle_dir=dest,
        out_dir=tmp_path / "fp16",
        progress=False,
        devices=DeviceSet((CPU,), autocast_dtype=torch.float16),
        **paths,
    )
    check = fp16.profile["devices"]["precision_check"]["seg-overflow"]
    assert check["images"] == 2 and check["nonfinite_in_fp16"] > 0 and check["runs_in"] == "fp32"
    assert fp16.submission_path.read_bytes() == fp32.submission_path.read_bytes()
    assert "precision_check" not in fp32.profile["devices"]  # fp32: nothing to compare


def test_logit_mean_of_plus_and_minus_infinity_is_defined_not_nan() -> None:
    inf = torch.full((1, 1, 2, 2), float("inf"))
    merged = merge([inf, -inf], ("identity", "hflip"), "logit_mean")
    assert not torch.isnan(merged).any() and torch.equal(merged, torch.full_like(merged, 0.5))
    assert torch.equal(merge([inf, torch.zeros_like(inf)], ("identity", "hflip"), "logit_mean"), torch.ones_like(inf))
    finite = torch.tensor([[[[2.0, -3.0]]]])
    np.testing.assert_allclose(
        merge([finite, finite * 0], ("identity", "identity"), "logit_mean").numpy(), torch.sigmoid(finite / 2).numpy()
    )
    nan = torch.full((1, 1, 1, 1), float("nan"))
    assert torch.isnan(merge([nan, inf[..., :1, :1]], ("identity", "identity"), "logit_mean")).all()  # NaN stays NaN


# --- cudnn.benchmark and the memory format measured at load (item 8) -------------------------------


class _LayoutClocked(nn.Module):
    """Advances a fake clock per call: channels_last input costs `cl`, contiguous `plain`; with
    cudnn.benchmark on, `benchmark` is subtracted."""

    def __init__(self, clock: list[float], cl: float, plain: float, benchmark: float) -> None:
        super().__init__()
        self.clock, self.cl, self.plain, self.benchmark = clock, cl, plain, benchmark

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        cost = self.cl if channels_last else self.plain
        self.clock[0] += cost - (self.benchmark if torch.backends.cudnn.benchmark else 0.0)
        return x[:, :1]


def test_the_memory_format_and_cudnn_benchmark_are_chosen_by_timing() -> None:
    spec = InferenceSpec.from_dict(
        {"segmenters": [{"name": "s", "kind": "smp", "arch": "Unet", "encoder": "x", "file": "f"}]}
    )
    model_spec = replace(spec.segmenters[0], input_size=(8, 8))
    tuned = DeviceSet((CPU, CPU), tune_layout=True)
    for cl, plain, benchmark, want in ((1.0, 2.0, 0.5, (True, True)), (3.0, 2.0, 0.0, (False, False))):
        clock = [0.0]
        replicas = (_LayoutClocked(clock, cl, plain, benchmark), _LayoutClocked(clock, cl, plain, benchmark))
        entry = LoadedModel(model_spec, replicas, ("identity",), channels_last=True)
        timed = tune_layout(entry, spec, tuned, 2, lambda clock=clock: clock[0])  # type: ignore[misc]
        assert (entry.channels_last, entry.cudnn_benchmark) == want
        assert set(timed) == {"channels_last", "channels_last+benchmark", "contiguous", "contiguous+benchmark"}
    assert torch.backends.cudnn.benchmark is False  # restored: the choice is applied per call


def test_auto_on_cuda_measures_the_layout_and_no_longer_picks_channels_last_for_fp32() -> None:
    fp32 = resolve_devices("auto", gpus=1, precision="fp32")
    assert not fp32.channels_last and fp32.tune_layout
    assert resolve_devices("auto", gpus=1).channels_last and resolve_devices("auto", gpus=1).tune_layout
    assert not resolve_devices("cuda", gpus=1, memory_format="channels_last").tune_layout  # asked for: kept


def test_a_tuned_layout_is_recorded_and_predicts_the_same(tiny_models: TinyModels) -> None:
    dest, classifiers, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=8)
    batch = random_images(2, seed=7)
    plain = predictor(spec, dest).predict(batch)
    p = predictor(spec, dest, DeviceSet((CPU,), tune_layout=True))
    for name, record in p.profiler.call_sizes.items():
        assert len(record["layout_s"]) == 4 and record["memory_format"] in ("channels_last", "contiguous"), name
        loaded = next(lm for lm in (*p.classifiers, *p.segmenters) if lm.spec.name == name)
        assert (record["memory_format"] == "channels_last") == loaded.channels_last
        assert record["cudnn_benchmark"] == loaded.cudnn_benchmark
    result = p.predict(batch)
    np.testing.assert_allclose(result.probs, plain.probs, atol=1e-4)
    np.testing.assert_array_equal(result.allowed, plain.allowed)


# --- GPU memory: reserved, mem_get_info, and the estimate made at load (item 9) ---------------------


class _FakeCuda:
    """torch.cuda's memory queries for two 16 GB GPUs."""

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def mem_get_info(self, i: int) -> tuple[int, int]:
        return (4 * GB if i == 0 else 10 * GB), 16 * GB

    def max_memory_allocated(self, i: int) -> int:
        return (9 if i == 0 else 3) * GB

    def max_memory_reserved(self, i: int) -> int:
        return (11 if i == 0 else 5) * GB


GB = 10**9


def test_gpu_memory_reports_reserved_and_mem_get_info() -> None:
    memory = gpu_memory("cuda", _FakeCuda())
    assert memory is not None and memory["cuda:0"] == {
        "peak_allocated_bytes": 9 * GB,
        "peak_reserved_bytes": 11 * GB,
        "free_bytes": 4 * GB,
        "total_bytes": 16 * GB,
        "used_bytes": 12 * GB,
    }
    assert gpu_memory("cpu", _FakeCuda()) is None
    # the verdict goes by the reserved peak where the run had a GPU
    machine = MachineConfig(gpu_memory_gb=10.0)
    res = resources_against_limits({"resources": {"gpu_peak_bytes": {"cuda:0": 9 * GB}, "gpu_memory": memory}}, machine)
    assert (
        res["gpu"]["source"] == "reserved" and res["gpu"]["exceeded"] and res["gpu"]["peak_bytes"]["cuda:0"] == 11 * GB
    )


def test_activation_bytes_are_the_live_outputs_peak() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    x = torch.zeros(1, 3, 16, 16)
    with torch.inference_mode():
        peak, exact, out = activation_bytes(model, x)
    per_map = 16 * 16 * 4
    assert exact and out.shape == (1, 2, 16, 16)
    # input + the first conv's output + the ReLU's (both alive when the ReLU returns) at most
    assert 3 * per_map + 8 * per_map <= peak <= 3 * per_map + 2 * 8 * per_map + 2 * per_map
    assert weight_bytes(model) == 4 * (3 * 8 * 9 + 8 + 8 * 2 + 2)


def test_the_run_estimates_its_gpu_peak_and_the_verdict_uses_it_where_no_gpu_ran(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    dest, classifiers, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=0)
    data = make_dataset(tmp_path / "data", 2, seed=5, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    result = run(
        spec,
        bundle_dir=dest,
        test_dir=data.root / "test_images",
        sample_submission=data.root / "sample_submission.csv",
        out_dir=tmp_path / "out",
        progress=False,
        devices=DeviceSet((CPU, CPU)),
    )
    resources = result.profile["resources"]
    assert resources["gpu_peak_bytes"] is None and resources["gpu_memory"] is None  # no GPU ran
    estimate = resources["gpu_estimate"]
    assert set(estimate["models"]) == {"cls-mnv3", "cls-resnet", "unet-mnv3", "fpn-mnv3"}
    for name, m in estimate["models"].items():
        assert m["weights_bytes"] > 0 and m["activation_bytes_per_image"] > 0 and m["exact"], name
    assert estimate["models"]["unet-mnv3"]["images_per_call"] == 2 * 2  # a device's share (2) x 2 views
    peak = estimate["weights_bytes"] + estimate["activation_bytes"] + estimate["batch_bytes"]
    assert estimate["per_device_peak_bytes"] == {"cpu:0": peak, "cpu:1": peak}
    tight = MachineConfig(gpu_memory_gb=peak / 2 / GB)
    res = resources_against_limits(result.profile, tight)
    assert res["gpu"]["source"] == "estimated" and res["gpu"]["exceeded"]
    assert not resources_against_limits(result.profile, MachineConfig(gpu_memory_gb=16.0))["gpu"]["exceeded"]
