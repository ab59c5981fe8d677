"""The submission file's shape: the `[submission]` settings (`SubmissionSpec`), the `Layout` they
resolve to, and the registry of known layouts (`PRESETS`). Stdlib only.

A submission is one CSV; the settings say how its rows are made (the RLE pixel order is
`InferenceSpec.rle_order`, which `[submission] rle_order` sets):

- `layout`: "auto" (default: a preset that the registry marks `detected`, told from the sample's
  header: Severstal's wide or long), the name of a preset marked `named` ("severstal-wide",
  "severstal-long"), or "custom" (the general form below; its keys apply to "custom" only);
- `key_column`: the column holding the key; `key`: how a key is made from `{image}` (the image
  id) and, when the class is part of the key, `{class}` (its token), e.g. "{image}_{class}";
- `class_column`: a column of its own holding the class token ("" when the class is in the key,
  or there is one class and no token at all);
- `image_id`: "file" (the test image's file name, extension included) or "stem" (without it);
- `classes`: the class tokens in class order, numbers ("1".."C", the default) or names
  (["Fish", "Flower", "Gravel", "Sugar"]);
- `mask_column`: the RLE column; `empty`: the value written for an empty mask ("" or "-1" ...);
- `rle_starts`: "absolute" (1-based starts, the usual RLE) or "relative" (SIIM-ACR's: each start
  counted from the end of the previous run, the first 0-based; `kernel_src.rle.to_relative`);
- `rows`: "per_class" (one row per image x class) or "per_object" (one row per connected
  component, as in instance-level competitions; an image x class without any gets one row with
  the empty value);
- `empty_pair`: what the dry-run's Dice gives an image x class empty in both the submission and
  the labels: "one" (Severstal, Clouds, SIIM), "zero", or "skip" (left out of the mean).

Every layout, preset or custom, is one `Layout`: the concrete columns, the key maker and reader,
and the reading of a row's cells. A preset is a registry entry of general-form settings, able to
say whether a header fits it; "auto" is a loop over the registry. `resolve(spec, columns, ...)`
turns the settings and the header found at run time into a `Layout`; a header that does not fit
is a `SubmissionFormatError` naming the setting to change. How to add a layout: docs/layouts.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from .errors import SpecError, SubmissionFormatError
from .settings import setting

AUTO, CUSTOM = "auto", "custom"  # the two values of submission.layout that are not a preset's name
IMAGE_IDS = ("file", "stem")
ROWS = ("per_class", "per_object")
EMPTY_PAIRS = ("one", "zero", "skip")
CUSTOM_KEYS = (
    "key_column",
    "key",
    "class_column",
    "image_id",
    "classes",
    "mask_column",
    "empty",
    "rle_starts",
    "rows",
)
RLE_STARTS = ("absolute", "relative")


@dataclass(frozen=True)
class SubmissionSpec:
    """The `[submission]` settings (see the module docstring); defaults are today's Severstal."""

    layout: str = field(
        default=AUTO,
        metadata=setting(
            '`"severstal-wide"` (`ImageId_ClassId,EncodedPixels`, keys `<image>_<1..C>`), `"severstal-long"` '
            '(`ImageId,ClassId,EncodedPixels`), or `"custom"`: the keys below, which apply to `"custom"` only. '
            '`"auto"`: a Severstal layout told from the sample\'s header.',
            choices=lambda: LAYOUT_NAMES,  # the registry below
        ),
    )
    key_column: str = field(default="ImageId", metadata=setting("the column holding the key."))
    key: str = field(
        default="{image}",
        metadata=setting(
            'how a key is made: `{image}` and, when the class is part of the key, `{class}` (`"{image}_{class}"`).'
        ),
    )
    class_column: str = field(
        default="",
        metadata=setting('a column of its own for the class token (`""`: in the key, or one class).'),
    )
    image_id: str = field(
        default="file",
        metadata=setting(
            'the image part of a key: `"file"` (the test file\'s name) or `"stem"` (without its extension; '
            "the file is found by its stem).",
            choices=IMAGE_IDS,
        ),
    )
    classes: tuple[str, ...] = field(  # () = "1".."C"
        default=(), metadata=setting("the class tokens in class order, e.g. names.", shown='`["1", ..., "C"]`')
    )
    mask_column: str = field(default="EncodedPixels", metadata=setting("the RLE column."))
    empty: str = field(default="", metadata=setting('what an empty mask is written as (`""` or `"-1"`).'))
    rle_starts: str = field(
        default="absolute",
        metadata=setting(
            '`"relative"`: each start counted from the end of the previous run (SIIM-ACR).', choices=RLE_STARTS
        ),
    )
    rows: str = field(
        default="per_class",
        metadata=setting(
            '`"per_object"`: one row per connected component (8-connected), one row with the empty value for an '
            "image x class without any.",
            choices=ROWS,
        ),
    )
    empty_pair: str = field(
        default="one",
        metadata=setting(
            'what the dry-run\'s Dice gives an image x class empty on both sides: `"one"`, `"zero"`, or '
            '`"skip"` (left out of the mean).',
            choices=EMPTY_PAIRS,
        ),
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], num_classes: int) -> SubmissionSpec:
        """Validated settings; a SpecError keyed `submission.<setting>` names what to change."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"submission.{sorted(unknown)[0]}", f"unknown setting; known: {sorted(known)}")
        layout = _text(data, "layout", AUTO)
        if layout not in LAYOUT_NAMES:
            raise SpecError("submission.layout", f"{layout!r} must be one of {list(LAYOUT_NAMES)}")
        defaults = cls()
        given = [k for k in CUSTOM_KEYS if k in data and _plain(data[k]) != _plain(getattr(defaults, k))]
        if layout != CUSTOM and given:
            raise SpecError(
                f"submission.{given[0]}",
                f"applies to layout = 'custom' only (layout is {layout!r}); set layout = 'custom'",
            )
        empty_pair = _text(data, "empty_pair", "one")
        if empty_pair not in EMPTY_PAIRS:
            raise SpecError("submission.empty_pair", f"{empty_pair!r} must be one of {list(EMPTY_PAIRS)}")
        if layout != CUSTOM:
            return cls(layout=layout, empty_pair=empty_pair)
        spec = cls(
            layout=layout,
            key_column=_text(data, "key_column", "ImageId"),
            key=_text(data, "key", "{image}"),
            class_column=_text(data, "class_column", ""),
            image_id=_text(data, "image_id", "file"),
            classes=_classes(data.get("classes", ())),
            mask_column=_text(data, "mask_column", "EncodedPixels"),
            empty=_text(data, "empty", ""),
            rle_starts=_text(data, "rle_starts", "absolute"),
            rows=_text(data, "rows", "per_class"),
            empty_pair=empty_pair,
        )
        spec.check(num_classes)
        return spec

    def check(self, num_classes: int) -> None:
        """The custom settings agree with each other and with `num_classes`."""
        for name in ("key_column", "mask_column"):
            if not getattr(self, name).strip():
                raise SpecError(f"submission.{name}", "must name a column of the sample submission")
        columns = [c for c in (self.key_column, self.class_column, self.mask_column) if c]
        if len(set(columns)) != len(columns):
            raise SpecError("submission.mask_column", f"key, class and mask columns must differ, got {columns}")
        if self.image_id not in IMAGE_IDS:
            raise SpecError("submission.image_id", f"{self.image_id!r} must be 'file' (with extension) or 'stem'")
        if self.rle_starts not in RLE_STARTS:
            raise SpecError("submission.rle_starts", f"{self.rle_starts!r} must be 'absolute' or 'relative'")
        if self.rows not in ROWS:
            raise SpecError("submission.rows", f"{self.rows!r} must be one of {list(ROWS)}")
        if self.key.count("{image}") != 1:
            raise SpecError("submission.key", f"{self.key!r} must hold {{image}} once, e.g. '{{image}}_{{class}}'")
        rest = self.key.replace("{image}", "").replace("{class}", "")
        if "{" in rest or "}" in rest or self.key.count("{class}") > 1:
            raise SpecError("submission.key", f"{self.key!r}: only {{image}} and one {{class}} may appear in braces")
        in_key = "{class}" in self.key
        if in_key and self.class_column:
            raise SpecError("submission.class_column", "the key already holds {class}; give one of the two")
        if in_key and "{image}{class}" in self.key:
            raise SpecError("submission.key", f"{self.key!r}: put a separator between {{image}} and {{class}}")
        if not in_key and not self.class_column and num_classes != 1:
            raise SpecError(
                "submission.key",
                f"{num_classes} classes need the class in the key ('{{image}}_{{class}}') or a class_column",
            )
        if self.classes:
            if len(self.classes) != num_classes:
                raise SpecError(
                    "submission.classes", f"lists {len(self.classes)} tokens for num_classes = {num_classes}"
                )
            if len(set(self.classes)) != len(self.classes) or any(not t for t in self.classes):
                raise SpecError("submission.classes", f"tokens must be unique and non-empty, got {list(self.classes)}")
        if self.empty.strip() and self.empty.strip() != "-1":
            raise SpecError("submission.empty", f"{self.empty!r}: an empty mask is written as '' or '-1'")

    def tokens(self, num_classes: int) -> tuple[str, ...]:
        """The class tokens in class order."""
        return self.classes or tuple(str(c) for c in range(1, num_classes + 1))

    @property
    def per_object(self) -> bool:
        """Whether the layout these settings select writes one row per object: a named preset's
        own `rows`; "auto" only when every detected preset's is per_object."""
        if self.layout == CUSTOM:
            return self.rows == "per_object"
        if self.layout == AUTO:
            return all(p.settings.rows == "per_object" for p in PRESETS.values() if p.detected)
        return PRESETS[self.layout].settings.rows == "per_object"


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike (to_dict writes lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _text(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise SpecError(f"submission.{key}", f"must be a string, got {type(value).__name__} {value!r}")
    return value


def _classes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise SpecError("submission.classes", f"must be a list of class tokens, got {value!r}")
    tokens = []
    for token in value:
        if isinstance(token, bool) or not isinstance(token, (str, int)):
            raise SpecError("submission.classes", f"token {token!r} must be a string or an integer")
        tokens.append(str(token))
    return tuple(tokens)


@dataclass(frozen=True)
class Layout:
    """A `SubmissionSpec` resolved against a header: `name` ("wide", "long" for the Severstal
    layouts, "custom"), the columns the file must have, the class tokens, key making/reading, and
    the reading of one row's cells with messages that name the file, the line and what to fix.

    `numbered`: class tokens are the numbers 1..C read by `class_number` (plain ASCII digits, so
    "04" is class 4 and "1.0" is refused), with Severstal's wording in the messages; otherwise a
    class token must be one of `tokens` exactly."""

    name: str
    spec: SubmissionSpec
    tokens: tuple[str, ...]
    numbered: bool = False

    @property
    def key_column(self) -> str:
        return self.spec.key_column

    @property
    def class_column(self) -> str:
        return self.spec.class_column

    @property
    def mask_column(self) -> str:
        return self.spec.mask_column

    @property
    def empty(self) -> str:
        return self.spec.empty

    @property
    def relative(self) -> bool:
        return self.spec.rle_starts == "relative"

    @property
    def per_object(self) -> bool:
        return self.spec.rows == "per_object"

    @property
    def columns(self) -> tuple[str, ...]:
        """The header in its canonical order: key, class, mask (a file may order them otherwise)."""
        return tuple(c for c in (self.key_column, self.class_column, self.mask_column) if c)

    @cached_property
    def class_in_key(self) -> bool:
        return "{class}" in self.spec.key

    def fits(self, columns: Sequence[str]) -> bool:
        """Whether a header has exactly these columns, in any order (cells stripped)."""
        return sorted(str(c).strip() for c in columns) == sorted(self.columns)

    def make_key(self, image_id: str, class_index: int) -> str:
        """The key of image x class (`class_index` 0-based)."""
        return self.spec.key.replace("{image}", image_id).replace("{class}", self.tokens[class_index])

    def row(self, image_id: str, class_index: int, mask: str) -> dict[str, str]:
        """{column: cell} of one row: the key, the class token when it has a column of its own, and
        `mask` as given (the caller writes an empty mask as `empty`, relative starts converted)."""
        values = {self.key_column: self.make_key(image_id, class_index), self.mask_column: mask}
        if self.class_column:
            values[self.class_column] = self.tokens[class_index]
        return values

    def class_index(self, token: str) -> int | None:
        """0-based class of a token; None when it is not one of the tokens (numbered: 1..C by
        `class_number`)."""
        if self.numbered:
            number = class_number(token, len(self.tokens))
            return None if number is None else number - 1
        try:
            return self.tokens.index(token)
        except ValueError:
            return None

    def split_key(self, key: str) -> tuple[str, int | None]:
        """(image id, 0-based class or None when the class is not in the key) of a key; ValueError
        saying what is wrong when the key does not have the configured form."""
        if self._image_only:  # the common "{image}" key: no pattern to match
            if key:
                return key, None
        else:
            match = self._pattern.fullmatch(key)
            if match is not None:
                image = match["image"]
                index = self.class_index(match["cls"]) if self.class_in_key else None
                if image and (index is not None or not self.class_in_key):
                    return image, index
        raise ValueError(f"key {key!r} is not of the form {self.spec.key!r} with a class in {list(self.tokens)}")

    def read_key(self, key: str, source: str, line: int) -> tuple[str, int | None]:
        """`split_key`, or a SubmissionFormatError naming `source`, the `line` and what to fix."""
        try:
            image, index = self.split_key(key)
        except ValueError as e:
            where = f"{source} line {line}"
            if not self.numbered:
                raise SubmissionFormatError(f"{where}: {e}; check submission.key and submission.classes") from None
            if not self.class_in_key:
                raise SubmissionFormatError(
                    f"{where}: the {self.key_column} is empty; give the image's file name"
                ) from None
            suffix = self.spec.key.partition("{image}")[2]
            raise SubmissionFormatError(
                f"{where}: {self.key_column} key {key!r} does not end with {suffix.replace('{class}', '<class>')} "
                f"for a class in 1..{len(self.tokens)}; write keys like {self.make_key('abc.jpg', 0)!r} with a plain "
                f"class number (not {suffix.replace('{class}', '1.0')!r}), and check num_classes"
            ) from None
        return image, index

    def read_class(self, token: str, image_id: str, source: str, line: int) -> int:
        """The 0-based class of a class column's cell, or a SubmissionFormatError naming `source`
        and the `line`."""
        index = self.class_index(token)
        if index is not None:
            return index
        where = f"{source} line {line}"
        if self.numbered:
            raise SubmissionFormatError(
                f"{where}: image {image_id!r} has {self.class_column} {token!r}; expected an integer in "
                f"1..{len(self.tokens)} written as plain digits ('3', not '3.0'); fix the file or num_classes"
            )
        raise SubmissionFormatError(
            f"{where}: {self.class_column} {token!r} is not one of the class tokens {list(self.tokens)}; "
            "check submission.classes"
        )

    def missing_classes(self, source: str, image_id: str, found: set[int]) -> SubmissionFormatError:
        """The error for a sample whose keys leave out some of an image's classes."""
        missing = [i for i in range(len(self.tokens)) if i not in found]
        if self.numbered:
            return SubmissionFormatError(
                f"{source}: image {image_id!r} lacks the keys for classes {[i + 1 for i in missing]}; the "
                f"{self.name} layout lists every image x class 1..{len(self.tokens)} (is num_classes right?)"
            )
        return SubmissionFormatError(
            f"{source}: image {image_id!r} lacks the keys for classes {[self.tokens[i] for i in missing]}; "
            "check submission.classes and num_classes"
        )

    @cached_property
    def _image_only(self) -> bool:
        return self.spec.key == "{image}"

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{image\}|\{class\})", self.spec.key)
        if self.numbered:
            classes = "[0-9]+"  # any plain number: class_number then says whether it is in 1..C
        else:
            classes = "|".join(re.escape(t) for t in sorted(self.tokens, key=len, reverse=True))
        out = []
        for part in parts:
            if part == "{image}":
                out.append("(?P<image>.+)")
            elif part == "{class}":
                out.append(f"(?P<cls>{classes})")
            else:
                out.append(re.escape(part))
        return re.compile("".join(out), flags=re.S)


def class_number(text: str, num_classes: int) -> int | None:
    """The one ClassId rule: a decimal integer string ("1", "2", ...) in 1..num_classes; else None.

    "1.0", " 1", "0", "+1", "" and any class above `num_classes` are refused, in a wide key's
    `_<class>` suffix as in a long file's ClassId column.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value <= num_classes else None


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """One registered submission layout: its `name`, the `competition` it comes from, and its
    `settings` (the general form's: columns, key template, class tokens, empty value, RLE starts,
    rows). See docs/layouts.md.

    - `word`: the resolved Layout's name (the run's log, `SampleSubmission.layout`): "custom"
      unless the preset has a word of its own ("wide", "long");
    - `named`: `[submission] layout = "<name>"` selects it (and no other key may be given);
      otherwise it is selected by writing its settings with `layout = "custom"`;
    - `detected`: `layout = "auto"` (the default) tells it from the sample's header;
    - `numbered`: classes are the numbers 1..C read by `class_number` (see `Layout.numbered`);
    - `slug`: the competition's Kaggle slug, and `rle_order` the order it numbers pixels in ("F":
      top to bottom, then left to right; "C": row by row), so that an `inference.rle_order` that
      contradicts it is a warning naming both (`contradicted_rle_order`).
    """

    name: str
    competition: str
    settings: SubmissionSpec
    word: str = CUSTOM
    named: bool = False
    detected: bool = False
    numbered: bool = False
    slug: str = ""
    rle_order: str = "F"

    @property
    def header(self) -> tuple[str, ...]:
        """The columns its files have (key, class, mask; a file may order them otherwise)."""
        return Layout(self.word, self.settings, ()).columns

    def fits(self, columns: Sequence[str]) -> bool:
        """Whether a header is this preset's, in any column order."""
        return Layout(self.word, self.settings, ()).fits(columns)

    def selection(self) -> SubmissionSpec:
        """The `[submission]` settings that select this preset."""
        return SubmissionSpec(layout=self.name) if self.named else self.settings

    def layout(self, num_classes: int, empty_pair: str | None = None) -> Layout:
        """The Layout of this preset for `num_classes` classes (`empty_pair`: the user's, for the metric)."""
        layout = self.name if self.named else CUSTOM
        spec = replace(self.settings, layout=layout, empty_pair=empty_pair or self.settings.empty_pair)
        return Layout(self.word, spec, spec.tokens(num_classes), self.numbered)


