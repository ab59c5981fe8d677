"""Sample submission layouts and the streaming writer that always writes every row."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_src.errors import SubmissionFormatError
from kernel_src.submission import (
    SampleSubmission,
    SubmissionWriter,
    class_number,
    mask_rows,
    read_csv_strings,
    read_mask_rows,
    read_masks,
    read_sample_submission,
)

IDS = ("b.jpg", "a.jpg", "c_1.jpg")  # not sorted, and one id that itself contains "_1"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def wide_sample(tmp_path: Path, classes: int = 4, ids: tuple[str, ...] = IDS) -> Path:
    rows = "".join(f"{i}_{c},\n" for i in ids for c in range(1, classes + 1))
    return write(tmp_path / "sample_submission.csv", "ImageId_ClassId,EncodedPixels\n" + rows)


def long_sample(tmp_path: Path, header: str = "ImageId,EncodedPixels,ClassId") -> Path:
    cols = header.split(",")
    values = {"EncodedPixels": "1 1", "ClassId": "0"}
    rows = "".join(",".join(i if c == "ImageId" else values[c] for c in cols) + "\n" for i in IDS)
    return write(tmp_path / "sample_submission.csv", header + "\n" + rows)


def test_read_wide(tmp_path: Path) -> None:
    sample = read_sample_submission(wide_sample(tmp_path), 4)
    assert sample == SampleSubmission("wide", ("ImageId_ClassId", "EncodedPixels"), IDS, 4)
    assert sample.rows == 12


@pytest.mark.parametrize("header", ["ImageId,EncodedPixels,ClassId", "ImageId,ClassId,EncodedPixels"])
def test_read_long(tmp_path: Path, header: str) -> None:
    sample = read_sample_submission(long_sample(tmp_path, header), 4)
    assert sample.layout == "long"
    assert sample.columns == tuple(header.split(","))
    assert sample.image_ids == IDS


def test_long_ids_are_unique_in_first_appearance_order(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "ImageId,ClassId,EncodedPixels\nz.jpg,1,\ny.jpg,1,\nz.jpg,2,\n")
    assert read_sample_submission(path, 4).image_ids == ("z.jpg", "y.jpg")


def test_unknown_header_names_file_header_and_layouts(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.csv", "id,rle\na.jpg,\n")
    with pytest.raises(SubmissionFormatError) as info:
        read_sample_submission(path, 4)
    message = str(info.value)
    assert str(path) in message and "['id', 'rle']" in message
    assert "ImageId_ClassId,EncodedPixels" in message and "ImageId,ClassId,EncodedPixels" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["a.jpg_5", "a.jpg_0", "a.jpg", "a.jpg_x", "_1", "a.jpg_1.0", "a.jpg_"])
def test_bad_wide_key(tmp_path: Path, key: str) -> None:
    path = write(tmp_path / "s.csv", f"ImageId_ClassId,EncodedPixels\n{key},\n")
    with pytest.raises(SubmissionFormatError, match=r"does not end with _<class> for a class in 1\.\.4"):
        read_sample_submission(path, 4)


BAD_CLASS_IDS = ["1.0", "0", "5", "x", "", " 1", "+1", "\u0661"]  # the last: ARABIC-INDIC DIGIT ONE


@pytest.mark.parametrize("value", BAD_CLASS_IDS)
def test_class_number_is_plain_digits_in_range(value: str) -> None:
    assert class_number(value, 4) is None
    assert [class_number(v, 4) for v in ("1", "4", "04")] == [1, 4, 4]


@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("value", BAD_CLASS_IDS)
def test_bad_long_class_id_names_file_line_and_value(tmp_path: Path, value: str, labels: bool) -> None:
    path = write(tmp_path / "labels.csv", f'ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nb.jpg,"{value}",3 4\n')
    with pytest.raises(SubmissionFormatError) as info:
        read_mask_rows(path, 4, labels=labels)
    message = str(info.value)
    assert f"{path} line 3: image 'b.jpg' has ClassId {value!r}" in message
    assert "expected an integer in 1..4 written as plain digits" in message


def test_bad_wide_key_in_a_submission_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "sub.csv", "ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1.0,1 2\n")
    with pytest.raises(SubmissionFormatError, match=r"sub\.csv line 3: ImageId_ClassId key 'a\.jpg_1\.0' does not end"):
        read_masks(path, 4)


def test_rows_of_both_layouts_and_masks_per_image(tmp_path: Path) -> None:
    wide = write(tmp_path / "wide.csv", "ImageId_ClassId,EncodedPixels\nb.jpg_2,1 2\nb.jpg_1,\na.jpg_2,\n")
    assert read_mask_rows(wide, 2) == [(2, "b.jpg", 2, "1 2"), (3, "b.jpg", 1, ""), (4, "a.jpg", 2, "")]
    assert read_masks(wide, 2) == {"b.jpg": ["", "1 2"], "a.jpg": ["", ""]}
    long = write(tmp_path / "long.csv", "ImageId,EncodedPixels,ClassId\na.jpg,5 1,2\na.jpg,,2\n")
    assert read_masks(long, 2) == {"a.jpg": ["", "5 1"]}  # an empty row beside a mask adds nothing


def test_labels_are_long_only_and_one_mask_per_pair(tmp_path: Path) -> None:
    wide = write(tmp_path / "wide.csv", "ImageId_ClassId,EncodedPixels\na.jpg_1,\n")
    with pytest.raises(SubmissionFormatError, match=r"labels must be in the long train\.csv form"):
        read_masks(wide, 4, labels=True)
    twice = write(tmp_path / "twice.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\na.jpg,1,3 1\n")
    with pytest.raises(SubmissionFormatError, match=r"twice\.csv line 3: image 'a\.jpg' class 1 has two non-empty"):
        read_masks(twice, 4, labels=True)
    empty_id = write(tmp_path / "noid.csv", "ImageId,ClassId,EncodedPixels\n,1,1 1\n")
    with pytest.raises(SubmissionFormatError, match=r"noid\.csv line 2: the ImageId is empty"):
        read_masks(empty_id, 4, labels=True)
    with pytest.raises(SubmissionFormatError, match="empty"):
        read_masks(write(tmp_path / "e.csv", ""), 4, labels=True)


def test_mask_rows_of_a_frame_number_lines_as_its_csv_would(tmp_path: Path) -> None:
    frame = read_csv_strings(write(tmp_path / "l.csv", "ImageId,ClassId,EncodedPixels\na.jpg,3,1 1\n"))
    assert mask_rows(frame, "frame", 4) == [(2, "a.jpg", 3, "1 1")]


def test_wide_sample_missing_a_class_or_listing_one_twice(tmp_path: Path) -> None:
    with pytest.raises(SubmissionFormatError, match=r"lacks the keys for classes \[4\]"):
        read_sample_submission(wide_sample(tmp_path, classes=3), 4)
    path = write(tmp_path / "d.csv", "ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1,\n")
    with pytest.raises(SubmissionFormatError, match="listed twice"):
        read_sample_submission(path, 1)


def test_empty_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(SubmissionFormatError, match="empty"):
        read_sample_submission(write(tmp_path / "e.csv", ""), 4)


def test_cells_are_strings_never_nan(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "ImageId,ClassId,EncodedPixels\nNA,1,\nnan,2,NaN\n")
    frame = read_csv_strings(path)
    assert frame["ImageId"].tolist() == ["NA", "nan"]
    assert frame["EncodedPixels"].tolist() == ["", "NaN"]
    assert frame["ClassId"].tolist() == ["1", "2"]


def test_wide_writer_output_is_exact(tmp_path: Path) -> None:
    sample = read_sample_submission(wide_sample(tmp_path, classes=2), 2)
    out = tmp_path / "submission.csv"
    with SubmissionWriter(out, sample) as writer:
        writer.add("a.jpg", ["1 3", ""])
        writer.add("b.jpg", ["", "5 2"])
    assert writer.close() == 6
    assert out.read_bytes() == (
        b"ImageId_ClassId,EncodedPixels\nb.jpg_1,\nb.jpg_2,5 2\na.jpg_1,1 3\na.jpg_2,\nc_1.jpg_1,\nc_1.jpg_2,\n"
    )
    assert writer.filled == 1
    assert read_sample_submission(out, 2).image_ids == IDS  # the output is itself a valid sample


def test_long_writer_follows_header_order_and_lists_every_class(tmp_path: Path) -> None:
    sample = read_sample_submission(long_sample(tmp_path, "ImageId,EncodedPixels,ClassId"), 2)
    out = tmp_path / "submission.csv"
    with SubmissionWriter(out, sample) as writer:
        writer.add("a.jpg", ["1 3", ""])
    assert out.read_text(encoding="utf-8") == (
        "ImageId,EncodedPixels,ClassId\nb.jpg,,1\nb.jpg,,2\na.jpg,1 3,1\na.jpg,,2\nc_1.jpg,,1\nc_1.jpg,,2\n"
    )


def test_out_of_order_adds_are_buffered_then_streamed(tmp_path: Path) -> None:
    sample = read_sample_submission(wide_sample(tmp_path, classes=1), 1)
    writer = SubmissionWriter(tmp_path / "s.csv", sample)
    writer.add("c_1.jpg", ["9 1"])
    writer.add("a.jpg", ["5 1"])
    assert (writer.buffered, writer.written) == (2, 0)
    writer.add("b.jpg", ["1 1"])
    assert (writer.buffered, writer.written) == (0, 3)
    writer.close()
    assert (
        tmp_path / "s.csv"
    ).read_text() == "ImageId_ClassId,EncodedPixels\nb.jpg_1,1 1\na.jpg_1,5 1\nc_1.jpg_1,9 1\n"


def test_in_order_adds_never_buffer(tmp_path: Path) -> None:
    ids = tuple(f"{i:04d}.jpg" for i in range(50))
    sample = read_sample_submission(wide_sample(tmp_path, ids=ids), 4)
    with SubmissionWriter(tmp_path / "s.csv", sample) as writer:
        for image_id in ids:
            writer.add(image_id, ["1 1", "", "", ""])
            assert writer.buffered == 0
    assert writer.written == 50 and writer.filled == 0


def test_every_row_is_written_when_the_block_raises(tmp_path: Path) -> None:
    sample = read_sample_submission(long_sample(tmp_path), 4)
    out = tmp_path / "submission.csv"
    with pytest.raises(RuntimeError, match="model crashed"), SubmissionWriter(out, sample) as writer:
        writer.add("a.jpg", ["1 1", "", "", "7 2"])
        raise RuntimeError("model crashed")
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 3 * 4
    assert "a.jpg,7 2,4" in lines
    assert writer.filled == 2


def test_unknown_and_duplicate_ids_are_counted_not_written(tmp_path: Path) -> None:
    sample = read_sample_submission(wide_sample(tmp_path, classes=1), 1)
    out = tmp_path / "s.csv"
    with SubmissionWriter(out, sample) as writer:
        writer.add("zzz.jpg", ["1 1"])
        writer.add("b.jpg", ["1 1"])
        writer.add("b.jpg", ["2 1"])  # already written
        writer.add("c_1.jpg", ["3 1"])
        writer.add("c_1.jpg", ["4 1"])  # still buffered
    assert (writer.ignored, writer.duplicates) == (1, 2)
    assert "zzz" not in out.read_text()
    assert "b.jpg_1,1 1\n" in out.read_text() and "c_1.jpg_1,3 1\n" in out.read_text()


def test_output_is_byte_deterministic_whatever_the_arrival_order(tmp_path: Path) -> None:
    sample = read_sample_submission(wide_sample(tmp_path), 4)
    masks = {"a.jpg": ["1 2", "", "3 4", ""], "b.jpg": ["", "", "", "9 9"], "c_1.jpg": ["", "5 5", "", ""]}
    outputs = []
    for name, order in (("one.csv", ["a.jpg", "b.jpg", "c_1.jpg"]), ("two.csv", ["c_1.jpg", "b.jpg", "a.jpg"])):
        with SubmissionWriter(tmp_path / name, sample) as writer:
            for image_id in order:
                writer.add(image_id, masks[image_id])
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    assert b"\r" not in outputs[0] and b"nan" not in outputs[0].lower()


def test_empty_sample_writes_the_header_only(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "ImageId,ClassId,EncodedPixels\n")
    sample = read_sample_submission(path, 4)
    assert sample.image_ids == ()
    with SubmissionWriter(tmp_path / "out.csv", sample) as writer:
        pass
    assert writer.close() == 0
    assert (tmp_path / "out.csv").read_text() == "ImageId,ClassId,EncodedPixels\n"


def test_misuse_is_refused(tmp_path: Path) -> None:
    sample = read_sample_submission(wide_sample(tmp_path), 4)
    writer = SubmissionWriter(tmp_path / "s.csv", sample)
    with pytest.raises(ValueError, match="got 2 RLE strings; expected one per class"):
        writer.add("a.jpg", ["", ""])
    with pytest.raises(TypeError, match="must be str"):
        writer.add("a.jpg", ["", float("nan"), "", ""])  # type: ignore[list-item]
    assert writer.close() == 12
    assert writer.close() == 12  # idempotent
    with pytest.raises(ValueError, match="after close"):
        writer.add("a.jpg", ["", "", "", ""])
