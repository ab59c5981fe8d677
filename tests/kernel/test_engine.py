"""End-to-end `kernel_src.run.run` on tiny real models and small images (64x256)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bundler.demo.synthetic import make_dataset
from kernel_src.rle import decode
from kernel_src.run import run
from tests.tiny import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    ForwardCalls,
    TinyModels,
    make_brightness_classifier,
    make_failing_segmenter,
    make_nan_segmenter,
    make_torchscript_segmenter,
    tiny_spec,
    write_image,
    write_sample,
)

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
FULL = f"1 {H * W}"  # the RLE of a mask covering the whole image (either order)
PROFILE_KEYS = {
    "format", "device", "gpus", "torch", "started_at", "total_s", "images", "images_per_s", "stages",
    "model_load_s", "fixed_s", "per_image_s", "gating", "guard", "problems", "counts",
}  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tiny_models: TinyModels) -> dict[str, Any]:
    dest, classifiers, segmenters = tiny_models
    return {
        "dir": dest,
        "classifiers": classifiers,
        "segmenters": segmenters,
        "ts": make_torchscript_segmenter(dest),
        "bright": make_brightness_classifier(dest),
        "nan": make_nan_segmenter(dest),
        "fail": make_failing_segmenter(dest),
    }


def grey(level: int) -> np.ndarray:
    return np.full((H, W, 3), level, np.uint8)


def rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def wide_masks(path: Path) -> dict[str, list[str]]:
    """image id -> RLE per class, from a wide submission."""
    out: dict[str, list[str]] = {}
    for key, rle in rows(path).itertuples(index=False):
        image_id, _, _ = key.rpartition("_")
        out.setdefault(image_id, []).append(rle)
    return out


def go(spec: Any, bundle: dict[str, Any], test_dir: Path, sample: Path, out: Path, **kw: Any) -> Any:
    return run(spec, bundle_dir=bundle["dir"], test_dir=test_dir, sample_submission=sample, out_dir=out, **kw)


def test_wide_layout_end_to_end(bundle: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data", 6, seed=1, height=H, width=W, layout="wide")
    spec = tiny_spec(bundle["dir"], classifiers=bundle["classifiers"], segmenters=bundle["segmenters"])
    result = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "out")
    table = rows(result.submission_path)
    sample = rows(data.sample_submission)
    assert list(table.columns) == list(sample.columns)
    assert table["ImageId_ClassId"].tolist() == [f"{i}_{c}" for i in data.image_ids for c in range(1, 5)]
    for rle in table["EncodedPixels"]:
        decode(rle, (H, W), "F")  # valid, in bounds
    profile = json.loads(result.profile_path.read_text())
    assert profile == result.profile
    assert set(profile) >= PROFILE_KEYS
    assert profile["images"] == 6 and profile["gating"]["mode"] == "per_class"
    assert profile["gating"]["images_segmented"] == 6
    for name in ("setup", "decode", "classifier:cls-mnv3", "classifier:cls-resnet", "segmenter:unet-mnv3",
                 "segmenter:fpn-mnv3", "tta_merge", "postprocess", "rle", "write"):  # fmt: skip
        assert profile["stages"][name]["calls"] >= 1, name
    assert set(profile["model_load_s"]) == {"cls-mnv3", "cls-resnet", "unet-mnv3", "fpn-mnv3"}
    assert 0 < profile["fixed_s"] <= profile["total_s"]
    out = capsys.readouterr().out
    assert "[     6/6 images]" in out and "segmenter:unet-mnv3" in out


def test_long_layout_torchscript_row_major(bundle: dict[str, Any], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 5, seed=2, height=H, width=W, layout="long")
    spec = tiny_spec(
        bundle["dir"],
        classifiers=[],
        segmenters=[bundle["ts"]],
        rle_order="C",
        batch_size=2,
        postprocess={"threshold": [0.5, 0.0, 0.5, 1.0]},
    )
    result = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "out", progress=False)
    table = rows(result.submission_path)
    assert list(table.columns) == list(rows(data.sample_submission).columns)
    assert len(table) == 5 * 4
    assert table["ImageId"].tolist() == [i for i in data.image_ids for _ in range(4)]
    assert table["ClassId"].tolist() == ["1", "2", "3", "4"] * 5
    by_class = table.groupby("ClassId")["EncodedPixels"].apply(list)
    assert by_class["2"] == [FULL] * 5 and by_class["4"] == [""] * 5  # thresholds 0 and 1
    for rle in table["EncodedPixels"]:
        decode(rle, (H, W), "C")
    assert result.profile["stages"]["segmenter:ts-seg"]["calls"] == 3


def test_per_image_gating_spends_no_segmentation_forward_on_skipped_images(
    bundle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = ForwardCalls(monkeypatch, "unet-mnv3").replicas
    levels = {"b1.jpg": 200, "d1.jpg": 30, "d2.jpg": 40, "b2.jpg": 180, "d3.jpg": 20, "b3.jpg": 220}
    for name, level in levels.items():
        write_image(tmp_path / "test" / name, grey(level))
    sample = write_sample(tmp_path / "sample.csv", list(levels))
    spec = tiny_spec(
        bundle["dir"],
        classifiers=[bundle["bright"]],
        segmenters=[bundle["segmenters"][0]],
        gating={"mode": "per_image", "thresholds": 0.5},
        postprocess={"threshold": 0.0},
        images_per_call=8,  # fixed: no call-size measurement forwards at load
    )
    result = go(spec, bundle, tmp_path / "test", sample, tmp_path / "out", progress=False)
    (seen,) = unet
    assert sum(seen) == 1 + 3 * 2  # the load-time test forward, then 3 bright images x 2 TTA views
    masks = wide_masks(result.submission_path)
    for name in levels:
        assert masks[name] == ([FULL] * 4 if name.startswith("b") else [""] * 4), name
    assert result.profile["gating"] == {
        "mode": "per_image",
        "images_segmented": 3,
        "images_skipped": 3,
        "pairs_gated_out": 12,
    }


def test_per_class_gating_empties_classes_below_threshold(bundle: dict[str, Any], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 4, seed=3, height=H, width=W)
    spec = tiny_spec(
        bundle["dir"],
        classifiers=bundle["classifiers"],
        segmenters=[bundle["segmenters"][0]],
        gating={"mode": "per_class", "thresholds": [0.0, 1.0, 0.0, 1.0]},
        postprocess={"threshold": 0.0},
    )
    result = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "out", progress=False)
    for image_id, masks in wide_masks(result.submission_path).items():
        assert masks == [FULL, "", FULL, ""], image_id
    assert result.profile["gating"]["pairs_gated_out"] == 4 * 2
    assert result.profile["gating"]["images_segmented"] == 4


def test_bad_inputs_get_empty_masks_a_warning_and_a_count(
    bundle: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = tmp_path / "test"
    write_image(test / "good.jpg", grey(100))
    write_image(test / "bright.jpg", grey(250))  # the NaN model's trigger
    write_image(test / "single.png", np.full((H, W), 90, np.uint8))
    write_image(test / "extra.jpg", grey(100))  # in the folder, not in the sample
    (test / "zero.jpg").write_bytes(b"")
    (test / "text.jpg").write_text("not a jpeg\n" * 50)
    full = write_image(tmp_path / "full.jpg", np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
    (test / "cut.jpg").write_bytes(full.read_bytes()[:600])
    listed = ["good.jpg", "zero.jpg", "bright.jpg", "text.jpg", "absent.jpg", "single.png", "cut.jpg"]
    sample = write_sample(tmp_path / "sample.csv", listed)
    spec = tiny_spec(bundle["dir"], classifiers=[], segmenters=[bundle["nan"]], batch_size=3)
    result = go(spec, bundle, test, sample, tmp_path / "out", progress=False)
    masks = wide_masks(result.submission_path)
    assert list(masks) == listed
    assert masks["good.jpg"] == [FULL] * 4 and masks["single.png"] == [FULL] * 4
    for name in ("zero.jpg", "bright.jpg", "text.jpg", "absent.jpg", "cut.jpg"):
        assert masks[name] == [""] * 4, name
    problems = result.profile["problems"]
    assert sorted(problems["unreadable"]) == ["cut.jpg", "text.jpg", "zero.jpg"]
    assert problems["missing"] == ["absent.jpg"]
    assert problems["converted"] == ["single.png"]
    assert problems["nonfinite"] == ["bright.jpg"]
    assert result.profile["counts"] == {"unreadable": 3, "missing": 1, "nonfinite": 1, "converted": 1}
    err = capsys.readouterr().err
    for name in ("zero.jpg", "bright.jpg", "text.jpg", "absent.jpg", "single.png", "cut.jpg"):
        assert name in err, name
    assert "seg-nan" in err and "extra.jpg" not in err


@pytest.mark.parametrize("with_backup", [True, False])
def test_a_model_failing_mid_run_is_dropped_and_every_row_written(
    bundle: dict[str, Any], tmp_path: Path, with_backup: bool
) -> None:
    levels = [30, 40, 250, 50, 60, 70]
    names = [f"{i}.jpg" for i in range(len(levels))]
    for name, level in zip(names, levels, strict=True):
        write_image(tmp_path / "test" / name, grey(level))
    sample = write_sample(tmp_path / "sample.csv", names)
    segmenters = [bundle["fail"], bundle["segmenters"][0]] if with_backup else [bundle["fail"]]
    spec = tiny_spec(bundle["dir"], classifiers=[], segmenters=segmenters, batch_size=2, postprocess={"threshold": 0.0})
    result = go(spec, bundle, tmp_path / "test", sample, tmp_path / "out", progress=False)
    masks = wide_masks(result.submission_path)
    assert list(masks) == names
    failures = result.profile["problems"]["model_failures"]
    assert [(f["model"], f["after_images"]) for f in failures] == [("seg-fail", 2)]
    assert "bright" in failures[0]["error"]
    expected_after = [FULL] * 4 if with_backup else [""] * 4  # no segmenter left: empty masks
    for name in names:
        assert masks[name] == ([FULL] * 4 if name in names[:2] else expected_after), name


def test_budget_guard_steps_down_and_still_writes_every_row(bundle: dict[str, Any], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 10, seed=4, height=H, width=W)
    spec = tiny_spec(
        bundle["dir"],
        classifiers=[],
        segmenters=bundle["segmenters"],
        time_budget_s=5.0,
        postprocess={"threshold": 0.0},
    )
    started = time.time() - 10.0  # the notebook "started" 10 s ago: the 5 s budget is already gone
    result = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "out", started_at=started)
    steps = result.profile["guard"]["steps"]
    assert [(s["action"], s["after_images"]) for s in steps] == [
        ("drop_tta", 4),  # fpn-mnv3 (weight 0.5) first
        ("drop_tta", 4),
        ("drop_model", 4),
        ("empty_rest", 4),
    ]
    assert "fpn-mnv3" in steps[0]["detail"] and "unet-mnv3" in steps[1]["detail"] and "fpn-mnv3" in steps[2]["detail"]
    assert all(s["projected_s"] > 5.0 and s["elapsed_s"] >= 10.0 for s in steps)
    assert result.profile["guard"]["budget_s"] == 5.0 and result.profile["guard"]["images_left_empty"] == 6
    assert result.profile["images"] == 4 and "decode" in result.profile["stages"]
    masks = wide_masks(result.submission_path)
    assert list(masks) == list(data.image_ids)
    for i, image_id in enumerate(data.image_ids):
        assert masks[image_id] == ([FULL] * 4 if i < 4 else [""] * 4)
    assert result.profile["stages"]["segmenter:unet-mnv3"]["calls"] == 1


def test_budget_guard_with_room_takes_no_step(bundle: dict[str, Any], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 4, seed=5, height=H, width=W)
    spec = tiny_spec(bundle["dir"], classifiers=[], segmenters=[bundle["nan"]], batch_size=2)
    result = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "out", progress=False)
    assert result.profile["guard"] == {"budget_s": 3600.0, "steps": [], "images_left_empty": 0}


def test_post_processing_of_a_batch_runs_in_a_worker_while_the_next_batch_is_predicted(
    bundle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import kernel_src.run as run_module
    from kernel_src.predict import Predictor

    data = make_dataset(tmp_path / "data", 6, seed=5, height=H, width=W, layout="wide")
    spec = tiny_spec(bundle["dir"], segmenters=bundle["segmenters"], batch_size=2)
    serial = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "serial")
    events: list[tuple[str, str, float, float]] = []  # (what, thread, begin, end)
    predict, post = Predictor.predict, run_module.postprocess

    def timed_predict(self: Predictor, images: np.ndarray) -> Any:
        begin = time.perf_counter()
        out = predict(self, images)
        events.append(("predict", threading.current_thread().name, begin, time.perf_counter()))
        return out

    def slow_post(probs: np.ndarray, settings: Any) -> Any:
        begin = time.perf_counter()
        time.sleep(0.3)  # longer than a tiny forward: the next batch's predict starts meanwhile
        out = post(probs, settings)
        events.append(("postprocess", threading.current_thread().name, begin, time.perf_counter()))
        return out

    monkeypatch.setattr(Predictor, "predict", timed_predict)
    monkeypatch.setattr(run_module, "postprocess", slow_post)
    result = go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "async")
    assert result.submission_path.read_bytes() == serial.submission_path.read_bytes()
    posts = [e for e in events if e[0] == "postprocess"]
    predicts = [e for e in events if e[0] == "predict"]
    assert posts and all(thread.startswith("postprocess") for _, thread, _, _ in posts)
    assert all(thread == threading.main_thread().name for _, thread, _, _ in predicts)
    overlapping = [(p, q) for p in posts for q in predicts if q[2] < p[3] and p[2] < q[3]]
    assert overlapping, "no batch was predicted while another was post-processed"
    assert result.profile["stages"]["postprocess"]["seconds"] >= 0.3 * len(posts) - 0.01


def test_an_error_in_the_post_processing_worker_fails_the_run_and_is_in_the_profile(
    bundle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kernel_src.run as run_module

    data = make_dataset(tmp_path / "data", 4, seed=6, height=H, width=W, layout="wide")
    spec = tiny_spec(bundle["dir"], segmenters=bundle["segmenters"], batch_size=2)

    def broken(probs: np.ndarray, settings: Any) -> Any:
        raise MemoryError("post-processing ran out of memory")

    monkeypatch.setattr(run_module, "postprocess", broken)
    with pytest.raises(MemoryError, match="post-processing"):
        go(spec, bundle, data.images_dir, data.sample_submission, tmp_path / "out")
    profile = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert "MemoryError" in profile["error"]