def _custom(**settings: Any) -> SubmissionSpec:
    return SubmissionSpec(layout=CUSTOM, **settings)


# Each header is written here once. Severstal's two are detected from the header and may be named;
# the others are the settings that docs/formats.md's table and tests/notebook/test_submission_formats.py give
# for those competitions (layout = "custom" plus these keys): SIIM-ACR's and Airbus' headers are the
# same, so no header can tell them apart.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("severstal-wide", "Severstal steel defects (during the competition)",
               _custom(key_column="ImageId_ClassId", key="{image}_{class}"),
               word="wide", named=True, detected=True, numbered=True, slug="severstal-steel-defect-detection"),
        Preset("severstal-long", "Severstal steel defects (re-cut data; train.csv)",
               _custom(key_column="ImageId", key="{image}", class_column="ClassId"),
               word="long", named=True, detected=True, numbered=True, slug="severstal-steel-defect-detection"),
        Preset("clouds", "Understanding Clouds from Satellite Images",
               _custom(key_column="Image_Label", key="{image}_{class}", classes=("Fish", "Flower", "Gravel", "Sugar")),
               slug="understanding_cloud_organization"),
        Preset("carvana", "Carvana Image Masking", _custom(key_column="img", mask_column="rle_mask"),
               slug="carvana-image-masking-challenge", rle_order="C"),
        Preset("siim-acr", "SIIM-ACR Pneumothorax Segmentation",
               _custom(image_id="stem", empty="-1", rle_starts="relative"), slug="siim-acr-pneumothorax-segmentation"),
        Preset("airbus", "Airbus Ship Detection", _custom(rows="per_object"), slug="airbus-ship-detection"),
        Preset("uw-madison", "UW-Madison GI Tract Image Segmentation",
               _custom(key_column="id", class_column="class", mask_column="predicted",
                       classes=("large_bowel", "small_bowel", "stomach"), image_id="stem"),
               slug="uw-madison-gi-tract-image-segmentation", rle_order="C"),
    )
}  # fmt: skip
LAYOUT_NAMES: tuple[str, ...] = (AUTO, *(p.name for p in PRESETS.values() if p.named), CUSTOM)
LABELS = PRESETS["severstal-long"]  # labels files under layout = "auto": the long train.csv form


