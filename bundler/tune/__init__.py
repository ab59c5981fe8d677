"""`bundler tune`: the labelled holdout run once through the shipped engine and cached, then the
post-process and gating tuned with k-fold CV, the points lost located, and the ensemble plan
that fits the budget recommended."""

from bundler.tune.command import TuneResult, tune

__all__ = ["TuneResult", "tune"]
