"""report.html: self-contained (images as data URIs, nothing fetched), and showing what it should."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bundler.dryrun.report import load_mask_samples, overlay, render_report, write_report
from kernel_src import rle
from kernel_src.submission import read_masks

H, W = 32, 96


def _summary(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ok": False,
        "reason": "over budget by 12.0 s",
        "bundle": "demo",
        "notebook": "build/inference.ipynb",
        "images": 3,
        "seconds": 9.5,
        "projected_seconds": 3312.0,
        "projected_fixed_s": 40.0,
        "budget_seconds": 3300.0,
        "within_budget": False,
        "hidden_test_images": 5506,
        "calibration": "none: figure is for this machine",
        "network": "none",
        "score": 0.75,
        "per_class_score": [1.0, 0.5, 0.75, 0.75],
        "num_classes": 4,
        "guard_steps": [{"after_images": 2, "elapsed_s": 1.0, "projected_s": 9.0, "action": "drop_tta"}],
        "failed_cell": None,
    }
    data.update(over)
    return data


PROFILE = {"stages": {"setup": {"seconds": 1.5, "calls": 1}, "segmenter:unet": {"seconds": 4.0, "calls": 3}}}


@pytest.fixture
def holdout(tmp_path: Path) -> tuple[Path, Path, Path]:
    images = tmp_path / "test_images"
    images.mkdir()
    mask = np.zeros((H, W), np.uint8)
    mask[4:10, 20:40] = 1
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(images / name), np.full((H, W, 3), 128, np.uint8))
    sub = tmp_path / "submission.csv"
    rows = [f"{i}.jpg_{c},{rle.encode(mask) if (i, c) == ('b', 2) else ''}" for i in "abc" for c in range(1, 5)]
    sub.write_text("ImageId_ClassId,EncodedPixels\n" + "\n".join(rows) + "\n")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"ImageId,ClassId,EncodedPixels\nc.jpg,3,{rle.encode(mask)}\n")
    return images, sub, labels


def test_the_report_reads_the_wide_submission_and_the_labels(holdout: tuple[Path, Path, Path]) -> None:
    _, sub, labels = holdout
    rles = read_masks(sub, 4)
    assert sorted(rles) == ["a.jpg", "b.jpg", "c.jpg"]
    assert rles["b.jpg"][1] and not rles["b.jpg"][0]
    assert read_masks(labels, 4, labels=True)["c.jpg"][2]


def test_samples_put_defects_first_and_carry_truth(holdout: tuple[Path, Path, Path]) -> None:
    images, sub, labels = holdout
    samples = load_mask_samples(sub, images, labels, num_classes=4, shape=(H, W), order="F", limit=2)
    assert [s.image_id for s in samples] == ["b.jpg", "c.jpg"]
    assert samples[0].predicted[1].sum() == 6 * 20
    assert samples[1].truth is not None
    assert samples[1].truth[2].sum() == 6 * 20
    assert samples[0].image.shape == (H, W, 3)


def test_overlay_tints_only_the_mask() -> None:
    image = np.full((H, W, 3), 100, np.uint8)
    masks = np.zeros((4, H, W), np.uint8)
    masks[0, 10:20, 10:30] = 1
    out = overlay(image, masks)
    assert (out[0, 0] == 100).all()
    assert out[15, 20, 0] > 100  # red tint inside


def test_report_is_self_contained_with_charts_scores_guard_and_masks(
    holdout: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    images, sub, labels = holdout
    samples = load_mask_samples(sub, images, labels, num_classes=4, shape=(H, W), order="F")
    path = write_report(tmp_path / "out" / "report.html", _summary(), PROFILE, samples)
    text = path.read_text()
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', text)
    assert len(uris) == 2 + 3  # stage chart, projection chart, one figure per sample image
    for uri in uris:
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    srcs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert all(s.startswith("data:") for s in srcs)
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "FAIL" in text and "over budget by 12.0 s" in text
    assert "0.7500" in text and "class 4" in text  # score table
    assert "drop_tta" in text  # guard step-downs
    assert "b.jpg: predicted (classes: 2)" not in text  # titles are inside the PNGs, not the page


def test_report_shows_the_failed_cell_and_escapes_it(tmp_path: Path) -> None:
    failed = {"index": 3, "ename": "ValueError", "evalue": "bad <thing>", "traceback": "Traceback...\n<boom>"}
    text = render_report(
        _summary(failed_cell=failed, score=None, per_class_score=None, projected_seconds=None), None, []
    )
    assert "Failure in cell 3" in text
    assert "ValueError: bad &lt;thing&gt;" in text
    assert "&lt;boom&gt;" in text and "<boom>" not in text
    assert "pass <code>--labels</code>" in text
    assert "no data" in text  # no profile: the charts say so instead of failing


def test_missing_and_undecodable_images_are_skipped_without_opencv_warnings(
    holdout: tuple[Path, Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    images, sub, labels = holdout
    rows = sub.read_text() + "".join(f"gone{i}.jpg_{c},\n" for i in range(30) for c in range(1, 5))
    sub.write_text(rows + "".join(f"noise.jpg_{c},\n" for c in range(1, 5)))
    (images / "noise.jpg").write_bytes(b"\x00not a jpeg" * 50)
    samples = load_mask_samples(sub, images, labels, num_classes=4, shape=(H, W), order="F", limit=10)
    assert sorted(s.image_id for s in samples) == ["a.jpg", "b.jpg", "c.jpg"]
    captured = capfd.readouterr()
    assert "imread_" not in captured.err + captured.out and "WARN" not in captured.err + captured.out


def test_a_dead_model_is_never_reported_as_no_step_downs() -> None:
    model_failure = {"model_failures": {"count": 1, "examples": ["fpn after 2 images: boom"]}}
    text = render_report(
        _summary(
            guard_steps=[],
            failures=["model 'fpn' failed after 2 images and was dropped: boom", "over budget by 12.0 s"],
            warnings=["3 image(s) were converted before prediction (see problems)"],
            problems={**model_failure, "converted": {"count": 3, "examples": ["rgba.png: 4-channel image"]}},
        ),
        PROFILE,
        [],
    )
    assert "No step-downs" not in text and "1 model(s) failed and were dropped" in text
    assert "FAIL: model &#x27;fpn&#x27; failed after 2 images" in text and "FAIL: over budget by 12.0 s" in text
    assert "WARN: 3 image(s) were converted" in text
    assert "<td>converted</td><td>3</td><td>rgba.png: 4-channel image</td>" in text
    stopped = render_report(_summary(guard_steps=[], failed_cell={"index": 9, "ename": "E"}), None, [])
    assert "No step-downs" not in stopped and "stopped before the end" in stopped
    clean = render_report(_summary(ok=True, guard_steps=[], failures=[], warnings=[]), PROFILE, [])
    assert "No step-downs: every model and TTA view ran on every image." in clean and "Reasons" not in clean


def test_resources_stand_beside_the_limits_and_an_excess_is_marked() -> None:
    resources = {
        "ram": {"peak_bytes": 31 * 10**9, "limit_bytes": 29 * 10**9, "exceeded": True},
        "gpu": {"peak_bytes": None, "limit_bytes_per_device": 15 * 10**9, "exceeded": False},
        "working_disk": {"bytes": 12_000, "limit_bytes": 20 * 10**9, "exceeded": False},
    }
    text = render_report(_summary(resources=resources), PROFILE, [])
    assert "<tr class=bad><td>peak RAM of the notebook&#x27;s process</td><td>31.00 GB</td><td>29.00 GB</td>" in text
    assert "<td>not used (CPU run)</td><td>15.00 GB per GPU</td>" in text
    assert "<td>0.0 MB</td><td>20.00 GB</td>" in text
