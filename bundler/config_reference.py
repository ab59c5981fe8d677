"""docs/config.md, the `bundle.toml` reference, written from the keys' declarations.

Each key's type, default, allowed values and help come from its field (bundler.config's `_key`,
kernel_src.settings' `setting`); this module adds only the prose that belongs to a table rather
than a key. tests/test_config_reference.py fails when the committed page differs from
`reference_markdown()`; regenerate it with `python -m bundler.config_reference > docs/config.md`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import MISSING, Field, dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from bundler.config import (
    MODEL_TABLES,
    ROW_TABLE,
    SUBMISSION_RLE_ORDER,
    TABLES,
    ModelEntry,
    model_keys,
    table_keys,
)
from kernel_src.settings import choices_of, missing_value
from kernel_src.spec import GatingSpec, InferenceSpec, ModelSpec, PostprocessSpec

HEADER = """\
# `bundle.toml` reference

<!-- Written by `python -m bundler.config_reference > docs/config.md` from the keys' declarations
(bundler/config.py, kernel_src/spec.py, kernel_src/layout.py); edit those, not this page. -->

Relative paths are resolved against the folder holding `bundle.toml`. Unknown keys are
errors that name the key. Every key has a type, and a value of another type is an error naming
the file, the key, the type wanted and what was found (`enable_gpu = "false"` is a string, not
false; `num_classes = 4.7` is not rounded; `requirements = "pkg"` is not a list; numbers take
integers). Defaults in brackets; keys marked required have none.
"""

INFERENCE_NOTES = """\
Pinned host memory with non_blocking copies is used on CUDA (not a setting); profile.json
`devices` records the kind, replicas, memory format, precision and pinning of the run."""

POSTPROCESS_NOTES = """\
Carrying values over from public kernels: they usually keep components of MORE than `min_size`
pixels (`if num > min_size`), bundler keeps components of AT LEAST `min_component` pixels
(removes those with fewer), so `min_size = 3500` is `min_component = 3501`. A kernel's
`threshold` is usually the same strict `probability > threshold` as here; its classifier
threshold is `[inference.gating] thresholds` (bundler passes a class at `probability >=
threshold`)."""

TASK_NOTES = (
    "`segmentation` predicts with `[[segmenters]]` (gated by `[[classifiers]]` when set), `classification` with "
    "`[[classifiers]]`, `regression` and `ordinal` with `[[regressors]]` (a timm or TorchScript model whose head "
    "has `values` outputs, one for ordinal); each model's head size is checked at build. See docs/tasks.md."
)
ROWS_INTRO = (
    "With `[task] name` other than segmentation, `[submission]` describes one row per key (an image, or the "
    "images a `groups` file gives one key): these keys replace the layout's above. See docs/tasks.md."
)
SUBMISSION_INTRO = """\
The submission file's shape (kernel_src/layout.py). Without it (`layout = "auto"`), a Severstal
layout is told from the sample's header, as before. The layout is checked against the
`sample_submission.csv` found at run time; a header it does not describe stops the run in its
first step with the setting to change (`submission.mask_column = 'EncodedPixels' ... to the
sample's column names`)."""

SUBMISSION_NOTES = """\
| competition | `[submission]` | `[inference]` geometry |
|---|---|---|
| Severstal (2019) | nothing, or `layout = "severstal-wide"` / `"severstal-long"` | `num_classes = 4`, `image_height = 256`, `image_width = 1600` |
| Understanding Clouds | `layout = "custom"`, `key_column = "Image_Label"`, `key = "{image}_{class}"`, `classes = ["Fish", "Flower", "Gravel", "Sugar"]` | `num_classes = 4`, `image_height = 1400`, `image_width = 2100`, `encode_size = [350, 525]` |
| Carvana | `layout = "custom"`, `key_column = "img"`, `mask_column = "rle_mask"`, `rle_order = "C"` | `num_classes = 1`, `image_height = 1280`, `image_width = 1918` |
| SIIM-ACR pneumothorax | `layout = "custom"`, `image_id = "stem"`, `empty = "-1"`, `rle_starts = "relative"` | `num_classes = 1`, `image_height = 1024`, `image_width = 1024` |
| Airbus ship detection | `layout = "custom"`, `rows = "per_object"` | `num_classes = 1`, `image_height = 768`, `image_width = 768` |
| UW-Madison GI tract | `layout = "custom"`, `key_column = "id"`, `class_column = "class"`, `mask_column = "predicted"`, `classes = ["large_bowel", "small_bowel", "stomach"]`, `image_id = "stem"`, `rle_order = "C"` | `num_classes = 3`, `image_sizes = "own"`, `bit_depth = 16`, `pixel_max` as in training (`"image"` or a number), `image_channels = 1` |

