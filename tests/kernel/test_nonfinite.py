"""NaN and Inf in model outputs (issue 11, item 4), per model and per image.

A NaN from one model for one image leaves that model out for that image only (the others'
weights renormalised); empty masks only when every segmenter gave NaN; +/-Inf logits are
saturated probabilities; a classifier's NaN leaves the gate to the other classifiers, and with
none left the image is segmented ungated. Each case is checked against the single models'
own outputs, and counted in profile.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from kernel_src.devices import DeviceSet
from kernel_src.models import load_models
from kernel_src.predict import BatchResult, Predictor
from kernel_src.profiler import Profiler
from kernel_src.run import run
from kernel_src.spec import InferenceSpec, ModelSpec
from tests.tiny import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    make_brightness_classifier,
    make_inf_segmenter,
    make_nan_classifier,
    make_nan_segmenter,
    make_torchscript_segmenter,
    tiny_spec,
    write_image,
    write_sample,
)

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
FULL = f"1 {H * W}"
CPU = DeviceSet((torch.device("cpu"),))
# Mean pixel levels: NaN models fire above 0.9 (230/255), the brightness classifier and the Inf
# segmenter above 0.5 (128/255).
BRIGHT, MID, DARK = 250, 180, 30


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dest = tmp_path_factory.mktemp("bundle")
    return {
        "dir": dest,
        "net": make_torchscript_segmenter(dest, name="seg-net", input_size=None),  # a real conv net, finite
        "nan": make_nan_segmenter(dest, name="seg-nan", value=4.0, weight=2.0),
        "nan2": make_nan_segmenter(dest, name="seg-nan2", value=-1.0),
        "inf": make_inf_segmenter(dest),
        "bright": make_brightness_classifier(dest),
        "cls_nan": make_nan_classifier(dest, value=-20.0),
    }


def batch(*levels: int) -> np.ndarray:
    """Images of the given grey levels, with a little seeded noise so the conv net's output varies."""
    noise = np.random.default_rng(0).integers(-3, 4, (len(levels), H, W, 3))
    return np.clip(np.array(levels).reshape(-1, 1, 1, 1) + noise, 0, 255).astype(np.uint8)


def predict(bundle: dict[str, Any], images: np.ndarray, **overrides: Any) -> BatchResult:
    spec = spec_of(bundle, **overrides)
    profiler = Profiler(0.0)
    classifiers, segmenters = load_models(spec, bundle["dir"], CPU, profiler)
    return Predictor(spec, classifiers, segmenters, CPU, profiler).predict(images)


def spec_of(bundle: dict[str, Any], **overrides: Any) -> InferenceSpec:
    data: dict[str, Any] = {"classifiers": [], "gating": {"mode": "off"}}
    data.update(overrides)
    return tiny_spec(bundle["dir"], **data)


def alone(bundle: dict[str, Any], model: ModelSpec, images: np.ndarray) -> np.ndarray:
    """One segmenter's own probabilities, ungated."""
    return predict(bundle, images, segmenters=[model]).probs


def test_one_segmenters_nan_leaves_the_image_to_the_others(bundle: dict[str, Any]) -> None:
    images = batch(BRIGHT, MID, BRIGHT, DARK)
    result = predict(bundle, images, segmenters=[bundle["nan"], bundle["net"]])
    net = alone(bundle, bundle["net"], images)
    # bright images: the NaN model is left out, the other model alone (its weight renormalised to 1)
    np.testing.assert_allclose(result.probs[[0, 2]], net[[0, 2]], atol=1e-6)
    # the others: the weighted mean of both (seg-nan weight 2 gives sigmoid(4) everywhere, seg-net weight 1)
    both = (2.0 * torch.sigmoid(torch.tensor(4.0)).item() + net[[1, 3]]) / 3.0
    np.testing.assert_allclose(result.probs[[1, 3]], both, atol=1e-6)
    assert result.nan_segmenters == {0: ["seg-nan"], 2: ["seg-nan"]}
    assert not result.nonfinite.any() and result.segmented.all()


def test_every_segmenters_nan_gives_that_image_empty_masks_only(bundle: dict[str, Any]) -> None:
    images = batch(MID, BRIGHT, DARK)
    result = predict(bundle, images, segmenters=[bundle["nan"], bundle["nan2"]])
    assert result.nonfinite.tolist() == [False, True, False]
    assert result.nan_segmenters == {1: ["seg-nan", "seg-nan2"]}
    assert not result.probs[1].any()
    expected = (2.0 * torch.sigmoid(torch.tensor(4.0)) + torch.sigmoid(torch.tensor(-1.0))).item() / 3.0
    np.testing.assert_allclose(result.probs[[0, 2]], expected, atol=1e-6)


def test_inf_logits_are_saturated_probabilities_not_failures(bundle: dict[str, Any]) -> None:
    images = batch(MID, DARK)  # +inf for the mid-grey image, -inf for the dark one
    result = predict(bundle, images, segmenters=[bundle["inf"], bundle["net"]])
    net = alone(bundle, bundle["net"], images)
    np.testing.assert_allclose(result.probs[0], (1.0 + net[0]) / 2.0, atol=1e-6)
    np.testing.assert_allclose(result.probs[1], net[1] / 2.0, atol=1e-6)
    assert not result.nonfinite.any() and not result.nan_segmenters
    only = predict(bundle, images, segmenters=[bundle["inf"]])
    assert (only.probs[0] == 1.0).all() and (only.probs[1] == 0.0).all()


