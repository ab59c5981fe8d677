"""bundler: ship segmentation models to offline Kaggle code competitions."""

__version__ = "0.1.0"
