"""Scoring against labels: the competition metric (mean Dice over every image x class pair, from
the RLE intervals) and where its points are lost; for the image-level tasks, a registry of metrics
and a per-image submission's score with its confusion matrix or scatter and the rows most wrong.
Used by the dry-run, tune and the demo; imports no stage (kernel_src only)."""

from bundler.scoring.breakdown import ClassLosses, loss_breakdown, loss_section, submission_breakdown
from bundler.scoring.figures import confusion_png, row_score_section, scatter_png
from bundler.scoring.metric import MetricResult, dice, dice_of_intervals, dice_score, mask_shapes, score_run
from bundler.scoring.metrics import DEFAULT_METRIC, METRICS, Metric, default_metric, get_metric
from bundler.scoring.rows import RowScore, sample_key, score_rows, score_submission

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "ClassLosses",
    "Metric",
    "MetricResult",
    "RowScore",
    "confusion_png",
    "default_metric",
    "dice",
    "dice_of_intervals",
    "dice_score",
    "get_metric",
    "loss_breakdown",
    "loss_section",
    "mask_shapes",
    "row_score_section",
    "sample_key",
    "scatter_png",
    "score_rows",
    "score_run",
    "score_submission",
    "submission_breakdown",
]
