"""Scoring against labels: the competition metric (mean Dice over every image x class pair, from
the RLE intervals) and where its points are lost. Used by the dry-run, tune and the demo; imports
no stage (kernel_src only)."""

from bundler.scoring.breakdown import ClassLosses, loss_breakdown, loss_section, submission_breakdown
from bundler.scoring.metric import MetricResult, dice, dice_of_intervals, dice_score, mask_shapes, score_run

__all__ = [
    "ClassLosses",
    "MetricResult",
    "dice",
    "dice_of_intervals",
    "dice_score",
    "loss_breakdown",
    "loss_section",
    "mask_shapes",
    "score_run",
    "submission_breakdown",
]
