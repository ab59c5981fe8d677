"""Per-image submission rows for the image-level tasks (kernel_src.tasks): the `[submission]`
settings of a classification, regression or ordinal task (`RowSpec`), the row forms (`ROW_FORMS`),
the presets (`ROW_PRESETS`), the sample submission read at run time and the file written. Stdlib
at import (numpy inside the functions that format predictions).

A row is a key and the cells its form makes from one prediction (kernel_src.tasks: class
probabilities, values, or a value cut into grades):
- the key (`key_column`): the image's file name (`image_id = "file"`), its stem (`"stem"`), or
  its row number (`"row"`: the loader's n-th image, whose id is `str(n)`, 0-based, is key
  `n + row_start`); several images may share a key (`groups`: a CSV beside the sample submission
  giving each image's key, e.g. a patient and a side), their predictions aggregated (`aggregate`:
  mean or max) before the row is written;
- `form` (`ROW_FORMS`): "label" (the class's token in `label_column`), "probabilities" (one
  column per class, named by its token), "top_k" (the `top_k` most probable tokens joined by
  `separator`), "thresholds" (every token whose probability reaches its threshold, joined; `empty`
  when none does), "values" (one column per value, `value_columns`).

Class tokens (`classes`) default to "0".."K-1" (grades of an ordinal task likewise). Numbers are
written with up to 6 significant digits (`format(v, ".6g")`). `read_row_sample` checks the sample's
header against the settings (a mismatch names the setting to change) and its keys; `write_rows`
writes every key of the sample, in its order and column order.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError, SubmissionFormatError
from .settings import setting, typed, wrong

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .tasks import Task, TaskSpec

ROW_IMAGE_IDS = ("file", "stem", "row")
AGGREGATES = ("mean", "max")
NUMBER_FORMAT = ".6g"


@dataclass(frozen=True)
class RowSpec:
    """`[submission]` of an image-level task (see the module docstring)."""

    preset: str = field(
        default="",
        metadata=setting(
            'a registered form (`"digit-recognizer"`: `ImageId,Label`, 1-based row numbers, labels 0-9); the keys '
            "below then may not be given. Image-level tasks only.",
            choices=lambda: ("", *ROW_PRESETS),
        ),
    )
    key_column: str = field(default="id", metadata=setting("image-level tasks: the column holding the key."))
    image_id: str = field(
        default="file",
        metadata=setting(
            'image-level tasks: the key is the image\'s `"file"` name, its `"stem"`, or its `"row"` number '
            "(the n-th image, 0-based, is `n + row_start`).",
            choices=ROW_IMAGE_IDS,
        ),
    )
    row_start: int = field(default=0, metadata=setting('image-level tasks, `image_id = "row"`: the first key.'))
    form: str = field(
        default="label",
        metadata=setting(
            'image-level tasks: `"label"`, `"probabilities"` (a column per class), `"top_k"`, `"thresholds"` '
            '(labels above per-class thresholds) or `"values"`; default `"label"`, `"values"` for a regression. '
            "docs/tasks.md.",
            choices=lambda: tuple(ROW_FORMS),
        ),
    )
    label_column: str = field(
        default="label",
        metadata=setting("image-level tasks: the column of the label forms (label, top_k, thresholds)."),
    )
    classes: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            "image-level tasks: the class (grade) tokens in class order; the probability columns' names.",
            shown='`["0", ..., "K-1"]`',
        ),
    )
    top_k: int = field(default=5, metadata=setting('image-level tasks, `form = "top_k"`: labels per row.'))
    separator: str = field(default=" ", metadata=setting("image-level tasks: what joins several labels."))
    thresholds: tuple[float, ...] = field(
        default=(),
        metadata=setting(
            'image-level tasks, `form = "thresholds"`: the probability a class needs; one or one per class.',
            missing=0.5,
        ),
    )
    empty: str = field(default="", metadata=setting('image-level tasks, `form = "thresholds"`: a row with no label.'))
    value_columns: tuple[str, ...] = field(
        default=(),
        metadata=setting('image-level tasks, `form = "values"`: one column per value.', shown='`["value"]`'),
    )
    groups: str = field(
        default="",
        metadata=setting(
            "image-level tasks: a CSV beside the sample submission giving each image's key (several images, one row).",
            shown='`""` (one image per key)',
        ),
    )
    group_image_column: str = field(default="image_id", metadata=setting("image-level tasks: `groups`' image column."))
    group_key_column: str = field(default="key", metadata=setting("image-level tasks: `groups`' key column."))
    aggregate: str = field(
        default="mean",
        metadata=setting("image-level tasks: how the images of one key merge: `mean` or `max`.", choices=AGGREGATES),
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], task: Task, num_classes: int, head: int) -> RowSpec:
        """Validated settings for `task` (num_classes classes or grades, `head` values); a SpecError
        keyed `submission.<setting>` names what to change."""
        known = [f.name for f in fields(cls)]
        unknown = set(data) - set(known)
        if unknown:
            raise SpecError(f"submission.{sorted(unknown)[0]}", f"unknown setting; known: {', '.join(known)}")
        preset_name = typed("submission.preset", data.get("preset", ""), str)
        if preset_name:
            preset = ROW_PRESETS.get(preset_name)
            if preset is None:
                raise SpecError(
                    "submission.preset", f"{preset_name!r} is not a preset; registered: {list(ROW_PRESETS)}"
                )
            chosen = cls(**preset.settings)  # to_dict writes every key: the preset's own values are not "given"
            given = [k for k in known if k != "preset" and k in data and _plain(data[k]) != _plain(getattr(chosen, k))]
            if given:
                raise SpecError(f"submission.{given[0]}", f"is set by preset {preset_name!r}; give one of the two")
            if task.name != preset.task or (preset.classes and preset.classes != num_classes):
                raise SpecError(
                    "submission.preset",
                    f"{preset_name!r} is a {preset.task} with {preset.classes} classes; set [task] name = "
                    f"{preset.task!r} and num_classes = {preset.classes}",
                )
            data = dict(preset.settings)
        values: dict[str, Any] = {"preset": preset_name, "form": task.forms[0]}  # the task's first form by default
        for f in fields(cls):
            if f.name == "preset" or f.name not in data:
                continue
            key, value = f"submission.{f.name}", data[f.name]
            if f.name in ("classes", "value_columns"):
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise wrong(key, value, "an array of strings")
                values[f.name] = tuple(
                    str(typed(key, v, int)) if isinstance(v, int) else typed(key, v, str) for v in value
                )
            elif f.name == "thresholds":
                values[f.name] = _thresholds(value, num_classes)
            else:
                values[f.name] = typed(key, value, type(f.default))  # type: ignore[type-var]
        spec = cls(**values)
        spec.check(task, num_classes, head)
        return spec

    def check(self, task: Task, num_classes: int, head: int) -> None:
        for name, choices in (("image_id", ROW_IMAGE_IDS), ("aggregate", AGGREGATES), ("form", tuple(ROW_FORMS))):
            if getattr(self, name) not in choices:
                raise SpecError(f"submission.{name}", f"{getattr(self, name)!r} must be one of {list(choices)}")
        if self.form not in task.forms:
            raise SpecError("submission.form", f"task {task.name!r} writes {list(task.forms)}, not {self.form!r}")
        if not self.key_column.strip():
            raise SpecError("submission.key_column", "must name a column of the sample submission")
        if self.classes and (len(self.classes) != num_classes or len(set(self.classes)) != len(self.classes)):
            raise SpecError(
                "submission.classes", f"needs {num_classes} distinct tokens (num_classes), got {list(self.classes)}"
            )
        if self.form == "top_k" and not 1 <= self.top_k <= num_classes:
            raise SpecError("submission.top_k", f"must be in 1..{num_classes} (num_classes), got {self.top_k}")
        if self.value_columns and len(self.value_columns) != head:
            raise SpecError(
                "submission.value_columns", f"needs {head} columns (one per value), got {list(self.value_columns)}"
            )
        if self.groups and self.image_id == "row":
            raise SpecError(
                "submission.groups", "name images by file or stem (image_id) when a groups file gives their keys"
            )
        columns = [self.key_column, *ROW_FORMS[self.form].columns(self, num_classes, head)]
        if len(set(columns)) != len(columns):
            raise SpecError(
                f"submission.{ROW_FORMS[self.form].setting}", f"the key and the columns must differ, got {columns}"
            )

    def tokens(self, num_classes: int) -> tuple[str, ...]:
        return self.classes or tuple(str(c) for c in range(num_classes))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _thresholds(value: Any, n: int) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)) and not value:
        return ()  # 0.5 for every class
    items = list(value) if isinstance(value, (list, tuple)) else [value] * n
    numbers = tuple(typed("submission.thresholds", v, float) for v in items)
    if len(numbers) != n or any(not 0.0 <= v <= 1.0 for v in numbers):
        raise SpecError(
            "submission.thresholds", f"needs one probability in [0, 1] or {n} (one per class), got {list(items)}"
        )
    return numbers


# --- the row forms ---------------------------------------------------------------------------


def _number(v: float) -> str:
    return format(float(v), NUMBER_FORMAT)


@dataclass(frozen=True)
class RowForm:
    """One way of writing a prediction: `columns(spec, num_classes, head)` besides the key (named by
    the setting `setting`), and `cells(spec, task, taskspec, predictions [N, P])`: each row's cells
    in that order."""

    name: str
    setting: str
    columns: Callable[[RowSpec, int, int], tuple[str, ...]]
    cells: Callable[[RowSpec, Task, TaskSpec, npt.NDArray[np.float64]], list[list[str]]]


def _labels(spec: RowSpec, task: Task, taskspec: TaskSpec, pred: npt.NDArray[np.float64]) -> list[list[str]]:
    assert task.label is not None
    tokens = spec.tokens(len(taskspec.cuts) + 1 if task.name == "ordinal" else pred.shape[1])
    return [[tokens[i]] for i in task.label(taskspec, pred).tolist()]


def _probability_cells(spec: RowSpec, task: Task, taskspec: TaskSpec, pred: npt.NDArray[np.float64]) -> list[list[str]]:
    return [[_number(v) for v in row] for row in pred.tolist()]


def _top_k(spec: RowSpec, task: Task, taskspec: TaskSpec, pred: npt.NDArray[np.float64]) -> list[list[str]]:
    import numpy as np

    tokens = spec.tokens(pred.shape[1])
    order = np.argsort(-pred, axis=1, kind="stable")[:, : spec.top_k]  # ties: the lower class first
    return [[spec.separator.join(tokens[i] for i in row)] for row in order.tolist()]


def _above(spec: RowSpec, task: Task, taskspec: TaskSpec, pred: npt.NDArray[np.float64]) -> list[list[str]]:
    import numpy as np

    tokens = spec.tokens(pred.shape[1])
    passed = pred >= np.asarray(spec.thresholds or (0.5,) * pred.shape[1])
    return [[spec.separator.join(tokens[i] for i in np.flatnonzero(row)) or spec.empty] for row in passed]


def _value_cells(spec: RowSpec, task: Task, taskspec: TaskSpec, pred: npt.NDArray[np.float64]) -> list[list[str]]:
    return [[_number(v) for v in row] for row in pred.tolist()]


ROW_FORMS: dict[str, RowForm] = {
    f.name: f
    for f in (
        RowForm("label", "label_column", lambda s, n, h: (s.label_column,), _labels),
        RowForm("probabilities", "classes", lambda s, n, h: s.tokens(n), _probability_cells),
        RowForm("top_k", "label_column", lambda s, n, h: (s.label_column,), _top_k),
        RowForm("thresholds", "label_column", lambda s, n, h: (s.label_column,), _above),
        RowForm("values", "value_columns",
                lambda s, n, h: s.value_columns or (("value",) if h == 1 else tuple(f"value{i}" for i in range(h))),
                _value_cells),
    )
}  # fmt: skip


@dataclass(frozen=True)
class RowPreset:
    """A registered row form: the competition, its task and classes (0: any), the settings."""

    name: str
    competition: str
    task: str
    classes: int
    settings: Mapping[str, Any]


ROW_PRESETS: dict[str, RowPreset] = {
    p.name: p
    for p in (
        RowPreset("digit-recognizer", "Digit Recognizer (MNIST)", "classification", 10,
                  {"key_column": "ImageId", "image_id": "row", "row_start": 1, "form": "label",
                   "label_column": "Label"}),
    )
}  # fmt: skip


# --- the sample submission and the file written ------------------------------------------------


@dataclass(frozen=True)
class RowSample:
    """The sample submission of an image-level task: its header (the order rows are written in),
    its keys in order, and the images to predict with the key (row) each belongs to."""

    path: Path
    header: tuple[str, ...]
    keys: tuple[str, ...]
    image_ids: tuple[str, ...]
    image_keys: tuple[int, ...]  # per image: the index of its key in `keys`


def read_row_sample(path: Path, spec: RowSpec, num_classes: int, head: int) -> RowSample:
    """The sample at `path` checked against `spec` (SubmissionFormatError naming the setting)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionFormatError(f"{path}: cannot read the sample submission ({e})") from None
    if not rows:
        raise SubmissionFormatError(f"{path}: the sample submission is empty; expected a header and a row per key")
    header = tuple(c.strip() for c in rows[0])
    form = ROW_FORMS[spec.form]
    want = (spec.key_column, *form.columns(spec, num_classes, head))
    missing = [c for c in want if c not in header]
    extra = [c for c in header if c not in want]
    if missing or extra:
        setting_of = {spec.key_column: "key_column", **dict.fromkeys(want[1:], form.setting)}
        named = ", ".join(f"submission.{setting_of[c]} ({c!r})" for c in missing) or f"submission.{form.setting}"
        raise SubmissionFormatError(
            f"{path}: header {list(header)} does not fit submission.form = {spec.form!r}: missing {missing}, "
            f"unexpected {extra}; change {named} to the sample's column names"
        )
    at = header.index(spec.key_column)
    keys = tuple(row[at].strip() for row in rows[1:] if row)
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise SubmissionFormatError(f"{path}: key {twice!r} appears twice in {spec.key_column}; one row per key")
    if spec.groups:
        image_ids, image_keys = _grouped(path.parent / spec.groups, spec, keys)
    elif spec.image_id == "row":
        image_ids, image_keys = _rows(path, spec, keys)
    else:
        image_ids, image_keys = keys, tuple(range(len(keys)))
    return RowSample(path, header, keys, image_ids, image_keys)