Each row is exercised by tests/notebook/test_submission_formats.py on a tiny analogue read back by a
strict decoder of that format. What is not covered: SIIM-ACR's test images are DICOM, which
OpenCV does not read (convert them to PNG named by their UID); UW-Madison's slices sit in nested
`case/day/scans` folders with ids that are not file names (flatten them to `<id>.png`), and its
visible sample submission is empty. The dry-run scores Dice with the `empty_pair` rule for every
format: Airbus (F2 over IoU thresholds) and UW-Madison (Dice with a 3-D Hausdorff term) score
otherwise on Kaggle."""  # noqa: E501 - a markdown table is one line per row


INPUT_INTRO = """\
Where the test images come from (kernel_src/inputs.py, kernel_src/readers.py): the image folder
`competition.test_images` (the default), NumPy arrays or CSV pixel rows. A file reader's `path` is
relative to the competition's data folder, found under `/kaggle/input` at run time; in the dry-run,
`--test-dir` (`dryrun.test_dir`) is the local folder it is relative to (or the file itself). What
each reader offers as ids and reports as problems: [docs/formats.md](formats.md#input-readers)."""

INPUT_NOTES = """\
| competition | `[input]` |
|---|---|
| Digit Recognizer | `reader = "csv_pixels"`, `path = "test.csv"`, `shape = [28, 28]`, `first_id = 1` |
| images as one `.npz` | `reader = "npz"`, `path = "test.npz"`, `array = "images"`, `ids = "ids"` |
| images as `.npy` | `reader = "npy"`, `path = "test_images.npy"`, `ids = "test_ids.npy"` |"""


@dataclass(frozen=True)
class Section:
    """One table of bundle.toml as the reference shows it."""

    title: str  # "`[competition]`", "`[[classifiers]]` and `[[segmenters]]`"
    keys: dict[str, Field[Any]]
    hints: dict[str, Any]  # each key's type
    intro: str = ""
    notes: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # (key, help) of a key without a field of its own


def _hints(*classes: type) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for cls in reversed(classes):
        hints.update(get_type_hints(cls))
    return hints


def _doc(cls: type) -> str:
    """A dataclass's own docstring, one paragraph ("" for the generated one)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def sections() -> list[Section]:
    """bundle.toml's tables in the reference's order, each with its keys."""

    def table(name: str, intro: str | None = None, notes: str = "") -> Section:
        cls = TABLES[name]
        keys = {k: f for k, f in table_keys(cls).items() if not dataclasses.is_dataclass(_hints(cls)[k])}
        return Section(f"`[{name}]`", keys, _hints(cls), _doc(cls) if intro is None else intro, notes)

    inference = {f.name: f for f in dataclasses.fields(InferenceSpec)}
    return [
        table("bundle", intro=""),
        table("competition"),
        table("dataset"),
        table("target"),
        table("kernel"),
        table("inference", intro="", notes=INFERENCE_NOTES),
        Section(
            "`[inference.gating]`", table_keys(GatingSpec), _hints(GatingSpec), inference["gating"].metadata["help"]
        ),
        Section(
            "`[inference.postprocess]`",
            table_keys(PostprocessSpec),
            _hints(PostprocessSpec),
            inference["postprocess"].metadata["help"],
            POSTPROCESS_NOTES,
        ),
        Section(
            "`[submission]`",
            table_keys(TABLES["submission"]),
            _hints(TABLES["submission"]),
            SUBMISSION_INTRO,
            SUBMISSION_NOTES,
            extra=(("rle_order", SUBMISSION_RLE_ORDER),),
        ),
        Section("`[input]`", table_keys(TABLES["input"]), _hints(TABLES["input"]), INPUT_INTRO, INPUT_NOTES),
        table("task", notes=TASK_NOTES),
        Section(
            "`[submission]` of a classification, regression or ordinal task",
            table_keys(ROW_TABLE),
            _hints(ROW_TABLE),
            ROWS_INTRO,
        ),
        Section(
            " and ".join(f"`[[{t}]]`" for t in MODEL_TABLES),
            model_keys(),
            _hints(ModelEntry, ModelSpec),
            "One table per model.",
        ),
        table("dryrun"),
        table("machine"),
    ]


def _toml(value: Any) -> str:
    """`value` written as bundle.toml would hold it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


_TYPES = {str: "string", int: "integer", float: "number", bool: "true or false", Path: "path"}


def _type_words(type_: Any) -> str:
    """The type in words, or "" where the help says it (a size, one value per class ...)."""
    args = [a for a in get_args(type_) if a is not type(None)]
    if type(None) in get_args(type_) and len(args) == 1:
        type_ = args[0]
    if get_origin(type_) is tuple and get_args(type_)[1:] == (...,) and get_args(type_)[0] in (str, Path):
        return f"array of {_TYPES[get_args(type_)[0]]}s"
    return _TYPES.get(type_, "")


def _line(name: str, f: Field[Any], type_: Any) -> str:
    about = [_type_words(type_)]
    default = missing_value(f)
    if default is MISSING:
        about.append("required")
    about += [rule.text for rule in f.metadata.get("rules", ())]
    if choices_of(f):
        about.append("one of " + ", ".join(f"`{_toml(c)}`" for c in choices_of(f)))
    shown = f.metadata["shown"]
    if shown is None and default is not MISSING:
        shown = "none" if default is None else f"`{_toml(default)}`"
    words = "; ".join(a for a in about if a)
    return (
        f"- `{name}`" + (f" ({words})" if words else "") + (f" [{shown}]" if shown else "") + f" — {f.metadata['help']}"
    )


def reference_markdown() -> str:
    """The whole of docs/config.md."""
    parts = [HEADER]
    for section in sections():
        parts.append(f"## {section.title}\n")
        if section.intro:
            parts.append(section.intro[0].upper() + section.intro[1:] + "\n")
        lines = [_line(name, f, section.hints[name]) for name, f in section.keys.items()]
        lines += [f"- `{name}` — {text}" for name, text in section.extra]
        parts.append("\n".join(lines) + "\n")
        if section.notes:
            parts.append(section.notes + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
