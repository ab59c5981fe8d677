"""`bundler dry-run`: the rendered notebook executed offline in a Kaggle-like tree, timed, projected,
scored and reported."""

from bundler.dryrun.command import DryRunResult, dry_run
from bundler.dryrun.inputs import labels_of_the_set

__all__ = ["DryRunResult", "dry_run", "labels_of_the_set"]
