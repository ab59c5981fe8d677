"""The input readers (kernel_src.readers, kernel_src.inputs): each against an independent computation
on fixtures made here (arrays saved with numpy, CSVs written by pandas), their ids and order, memory
maps, bad rows named, a wrong row width refused, and a segmentation run fed from an `.npz` writing
the same submission as the same images as PNG files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kernel_src.bundle import find_competition_data, input_location
from kernel_src.errors import BundleError, InputError, SpecError
from kernel_src.images import ImageLoader, PixelSettings
from kernel_src.inputs import READERS, InputSpec
from kernel_src.readers import NpyReader, NpzReader, open_reader
from kernel_src.run import run
from kernel_src.spec import InferenceSpec
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, TinyModels, random_images, tiny_spec, write_image, write_sample

N, H, W = 5, 6, 7


def grey_stack(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W), dtype=np.uint8)


def as_rgb(grey: np.ndarray) -> np.ndarray:
    """The independent reference: grey repeated to 3 channels."""
    return np.stack([grey, grey, grey], axis=-1)


def spec(reader: str, **settings: Any) -> InputSpec:
    return InputSpec.from_dict({"reader": reader, **settings})


def load_all(reader: Any, ids: list[str], pixels: PixelSettings | None = None) -> dict[str, Any]:
    return {i: reader.load(i, None, pixels) for i in ids}


def write_pixels_csv(path: Path, images: np.ndarray, *, ids: list[str] | None = None, label: bool = True) -> Path:
    """A Digit-Recognizer-shaped CSV written by pandas: [ImageId,] [label,] pixel0..pixelK."""
    flat = images.reshape(len(images), -1)
    frame = pd.DataFrame(flat, columns=[f"pixel{k}" for k in range(flat.shape[1])])
    if label:
        frame.insert(0, "label", np.arange(len(images)) % 10)
    if ids is not None:
        frame.insert(0, "ImageId", ids)
    frame.to_csv(path, index=False)
    return path


# --- one contract for every registered reader -------------------------------------------------------


def _fixture(reader: str, folder: Path, grey: np.ndarray, ids: list[str]) -> InputSpec:
    """The same images, with the same ids, in `reader`'s form under `folder`."""
    if reader == "images":
        images = folder / "test_images"
        for i, image in zip(ids, grey, strict=True):
            write_image(images / i, image)
        return spec("images")
    if reader == "npy":
        np.save(folder / "x.npy", grey)
        np.save(folder / "ids.npy", np.array(ids))
        return spec("npy", path="x.npy", ids="ids.npy")
    if reader == "npz":
        np.savez(folder / "x.npz", images=grey, ids=np.array(ids))
        return spec("npz", path="x.npz", array="images", ids="ids")
    assert reader == "csv_pixels"
    write_pixels_csv(folder / "x.csv", grey, ids=ids)
    return spec("csv_pixels", path="x.csv", id_column="ImageId", shape=[H, W])


@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_offers_its_ids_in_order_and_loads_rgb_uint8(reader: str, tmp_path: Path) -> None:
    grey = grey_stack()
    ids = [f"{k}.png" for k in (3, 1, 4, 0, 2)]  # an order that is not sorted: the file's order is kept
    input_spec = _fixture(reader, tmp_path, grey, ids)
    folder = tmp_path / "test_images" if reader == "images" else tmp_path
    with open_reader(input_spec, folder, ids) as opened:
        offered = list(opened.ids)
        assert offered == (sorted(ids) if reader == "images" else ids)  # a folder lists its files by name
        for i, image_id in enumerate(ids):
            loaded = opened.load(image_id, None, PixelSettings(channels=1))
            assert loaded.issue is None and loaded.problem is None, loaded.problem
            assert loaded.image is not None and loaded.image.dtype == np.uint8
            np.testing.assert_array_equal(loaded.image, as_rgb(grey[i]))
        missing = opened.load("nope.png", None, None)
        assert missing.image is None and missing.issue == "missing" and "nope.png" in (missing.problem or "")
    assert set(READERS[reader].problems) <= {"missing", "unreadable", "converted"}


