"""Call sizes chosen by measurement at model load, a fixed `images_per_call` that skips it, and
out of memory retried at half the call size (down to one image, then the model is dropped).

Choices are checked on the recorded numbers (profile.json `call_sizes`), or with an injected
clock, never on wall time."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kernel_src.models as models_module
from bundler.demo.synthetic import make_dataset
from kernel_src.devices import DeviceSet
from kernel_src.errors import ModelRunError
from kernel_src.models import LoadedModel, call_sizes, load_model, measure_call_size
from kernel_src.run import run
from kernel_src.spec import InferenceSpec, ModelSpec
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, ForwardCalls, TinyModels, predictor, random_images, tiny_spec

CPU = torch.device("cpu")
DEVICES = DeviceSet((CPU,))


class OomAbove(nn.Module):
    """A real model that raises torch's OutOfMemoryError when a call has more than `limit` images
    of non-zero pixels (or of any pixels with `zeros_too`: the load-time test forward and the call
    size measurement feed zeros)."""

    def __init__(self, inner: nn.Module, limit: int, zeros_too: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.zeros_too = zeros_too
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit and (self.zeros_too or bool(x.abs().sum() > 0)):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {x.shape[0]} images")
        self.calls.append(int(x.shape[0]))
        out: torch.Tensor = self.inner(x)
        return out


def test_sizes_double_up_to_the_largest_call() -> None:
    assert call_sizes(1) == [1]
    assert call_sizes(2) == [1, 2]
    assert call_sizes(8) == [1, 2, 4, 8]
    assert call_sizes(12) == [1, 2, 4, 8, 12]


def test_measured_choice_is_a_measured_size_and_the_fastest_per_image(
    tiny_models: TinyModels,
) -> None:
    dest, classifiers, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=0)
    p = predictor(spec, dest)
    assert set(p.profiler.call_sizes) == {m.name for m in (*classifiers, *segmenters)}
    for m in (*classifiers, *segmenters):
        record = p.profiler.call_sizes[m.name]
        measured = {int(n): s for n, s in record["measured_s"].items()}
        largest = spec.batch_size * len(m.tta)
        # 1, 2, ... in order; how far it goes depends on the machine's speed and load (the time budget,
        # tested with a fake clock below), so only the order and the choice are asserted here
        assert measured and list(measured) == call_sizes(largest)[: len(measured)]
        assert all(s > 0 for s in measured.values())
        fastest = min(measured, key=lambda n: (measured[n] / n, n))
        assert record["chosen"] == fastest and record["reduced_by_oom"] == []
        loaded = next(lm for lm in (*p.classifiers, *p.segmenters) if lm.spec.name == m.name)
        assert loaded.images_per_call == fastest


def test_the_choice_stops_growing_at_a_slower_size_and_at_the_budget() -> None:
    class Clocked(nn.Module):
        """Advances a fake clock by `cost(n)` seconds per call of n images."""

        def __init__(self, cost: dict[int, float]) -> None:
            super().__init__()
            self.cost = cost
            self.now = 0.0
            self.sizes: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.now += self.cost[x.shape[0]]
            self.sizes.append(int(x.shape[0]))
            return x[:, :1]

    spec = InferenceSpec.from_dict(
        {"segmenters": [{"name": "s", "kind": "smp", "arch": "Unet", "encoder": "x", "file": "f"}]}
    )
    model_spec = replace(spec.segmenters[0], input_size=(8, 8))

    # per image: 1.0, 0.75, 1.0 -> 4 is slower than 2: stop there, choose 2 (8 never runs)
    slower = Clocked({1: 1.0, 2: 1.5, 4: 4.0, 8: 4.0})
    chosen, measured = measure_call_size(
        LoadedModel(model_spec, (slower,), ("identity",)), spec, DEVICES, 8, lambda: slower.now
    )
    assert (chosen, measured) == (2, {1: 1.0, 2: 1.5, 4: 4.0}) and 8 not in slower.sizes

    # equal per image: keeps growing until measuring took 2 x (one image x 12) = 24 s: 1+2+4+8 twice = 30
    flat = Clocked({n: float(n) for n in (1, 2, 4, 8, 12)})
    chosen, measured = measure_call_size(
        LoadedModel(model_spec, (flat,), ("identity",)), spec, DEVICES, 12, lambda: flat.now
    )
    assert (chosen, sorted(measured)) == (1, [1, 2, 4, 8]) and 12 not in flat.sizes  # a tie goes to the smaller

    # nothing to choose when a call is one image
    assert measure_call_size(LoadedModel(model_spec, (flat,), ("identity",)), spec, DEVICES, 1) == (1, {})


def test_a_fixed_images_per_call_skips_measuring(tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    dest, _, segmenters = tiny_models
    calls = ForwardCalls(monkeypatch).replicas
    spec = tiny_spec(dest, classifiers=[], segmenters=segmenters[:1], gating={"mode": "off"}, images_per_call=3)
    p = predictor(spec, dest)
    assert calls == [[1]]  # the test forward only
    assert p.profiler.call_sizes["unet-mnv3"] == {"chosen": 3, "measured_s": {}, "reduced_by_oom": []}
    p.predict(random_images(4))
    assert calls[0][1:] == [3, 3, 2]  # 4 images x 2 views


def test_results_are_the_same_whatever_the_call_size(tiny_models: TinyModels) -> None:
    dest, classifiers, segmenters = tiny_models
    batch = random_images(4, seed=3)
    results = {}
    for per_call in (0, 1, 3, 8):
        spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=per_call)
        results[per_call] = predictor(spec, dest).predict(batch)
    for per_call in (0, 1, 3):
        np.testing.assert_allclose(results[per_call].probs, results[8].probs, atol=1e-5)
        np.testing.assert_array_equal(results[per_call].allowed, results[8].allowed)


def wrapped(monkeypatch: pytest.MonkeyPatch, name: str, limit: int, zeros_too: bool = False) -> list[OomAbove]:
    """Load `name` wrapped in OomAbove(limit); the wrappers made (one per replica) are returned."""
    made: list[OomAbove] = []

    def load(m: ModelSpec, *args: Any) -> nn.Module:
        model = load_model(m, *args)
        if m.name != name:
            return model
        made.append(OomAbove(model, limit, zeros_too))
        return made[-1]

    monkeypatch.setattr(models_module, "load_model", load)
    return made


def test_out_of_memory_halves_the_call_size_keeps_it_and_predicts_the_same(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, classifiers, segmenters = tiny_models
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters, images_per_call=8)
    batch = random_images(4, seed=4)
    plain = predictor(spec, dest).predict(batch)

    made = wrapped(monkeypatch, "unet-mnv3", limit=3)
    p = predictor(spec, dest)
    first = p.predict(batch)
    np.testing.assert_allclose(first.probs, plain.probs, atol=1e-5)
    np.testing.assert_array_equal(first.allowed, plain.allowed)
    assert p.profiler.call_sizes["unet-mnv3"]["reduced_by_oom"] == [4, 2]  # 8 and 4 did not fit
    assert p.profiler.to_dict()["call_sizes"]["unet-mnv3"]["chosen"] == 8
    made[0].calls.clear()
    second = p.predict(batch)
    assert made[0].calls == [2, 2, 2, 2]  # the smaller size is kept: no new attempt at 8 or 4
    np.testing.assert_allclose(second.probs, plain.probs, atol=1e-5)
    assert p.profiler.call_sizes["unet-mnv3"]["reduced_by_oom"] == [4, 2]


def test_measuring_stops_at_a_size_that_runs_out_of_memory(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, _, segmenters = tiny_models
    wrapped(monkeypatch, "unet-mnv3", limit=3, zeros_too=True)  # 4 x 2 views: sizes 1, 2, 4, 8
    spec = tiny_spec(dest, classifiers=[], segmenters=segmenters[:1], gating={"mode": "off"}, images_per_call=0)
    record = predictor(spec, dest).profiler.call_sizes["unet-mnv3"]
    assert set(record["measured_s"]) <= {"1", "2"} and "1" in record["measured_s"]
    assert record["chosen"] in (1, 2)


def test_a_model_out_of_memory_at_one_image_is_dropped_with_the_failure_recorded(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dest, _, segmenters = tiny_models
    wrapped(monkeypatch, "unet-mnv3", limit=0)
    spec = tiny_spec(dest, classifiers=[], segmenters=segmenters, gating={"mode": "off"}, images_per_call=4)

    p = predictor(spec, dest)
    with pytest.raises(ModelRunError) as info:
        p.predict(random_images(2))
    assert info.value.model == "unet-mnv3" and isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert p.profiler.call_sizes["unet-mnv3"]["reduced_by_oom"] == [2, 1]

    data = make_dataset(tmp_path / "data", 3, seed=2, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    result = run(
        spec,
        bundle_dir=dest,
        test_dir=data.root / "test_images",
        sample_submission=data.root / "sample_submission.csv",
        out_dir=tmp_path / "out",
        progress=False,
    )
    profile = json.loads(result.profile_path.read_text())
    failures = profile["problems"]["model_failures"]
    assert [f["model"] for f in failures] == ["unet-mnv3"] and "out of memory" in failures[0]["error"]
    assert profile["call_sizes"]["unet-mnv3"]["reduced_by_oom"] == [2, 1]
    assert profile["call_sizes"]["fpn-mnv3"]["reduced_by_oom"] == []
    assert profile["images"] == 3 and profile["gating"]["images_segmented"] == 3  # fpn-mnv3 carried on
