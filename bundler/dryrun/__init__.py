"""`bundler dry-run`: the rendered notebook executed offline in a Kaggle-like tree, timed, projected,
scored and reported."""

from bundler.dryrun.command import DryRunResult, dry_run

__all__ = ["DryRunResult", "dry_run"]