# --- npy ---------------------------------------------------------------------------------------------


def test_npy_is_memory_mapped_with_row_number_ids(tmp_path: Path) -> None:
    grey = grey_stack()
    np.save(tmp_path / "test.npy", grey)
    with open_reader(spec("npy", path="test.npy", first_id=1), tmp_path) as reader:
        assert isinstance(reader, NpyReader) and isinstance(reader.mapped, np.memmap)  # not read into memory
        assert np.shares_memory(reader.array, reader.mapped)
        assert reader.ids == ("1", "2", "3", "4", "5")
        loaded = reader.load("2", None, None)
        assert loaded.image is not None
        np.testing.assert_array_equal(loaded.image, as_rgb(grey[1]))
        assert not np.shares_memory(loaded.image, reader.array)  # the image handed on is the loader's own
    with open_reader(spec("npy", path="test.npy"), tmp_path) as reader:
        assert reader.ids[0] == "0"


def test_npy_colour_float_and_16_bit_are_scaled_like_pixel_settings(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    colour = rng.random((3, H, W, 3), dtype=np.float32)
    np.save(tmp_path / "f.npy", colour)
    with open_reader(spec("npy", path="f.npy"), tmp_path) as reader:
        loaded = reader.load("0", None, PixelSettings(pixel_max=1.0))
    expected = np.clip(np.rint(colour[0].astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    assert loaded.image is not None and loaded.issue is None
    np.testing.assert_array_equal(loaded.image, expected)  # channels taken as RGB, in order
    deep = rng.integers(0, 65536, (2, H, W), dtype=np.uint16)
    np.save(tmp_path / "d.npy", deep)
    with open_reader(spec("npy", path="d.npy"), tmp_path) as reader:
        loaded = reader.load("1", None, PixelSettings(bit_depth=16))
    assert loaded.image is not None
    np.testing.assert_array_equal(loaded.image[..., 0], np.rint(deep[1] / 65535.0 * 255.0).astype(np.uint8))


def test_npy_nan_pixels_are_a_problem_named_by_row(tmp_path: Path) -> None:
    images = np.random.default_rng(2).random((3, H, W)).astype(np.float32)
    images[1, 2, 4] = np.nan
    np.save(tmp_path / "t.npy", images)
    with open_reader(spec("npy", path="t.npy"), tmp_path) as reader:
        bad = reader.load("1", None, PixelSettings(pixel_max=1.0))
        good = reader.load("0", None, PixelSettings(pixel_max=1.0))
    assert bad.image is None and bad.issue == "unreadable"
    assert bad.problem == "1: row 1 of t.npy: 1 pixel(s) not finite (first at y=2, x=4)"
    assert good.issue is None
    with open_reader(spec("npy", path="t.npy", bad_pixels="zero"), tmp_path) as reader:
        zeroed = reader.load("1", None, PixelSettings(pixel_max=1.0))
    assert zeroed.issue == "converted" and zeroed.image is not None and zeroed.image[2, 4].tolist() == [0, 0, 0]


def test_npy_resized_to_the_loaders_size_is_converted(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", grey_stack())
    with open_reader(spec("npy", path="t.npy"), tmp_path) as reader:
        loaded = reader.load("0", (12, 14), None)
    assert loaded.issue == "converted" and loaded.image is not None and loaded.image.shape == (12, 14, 3)
    assert "7x6 resized to 14x12" in (loaded.problem or "")


def _save_pair(folder: Path, ids: np.ndarray) -> None:
    np.save(folder / "t.npy", grey_stack())
    np.save(folder / "i.npy", ids)


@pytest.mark.parametrize(
    ("make", "setting", "message"),
    [
        (lambda d: np.save(d / "t.npy", np.zeros((4, 5))), {}, "is not N x H x W"),
        (lambda d: np.save(d / "t.npy", np.zeros((2, 3, 3, 4))), {}, "(C 1 or 3)"),
        (lambda d: np.save(d / "t.npy", np.array(["a", "b"])), {}, "is not numbers"),
        (lambda d: _save_pair(d, np.arange(3)), {"ids": "i.npy"}, "holds 3 ids for the 5 images"),
        (lambda d: _save_pair(d, np.array([1, 2, 1, 3, 4])), {"ids": "i.npy"}, "id '1' is given to rows 0 and 2"),
        (lambda d: None, {}, "input.path = 't.npy':"),
    ],
)  # fmt: skip
def test_npy_that_does_not_fit_is_one_input_error(
    tmp_path: Path, make: Any, setting: dict[str, Any], message: str
) -> None:
    make(tmp_path)
    with pytest.raises(InputError) as e:
        open_reader(spec("npy", path="t.npy", **setting), tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- npz ---------------------------------------------------------------------------------------------


def test_npz_stored_member_is_memory_mapped_compressed_is_read(tmp_path: Path) -> None:
    grey = grey_stack()
    ids = np.array([10, 11, 12, 13, 14])
    np.savez(tmp_path / "s.npz", x=grey, ids=ids)
    np.savez_compressed(tmp_path / "c.npz", x=grey, ids=ids)
    for name, mapped in (("s.npz", True), ("c.npz", False)):
        with open_reader(spec("npz", path=name, ids="ids"), tmp_path) as reader:
            assert isinstance(reader, NpzReader) and isinstance(reader.mapped, np.memmap) is mapped
            assert reader.ids == ("10", "11", "12", "13", "14")
            for k, image_id in enumerate(reader.ids):
                loaded = reader.load(image_id, None, None)
                assert loaded.image is not None
                np.testing.assert_array_equal(loaded.image, as_rgb(grey[k]))


def test_npz_every_key_is_an_image_read_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = {"b": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), "a": rng.integers(0, 256, (6, 2), dtype=np.uint8)}
    np.savez(tmp_path / "k.npz", b=images["b"], a=images["a"], broken=np.zeros((2, 2, 2, 2)))
    with open_reader(spec("npz", path="k.npz", array="*"), tmp_path) as reader:
        assert reader.ids == ("b", "a", "broken")  # the archive's order
        b, a = reader.load("b", None, None), reader.load("a", None, None)
        broken = reader.load("broken", None, None)
    assert b.image is not None and a.image is not None
    np.testing.assert_array_equal(b.image, images["b"])
    np.testing.assert_array_equal(a.image, as_rgb(images["a"]))
    assert broken.issue == "unreadable" and "is not H x W" in (broken.problem or "")


def test_npz_without_a_named_array_among_several_keys_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", a=grey_stack(), b=grey_stack())
    with pytest.raises(InputError, match=r"holds the keys \['a', 'b'\]; name the one holding the images"):
        open_reader(spec("npz", path="m.npz"), tmp_path)
    with open_reader(spec("npz", path="m.npz", array="b"), tmp_path) as reader:
        assert len(reader.ids) == N


# --- csv pixel rows ----------------------------------------------------------------------------------


def test_csv_rows_with_row_number_ids_from_one_and_the_label_ignored(tmp_path: Path) -> None:
    grey = grey_stack(n=7)
    write_pixels_csv(tmp_path / "test.csv", grey)
    with open_reader(spec("csv_pixels", path="test.csv", shape=[H, W], first_id=1), tmp_path) as reader:
        assert reader.ids == tuple(str(k) for k in range(1, 8))
        for k in range(7):
            loaded = reader.load(str(k + 1), None, None)
            assert loaded.issue is None and loaded.image is not None
            np.testing.assert_array_equal(loaded.image, as_rgb(grey[k]))


def test_csv_ids_are_the_id_columns_text(tmp_path: Path) -> None:
    grey = grey_stack(n=3)
    ids = ["007", "a-1", "12"]
    write_pixels_csv(tmp_path / "t.csv", grey, ids=ids, label=False)
    with open_reader(spec("csv_pixels", path="t.csv", shape=[H, W], id_column="ImageId"), tmp_path) as reader:
        assert reader.ids == tuple(ids)  # "007" stays "007"
        loaded = reader.load("007", None, None)
    assert loaded.image is not None
    np.testing.assert_array_equal(loaded.image, as_rgb(grey[0]))


def test_csv_colour_shape_and_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernel_src.readers

    monkeypatch.setattr(kernel_src.readers, "CSV_CHUNK_ROWS", 2)  # several chunks, and a short last one
    colour = np.random.default_rng(4).integers(0, 256, (5, 3, 2, 3), dtype=np.uint8)
    write_pixels_csv(tmp_path / "c.csv", colour, label=False)
    with open_reader(spec("csv_pixels", path="c.csv", shape=[3, 2, 3]), tmp_path) as reader:
        got = [reader.load(i, None, None).image for i in reader.ids]
    for k in range(5):
        np.testing.assert_array_equal(got[k], colour[k])


def test_csv_bad_rows_are_problems_named_by_row_and_column(tmp_path: Path) -> None:
    grey = grey_stack(n=4)
    path = write_pixels_csv(tmp_path / "t.csv", grey)
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")  # row 1: pixel3 (the 5th cell after label) not a number
    cells[4] = "x7"
    lines[2] = ",".join(cells)
    cells = lines[4].split(",")  # row 3: two pixels missing
    cells[1], cells[9] = "", ""
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with open_reader(spec("csv_pixels", path="t.csv", shape=[H, W]), tmp_path) as reader:
        loaded = load_all(reader, list(reader.ids))
    assert loaded["1"].issue == "unreadable" and loaded["1"].image is None
    assert loaded["1"].problem == "1: row 1 of t.csv (line 3): pixel column 'pixel3' is 'x7', not a number"
    assert loaded["3"].problem == "3: row 3 of t.csv (line 5): pixel column 'pixel0' is missing (and 1 more)"
    for k in (0, 2):
        assert loaded[str(k)].issue is None
        np.testing.assert_array_equal(loaded[str(k)].image, as_rgb(grey[k]))
    with open_reader(spec("csv_pixels", path="t.csv", shape=[H, W], bad_pixels="zero"), tmp_path) as reader:
        zeroed = reader.load("1", None, None)
    expected = grey[1].copy()
    expected.flat[3] = 0
    assert zeroed.issue == "converted" and "read as 0" in (zeroed.problem or "")
    np.testing.assert_array_equal(zeroed.image, as_rgb(expected))


def test_csv_row_width_that_is_not_the_shape_is_one_error_naming_file_width_and_shape(tmp_path: Path) -> None:
    write_pixels_csv(tmp_path / "test.csv", grey_stack(n=2))  # 42 pixels a row
    with pytest.raises(InputError) as e:
        open_reader(spec("csv_pixels", path="test.csv", shape=[28, 28]), tmp_path)
    message = str(e.value)
    assert "test.csv" in message and "42 pixel columns" in message and "input.shape = [28, 28] needs 784" in message
    with pytest.raises(InputError, match=r"input.id_column = 'Id': .* has no such column"):
        open_reader(spec("csv_pixels", path="test.csv", shape=[H, W], id_column="Id"), tmp_path)


# --- the loader and the settings -------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_keeps_sample_order_and_its_prefetch_bound_with_a_reader(tmp_path: Path, workers: int) -> None:
    grey = grey_stack(n=20)
    np.save(tmp_path / "t.npy", grey)
    order = [str(k) for k in np.random.default_rng(5).permutation(20)] + ["99"]
    with open_reader(spec("npy", path="t.npy"), tmp_path) as reader, ImageLoader(
        tmp_path, order, workers=workers, prefetch=3, reader=reader
    ) as loader:  # fmt: skip
        seen: list[Any] = []
        for loaded in loader:
            assert loader.submitted <= len(seen) + 1 + 3
            seen.append(loaded)
    assert [s.image_id for s in seen] == order
    assert seen[-1].issue == "missing"
    for loaded in seen[:-1]:
        np.testing.assert_array_equal(loaded.image, as_rgb(grey[int(loaded.image_id)]))


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"reader": "tiff"}, "input.reader", "must be one of ['images', 'npy', 'npz', 'csv_pixels']"),
        ({"reader": "npy"}, "input.path", "is required for reader 'npy': its file, e.g. 'test.npy'"),
        ({"reader": "csv_pixels", "path": "t.csv"}, "input.shape", "is required for reader 'csv_pixels'"),
        ({"reader": "images", "path": "t.csv"}, "input.path", "does not apply to reader 'images'"),
        ({"reader": "npy", "path": "t.npy", "id_column": "Id"}, "input.id_column", "does not apply to reader 'npy'"),
        ({"reader": "npy", "path": "../t.npy"}, "input.path", "must be relative to the competition's data folder"),
        ({"reader": "csv_pixels", "path": "t.csv", "shape": [28, 28, 2]}, "input.shape", "channels must be 1"),
        ({"reader": "npy", "path": "t.npy", "first_id": -1}, "input.first_id", "must be 0 or more"),
        ({"reader": "npy", "path": "t.npy", "bad_pixels": "nan"}, "input.bad_pixels", "must be one of"),
        ({"colour": 1}, "input.colour", "unknown setting"),
    ],
)
def test_input_settings_are_checked_naming_the_key(data: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        InputSpec.from_dict(data)
    assert e.value.key == key and message in e.value.message


def test_the_input_section_round_trips_through_the_notebooks_config(tmp_path: Path) -> None:
    given = {"reader": "csv_pixels", "path": "test.csv", "shape": [28, 28], "first_id": 1}
    base = tiny_spec(tmp_path, classifiers=[], segmenters=[{"name": "s", "kind": "torchscript", "file": "s.pt"}])
    data = base.to_dict() | {"input": given}
    again = InferenceSpec.from_dict(InferenceSpec.from_dict(data).to_dict())
    assert again.input == InputSpec("csv_pixels", path="test.csv", shape=(28, 28), first_id=1)
    assert InferenceSpec.from_dict(base.to_dict()).input == InputSpec()  # no [input]: the image folder


# --- a segmentation run fed from an .npz ---------------------------------------------------------------


def test_a_run_from_an_npz_writes_the_submission_the_same_pngs_give(tiny_models: TinyModels, tmp_path: Path) -> None:
    folder, classifiers, segmenters = tiny_models
    images = random_images(6, seed=7)
    images[2] = 255  # a bright one and a dark one, so the masks are not all alike
    images[4] = 0
    ids = [f"img{k}.png" for k in range(6)]
    sample = write_sample(tmp_path / "sample_submission.csv", [*ids[::-1], "absent.png"])
    for i, image in zip(ids, images, strict=True):
        write_image(tmp_path / "test_images" / i, image)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "test.npz", x=images, ids=np.array(ids))
    base = tiny_spec(folder, classifiers=classifiers, segmenters=segmenters)
    from_npz = dataclasses.replace(base, input=spec("npz", path="test.npz", ids="ids"))
    common: dict[str, Any] = {"bundle_dir": folder, "sample_submission": sample, "progress": False}
    pngs = run(base, test_dir=tmp_path / "test_images", out_dir=tmp_path / "png", **common)
    npz = run(from_npz, test_dir=tmp_path / "data", out_dir=tmp_path / "npz", **common)
    assert npz.submission_path.read_bytes() == pngs.submission_path.read_bytes()
    assert npz.profile["counts"] == pngs.profile["counts"] == {
        "unreadable": 0, "missing": 1, "nonfinite": 0, "converted": 0,
    }  # fmt: skip
    assert npz.profile["problems"]["missing"] == ["absent.png"]
    assert images.shape[1:3] == (IMAGE_HEIGHT, IMAGE_WIDTH)