def contradicted_rle_order(slug: str, rle_order: str) -> str:
    """A warning when `rle_order` contradicts the order the registered competition `slug` numbers
    pixels in ('' when the slug is unknown or the order agrees)."""
    words = {"F": "column-major ('F': top to bottom, then left to right)", "C": "row-major ('C': row by row)"}
    for preset in PRESETS.values():
        if preset.slug and preset.slug == slug and preset.rle_order != rle_order:
            return (
                f"inference.rle_order = {rle_order!r} contradicts competition.slug = {slug!r}, whose RLE is "
                f"{words[preset.rle_order]} (docs/formats.md); a wrong order scores masks that never overlap: "
                f"set rle_order = {preset.rle_order!r} unless the competition's page says otherwise"
            )
    return ""


def accepted() -> str:
    """The headers `layout = "auto"` accepts, for messages."""
    shapes = " or ".join(f"{p.word} {','.join(p.header)!r}" for p in PRESETS.values() if p.detected)
    return f"{shapes} (any column order)"


def detect(columns: Sequence[str]) -> Preset | None:
    """The detected preset whose header this is (any column order), else None."""
    return next((p for p in PRESETS.values() if p.detected and p.fits(columns)), None)


def resolve(spec: SubmissionSpec, columns: Sequence[str], num_classes: int, source: str) -> Layout:
    """The Layout `spec` describes, checked against the header `columns` found in `source`;
    a SubmissionFormatError naming the setting to change when they disagree."""
    header = [str(c).strip() for c in columns]
    if spec.layout == AUTO:
        found = detect(header)
        if found is None:
            raise SubmissionFormatError(
                f"{source}: unknown header {list(columns)}; expected {accepted()}, or describe this file in "
                "bundle.toml's [submission] (layout = 'custom', key_column, mask_column, ...)"
            )
        return found.layout(num_classes, spec.empty_pair)
    if spec.layout != CUSTOM:
        preset = PRESETS[spec.layout]
        if not preset.fits(header):
            other = next((p.name for p in PRESETS.values() if p.named and p.fits(header)), None)
            hint = f"set submission.layout = {other!r}" if other else "describe it with submission.layout = 'custom'"
            raise SubmissionFormatError(
                f"{source}: header {list(columns)} is not the {spec.layout} layout that submission.layout names; {hint}"
            )
        return preset.layout(num_classes, spec.empty_pair)
    layout = Layout(CUSTOM, spec, spec.tokens(num_classes))
    if not layout.fits(header):
        want_columns = list(layout.columns)
        missing = [c for c in want_columns if c not in header]
        extra = [c for c in header if c not in want_columns]
        settings = {
            layout.key_column: "key_column",
            layout.class_column: "class_column",
            layout.mask_column: "mask_column",
        }
        named = ", ".join(f"submission.{settings[c]} = {c!r}" for c in missing) or "the [submission] columns"
        raise SubmissionFormatError(
            f"{source}: header {list(columns)} does not match the configured columns {want_columns}: "
            f"missing {missing}, unexpected {extra}; change {named} to the sample's column names"
        )
    return layout
