"""`per_class` gating spends no segmentation forward on an image none of whose classes passes
(issue 11, item 5), counted with forward hooks on the segmenter's replicas; the passing images'
probabilities are those of the ungated run, and the gated-out classes' masks stay empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kernel_src.devices import DeviceSet
from kernel_src.models import load_models
from kernel_src.predict import BatchResult, Predictor
from kernel_src.profiler import Profiler
from kernel_src.run import run
from tests.tiny import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    TinyModels,
    make_brightness_classifier,
    tiny_spec,
    write_image,
    write_sample,
)

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
CPU = torch.device("cpu")
# The brightness classifier's logit is 200 * (mean pixel - 0.5), clamped to +-20, for every class.
# Level 131 (0.514: logit 2.7, probability 0.94) passes thresholds 0.5 but not 0.99; level 250
# passes both; level 30 passes neither.
THRESHOLDS = [0.5, 0.99, 0.5, 0.99]
LEVELS = {"dark1.png": 30, "some.png": 131, "bright1.png": 250, "dark2.png": 30, "bright2.png": 250}
ALLOWED = {
    "dark1.png": [False] * 4,
    "some.png": [True, False, True, False],
    "bright1.png": [True] * 4,
    "dark2.png": [False] * 4,
    "bright2.png": [True] * 4,
}


@pytest.fixture(scope="module")
def bundle(tiny_models: TinyModels) -> dict[str, Any]:
    dest, _, segmenters = tiny_models
    return {"dir": dest, "unet": segmenters[0], "bright": make_brightness_classifier(dest)}


def _counter(seen: list[int]) -> Callable[[nn.Module, tuple[torch.Tensor, ...], object], None]:
    """A forward hook appending the number of inputs of each call to `seen`."""

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _o: object) -> None:
        seen.append(int(inputs[0].shape[0]))

    return hook


def grey_images() -> np.ndarray:
    return np.stack([np.full((H, W, 3), level, np.uint8) for level in LEVELS.values()])


def count_forwards(predictor: Predictor) -> list[int]:
    """Images (stacked views included) each forward of any segmenter replica receives from now on."""
    seen: list[int] = []
    for lm in predictor.segmenters:
        for replica in lm.replicas:
            replica.register_forward_hook(_counter(seen))
    return seen


def predict(bundle: dict[str, Any], mode: str) -> tuple[BatchResult, list[int]]:
    spec = tiny_spec(
        bundle["dir"],
        classifiers=[bundle["bright"]],
        segmenters=[bundle["unet"]],  # TTA identity + hflip
        gating={"mode": mode, "thresholds": THRESHOLDS},
    )
    devices = DeviceSet((CPU, CPU))  # two replicas: the hooks see both
    profiler = Profiler(0.0)
    classifiers, segmenters = load_models(spec, bundle["dir"], devices, profiler)
    predictor = Predictor(spec, classifiers, segmenters, devices, profiler)
    seen = count_forwards(predictor)
    return predictor.predict(grey_images()), seen


def test_per_class_gating_skips_the_forward_for_images_with_no_class_passing(bundle: dict[str, Any]) -> None:
    gated, seen = predict(bundle, "per_class")
    assert gated.allowed.tolist() == list(ALLOWED.values())
    assert sum(seen) == 3 * 2  # 3 images with a passing class x 2 TTA views; the 2 dark ones never
    assert gated.segmented.tolist() == [False, True, True, False, True]
    assert gated.images_skipped == 2 and gated.pairs_gated_out == 2 * 4 + 2
    assert not gated.probs[[0, 3]].any()
    ungated, seen_all = predict(bundle, "off")
    assert sum(seen_all) == 5 * 2
    passing = [1, 2, 4]
    np.testing.assert_allclose(gated.probs[passing], ungated.probs[passing], atol=1e-5)


def test_per_image_gating_still_skips_the_same_images(bundle: dict[str, Any]) -> None:
    result, seen = predict(bundle, "per_image")
    assert sum(seen) == 3 * 2 and result.images_skipped == 2
    assert result.allowed.tolist() == [[any(a)] * 4 for a in ALLOWED.values()]


def test_run_counts_per_class_skips_and_leaves_gated_out_classes_empty(
    bundle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    init = Predictor.__init__

    def hooked(self: Predictor, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)  # models loaded and measured: only the run's forwards count
        for lm in self.segmenters:
            for replica in lm.replicas:
                replica.register_forward_hook(_counter(seen))

    monkeypatch.setattr(Predictor, "__init__", hooked)
    for name, level in LEVELS.items():
        write_image(tmp_path / "test" / name, np.full((H, W, 3), level, np.uint8))
    sample = write_sample(tmp_path / "sample.csv", list(LEVELS))
    spec = tiny_spec(
        bundle["dir"],
        classifiers=[bundle["bright"]],
        segmenters=[bundle["unet"]],
        gating={"mode": "per_class", "thresholds": THRESHOLDS},
        postprocess={"threshold": 0.0},  # every pixel of an allowed class is in its mask
        batch_size=2,
    )
    result = run(spec, bundle_dir=bundle["dir"], test_dir=tmp_path / "test", sample_submission=sample,
                 out_dir=tmp_path / "out", progress=False)  # fmt: skip
    assert sum(seen) == 3 * 2
    assert result.profile["gating"] == {
        "mode": "per_class",
        "images_segmented": 3,
        "images_skipped": 2,
        "pairs_gated_out": 10,
    }
    table = pd.read_csv(result.submission_path, dtype=str, keep_default_na=False)
    for key, rle in table.itertuples(index=False):
        image_id, _, class_id = key.rpartition("_")
        expected = f"1 {H * W}" if ALLOWED[image_id][int(class_id) - 1] else ""
        assert rle == expected, key
