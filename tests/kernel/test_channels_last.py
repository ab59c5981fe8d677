"""The channels_last first-batch crash (issue 11): smp answers a channels_last input with a
channels_last output, which cannot be `view`ed flat; the merge of TTA views and the NaN check
did exactly that, outside the forward's `try`, so the run cell died on the first batch on CUDA.

Reproduced on CPU with the layout switched on through `DeviceSet(channels_last=True)`, at the
Predictor level and through the real `run()` pipeline, against the NCHW result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kernel_src.devices import DeviceSet
from kernel_src.models import load_model
from kernel_src.rle import decode
from kernel_src.run import run
from kernel_src.tta import merge_views, stack_views
from tests.tiny import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    TinyModels,
    predictor,
    random_images,
    tiny_spec,
    write_image,
    write_sample,
)

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
CPU = torch.device("cpu")
NCHW = DeviceSet((CPU,))
CHANNELS_LAST = DeviceSet((CPU,), channels_last=True)


def test_an_smp_model_answers_channels_last_with_an_output_that_cannot_be_viewed_flat(
    tiny_models: TinyModels,
) -> None:
    """The trap itself, on the same smp model the pipeline tests use: if this ever stops holding,
    the tests below no longer exercise the crash."""
    model = load_model(tiny_models.segmenters[0], tiny_models.dir, 4, CPU).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 32, 128).contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        out.view(2, 1, -1)


def test_tta_merge_accepts_channels_last_outputs() -> None:
    views = ("identity", "hflip", "vflip", "hvflip")
    x = torch.randn(3, 4, 8, 16)
    stacked = stack_views(x, views)
    packed = stacked.contiguous(memory_format=torch.channels_last)
    assert not packed.is_contiguous()
    torch.testing.assert_close(merge_views(packed, views, 3), merge_views(stacked, views, 3), rtol=0, atol=0)
    torch.testing.assert_close(merge_views(stack_views(x, views), views, 3), x)  # every view undone


@pytest.mark.parametrize("gating", ["off", "per_class", "per_image"])
def test_predictor_in_channels_last_matches_nchw(tiny_models: TinyModels, gating: str) -> None:
    """Both smp segmenters (2 TTA views each) and both timm classifiers, the batch of 3 images
    in one call: the layout changes nothing but the memory order."""
    spec = tiny_spec(
        tiny_models.dir,
        classifiers=tiny_models.classifiers,
        segmenters=tiny_models.segmenters,
        gating={"mode": gating, "thresholds": [0.3, 0.5, 0.5, 0.7]},
        images_per_call=8,
    )
    batch = random_images(3, seed=7)
    packed = predictor(spec, tiny_models.dir, CHANNELS_LAST).predict(batch)
    plain = predictor(spec, tiny_models.dir, NCHW).predict(batch)
    np.testing.assert_allclose(packed.probs, plain.probs, atol=1e-5)
    np.testing.assert_array_equal(packed.allowed, plain.allowed)
    np.testing.assert_array_equal(packed.segmented, plain.segmented)
    assert not packed.nonfinite.any() and not packed.nan_segmenters and not packed.nan_classifiers


def test_run_in_channels_last_completes_and_matches_nchw(tiny_models: TinyModels, tmp_path: Path) -> None:
    """The issue's reproduction through the real pipeline: before the fix the first batch raised
    "view size is not compatible" out of `run()`."""
    ids = [f"{i}.png" for i in range(5)]
    for i, image in zip(ids, random_images(5, seed=11), strict=True):
        write_image(tmp_path / "test" / i, image)
    sample = write_sample(tmp_path / "sample.csv", ids)
    spec = tiny_spec(
        tiny_models.dir,
        classifiers=tiny_models.classifiers,
        segmenters=tiny_models.segmenters,
        gating={"mode": "per_class", "thresholds": 0.3},
        batch_size=3,
        postprocess={"threshold": 0.5},
    )

    def go(devices: DeviceSet, out: str) -> list[str]:
        result = run(spec, bundle_dir=tiny_models.dir, test_dir=tmp_path / "test", sample_submission=sample,
                     out_dir=tmp_path / out, progress=False, devices=devices)  # fmt: skip
        profile = result.profile
        assert profile["devices"]["memory_format"] == devices.memory_format
        assert profile["images"] == 5 and not profile["problems"]["model_failures"]
        assert profile["problems"]["nonfinite"] == [] and "error" not in profile
        lines = result.submission_path.read_text(encoding="utf-8").splitlines()[1:]
        return [line.split(",", 1)[1] for line in lines]

    packed, plain = go(CHANNELS_LAST, "packed"), go(NCHW, "plain")
    assert len(packed) == 5 * 4
    for a, b in zip(packed, plain, strict=True):
        mask_a, mask_b = decode(a, (H, W), "F"), decode(b, (H, W), "F")
        union = int(mask_a.sum() + mask_b.sum())
        dice = 1.0 if union == 0 else 2 * int((mask_a & mask_b).sum()) / union
        assert dice >= 0.99