# --- the notebook finds a reader's file as it finds the image folder ----------------------------------


@pytest.mark.parametrize("layout", ["<slug>", "competitions/<slug>"])
def test_the_notebook_finds_a_readers_file_beside_the_sample_in_either_mount(tmp_path: Path, layout: str) -> None:
    data = tmp_path / "input" / layout.replace("<slug>", "digit-recognizer")
    (tmp_path / "input" / "decoy").mkdir(parents=True)
    (tmp_path / "input" / "decoy" / "sample_submission.csv").write_text("ImageId,Label\n")  # no test.csv beside it
    data.mkdir(parents=True)
    (data / "sample_submission.csv").write_text("ImageId,Label\n1,0\n")
    (data / "test.csv").write_text("pixel0\n0\n")
    config = {"test_images": "test_images", "inference": {"input": {"reader": "csv_pixels", "path": "test.csv"}}}
    name, is_file = input_location(config)
    assert (name, is_file) == ("test.csv", True)
    found = find_competition_data(tmp_path / "input", "sample_submission.csv", name, test_file=is_file)
    assert found.folder == data and found.test_dir == data  # the reader opens test.csv in the data folder
    assert input_location({"test_images": "imgs", "inference": {}}) == ("imgs", False)
    (data / "test.csv").unlink()
    with pytest.raises(BundleError) as e:
        find_competition_data(tmp_path / "input", "sample_submission.csv", name, test_file=is_file)
    assert "sample_submission.csv with test.csv beside it" in str(e.value)
    assert "CONFIG['inference']['input']['path']" in str(e.value)


