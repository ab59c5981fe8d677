from __future__ import annotations

import json

import pytest

from kernel_src.profiler import Profiler

PROFILE_KEYS = {
    "format",
    "device",
    "gpus",
    "torch",
    "started_at",
    "total_s",
    "images",
    "images_per_s",
    "stages",
    "model_load_s",
    "fixed_s",
    "per_image_s",
    "gating",
    "guard",
    "problems",
    "counts",
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_accumulate_and_sync_around_each_block() -> None:
    synced: list[int] = []
    p = Profiler(0.0, sync=lambda: synced.append(1))
    for _ in range(3):
        with p.stage("rle"):
            pass
    p.add("decode", 1.5)
    p.add("decode", 0.5, calls=2)
    assert len(synced) == 6
    stages = p.to_dict()["stages"]
    assert stages["rle"]["calls"] == 3 and stages["rle"]["seconds"] >= 0.0
    assert stages["decode"] == {"seconds": 2.0, "calls": 3}
    assert p.seconds("decode") == 2.0 and p.seconds("never") == 0.0


def test_stage_is_charged_even_when_the_block_raises() -> None:
    p = Profiler(0.0)
    with pytest.raises(ValueError), p.stage("segmenter:x"):
        raise ValueError("boom")
    assert p.to_dict()["stages"]["segmenter:x"]["calls"] == 1


def test_profile_document_shape_and_derived_figures() -> None:
    clock = Clock()
    p = Profiler(100.0, device="cpu", torch_version="2.x", clock=clock)
    p.model_loaded("unet", 0.25)
    clock.now = 103.0
    p.mark_first_batch()
    clock.now = 105.0
    p.mark_first_batch()  # only the first call counts
    p.images = 10
    p.problem("unreadable", "a.jpg")
    p.problem("model_failures", {"model": "unet", "after_images": 4, "error": "x"})
    p.gating_record.update(mode="per_image", images_segmented=6, images_skipped=4, pairs_gated_out=16)
    p.guard_record = {"budget_s": 50.0, "steps": [{"after_images": 4, "elapsed_s": 1.0, "projected_s": 60.0,
                                             "action": "drop_tta", "detail": "unet"}]}  # fmt: skip
    clock.now = 108.0
    p.finish()
    doc = p.to_dict()
    assert set(doc) >= PROFILE_KEYS
    assert doc["format"] == 1 and doc["device"] == "cpu" and doc["torch"] == "2.x"
    assert doc["total_s"] == pytest.approx(8.0) and doc["fixed_s"] == pytest.approx(3.0)
    assert doc["per_image_s"] == pytest.approx(0.5) and doc["images_per_s"] == pytest.approx(1.25)
    assert doc["model_load_s"] == {"unet": 0.25}
    assert doc["counts"] == {"unreadable": 1, "missing": 0, "nonfinite": 0, "converted": 0}
    assert doc["problems"]["model_failures"][0]["model"] == "unet"
    assert doc["gating"]["images_skipped"] == 4
    json.dumps(doc)  # JSON-able as is
    table = p.table()
    for text in ("images 10", "loaded unet", "per_image", "drop_tta", "unreadable 1", "model failures 1"):
        assert text in table


def test_unknown_problem_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown problem kind"):
        Profiler(0.0).problem("weird", "a.jpg")


def test_no_images_no_division_by_zero() -> None:
    clock = Clock()
    p = Profiler(100.0, clock=clock)
    p.finish()
    doc = p.to_dict()
    assert doc["images"] == 0 and doc["per_image_s"] == 0.0 and doc["images_per_s"] == 0.0
    assert doc["fixed_s"] == doc["total_s"] == 0.0
