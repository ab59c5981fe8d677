"""Where the metric's points are lost, per class: false positives, missed defects, partial overlap.

Every image x class pair scores 1 at best (mean Dice). A pair loses:
- a whole point when the label is empty and the prediction is not (`false_positive`: a clean
  image's pair predicted dirty; the classifier's gate or `min_area` is the lever);
- a whole point when the label has a defect and the prediction is empty (`missed`: a gate or a
  pixel threshold too strict);
- `1 - Dice` when both have pixels (`partial`: the pixel threshold and `min_component` shape it).

`loss_breakdown` takes per-pair arrays (what `bundler tune` computes from its cache);
`submission_breakdown` computes them from a submission and the labels with the metric's own
interval arithmetic (`bundler.scoring.metric`), for the dry-run's report.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bundler.scoring.metric import dice_of_intervals
from kernel_src.layout import SubmissionSpec
from kernel_src.rle import parse
from kernel_src.submission import read_masks

WORST = 5


@dataclass(frozen=True)
class ClassLosses:
    class_id: int  # 1-based, as in the submission
    pairs: int
    score: float  # the class's mean Dice
    false_positive: int  # clean pairs predicted dirty: one point each
    missed: int  # defects predicted empty: one point each
    partial: int  # pairs with pixels on both sides
    partial_loss: float  # sum of (1 - Dice) over those
    worst: tuple[tuple[str, str, float], ...]  # (image, kind, points lost), worst first

    @property
    def lost(self) -> float:
        return self.false_positive + self.missed + self.partial_loss

    def advice(self) -> str:
        parts = {
            "false positives on clean images": float(self.false_positive),
            "missed defects": float(self.missed),
            "partial overlap": self.partial_loss,
        }
        top = max(parts, key=lambda k: parts[k])
        if parts[top] <= 0:
            return "nothing lost"
        return {
            "false positives on clean images": "raise the classifier's gate (or min_area)",
            "missed defects": "lower the classifier's gate (or the pixel threshold, min_area)",
            "partial overlap": "move the pixel threshold (and min_component)",
        }[top]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["worst"] = [list(w) for w in self.worst]
        data["lost"] = self.lost
        data["advice"] = self.advice()
        return data


def loss_breakdown(
    image_ids: Sequence[str],
    dice: npt.NDArray[np.floating],
    truth_nonempty: npt.NDArray[np.bool_],
    pred_nonempty: npt.NDArray[np.bool_],
    *,
    worst: int = WORST,
) -> list[ClassLosses]:
    """Per class, from [C, N] arrays of Dice, label non-empty and prediction non-empty."""
    result = []
    for c in range(dice.shape[0]):
        d, t, p = np.asarray(dice[c], dtype=np.float64), truth_nonempty[c], pred_nonempty[c]
        fp = ~t & p
        missed = t & ~p
        both = t & p
        loss = np.where(~t & ~p, 0.0, 1.0 - d)  # an empty pair scores by the metric's rule, nothing to move
        kind = np.where(fp, "false positive", np.where(missed, "missed", "partial"))
        order = [i for i in np.argsort(-loss, kind="stable")[:worst] if loss[i] > 0]
        result.append(
            ClassLosses(
                class_id=c + 1,
                pairs=int(d.size),
                score=float(d.mean()) if d.size else 1.0,
                false_positive=int(fp.sum()),
                missed=int(missed.sum()),
                partial=int(both.sum()),
                partial_loss=float(loss[both].sum()),
                worst=tuple((str(image_ids[i]), str(kind[i]), float(loss[i])) for i in order),
            )
        )
    return result


def submission_breakdown(
    submission: Path,
    labels: Path,
    *,
    num_classes: int,
    shape: tuple[int, int] | Mapping[str, tuple[int, int]],
    image_ids: Sequence[str],
    submission_spec: SubmissionSpec | None = None,
) -> list[ClassLosses]:
    """The breakdown of a submission against the labels, over `image_ids` x every class (both read
    in the `[submission]` layout, as the metric reads them)."""
    sizes = {k: v[0] * v[1] for k, v in shape.items()} if isinstance(shape, Mapping) else None
    size = 0 if isinstance(shape, Mapping) else shape[0] * shape[1]  # one size, or one per image (issue 16)
    predicted = read_masks(submission, num_classes, submission=submission_spec)
    truth = read_masks(labels, num_classes, labels=True, submission=submission_spec)
    n = len(image_ids)
    dice = np.ones((num_classes, n))
    t_ne = np.zeros((num_classes, n), dtype=np.bool_)
    p_ne = np.zeros((num_classes, n), dtype=np.bool_)
    for i, image_id in enumerate(image_ids):
        preds = predicted.get(image_id, [""] * num_classes)
        trues = truth.get(image_id, [""] * num_classes)
        pixels = size if sizes is None else sizes.get(image_id, 1 << 62)
        for c in range(num_classes):
            a, b = parse(preds[c], pixels), parse(trues[c], pixels)
            p_ne[c, i], t_ne[c, i] = len(a[0]) > 0, len(b[0]) > 0
            dice[c, i] = dice_of_intervals(a, b)
    return loss_breakdown(image_ids, dice, t_ne, p_ne)


def loss_section(classes: Sequence[Mapping[str, Any]] | None) -> str:
    """The report's HTML section for `ClassLosses.to_dict()` rows ('' when there are none)."""
    if not classes:
        return ""
    e = html.escape
    head = (
        "<tr><th>class</th><th>mean Dice</th><th>points lost</th><th>false positives (clean images)</th>"
        "<th>missed defects</th><th>partial overlap</th><th>what to move</th></tr>"
    )
    body = "".join(
        f"<tr><td>{int(c['class_id'])}</td><td>{float(c['score']):.4f}</td><td>{float(c['lost']):.2f}</td>"
        f"<td>{int(c['false_positive'])}</td><td>{int(c['missed'])}</td>"
        f"<td>{int(c['partial'])} pairs, {float(c['partial_loss']):.2f} lost</td><td>{e(str(c['advice']))}</td></tr>"
        for c in classes
    )
    worst = "".join(
        f"<li>class {int(c['class_id'])}: "
        + ", ".join(f"{e(str(w[0]))} ({e(str(w[1]))}, {float(w[2]):.2f})" for w in c["worst"])
        + "</li>"
        for c in classes
        if c["worst"]
    )
    pairs = int(classes[0]["pairs"])
    note = (
        f"<p>Each image x class pair is worth one point of {pairs * len(classes)} (the metric is their mean). "
        "A false positive on a clean image or a missed defect loses a whole point; a partial overlap loses "
        "1 - Dice.</p>"
    )
    return (
        f"<h2>Where the points are lost</h2>{note}<table>{head}{body}</table>"
        + (f"<p>Worst pairs (points lost):</p><ul>{worst}</ul>" if worst else "")
    )