@pytest.mark.parametrize("pixel_max", ["image", 1000.0])
def test_csv_values_are_scaled_per_image_or_by_a_number(tmp_path: Path, pixel_max: float | str) -> None:
    values = np.random.default_rng(6).integers(0, 1001, (4, H, W)).astype(np.int64)
    write_pixels_csv(tmp_path / "t.csv", values, label=False)
    pixels = PixelSettings(pixel_max=pixel_max)
    with open_reader(spec("csv_pixels", path="t.csv", shape=[H, W]), tmp_path, pixels=pixels) as reader:
        got = [reader.load(i, None, pixels).image for i in reader.ids]
    for k in range(4):
        top = float(values[k].max()) if pixel_max == "image" else 1000.0
        expected = np.clip(np.rint(values[k] * 255.0 / top), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(got[k], as_rgb(expected))


def test_mask_shapes_under_own_sizes_come_from_the_reader(tmp_path: Path) -> None:
    from bundler.scoring import mask_shapes

    np.savez(tmp_path / "k.npz", a=np.zeros((3, 5), np.uint8), b=np.zeros((7, 2, 3), np.uint8))
    base = tiny_spec(tmp_path, classifiers=[], segmenters=[{"name": "s", "kind": "torchscript", "file": "s.pt"}])
    own = dataclasses.replace(base, image_sizes="own", input=spec("npz", path="k.npz", array="*"))
    assert mask_shapes(own, tmp_path, ["a", "b", "c"]) == {"a": (3, 5), "b": (7, 2)}


def test_csv_short_row_is_a_bad_row_and_a_long_row_an_error_naming_its_line(tmp_path: Path) -> None:
    path = write_pixels_csv(tmp_path / "t.csv", grey_stack(n=3), label=False)
    lines = path.read_text().splitlines()
    short = [*lines[:2], lines[2].rsplit(",", 1)[0], lines[3]]  # row 1 lacks its last pixel
    path.write_text("\n".join(short) + "\n")
    with open_reader(spec("csv_pixels", path="t.csv", shape=[H, W]), tmp_path) as reader:
        loaded = reader.load("1", None, None)
    assert loaded.issue == "unreadable" and f"pixel column 'pixel{H * W - 1}' is missing" in (loaded.problem or "")
    long = [*lines[:3], lines[3] + ",5"]  # row 2 (line 4) has one field too many
    path.write_text("\n".join(long) + "\n")
    with pytest.raises(InputError) as e:
        open_reader(spec("csv_pixels", path="t.csv", shape=[H, W]), tmp_path)
    assert str(e.value).startswith(f"{path}: cannot be read as CSV pixel rows") and "line 4" in str(e.value)
