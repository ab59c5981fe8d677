"""Every CUDA-only setting is a DeviceSet field a CPU test switches on: resolve_devices' per-device
"auto" choices (CUDA given as a GPU count), each switch on CPU, bad values named, and pinned
memory falling back to plain copies where torch cannot pin, with the results unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundler.demo.synthetic import make_dataset
from kernel_src.devices import DeviceSet, resolve_devices
from kernel_src.errors import SpecError
from kernel_src.models import load_models
from kernel_src.predict import Predictor
from kernel_src.profiler import Profiler
from kernel_src.run import run
from kernel_src.spec import InferenceSpec
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, tiny_spec

CPU = torch.device("cpu")


def test_auto_on_a_machine_without_gpu_is_one_plain_fp32_cpu() -> None:
    for gpus in (0, None):  # None: asked of torch (this machine may have none)
        if gpus is None and torch.cuda.is_available():
            continue
        d = resolve_devices("auto", gpus=gpus)
        assert d == DeviceSet((CPU,), channels_last=False, autocast_dtype=None, pin_memory=False)
        assert (d.device_type, d.cuda, d.replicas, d.describe()) == ("cpu", False, 1, "cpu")
        assert d.to_dict() == {
            "kind": "cpu",
            "replicas": 1,
            "memory_format": "contiguous",
            "precision": "fp32",
            "pin_memory": False,
            "tune_layout": False,
        }


def test_auto_on_cuda_keeps_channels_last_fp16_pinned_and_every_gpu() -> None:
    d = resolve_devices("auto", gpus=2)
    assert d.devices == (torch.device("cuda", 0), torch.device("cuda", 1))
    assert d.channels_last and d.autocast_dtype == torch.float16 and d.pin_memory and d.cuda
    assert d.to_dict() == {
        "kind": "cuda",
        "replicas": 2,
        "memory_format": "channels_last",
        "precision": "fp16",
        "pin_memory": True,
        "tune_layout": True,  # the memory format and cudnn.benchmark are measured per model at load
    }
    assert resolve_devices("cuda", gpus=2, replicas=1).devices == (torch.device("cuda", 0),)
    assert resolve_devices("cpu", gpus=2) == resolve_devices("auto", gpus=0)  # "cpu" ignores the GPUs
    plain = resolve_devices("cuda", gpus=1, memory_format="contiguous", precision="fp32")
    assert not plain.channels_last and plain.autocast_dtype is None and plain.pin_memory
    assert resolve_devices("auto", gpus=1, precision="bf16").autocast_dtype == torch.bfloat16


def test_every_cuda_setting_can_be_switched_on_for_cpu() -> None:
    d = resolve_devices("cpu", memory_format="channels_last", precision="bf16", replicas=2)
    assert d.devices == (CPU, CPU) and d.channels_last and d.autocast_dtype == torch.bfloat16
    assert d.describe() == "cpu x2" and d.split(5) == [(0, 0, 3), (1, 3, 5)]
    assert resolve_devices("cpu", precision="fp16").autocast_dtype == torch.float16
    pinned = DeviceSet((CPU,), pin_memory=True)
    assert pinned.to_dict()["pin_memory"] is True


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_runs_the_forward_in_the_chosen_dtype(dtype: torch.dtype) -> None:
    layer = torch.nn.Linear(8, 4)
    x = torch.rand(2, 8)
    with DeviceSet((CPU,), autocast_dtype=dtype).autocast():
        assert layer(x).dtype == dtype
    with DeviceSet((CPU,)).autocast():
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "key", "words"),
    [
        ({"device": "tpu"}, "device", "'tpu' must be one of"),
        ({"device": "cuda", "gpus": 0}, "device", "no GPU is visible"),
        ({"device": "cpu", "memory_format": "nhwc"}, "memory_format", "'nhwc' must be one of"),
        ({"device": "cpu", "precision": "half"}, "precision", "'half' must be one of"),
        ({"device": "cpu", "replicas": 0}, "replicas", "at least 1"),
        ({"device": "cuda", "gpus": 2, "replicas": 3}, "replicas", "only 2 GPU"),
    ],
)
def test_bad_values_are_named(kwargs: dict[str, object], key: str, words: str) -> None:
    device = str(kwargs.pop("device"))
    with pytest.raises(SpecError, match=words) as info:
        resolve_devices(device, **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_device_set_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        DeviceSet(())
    with pytest.raises(ValueError, match="cannot mix"):
        DeviceSet((CPU, torch.device("cuda", 0)))
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        DeviceSet((CPU,), autocast_dtype=torch.float64)


@pytest.mark.parametrize(
    ("old", "new"), [({"fp16": True}, "use precision"), ({"cpu_micro_batch": 2}, "use images_per_call")]
)
def test_renamed_spec_settings_say_what_replaces_them(tmp_path: Path, old: dict[str, object], new: str) -> None:
    data = tiny_spec(tmp_path).to_dict()
    data.update(old)
    with pytest.raises(SpecError, match=new) as info:
        InferenceSpec.from_dict(data)
    assert info.value.key == next(iter(old))


def test_pinned_upload_falls_back_once_where_pinning_is_impossible_and_predicts_the_same(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, images_per_call=4)  # fixed: both runs make the same calls
    batch = np.random.default_rng(0).integers(0, 256, (3, IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    results = {}
    profilers = {}
    for pin in (False, True):
        devices = DeviceSet((CPU, CPU), pin_memory=pin)
        profiler = Profiler(0.0)
        profiler.devices = devices.to_dict()
        classifiers, segmenters = load_models(spec, tmp_path, devices, profiler)
        predictor = Predictor(spec, classifiers, segmenters, devices, profiler)
        results[pin] = [predictor.predict(batch), predictor.predict(batch)]  # the second batch: no new note
        profilers[pin] = profiler
    np.testing.assert_array_equal(results[True][0].probs, results[False][0].probs)
    np.testing.assert_array_equal(results[True][1].probs, results[False][1].probs)
    assert "pin_memory_fallback" not in profilers[False].devices
    if torch.cuda.is_available():  # pinning works here: no fallback
        assert "pin_memory_fallback" not in profilers[True].devices
    else:
        note = profilers[True].devices["pin_memory_fallback"]
        assert note.startswith("plain copies: pinning failed") and "\n" not in note


def test_run_takes_a_device_set_and_records_it_in_the_profile(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path / "bundle")
    data = make_dataset(tmp_path / "data", 3, seed=1, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    # channels_last end to end is the test matrix's (tests that run every layout through run())
    devices = DeviceSet((CPU, CPU), autocast_dtype=torch.bfloat16, pin_memory=True)
    result = run(
        spec,
        bundle_dir=tmp_path / "bundle",
        test_dir=data.root / "test_images",
        sample_submission=data.root / "sample_submission.csv",
        out_dir=tmp_path / "out",
        progress=False,
        devices=devices,
    )
    profile = json.loads(result.profile_path.read_text())
    recorded = dict(profile["devices"])
    recorded.pop("pin_memory_fallback", None)
    checked = recorded.pop("precision_check")  # bf16 against fp32 on two real test images per model
    assert set(checked) == {m.name for m in (*spec.classifiers, *spec.segmenters)}
    assert all(c["images"] == 2 and c["runs_in"] == "bf16" for c in checked.values())
    assert (
        recorded
        == devices.to_dict()
        == {
            "kind": "cpu",
            "replicas": 2,
            "memory_format": "contiguous",
            "precision": "bf16",
            "pin_memory": True,
            "tune_layout": False,
        }
    )
    assert profile["device"] == "cpu x2" and profile["images"] == 3
