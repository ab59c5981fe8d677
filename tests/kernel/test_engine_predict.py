"""The predictor against an independent reference, device splitting, and streaming memory."""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundler.demo.synthetic import make_dataset
from kernel_src.devices import DeviceSet
from kernel_src.models import load_model
from kernel_src.predict import BatchResult, Predictor
from kernel_src.run import run
from kernel_src.spec import InferenceSpec, ModelSpec
from tests.tiny import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    ForwardCalls,
    TinyModels,
    make_torchscript_segmenter,
    predictor,
    random_images,
    tiny_spec,
)

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle(tiny_models: TinyModels) -> TinyModels:
    dest, classifiers, segmenters = tiny_models
    ts = make_torchscript_segmenter(dest, input_size=None)  # at the image size
    return TinyModels(dest, classifiers, [*segmenters, ts])


def reference(spec: InferenceSpec, bundle_dir: Path, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(classifier probabilities [N, C], ensemble probabilities [N, C, H, W]) computed image by
    image and view by view, without the engine's batching, stacking or merging."""
    flips = {"identity": [], "hflip": [3], "vflip": [2], "hvflip": [2, 3]}

    def prepare(x: torch.Tensor, m: ModelSpec) -> torch.Tensor:
        if m.input_size is not None:
            x = F.interpolate(x, size=m.input_size, mode="bilinear", align_corners=False)
        return (x - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1)

    def flip(t: torch.Tensor, view: str) -> torch.Tensor:
        return torch.flip(t, flips[view]) if flips[view] else t

    cls_probs, seg_probs = [], []
    with torch.inference_mode():
        classifiers = [(m, load_model(m, bundle_dir, spec.num_classes, CPU)) for m in spec.classifiers]
        segmenters = [(m, load_model(m, bundle_dir, spec.num_classes, CPU)) for m in spec.segmenters]
        for image in batch:
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            total_w = sum(m.weight for m, _ in classifiers)
            cls = sum(
                m.weight / total_w * torch.stack([torch.sigmoid(model(flip(prepare(x, m), v))) for v in m.tta]).mean(0)
                for m, model in classifiers
            )
            cls_probs.append(cls[0] if isinstance(cls, torch.Tensor) else torch.zeros(spec.num_classes))
            total_w = sum(m.weight for m, _ in segmenters)
            seg = torch.zeros(1, spec.num_classes, H, W)
            for m, model in segmenters:
                views = [flip(torch.sigmoid(model(flip(prepare(x, m), v))), v) for v in m.tta]
                probs = F.interpolate(torch.stack(views).mean(0), size=(H, W), mode="bilinear", align_corners=False)
                seg += m.weight / total_w * probs
            seg_probs.append(seg[0])
    return torch.stack(cls_probs), torch.stack(seg_probs)


def test_ensemble_matches_a_view_by_view_reference(bundle: TinyModels) -> None:
    dest, classifiers, segmenters = bundle
    every_view = replace(segmenters[1], tta=("identity", "hflip", "vflip", "hvflip"))
    spec = tiny_spec(
        dest,
        classifiers=[replace(classifiers[0], tta=("identity", "vflip")), classifiers[1]],
        segmenters=[segmenters[0], every_view, segmenters[2]],
        gating={"mode": "per_class", "thresholds": [0.3, 0.5, 0.5, 0.7]},
    )
    batch = random_images(3)
    result = predictor(spec, dest, DeviceSet((CPU,))).predict(batch)
    cls_ref, seg_ref = reference(spec, dest, batch)
    np.testing.assert_allclose(result.probs, seg_ref.numpy(), atol=2e-5)
    np.testing.assert_array_equal(result.allowed, (cls_ref >= torch.tensor([0.3, 0.5, 0.5, 0.7])).numpy())
    assert result.segmented.all() and not result.nonfinite.any()
    assert result.pairs_gated_out == int((~result.allowed).sum())


def test_two_devices_split_the_batch_and_agree_with_one(bundle: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    dest, classifiers, segmenters = bundle
    spec = tiny_spec(  # images_per_call 6: the 3 x 2 views of the larger chunk in one call, nothing measured
        dest, classifiers=classifiers[:1], segmenters=segmenters[:1], gating={"mode": "off"}, images_per_call=6
    )
    per_replica = ForwardCalls(monkeypatch).replicas
    batch = random_images(5, seed=1)
    two = predictor(spec, dest, DeviceSet((CPU, CPU))).predict(batch)
    assert len(per_replica) == 2  # the segmenter on 2 devices (gating off: the classifier is not loaded)
    seg_a, seg_b = per_replica
    assert seg_a == [1, 3 * 2] and seg_b == [1, 2 * 2]  # each replica's test forward; then 3 + 2 images x 2 views
    one = predictor(spec, dest, DeviceSet((CPU,))).predict(batch)
    np.testing.assert_allclose(two.probs, one.probs, atol=1e-6)


def test_device_split_is_even_and_complete() -> None:
    devices = DeviceSet((CPU, CPU))
    assert devices.split(5) == [(0, 0, 3), (1, 3, 5)]
    assert devices.split(1) == [(0, 0, 1)]
    assert devices.split(0) == []
    assert DeviceSet((CPU,)).split(4) == [(0, 0, 4)]


def test_streaming_keeps_at_most_one_earlier_probability_map(
    bundle: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, _, segmenters = bundle
    spec = tiny_spec(dest, classifiers=[], segmenters=[segmenters[2]], batch_size=2, postprocess={"threshold": 1.0})
    alive_at_each_batch: list[int] = []
    refs: list[weakref.ref[np.ndarray]] = []
    original = Predictor.predict

    def tracking(self: Predictor, batch: np.ndarray) -> BatchResult:
        gc.collect()
        alive_at_each_batch.append(sum(r() is not None for r in refs))
        result = original(self, batch)
        refs.append(weakref.ref(result.probs))
        return result

    monkeypatch.setattr(Predictor, "predict", tracking)
    peaks = {}
    for n in (4, 20):
        data = make_dataset(tmp_path / f"data{n}", n, seed=n, height=H, width=W)
        tracemalloc.start()
        run(spec, bundle_dir=dest, test_dir=data.images_dir, sample_submission=data.sample_submission,
            out_dir=tmp_path / f"out{n}", progress=False)  # fmt: skip
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert len(alive_at_each_batch) == 2 + 10
    # at most the previous batch's probabilities (post-processed in the worker while this batch is
    # predicted), never more: the memory is bounded whatever the image count
    assert max(alive_at_each_batch) <= 1
    # Python-side memory (numpy, strings, lists): 16 more images must cost less than half a
    # [4, 64, 256] bool mask each (measured on the dev machine: about 100 KB more in all).
    assert peaks[20] - peaks[4] < 16 * (4 * H * W) // 2


@pytest.mark.parametrize("micro", [1, 3])
def test_call_sizes_split_the_stacked_views_and_agree_with_one_forward(
    bundle: TinyModels, monkeypatch: pytest.MonkeyPatch, micro: int
) -> None:
    dest, _, segmenters = bundle
    two_views = replace(segmenters[0], tta=("identity", "hflip"))
    calls = ForwardCalls(monkeypatch).replicas
    batch = random_images(4, seed=2)
    spec = tiny_spec(dest, classifiers=[], segmenters=[two_views], gating={"mode": "off"}, images_per_call=micro)
    split = predictor(spec, dest, DeviceSet((CPU,))).predict(batch)
    assert calls[0][1:] == [micro] * (8 // micro) + ([8 % micro] if 8 % micro else [])  # after the test forward
    whole = predictor(replace(spec, images_per_call=8), dest, DeviceSet((CPU,))).predict(batch)
    assert calls[1][1:] == [8]  # 4 images x 2 views in one forward
    np.testing.assert_allclose(split.probs, whole.probs, atol=1e-5)


def test_every_model_is_queued_before_any_result_is_read_back(
    bundle: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No barrier per model: on CUDA a `.cpu()` waits for the device, so none may come between
    two models' forwards (the classifiers', then the segmenters')."""
    dest, classifiers, segmenters = bundle
    spec = tiny_spec(dest, classifiers=classifiers, segmenters=segmenters[:2], gating={"mode": "off"})
    spec = replace(spec, gating=replace(spec.gating, mode="per_image", thresholds=(0.0,) * 4))
    engine = predictor(spec, dest)
    order: list[str] = []
    for lm in (*engine.classifiers, *engine.segmenters):
        for replica in lm.replicas:
            replica.register_forward_hook(lambda *_args, name=lm.spec.name: order.append(f"forward {name}"))
    to_cpu = torch.Tensor.cpu

    def reading(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        order.append("read")
        return to_cpu(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "cpu", reading)
    engine.predict(random_images(3, seed=4))
    forwards = [i for i, what in enumerate(order) if what.startswith("forward")]
    cls_names = {f"forward {m.name}" for m in classifiers}
    last_cls = max(i for i in forwards if order[i] in cls_names)
    first_seg = min(i for i in forwards if order[i] not in cls_names)
    assert "read" not in order[forwards[0] : last_cls], order  # classifiers: no read between them
    assert "read" not in order[first_seg : forwards[-1]], order  # segmenters: none either