def _rows(path: Path, spec: RowSpec, keys: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    ids = []
    for line, key in enumerate(keys, start=2):
        if not (key.isascii() and key.isdigit()) or int(key) < spec.row_start:
            raise SubmissionFormatError(
                f"{path} line {line}: {spec.key_column} {key!r} is not a row number from {spec.row_start}; "
                "check submission.image_id and submission.row_start"
            )
        ids.append(str(int(key) - spec.row_start))
    return tuple(ids), tuple(range(len(keys)))


def _grouped(groups: Path, spec: RowSpec, keys: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Every image of the groups file whose key is in the sample, in the file's order."""
    try:
        with groups.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            for setting_name in ("group_image_column", "group_key_column"):
                if getattr(spec, setting_name) not in columns:
                    raise SubmissionFormatError(
                        f"{groups}: has no column {getattr(spec, setting_name)!r} (submission.{setting_name}); "
                        f"its columns are {columns}"
                    )
            pairs = [(row[spec.group_image_column].strip(), row[spec.group_key_column].strip()) for row in reader]
    except OSError as e:
        raise SubmissionFormatError(
            f"{groups}: cannot read the groups file named by submission.groups ({e.strerror or e})"
        ) from None
    index = {k: i for i, k in enumerate(keys)}
    kept = [(image, index[key]) for image, key in pairs if key in index]
    return tuple(i for i, _ in kept), tuple(k for _, k in kept)


def write_rows(
    path: Path, sample: RowSample, spec: RowSpec, task: Task, taskspec: TaskSpec, predictions: npt.NDArray[np.float64]
) -> None:
    """Every key of `sample` with its row (`predictions[k]`: key k's prediction), atomically."""
    cells = ROW_FORMS[spec.form].cells(spec, task, taskspec, predictions)
    width = predictions.shape[1]  # classes (probabilities) or values: each form reads the one it needs
    order = [spec.key_column, *ROW_FORMS[spec.form].columns(spec, width, width)]
    at = [order.index(c) for c in sample.header]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(sample.header)
        for key, row in zip(sample.keys, cells, strict=True):
            full = [key, *row]
            writer.writerow([full[i] for i in at])
    tmp.replace(path)
