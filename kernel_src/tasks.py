"""The tasks, one table: `TASKS` (segmentation, classification, regression, ordinal). Stdlib at import.

A competition's task says what a prediction is, which models make it, how their TTA views and
the models merge, and which submission rows it can write (`kernel_src.rows` for the image-level
tasks; `kernel_src.layout` for segmentation). bundle.toml's `[task]` table (`TaskSpec`) chooses
one; the engine (`kernel_src.run`), the spec's checks and the build look the task up here
(`get_task`) instead of branching on its name. docs/tasks.md describes each task for users.

- `segmentation` (the default): masks per class from `[[segmenters]]`, optionally gated by
  `[[classifiers]]` (gating is a segmentation feature only); rows from `[submission]`'s layout.
- `classification`: one prediction per image from `[[classifiers]]`: class probabilities
  [K], softmax over the head (`labels = "single"`) or a sigmoid per class (`"multi"`).
- `regression`: `values` numbers per image from `[[regressors]]`, each model's raw head in
  the model's units, mapped to the target's: `value * scale + offset`, clipped to `clip`.
- `ordinal`: a one-value regression (as above) cut into `num_classes` grades at `cuts`
  (grade g when cuts[g-1] <= value < cuts[g]; default cuts 0.5, 1.5, ...: the nearest grade).

In every image-level task the models merge as segmentation's do: each model's TTA views merged
by its `tta_merge` (`kernel_src.tta.merge`, in the task's `activation`: softmax, sigmoid, or the
raw value), then a weighted mean over models, a model whose output for an image holds NaN left out
for that image (the others' weights renormalised). `fallback` is what an image gets when no model
gave it a finite output (and a key none of whose images was predicted): class probabilities
(default uniform), or values in the target's units (default the clip range's middle, else 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import SpecError
from .settings import setting, typed, wrong

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Floats = npt.NDArray[np.float64]

SEGMENTATION = "segmentation"
LABEL_KINDS = ("single", "multi")  # classification: one label (softmax) or several (a sigmoid per class)
ACTIVATIONS = ("sigmoid", "softmax", "identity")  # what kernel_src.tta.merge applies to a raw head output


@dataclass(frozen=True)
class TaskSpec:
    """The `[task]` settings. Keys other than `name` apply to the tasks their help names."""

    name: str = field(
        default=SEGMENTATION,
        metadata=setting(
            '`"segmentation"` (masks, `[[segmenters]]`), `"classification"` (labels or probabilities, '
            '`[[classifiers]]`), `"regression"` (values, `[[regressors]]`) or `"ordinal"` (a value cut into '
            "grades, `[[regressors]]`). docs/tasks.md.",
            choices=lambda: tuple(TASKS),
        ),
    )
    labels: str = field(
        default="single",
        metadata=setting(
            'classification: `"single"` (one label per image: softmax over the head) or `"multi"` (several: a '
            "sigmoid per class).",
            choices=LABEL_KINDS,
        ),
    )
    values: int = field(default=1, metadata=setting("regression: the numbers each image gets (the head's size)."))
    scale: tuple[float, ...] = field(
        default=(),
        metadata=setting(
            "regression, ordinal: the target is `model output * scale + offset`; one number or one per value.",
            missing=1.0,
        ),
    )
    offset: tuple[float, ...] = field(
        default=(),
        metadata=setting("regression, ordinal: added after `scale`; one number or one per value.", missing=0.0),
    )
    clip: tuple[float, ...] = field(
        default=(),
        metadata=setting("regression, ordinal: `[low, high]` the values are clipped to (target units).", shown="none"),
    )
    cuts: tuple[float, ...] = field(
        default=(),
        metadata=setting(
            "ordinal: the `num_classes - 1` ascending cut-points between grades (target units); a value below "
            "`cuts[0]` is grade 0, one at or above `cuts[g-1]` and below `cuts[g]` grade g.",
            shown="`[0.5, 1.5, ...]` (the nearest grade)",
        ),
    )
    fallback: tuple[float, ...] = field(
        default=(),
        metadata=setting(
            "what an image gets when no model gave it a finite output (counted in profile.json `task.fallback_rows`): "
            "classification, its class probabilities (one number or one per class); regression and ordinal, its "
            "values in target units.",
            shown="uniform probabilities; the clip range's middle, else 0",
        ),
    )

    @property
    def task(self) -> Task:
        return get_task(self.name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], num_classes: int) -> TaskSpec:
        """Validated settings; a SpecError keyed `task.<setting>` names what to change."""
        known = list(cls.__dataclass_fields__)
        unknown = set(data) - set(known)
        if unknown:
            raise SpecError(f"task.{sorted(unknown)[0]}", f"unknown setting; known: {', '.join(known)}")
        name = typed("task.name", data.get("name", SEGMENTATION), str)
        if name not in TASKS:
            raise SpecError("task.name", f"{name!r} is not a task; registered tasks: {list(TASKS)}")
        task = TASKS[name]
        # to_dict writes every key: one at the value this task gives it by default is not "given"
        plain = cls.from_dict({"name": name}, num_classes) if len(data) > 1 else cls(name=name)
        given = [k for k in known if k != "name" and k in data and _plain(data[k]) != _plain(getattr(plain, k))]
        for key in given:
            if key not in task.keys:
                raise SpecError(
                    f"task.{key}", f"does not apply to task {name!r} (it takes {list(task.keys) or 'none'})"
                )
        labels = typed("task.labels", data.get("labels", "single"), str)
        if labels not in LABEL_KINDS:
            raise SpecError("task.labels", f"{labels!r} must be one of {list(LABEL_KINDS)}")
        values = typed("task.values", data.get("values", 1), int)
        if values < 1:
            raise SpecError("task.values", f"must be at least 1, got {values}")
        n = values if "values" in task.keys else 1
        scale = _numbers("task.scale", _given(data, "scale", 1.0), n)
        if any(s == 0 for s in scale):
            raise SpecError("task.scale", "must not be 0 (every prediction would be the offset)")
        offset = _numbers("task.offset", _given(data, "offset", 0.0), n)
        clip = _numbers("task.clip", data.get("clip", []), 2, allow_empty=True, what="[low, high]")
        if clip and not clip[0] < clip[1]:
            raise SpecError("task.clip", f"[low, high] needs low < high, got {list(clip)}")
        cuts: tuple[float, ...] = ()
        if name == "ordinal":
            if num_classes < 2:
                raise SpecError("num_classes", f"an ordinal task needs at least 2 grades, got {num_classes}")
            raw = data.get("cuts", [g + 0.5 for g in range(num_classes - 1)])
            cuts = _numbers("task.cuts", raw, num_classes - 1, what=f"{num_classes - 1} cut-points (num_classes - 1)")
            if any(b <= a for a, b in itertools.pairwise(cuts)):
                raise SpecError("task.cuts", f"must be strictly ascending, got {list(cuts)}")
        width = num_classes if name == "classification" else n
        fallback: tuple[float, ...] = ()
        if data.get("fallback") not in (None, [], ()):
            fallback = _numbers("task.fallback", data["fallback"], width)
            if name == "classification" and any(not 0.0 <= f <= 1.0 for f in fallback):
                raise SpecError(
                    "task.fallback", f"classification probabilities must be in [0, 1], got {list(fallback)}"
                )
        if "scale" not in task.keys:  # the value keys stay at their defaults where they do not apply
            scale, offset = (), ()
        return cls(name=name, labels=labels, values=n, scale=scale, offset=offset, clip=clip, cuts=cuts,
                   fallback=fallback)  # fmt: skip

    def fallback_prediction(self, num_classes: int) -> tuple[float, ...]:
        """The prediction (task units) of an image no model gave a finite output for."""
        if self.fallback:
            return self.fallback
        if self.name == "classification":
            return (1.0 / num_classes,) * num_classes
        middle = (self.clip[0] + self.clip[1]) / 2 if self.clip else 0.0
        return (middle,) * self.values


def _given(data: Mapping[str, Any], key: str, neutral: float) -> Any:
    """`data[key]`, or `neutral` where it is missing or written empty (to_dict's default)."""
    value = data.get(key)
    return neutral if value is None or (isinstance(value, (list, tuple)) and not value) else value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _numbers(key: str, value: Any, n: int, *, allow_empty: bool = False, what: str | None = None) -> tuple[float, ...]:
    """One finite number broadcast to `n`, or an array of `n` finite numbers (or [] when allowed)."""
    wanted = what or f"a number or an array of {n} numbers"
    if isinstance(value, (list, tuple)):
        if allow_empty and not value:
            return ()
        numbers = [typed(key, v, float) for v in value] if all(not isinstance(v, bool) for v in value) else None
        if numbers is None or len(numbers) != n:
            raise wrong(key, list(value), wanted)
    elif what is None:
        numbers = [typed(key, value, float)] * n
    else:
        raise wrong(key, value, wanted)
    if any(math.isnan(v) or math.isinf(v) for v in numbers):
        raise SpecError(key, f"must be finite numbers, got {numbers}")
    return tuple(numbers)


# --- what each task does with the merged head outputs ------------------------------------------


def _probabilities(spec: TaskSpec, merged: Floats) -> Floats:
    return merged  # the merge already gave probabilities (softmax or sigmoid)


def _target_units(spec: TaskSpec, merged: Floats) -> Floats:
    import numpy as np

    values = merged * np.asarray(spec.scale) + np.asarray(spec.offset)
    if spec.clip:
        values = np.clip(values, spec.clip[0], spec.clip[1])
    return np.asarray(values, dtype=np.float64)


def _argmax(spec: TaskSpec, prediction: Floats) -> npt.NDArray[np.int64]:
    import numpy as np

    return np.asarray(prediction.argmax(axis=1), dtype=np.int64)  # a tie goes to the lower class


def _grade(spec: TaskSpec, prediction: Floats) -> npt.NDArray[np.int64]:
    import numpy as np

    return np.asarray(np.searchsorted(np.asarray(spec.cuts), prediction[:, 0], side="right"), dtype=np.int64)


@dataclass(frozen=True)
class Task:
    """One task. `engine`: which of kernel_src.run's engines runs it ("masks" or "images"); `role`:
    the role (kernel_src.model_kinds.ROLES) of its predicting models, listed in the spec's `table`
    (bundle.toml's `[[table]]`); `keys`: the `[task]` keys besides `name` it takes; `merges`: the
    `tta_merge` values its models may use; `forms`: the row forms (kernel_src.rows.ROW_FORMS) it
    writes; `head`: the head size for (its spec, num_classes); `activation`: what tta.merge applies
    to a raw output; `finish`: merged outputs [N, head] -> predictions in the target's units;
    `label`: predictions -> a 0-based class (grade) per image, for the label forms (None: no labels)."""

    name: str
    engine: str
    role: str
    table: str
    keys: tuple[str, ...]
    merges: tuple[str, ...]
    forms: tuple[str, ...]
    head: Callable[[TaskSpec, int], int]
    activation: Callable[[TaskSpec], str]
    finish: Callable[[TaskSpec, Floats], Floats] | None = None
    label: Callable[[TaskSpec, Floats], npt.NDArray[np.int64]] | None = None
    words: str = ""  # what one prediction is, for messages and docs

    @property
    def image_level(self) -> bool:
        return self.engine == "images"


ALL_MERGES = ("mean", "gmean", "max", "logit_mean")
VALUE_MERGES = ("mean", "max")  # a raw value has no logit or log

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(SEGMENTATION, "masks", "segmenter", "segmenters", (), ALL_MERGES, (),
             head=lambda spec, n: n, activation=lambda spec: "sigmoid", words="a mask per class"),
        Task("classification", "images", "classifier", "classifiers", ("labels", "fallback"), ALL_MERGES,
             ("label", "probabilities", "top_k", "thresholds"),
             head=lambda spec, n: n, activation=lambda spec: "softmax" if spec.labels == "single" else "sigmoid",
             finish=_probabilities, label=_argmax, words="class probabilities"),
        Task("regression", "images", "regressor", "regressors", ("values", "scale", "offset", "clip", "fallback"),
             VALUE_MERGES, ("values",),
             head=lambda spec, n: spec.values, activation=lambda spec: "identity",
             finish=_target_units, words="values"),
        Task("ordinal", "images", "regressor", "regressors", ("scale", "offset", "clip", "cuts", "fallback"),
             VALUE_MERGES, ("label", "values"),
             head=lambda spec, n: 1, activation=lambda spec: "identity",
             finish=_target_units, label=_grade, words="a grade"),
    )
}  # fmt: skip
MODEL_TABLES = tuple(dict.fromkeys(("classifiers", *(t.table for t in TASKS.values()))))


