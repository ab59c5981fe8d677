"""[submission] and the geometry settings (issue 16): validation, header checks that name the
setting to change, per-object and relative RLEs, declared pixel depth and channels, and the
metric's empty-pair rule and per-image sizes."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bundler.config import parse_config
from bundler.errors import ConfigError
from bundler.scoring.metric import dice_score
from kernel_src.errors import SpecError, SubmissionFormatError
from kernel_src.images import PixelSettings, decode_image, image_paths
from kernel_src.layout import SubmissionSpec
from kernel_src.rle import decode, encode, encode_objects, from_relative, to_relative, union
from kernel_src.spec import InferenceSpec
from kernel_src.submission import SubmissionWriter, read_masks, read_sample_submission

ROOT = Path(__file__).resolve().parents[2]
CLOUDS = {"layout": "custom", "key_column": "Image_Label", "key": "{image}_{class}",
          "classes": ["Fish", "Flower", "Gravel", "Sugar"]}  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "n", "expected"),
    [
        (
            {"layout": "severstal-wide", "mask_column": "rle"},
            4,
            r"submission\.mask_column: applies to layout = 'custom'",
        ),
        ({"layout": "wide"}, 4, r"submission\.layout: 'wide' must be one of"),
        ({"layout": "custom"}, 4, r"submission\.key: 4 classes need the class in the key"),
        ({**CLOUDS, "classes": ["Fish", "Flower"]}, 4, r"submission\.classes: lists 2 tokens for num_classes = 4"),
        ({**CLOUDS, "classes": ["Fish", "Fish", "a", "b"]}, 4, r"submission\.classes: tokens must be unique"),
        ({**CLOUDS, "key": "{image}{class}"}, 4, r"submission\.key: .* put a separator"),
        ({**CLOUDS, "key": "{img}_{class}"}, 4, r"submission\.key: .* must hold \{image\} once"),
        ({**CLOUDS, "class_column": "Label"}, 4, r"submission\.class_column: the key already holds \{class\}"),
        ({"layout": "custom", "empty": "none"}, 1, r"submission\.empty: 'none': an empty mask is written as"),
        ({"layout": "custom", "rows": "per_ship"}, 1, r"submission\.rows: 'per_ship' must be one of"),
        ({"layout": "custom", "rle_starts": "offset"}, 1, r"submission\.rle_starts: 'offset' must be"),
        ({"layout": "custom", "image_id": "name"}, 1, r"submission\.image_id: 'name' must be 'file'"),
        ({"layout": "custom", "mask_column": "ImageId"}, 1, r"submission\.mask_column: key, class and mask columns"),
        ({"layout": "custom", "classes": "Fish"}, 1, r"submission\.classes: must be a list"),
        ({"layout": "custom", "key_column": 3}, 1, r"submission\.key_column: must be a string"),
        ({"empty_pair": "half"}, 4, r"submission\.empty_pair: 'half' must be one of"),
        ({"colour": "red"}, 4, r"submission\.colour: unknown setting"),
    ],
)
def test_a_bad_submission_setting_names_itself(data: dict[str, Any], n: int, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        SubmissionSpec.from_dict(data, n)


def test_geometry_settings_are_checked_and_round_trip(tmp_path: Path) -> None:
    base = InferenceSpec.from_dict({"segmenters": [{"name": "s", "kind": "torchscript", "file": "s.pt"}]})
    data = base.to_dict() | {"encode_size": [350, 525], "image_sizes": "own", "bit_depth": 16, "pixel_max": 4095}
    spec = InferenceSpec.from_dict(data | {"image_channels": 1, "submission": CLOUDS})
    assert (spec.encode_size, spec.image_sizes, spec.bit_depth, spec.pixel_max) == ((350, 525), "own", 16, 4095.0)
    assert InferenceSpec.from_dict(spec.to_dict()) == spec
    assert InferenceSpec.from_dict(base.to_dict() | {"encode_size": "image"}).encode_size is None
    for key, value, message in [
        ("encode_size", [350], "'image' or \\[height, width\\]"),
        ("encode_size", [350.0, 525], "'image' or \\[height, width\\]"),
        ("image_sizes", "varied", "'fixed' .* or 'own'"),
        ("bit_depth", 12, "must be 8 or 16"),
        ("pixel_max", 0, "must be a positive number"),
        ("pixel_max", "max", "'depth', 'image' or a positive number"),
        ("image_channels", 4, "must be 3, or 1"),
    ]:
        with pytest.raises(SpecError, match=message) as info:
            InferenceSpec.from_dict(base.to_dict() | {key: value})
        assert info.value.key == key


def _raw(**submission: Any) -> dict[str, Any]:
    raw = tomllib.loads((ROOT / "bundle.toml").read_text())
    raw["submission"] = submission
    return raw


def test_bundle_toml_submission_section() -> None:
    cfg = parse_config(_raw(**CLOUDS, rle_order="F"), ROOT)
    assert cfg.inference.submission.classes == ("Fish", "Flower", "Gravel", "Sugar")
    assert cfg.inference.rle_order == "F"
    raw = _raw(**CLOUDS, rle_order="C")
    raw["inference"]["rle_order"] = "F"
    with pytest.raises(ConfigError, match=r"submission\.rle_order = 'C' and inference\.rle_order = 'F' disagree"):
        parse_config(raw, ROOT)
    with pytest.raises(ConfigError, match=r"^bundle\.toml: submission\.classes: lists 3 tokens"):
        parse_config(_raw(**{**CLOUDS, "classes": ["a", "b", "c"]}), ROOT)
    with pytest.raises(ConfigError, match=r"unknown key submission\.colour"):
        parse_config(_raw(colour="red"), ROOT)


# --- the header found at run time -----------------------------------------------------------


def test_a_sample_the_settings_do_not_describe_names_the_setting_to_change(tmp_path: Path) -> None:
    clouds = _write(tmp_path / "clouds.csv", "Image_Label,EncodedPixels\na.jpg_Fish,1 1\n")
    with pytest.raises(
        SubmissionFormatError, match=r"unknown header .* describe this file in bundle\.toml's \[submission\]"
    ):
        read_sample_submission(clouds, 4)
    long = _write(tmp_path / "long.csv", "ImageId,EncodedPixels,ClassId\na.jpg,1 1,0\n")
    wide = SubmissionSpec.from_dict({"layout": "severstal-wide"}, 4)
    with pytest.raises(SubmissionFormatError, match=r"set submission\.layout = 'severstal-long'"):
        read_sample_submission(long, 4, wide)
    carvana = _write(tmp_path / "carvana.csv", "img,rle_mask\na.jpg,1 1\n")
    guessed = SubmissionSpec.from_dict({"layout": "custom", "key_column": "img"}, 1)
    with pytest.raises(
        SubmissionFormatError, match=r"change submission\.mask_column = 'EncodedPixels' to the sample's"
    ):
        read_sample_submission(carvana, 1, guessed)
    spec = SubmissionSpec.from_dict(CLOUDS, 4)
    partial = _write(tmp_path / "partial.csv", "Image_Label,EncodedPixels\na.jpg_Fish,1 1\na.jpg_Sugar,1 1\n")
    with pytest.raises(SubmissionFormatError, match=r"'a\.jpg' lacks the keys for classes \['Flower', 'Gravel'\]"):
        read_sample_submission(partial, 4, spec)
    other = _write(tmp_path / "other.csv", "Image_Label,EncodedPixels\na.jpg_Cirrus,1 1\n")
    with pytest.raises(SubmissionFormatError, match=r"other\.csv line 2: key 'a\.jpg_Cirrus' .* submission\.classes"):
        read_sample_submission(other, 4, spec)


def test_the_writer_and_reader_agree_on_a_custom_layout(tmp_path: Path) -> None:
    spec = SubmissionSpec.from_dict(
        {"layout": "custom", "key_column": "id", "class_column": "class", "mask_column": "predicted",
         "classes": ["large_bowel", "stomach"], "empty": "-1", "image_id": "stem"}, 2)  # fmt: skip
    sample_csv = _write(tmp_path / "s.csv", "class,id,predicted\nstomach,b_1,\nlarge_bowel,a_2,\n")
    sample = read_sample_submission(sample_csv, 2, spec)
    assert sample.image_ids == ("b_1", "a_2") and sample.layout == "custom"
    with SubmissionWriter(tmp_path / "out.csv", sample) as writer:
        writer.add("a_2", ["", "5 3"])
    text = (tmp_path / "out.csv").read_text()
    assert text == "class,id,predicted\nlarge_bowel,b_1,-1\nstomach,b_1,-1\nlarge_bowel,a_2,-1\nstomach,a_2,5 3\n"
    assert read_masks(tmp_path / "out.csv", 2, submission=spec) == {"b_1": ["", ""], "a_2": ["", "5 3"]}


# --- RLE helpers ----------------------------------------------------------------------------


def test_objects_are_components_in_pixel_order_and_unite_back() -> None:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[0:2, 5:7] = 1  # second along columns
    mask[3:6, 0:2] = 1  # first along columns
    mask[4, 3] = 1  # diagonal neighbours are one object (8-connected)
    mask[5, 4] = 1
    for order in ("F", "C"):
        objects = encode_objects(mask, order)
        assert len(objects) == 3
        merged = ""
        for rle in objects:
            assert np.count_nonzero(decode(rle, mask.shape, order)) > 0
            merged = union(merged, rle)
        assert merged == encode(mask, order)
    assert encode_objects(np.zeros((3, 3)), "F") == []
    assert [int(r.split()[0]) for r in encode_objects(mask, "F")] == sorted(
        int(r.split()[0]) for r in encode_objects(mask, "F")
    )
    with pytest.raises(ValueError, match="overlap"):
        union("1 5", "3 2")


def test_relative_rle_round_trips_and_matches_siim_counting() -> None:
    assert to_relative("1 3 10 2") == "0 3 6 2"  # 0-based first start; 6 pixels between runs
    assert from_relative("0 3 6 2") == "1 3 10 2"
    assert to_relative("") == from_relative("") == ""
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.7
    rle = encode(mask, "F")
    assert from_relative(to_relative(rle)) == rle
    with pytest.raises(ValueError, match="odd number"):
        from_relative("0 3 6")


# --- declared pixels ------------------------------------------------------------------------


def _png(path: Path, pixels: np.ndarray[Any, Any]) -> Path:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_sixteen_bit_grey_is_scaled_as_declared_and_not_reported(tmp_path: Path) -> None:
    grey = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = _png(tmp_path / "slice.png", grey)
    undeclared = decode_image(path, "slice.png")
    assert undeclared.issue == "converted" and "uint16 pixels scaled" in str(undeclared.problem)
    assert "single-channel" in str(undeclared.problem)
    declared = decode_image(path, "slice.png", pixels=PixelSettings(16, 4000, 1))
    assert declared.issue is None and declared.problem is None
    assert declared.image is not None and declared.image[:, :, 0].tolist() == [[0, 64], [128, 255]]
    own_max = decode_image(path, "slice.png", pixels=PixelSettings(16, "image", 1))
    assert own_max.image is not None and own_max.image[1, 1, 0] == 255 and own_max.issue is None
    full = decode_image(path, "slice.png", pixels=PixelSettings(16, "depth", 1))
    assert full.image is not None and full.image[1, 1, 0] == round(4000 * 255 / 65535)
    eight = _png(tmp_path / "eight.png", np.full((2, 2), 7, dtype=np.uint8))
    wrong = decode_image(eight, "eight.png", pixels=PixelSettings(16, "depth", 1))
    assert wrong.issue == "converted" and "bit_depth = 16 is declared" in str(wrong.problem)


def test_image_ids_map_to_files_by_stem(tmp_path: Path) -> None:
    (tmp_path / "case1_slice_0001.png").write_bytes(b"x")
    paths = image_paths(tmp_path, ["case1_slice_0001", "absent"], "stem")
    assert paths == {"case1_slice_0001": tmp_path / "case1_slice_0001.png", "absent": tmp_path / "absent"}
    assert image_paths(tmp_path, ["a.jpg"], "file") == {"a.jpg": tmp_path / "a.jpg"}


# --- the metric -----------------------------------------------------------------------------


def test_the_metric_follows_the_empty_pair_rule_objects_and_sizes(tmp_path: Path) -> None:
    sub = _write(tmp_path / "sub.csv", "ImageId,EncodedPixels\na.jpg,1 2\na.jpg,5 1\nb.jpg,\nc.jpg,\n")
    lab = _write(tmp_path / "lab.csv", "ImageId,EncodedPixels\na.jpg,1 2\na.jpg,5 1\nb.jpg,\nc.jpg,3 1\n")

    def score(rule: str, shape: Any = (3, 3)) -> Any:
        spec = SubmissionSpec.from_dict({"layout": "custom", "rows": "per_object", "empty_pair": rule}, 1)
        return dice_score(sub, lab, num_classes=1, shape=shape, submission_spec=spec)

    one, zero, skip = score("one"), score("zero"), score("skip")
    assert (one.mean, one.pairs) == (pytest.approx(2 / 3), 3)  # a: objects united, 1; b: empty-empty 1; c: 0
    assert (zero.mean, zero.pairs) == (pytest.approx(1 / 3), 3)
    assert (skip.mean, skip.pairs) == (pytest.approx(1 / 2), 2)
    with pytest.raises(ValueError, match=r"image 'a\.jpg' class 1: RLE run ends at pixel 5, past the mask's 4"):
        score("one", {"a.jpg": (2, 2), "b.jpg": (3, 3), "c.jpg": (3, 3)})


# --- images of their own sizes --------------------------------------------------------------


def test_own_sizes_are_batched_by_size_and_encoded_at_each_own_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kernel_src.predict as predict_module
    from kernel_src.run import run
    from tests.tiny import make_torchscript_segmenter, tiny_spec, write_image, write_sample

    seen: list[tuple[int, ...]] = []
    predict = predict_module.Predictor.predict

    def recording(self: Any, images: np.ndarray[Any, Any]) -> Any:
        seen.append(tuple(images.shape))
        return predict(self, images)

    monkeypatch.setattr(predict_module.Predictor, "predict", recording)
    seg = make_torchscript_segmenter(tmp_path / "bundle", num_classes=1, input_size=None)
    sizes = [(32, 64), (48, 32), (32, 64), (48, 32), (32, 64)]  # interleaved, batch_size 2
    ids = [f"img{i}.png" for i in range(len(sizes))]
    rng = np.random.default_rng(0)
    for image_id, (h, w) in zip(ids, sizes, strict=True):
        write_image(tmp_path / "test" / image_id, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    sample = write_sample(tmp_path / "sample.csv", ids, layout="long", num_classes=1)
    spec = tiny_spec(tmp_path / "bundle", num_classes=1, classifiers=[], segmenters=[seg], image_sizes="own",
                     batch_size=2, postprocess={"threshold": 0.0, "min_component": 0, "min_area": 0})  # fmt: skip
    result = run(spec, bundle_dir=tmp_path / "bundle", test_dir=tmp_path / "test", sample_submission=sample,
                 out_dir=tmp_path / "out", progress=False)  # fmt: skip
    assert sorted(seen) == sorted([(2, 32, 64, 3), (2, 48, 32, 3), (1, 32, 64, 3)])  # never two sizes in a batch
    masks = read_masks(result.submission_path, 1)
    for image_id, (h, w) in zip(ids, sizes, strict=True):
        assert masks[image_id][0] == f"1 {h * w}"  # threshold 0: the whole image, at its own size
    assert not result.profile["problems"].get("converted")
