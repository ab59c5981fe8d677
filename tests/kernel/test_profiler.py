from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kernel_src.profiler import Profiler, folder_bytes, format_bytes

PROFILE_KEYS = {
    "format",
    "device",
    "gpus",
    "torch",
    "started_at",
    "total_s",
    "images",
    "images_predicted",
    "images_per_s",
    "stages",
    "model_load_s",
    "fixed_s",
    "per_image_s",
    "steady_per_image_s",
    "gating",
    "guard",
    "problems",
    "counts",
    "resources",
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
    p.problem("unreadable", "a.jpg", "a.jpg: zero-byte file")
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
    assert doc["images_predicted"] == 9  # the unreadable image had no forward
    assert doc["per_image_s"] == pytest.approx(5.0 / 9) and doc["images_per_s"] == pytest.approx(1.25)
    assert doc["model_load_s"] == {"unet": 0.25}
    assert doc["counts"] == {"unreadable": 1, "missing": 0, "nonfinite": 0, "converted": 0}
    assert doc["problems"]["model_failures"][0]["model"] == "unet"
    assert doc["problems"]["unreadable"] == ["a.jpg"]
    assert doc["problem_examples"] == {"unreadable": ["a.jpg: zero-byte file"], "missing": [], "nonfinite": [],
                                       "converted": []}  # fmt: skip
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


def test_per_image_cost_counts_only_predicted_images() -> None:
    """2,000 listed, 10 present: the cost of the 10 is the per-image figure, not a 200th of it."""
    clock = Clock()
    p = Profiler(100.0, clock=clock)
    clock.now = 101.0
    p.mark_first_batch()
    p.images = 2000
    for i in range(1990):
        p.problem("missing", f"{i}.jpg")
    clock.now = 106.0
    p.finish()
    doc = p.to_dict()
    assert doc["images_predicted"] == 10
    assert doc["per_image_s"] == pytest.approx(0.5)


def test_nothing_predicted_has_no_per_image_cost() -> None:
    p = Profiler(100.0, clock=Clock())
    p.images = 3
    for name in ("a.jpg", "b.jpg"):
        p.problem("missing", name)
    p.problem("unreadable", "c.jpg")
    doc = p.to_dict()
    assert doc["images_predicted"] == 0 and doc["per_image_s"] == 0.0


def test_resources_on_cpu_say_no_gpu_explicitly(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "submission.csv").write_bytes(b"x" * 1000)
    (tmp_path / "sub" / "cache.bin").write_bytes(b"y" * 24)
    (tmp_path / "link").symlink_to(tmp_path / "submission.csv")  # not counted twice
    p = Profiler(0.0, device="cpu")
    p.devices = {"kind": "cpu"}
    p.working_dir = tmp_path
    resources = p.to_dict()["resources"]
    assert resources["gpu_peak_bytes"] is None and "gpu_peak_bytes" in resources
    assert resources["working_bytes"] == 1024 == folder_bytes(tmp_path)
    assert resources["peak_rss_bytes"] > 10_000_000  # this interpreter with torch loaded: tens of MB at least
    assert "GPU not used" in p.table() and "working folder 0.0 MB" in p.table()
    assert format_bytes(None) == "-" and format_bytes(1_500_000) == "1.5 MB" and format_bytes(2.5e9) == "2.50 GB"
    assert Profiler(0.0).to_dict()["resources"]["working_bytes"] is None  # no folder given: unknown, not 0


def test_resources_on_cuda_give_each_device_its_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.max_memory_allocated per device, read from the torch the run imported (no GPU needed)."""
    peaks = {0: 3_000_000_000, 1: 1_500_000_000}
    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2, max_memory_allocated=peaks.__getitem__)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    p = Profiler(0.0, device="cuda x2 (Tesla T4)")
    p.devices = {"kind": "cuda"}
    assert p.to_dict()["resources"]["gpu_peak_bytes"] == {"cuda:0": 3_000_000_000, "cuda:1": 1_500_000_000}
    assert "GPU cuda:0 3.00 GB, cuda:1 1.50 GB" in p.table()
    p.devices = {"kind": "cpu"}  # a CPU run on a machine with GPUs: explicitly none
    assert p.to_dict()["resources"]["gpu_peak_bytes"] is None


def test_resources_are_taken_at_finish_so_profile_json_and_the_result_agree(tmp_path: Path) -> None:
    p = Profiler(0.0)
    p.working_dir = tmp_path
    (tmp_path / "submission.csv").write_bytes(b"x" * 100)
    p.finish()
    first = p.to_dict()
    (tmp_path / "profile.json").write_text(json.dumps(first))  # written after finish: not counted
    assert p.to_dict()["resources"] == first["resources"] and first["resources"]["working_bytes"] == 100


def test_steady_rate_leaves_the_first_batch_out() -> None:
    """A slow first batch (autotuning, first allocations) is in per_image_s, not in the steady rate."""
    clock = Clock()
    p = Profiler(100.0, clock=clock)
    clock.now = 110.0
    p.mark_first_batch()
    assert p.steady_per_image_s() is None
    clock.now = 118.0  # the first batch of 4: 8 s
    p.batch_done(4)
    assert p.steady_per_image_s() is None  # one batch: nothing steady to say
    for done in (8, 12, 16):
        clock.now += 2.0  # then 0.5 s per image
        p.batch_done(done)
    p.images = 16
    p.finish()
    doc = p.to_dict()
    assert doc["steady_per_image_s"] == pytest.approx(0.5)
    assert doc["per_image_s"] == pytest.approx(14.0 / 16)


class CountingEvent:
    """A stand-in for a CUDA event: a recorded time, and a count of the waits on it."""

    waits = 0
    now = 0.0

    def __init__(self) -> None:
        self.at = -1.0

    def record(self) -> None:
        self.at = CountingEvent.now

    def synchronize(self) -> None:
        CountingEvent.waits += 1

    def elapsed_s(self, end: CountingEvent) -> float:
        return end.at - self.at


def test_event_timed_stages_wait_once_per_flush_and_never_sync_the_devices() -> None:
    synced: list[int] = []
    CountingEvent.waits, CountingEvent.now = 0, 0.0
    p = Profiler(0.0, events=CountingEvent)
    for name, seconds in (("segmenter:a", 2.0), ("segmenter:b", 3.0), ("tta_merge", 0.5), ("segmenter:a", 1.0)):
        with p.stage(name):
            CountingEvent.now += seconds
    assert p.stage_seconds() == {}  # nothing charged before the batch's one wait
    p.flush()
    assert CountingEvent.waits == 1 and not synced
    assert p.stage_seconds() == {"segmenter:a": 3.0, "segmenter:b": 3.0, "tta_merge": 0.5}
    assert p.to_dict()["stages"]["segmenter:a"]["calls"] == 2
    p.flush()
    assert CountingEvent.waits == 1  # nothing pending: no wait


def test_the_cpu_event_stand_in_times_a_stage_and_finish_flushes() -> None:
    from kernel_src.devices import resolve_devices

    p = Profiler(0.0, events=resolve_devices("cpu").event)
    with p.stage("rle"):
        sum(range(10000))
    p.finish()
    assert p.to_dict()["stages"]["rle"]["calls"] == 1 and p.seconds("rle") > 0.0


def test_sync_mode_still_synchronises_around_each_stage_when_asked() -> None:
    synced: list[int] = []
    p = Profiler(0.0, sync=lambda: synced.append(1), events=CountingEvent)
    with p.stage("segmenter:a"):
        pass
    assert len(synced) == 2 and p.stage_seconds()["segmenter:a"] >= 0.0