def get_task(name: str) -> Task:
    """The registered task `name`; a SpecError listing the registered ones otherwise."""
    task = TASKS.get(name)
    if task is None:
        raise SpecError("task.name", f"{name!r} is not a task; registered tasks: {list(TASKS)}")
    return task


def check_models(spec: TaskSpec, tables: Mapping[str, Sequence[Any]], gating: str) -> None:
    """The models declared fit the task: its table has one at least, the others none (a
    segmentation's classifiers gate it), gating only in segmentation, each model's tta_merge one
    the task allows. `tables`: model table name -> its ModelSpecs."""
    task = spec.task
    if not tables.get(task.table):
        raise SpecError(task.table, f"task {task.name!r} needs at least one model in [[{task.table}]]")
    allowed = {task.table, "classifiers"} if task.name == SEGMENTATION else {task.table}
    for table, models in tables.items():
        if models and table not in allowed:
            raise SpecError(table, f"task {task.name!r} predicts with [[{task.table}]]; remove [[{table}]]")
    if task.image_level and gating != "off":
        raise SpecError("gating.mode", f"gating is a segmentation feature; remove it for task {task.name!r}")
    for models in tables.values():
        for i, m in enumerate(models):
            if task.image_level and m.tta_merge not in task.merges:
                raise SpecError(
                    f"{task.table}[{i}].tta_merge",
                    f"{m.tta_merge!r} does not merge {task.words}; task {task.name!r} takes {list(task.merges)}",
                )
