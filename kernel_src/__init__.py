"""Inference code that runs inside the Kaggle notebook (and is imported by the tests)."""
