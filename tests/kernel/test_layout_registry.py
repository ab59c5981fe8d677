"""The contract every registered submission layout keeps (kernel_src.layout.PRESETS, issue 21):
its header is told apart from the others', rows written through its Layout read back to the same
masks, and a header that does not fit is refused naming the setting to change. A new preset is
one registry entry; these tests cover it without a line more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel_src.layout import PRESETS, Layout, Preset, SubmissionSpec, detect, resolve
from kernel_src.submission import (
    SampleSubmission,
    SubmissionFormatError,
    SubmissionWriter,
    masks_by_image,
    read_csv_strings,
    read_mask_rows,
    read_sample_submission,
    rows_in,
)

ROOT = Path(__file__).resolve().parents[2]
# SIIM-ACR and Airbus both write `ImageId,EncodedPixels`: no header tells them apart, which is why
# neither is detected. Any other shared header is a registry mistake.
SHARED_HEADERS = {"siim-acr": {"airbus"}, "airbus": {"siim-acr"}}
IDS = ("b.jpg", "a_1.jpg", "c.jpg")  # not sorted, and an id holding "_1" itself


def _classes(preset: Preset) -> int:
    """A class count the preset's settings allow: its named classes, else 4 where a class token is
    written, else 1."""
    settings = preset.settings
    if settings.classes:
        return len(settings.classes)
    return 4 if "{class}" in settings.key or settings.class_column else 1


def _layout(preset: Preset) -> Layout:
    return preset.layout(_classes(preset))


presets = pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))


@presets
def test_its_header_is_detected_as_itself_and_claimed_by_no_other(preset: Preset) -> None:
    header = _layout(preset).columns
    assert header == preset.header
    for order in (header, tuple(reversed(header))):
        assert preset.fits(order)
        claimed = {p.name for p in PRESETS.values() if p.fits(order)}
        assert claimed == {preset.name} | SHARED_HEADERS.get(preset.name, set())
        assert detect(order) is (preset if preset.detected else None)
    if preset.name in SHARED_HEADERS:
        assert not preset.detected, "a header shared with another preset cannot be detected"


@presets
def test_its_settings_resolve_to_its_layout(preset: Preset) -> None:
    """What bundle.toml writes to select the preset resolves, against its header, to its Layout;
    a named preset's settings are its name alone, a custom one's pass the settings' own checks."""
    n = _classes(preset)
    preset.settings.check(n)  # the entry's own settings agree with each other
    selection = preset.selection()
    assert resolve(selection, tuple(reversed(preset.header)), n, "sample.csv") == preset.layout(n)
    assert selection.per_object == preset.layout(n).per_object  # what the notebook encodes per object
    table = {"layout": selection.layout} | {
        k: getattr(selection, k) for k in SubmissionSpec.__dataclass_fields__ if k != "layout"
    }
    assert SubmissionSpec.from_dict(table if not preset.named else {"layout": preset.name}, n) == selection


def _masks(layout: Layout) -> dict[str, list[str | tuple[str, ...]]]:
    """A small set: an image with nothing, one with a mask in the first class (two runs: relative
    starts differ from absolute ones), and one with a one-pixel mask in the last class; in a
    per-object layout, the two runs as two objects."""
    n = len(layout.tokens)
    two_runs: str | tuple[str, ...] = ("1 3", "10 2") if layout.per_object else "1 3 10 2"
    return {
        "b.jpg": [""] * n,
        "a_1.jpg": [two_runs] + [""] * (n - 1),
        "c.jpg": [""] * (n - 1) + ["7 1"],
    }


@presets
def test_rows_written_through_its_layout_read_back_to_the_same_masks(preset: Preset, tmp_path: Path) -> None:
    layout = _layout(preset)
    n = len(layout.tokens)
    columns = tuple(reversed(layout.columns))  # a file may order the columns otherwise
    sample = SampleSubmission(layout.name, columns, IDS, n, layout)
    out = tmp_path / "submission.csv"
    masks = _masks(layout)
    with SubmissionWriter(out, sample) as writer:
        for image_id in ("c.jpg", "a_1.jpg", "b.jpg"):
            writer.add(image_id, masks[image_id])
    assert writer.close() == (len(IDS) * n + (1 if layout.per_object else 0))

    frame = read_csv_strings(out)
    assert tuple(frame.columns) == columns
    if layout.empty:
        assert (frame[layout.mask_column] == "").sum() == 0, "an empty mask is written as the empty value"
    rows = rows_in(frame, layout, str(out))
    expected = {"b.jpg": [""] * n, "a_1.jpg": ["1 3 10 2"] + [""] * (n - 1), "c.jpg": [""] * (n - 1) + ["7 1"]}
    assert masks_by_image(rows, n, str(out), merge=layout.per_object) == expected
    # the file written is itself a sample of the layout, and reads the same by its bundle.toml settings
    again = read_sample_submission(out, n, preset.selection())
    assert (again.image_ids, again.resolved, again.columns) == (IDS, layout, columns)
    assert read_mask_rows(out, n, submission=preset.selection()) == rows


@presets
def test_a_header_that_does_not_fit_is_refused_naming_the_setting(preset: Preset, tmp_path: Path) -> None:
    n = _classes(preset)
    path = tmp_path / "sample_submission.csv"
    path.write_text("id_x,rle_y\na.jpg,1 1\n", encoding="utf-8")
    with pytest.raises(SubmissionFormatError) as info:
        read_sample_submission(path, n, preset.selection())
    message = str(info.value)
    assert message.startswith(f"{path}: header ['id_x', 'rle_y']")
    named = re.findall(r"submission\.(\w+) = '([^']*)'", message)
    assert named, message
    if preset.named:
        assert named == [("layout", "custom")]
    else:
        wrong = {"key_column": preset.settings.key_column, "mask_column": preset.settings.mask_column}
        if preset.settings.class_column:
            wrong["class_column"] = preset.settings.class_column
        assert dict(named) == wrong  # each column the sample lacks, by the setting that names it


def test_auto_names_every_detected_header_when_none_fits(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("id,rle\na.jpg,\n", encoding="utf-8")
    with pytest.raises(SubmissionFormatError, match=r"unknown header \['id', 'rle'\]") as info:
        read_sample_submission(path, 4)
    detected = [p for p in PRESETS.values() if p.detected]
    assert detected
    for preset in detected:
        assert f"{preset.word} {','.join(preset.header)!r}" in str(info.value)


def test_docs_list_every_preset() -> None:
    """docs/layouts.md's table names each registered preset and its competition."""
    text = (ROOT / "docs" / "layouts.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z-]+)` \| ([^|]+?) \|", text, flags=re.M)}
    assert rows == {p.name: p.competition for p in PRESETS.values()}
