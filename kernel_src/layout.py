"""The submission file's shape as a setting (`[submission]` in bundle.toml): `SubmissionSpec`.

A submission is one CSV; the settings say how its rows are made (the RLE pixel order is
`InferenceSpec.rle_order`, which `[submission] rle_order` sets):

- `layout`: "auto" (default: a Severstal layout told from the sample's header, as before),
  "severstal-wide" (`ImageId_ClassId,EncodedPixels`, keys `<image>_<1..C>`), "severstal-long"
  (`ImageId,ClassId,EncodedPixels`), or "custom" (the general form below; its keys apply to
  "custom" only);
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

`resolve(columns, source)` turns the spec and the header found at run time into a `Layout`: the
concrete columns, the key maker and the key reader. A header that does not fit is a
`SubmissionFormatError` naming the setting to change. Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SpecError, SubmissionFormatError

LAYOUT_NAMES = ("auto", "severstal-wide", "severstal-long", "custom")
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
_WIDE_HEADER = ("ImageId_ClassId", "EncodedPixels")
_LONG_HEADER = ("ImageId", "ClassId", "EncodedPixels")


@dataclass(frozen=True)
class SubmissionSpec:
    """The `[submission]` settings (see the module docstring); defaults are today's Severstal."""

    layout: str = "auto"
    key_column: str = "ImageId"
    key: str = "{image}"
    class_column: str = ""
    image_id: str = "file"
    classes: tuple[str, ...] = ()  # () = "1".."C"
    mask_column: str = "EncodedPixels"
    empty: str = ""
    rle_starts: str = "absolute"
    rows: str = "per_class"
    empty_pair: str = "one"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], num_classes: int) -> SubmissionSpec:
        """Validated settings; a SpecError keyed `submission.<setting>` names what to change."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"submission.{sorted(unknown)[0]}", f"unknown setting; known: {sorted(known)}")
        layout = _text(data, "layout", "auto")
        if layout not in LAYOUT_NAMES:
            raise SpecError("submission.layout", f"{layout!r} must be one of {list(LAYOUT_NAMES)}")
        defaults = cls()
        given = [k for k in CUSTOM_KEYS if k in data and _plain(data[k]) != _plain(getattr(defaults, k))]
        if layout != "custom" and given:
            raise SpecError(
                f"submission.{given[0]}",
                f"applies to layout = 'custom' only (layout is {layout!r}); set layout = 'custom'",
            )
        empty_pair = _text(data, "empty_pair", "one")
        if empty_pair not in EMPTY_PAIRS:
            raise SpecError("submission.empty_pair", f"{empty_pair!r} must be one of {list(EMPTY_PAIRS)}")
        if layout != "custom":
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
    layouts, "custom"), the columns the file must have, the class tokens, and key making/reading."""

    name: str
    spec: SubmissionSpec
    tokens: tuple[str, ...]

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
        return tuple(c for c in (self.key_column, self.class_column, self.mask_column) if c)

    @property
    def class_in_key(self) -> bool:
        return "{class}" in self.spec.key

    def make_key(self, image_id: str, class_index: int) -> str:
        """The key of image x class (`class_index` 0-based)."""
        return self.spec.key.replace("{image}", image_id).replace("{class}", self.tokens[class_index])

    def class_index(self, token: str) -> int | None:
        """0-based class of a token; None when it is not one of the tokens."""
        try:
            return self.tokens.index(token)
        except ValueError:
            return None

    def split_key(self, key: str) -> tuple[str, int | None]:
        """(image id, 0-based class or None when the class is not in the key) of a key, or
        SubmissionFormatError text via ValueError when the key does not have the configured form."""
        match = self._pattern().fullmatch(key)
        if match is None or not match.group("image"):
            raise ValueError(f"key {key!r} is not of the form {self.spec.key!r} with a class in {list(self.tokens)}")
        image = match.group("image")
        if not self.class_in_key:
            return image, None
        return image, self.tokens.index(match.group("cls"))

    def _pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{image\}|\{class\})", self.spec.key)
        alternatives = "|".join(re.escape(t) for t in sorted(self.tokens, key=len, reverse=True))
        out = []
        for part in parts:
            if part == "{image}":
                out.append("(?P<image>.+)")
            elif part == "{class}":
                out.append(f"(?P<cls>{alternatives})")
            else:
                out.append(re.escape(part))
        return re.compile("".join(out), flags=re.S)


def preset(name: str, spec: SubmissionSpec, num_classes: int) -> Layout:
    """The Layout of a Severstal preset ("wide" or "long")."""
    tokens = tuple(str(c) for c in range(1, num_classes + 1))
    if name == "wide":
        custom = SubmissionSpec("severstal-wide", _WIDE_HEADER[0], "{image}_{class}", "", empty_pair=spec.empty_pair)
    else:
        custom = SubmissionSpec("severstal-long", "ImageId", "{image}", "ClassId", empty_pair=spec.empty_pair)
    return Layout(name, custom, tokens)


def detect(columns: Sequence[str]) -> str | None:
    """'wide' or 'long' when a header is one of Severstal's (any column order), else None."""
    names = sorted(str(c).strip() for c in columns)
    if names == sorted(_WIDE_HEADER):
        return "wide"
    if names == sorted(_LONG_HEADER):
        return "long"
    return None


def resolve(spec: SubmissionSpec, columns: Sequence[str], num_classes: int, source: str) -> Layout:
    """The Layout `spec` describes, checked against the header `columns` found in `source`;
    a SubmissionFormatError naming the setting to change when they disagree."""
    header = [str(c).strip() for c in columns]
    found = detect(header)
    if spec.layout == "auto":
        if found is None:
            raise SubmissionFormatError(
                f"{source}: unknown header {list(columns)}; expected wide 'ImageId_ClassId,EncodedPixels' or long "
                "'ImageId,ClassId,EncodedPixels' (any column order), or describe this file in bundle.toml's "
                "[submission] (layout = 'custom', key_column, mask_column, ...)"
            )
        return preset(found, spec, num_classes)
    if spec.layout in ("severstal-wide", "severstal-long"):
        want = spec.layout.removeprefix("severstal-")
        if found != want:
            other = {"wide": "severstal-wide", "long": "severstal-long"}.get(found or "")
            hint = f"set submission.layout = {other!r}" if other else "describe it with submission.layout = 'custom'"
            raise SubmissionFormatError(
                f"{source}: header {list(columns)} is not the {spec.layout} layout that submission.layout names; {hint}"
            )
        return preset(want, spec, num_classes)
    layout = Layout("custom", spec, spec.tokens(num_classes))
    want_columns = list(layout.columns)
    if sorted(header) != sorted(want_columns):
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