def test_a_classifiers_nan_leaves_the_gate_to_the_other_classifiers(bundle: dict[str, Any]) -> None:
    # cls-nan says "no" (-20) to every class, NaN on bright images; cls-bright says "yes" above mid-grey.
    images = batch(BRIGHT, MID, DARK)
    result = predict(
        bundle,
        images,
        classifiers=[bundle["bright"], bundle["cls_nan"]],
        segmenters=[bundle["net"]],
        gating={"mode": "per_class", "thresholds": 0.6},
    )
    # bright: cls-nan left out, cls-bright alone passes every class; mid: (1 + 0) / 2 < 0.6; dark: 0
    assert result.allowed.tolist() == [[True] * 4, [False] * 4, [False] * 4]
    assert result.nan_classifiers == {0: ["cls-nan"]} and not result.ungated.any()
    assert result.segmented.tolist() == [True, False, False] and result.images_skipped == 2
    np.testing.assert_allclose(result.probs[0], alone(bundle, bundle["net"], images[:1])[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["per_class", "per_image"])
def test_with_every_classifier_nan_the_image_is_segmented_ungated(bundle: dict[str, Any], mode: str) -> None:
    images = batch(DARK, BRIGHT, MID)
    result = predict(
        bundle,
        images,
        classifiers=[bundle["cls_nan"]],
        segmenters=[bundle["net"]],
        gating={"mode": mode, "thresholds": 0.5},
    )
    assert result.ungated.tolist() == [False, True, False]
    assert result.allowed.tolist() == [[False] * 4, [True] * 4, [False] * 4]
    assert result.segmented.tolist() == [False, True, False] and not result.nonfinite.any()
    assert result.nan_classifiers == {1: ["cls-nan"]}


def masks(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, rle in pd.read_csv(path, dtype=str, keep_default_na=False).itertuples(index=False):
        out.setdefault(key.rpartition("_")[0], []).append(rle)
    return out


def go(bundle: dict[str, Any], tmp_path: Path, levels: dict[str, int], **overrides: Any) -> Any:
    for name, level in levels.items():
        write_image(tmp_path / "test" / name, batch(level)[0])
    sample = write_sample(tmp_path / "sample.csv", list(levels))
    spec = spec_of(bundle, batch_size=2, postprocess={"threshold": 0.5}, **overrides)
    return run(spec, bundle_dir=bundle["dir"], test_dir=tmp_path / "test", sample_submission=sample,
               out_dir=tmp_path / "out", progress=False)  # fmt: skip


def test_profile_counts_dropped_models_per_image(
    bundle: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both NaN models are left out for the bright images, which still get the other models'
    full masks (the Inf segmenter's +inf); nothing gets empty masks."""
    levels = {"b1.png": BRIGHT, "m.png": MID, "b2.png": BRIGHT, "d.png": DARK}
    result = go(
        bundle,
        tmp_path,
        levels,
        classifiers=[bundle["bright"], bundle["cls_nan"]],
        segmenters=[bundle["nan"], bundle["inf"]],
        gating={"mode": "per_class", "thresholds": 0.6},
    )
    assert masks(result.submission_path) == {"b1.png": [FULL] * 4, "m.png": [""] * 4, "b2.png": [FULL] * 4,
                                             "d.png": [""] * 4}  # fmt: skip
    profile = result.profile
    assert profile["nonfinite_outputs"] == {
        "models": {"cls-nan": 2, "seg-nan": 2},
        "segmenter_dropped": 2,
        "classifier_dropped": 2,
        "ungated": 0,
    }
    assert profile["problems"]["nonfinite"] == [] and profile["counts"]["nonfinite"] == 0
    assert profile["gating"]["images_segmented"] == 2 and profile["gating"]["images_skipped"] == 2
    err = capsys.readouterr().err
    assert "b1.png: NaN in the output of seg-nan -> left out for this image" in err
    assert "b2.png: NaN in the output of cls-nan -> left out for this image" in err


def test_profile_counts_ungated_images_and_images_every_segmenter_failed(
    bundle: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    levels = {"d.png": DARK, "b.png": BRIGHT, "m.png": MID}
    result = go(
        bundle,
        tmp_path,
        levels,
        classifiers=[bundle["cls_nan"]],
        segmenters=[bundle["nan"], bundle["nan2"]],
        gating={"mode": "per_image", "thresholds": 0.5},
    )
    assert masks(result.submission_path) == {name: [""] * 4 for name in levels}
    profile = result.profile
    assert profile["nonfinite_outputs"] == {
        "models": {"cls-nan": 1, "seg-nan": 1, "seg-nan2": 1},
        "segmenter_dropped": 0,
        "classifier_dropped": 0,
        "ungated": 1,
    }
    assert profile["problems"]["nonfinite"] == ["b.png"] and profile["counts"]["nonfinite"] == 1
    assert profile["gating"]["images_segmented"] == 1 and profile["gating"]["images_skipped"] == 2
    err = capsys.readouterr().err
    assert "b.png: NaN in the output of cls-nan -> not gated" in err
    assert "b.png: NaN in the output of seg-nan, seg-nan2 -> empty masks" in err
