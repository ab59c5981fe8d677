from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from kernel_src.images import ImageLoader, decode_image


def write(path: Path, image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def colour_bgr(h: int = 8, w: int = 12) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 200  # blue in OpenCV's BGR order
    image[..., 2] = np.arange(w, dtype=np.uint8)[None, :] * 10  # red ramp
    return image


def test_colour_image_is_rgb_and_unflagged(tmp_path: Path) -> None:
    bgr = colour_bgr()
    write(tmp_path / "a.png", bgr)
    loaded = decode_image(tmp_path / "a.png", "a.png")
    assert loaded.issue is None and loaded.problem is None and loaded.image is not None
    assert loaded.image.dtype == np.uint8 and loaded.image.shape == (8, 12, 3)
    np.testing.assert_array_equal(loaded.image, bgr[:, :, ::-1])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("zero.jpg", b"", "zero-byte"),
        ("text.jpg", b"this is not an image at all\n" * 10, "not an image"),
    ],
)
def test_unreadable_bytes(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    (tmp_path / name).write_bytes(content)
    loaded = decode_image(tmp_path / name, name)
    assert loaded.image is None and loaded.issue == "unreadable"
    assert loaded.problem is not None and name in loaded.problem and expected in loaded.problem


def test_truncated_jpeg_is_unreadable_but_trailing_bytes_are_fine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = write(tmp_path / "full.jpg", rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), ".jpg")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    cut = decode_image(tmp_path / "cut.jpg", "cut.jpg")
    assert cut.image is None and cut.issue == "unreadable" and "truncated" in (cut.problem or "")
    (tmp_path / "padded.jpg").write_bytes(data + b"\x00" * 16)
    padded = decode_image(tmp_path / "padded.jpg", "padded.jpg")
    assert padded.issue is None and padded.image is not None and padded.image.shape == (64, 96, 3)


def test_missing_file(tmp_path: Path) -> None:
    loaded = decode_image(tmp_path / "gone.jpg", "gone.jpg")
    assert loaded.image is None and loaded.issue == "missing" and "gone.jpg" in (loaded.problem or "")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_single_channel_is_converted_to_three(tmp_path: Path, ext: str) -> None:
    grey = np.tile(np.arange(0, 240, 20, dtype=np.uint8)[None, :], (8, 1))
    write(tmp_path / f"g{ext}", grey, ext)
    loaded = decode_image(tmp_path / f"g{ext}", f"g{ext}")
    assert loaded.issue == "converted" and "single-channel" in (loaded.problem or "")
    assert loaded.image is not None and loaded.image.shape == (8, 12, 3)
    assert (loaded.image[..., 0] == loaded.image[..., 1]).all() and (loaded.image[..., 1] == loaded.image[..., 2]).all()


def test_alpha_and_16_bit_are_converted(tmp_path: Path) -> None:
    bgra = np.dstack([colour_bgr(), np.full((8, 12), 255, np.uint8)])
    write(tmp_path / "a.png", bgra)
    alpha = decode_image(tmp_path / "a.png", "a.png")
    assert alpha.issue == "converted" and alpha.image is not None
    np.testing.assert_array_equal(alpha.image, colour_bgr()[:, :, ::-1])
    write(tmp_path / "b.png", colour_bgr().astype(np.uint16) * 257)
    deep = decode_image(tmp_path / "b.png", "b.png")
    assert deep.issue == "converted" and deep.image is not None and deep.image.dtype == np.uint8
    np.testing.assert_array_equal(deep.image, colour_bgr()[:, :, ::-1])


def test_other_size_is_resized_and_flagged(tmp_path: Path) -> None:
    write(tmp_path / "a.png", colour_bgr(16, 24))
    loaded = decode_image(tmp_path / "a.png", "a.png", size=(8, 12))
    assert loaded.issue == "converted" and "resized" in (loaded.problem or "")
    assert loaded.image is not None and loaded.image.shape == (8, 12, 3)
    same = decode_image(tmp_path / "a.png", "a.png", size=(16, 24))
    assert same.issue is None


def make_folder(tmp_path: Path, n: int) -> list[str]:
    ids = []
    for i in range(n):
        image = np.full((4, 6, 3), i, np.uint8)
        write(tmp_path / f"{i:03d}.png", image)
        ids.append(f"{i:03d}.png")
    return ids


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_loader_keeps_order_and_reports_problems(tmp_path: Path, workers: int) -> None:
    ids = make_folder(tmp_path, 20)
    (tmp_path / "bad.jpg").write_bytes(b"")
    order = [*ids[:7], "absent.jpg", "bad.jpg", *ids[7:]]
    with ImageLoader(tmp_path, order, workers=workers, prefetch=4) as loader:
        out = list(loader)
    assert [x.image_id for x in out] == order
    kinds = {x.image_id: x.issue for x in out}
    assert kinds["absent.jpg"] == "missing" and kinds["bad.jpg"] == "unreadable"
    for x in out:
        if x.image is not None:
            assert int(x.image[0, 0, 0]) == int(x.image_id[:3])


def test_loader_memory_is_bounded_by_prefetch(tmp_path: Path) -> None:
    ids = make_folder(tmp_path, 30)
    with ImageLoader(tmp_path, ids, workers=2, prefetch=5) as loader:
        consumed = 0
        for _ in loader:
            consumed += 1
            assert loader.submitted - consumed <= 5
        assert consumed == 30 and loader.submitted == 30


def test_loader_closes_early(tmp_path: Path) -> None:
    ids = make_folder(tmp_path, 30)
    loader = ImageLoader(tmp_path, ids, workers=2, prefetch=3)
    first = next(iter(loader))
    loader.close()
    assert first.image_id == ids[0] and loader.submitted <= 4
