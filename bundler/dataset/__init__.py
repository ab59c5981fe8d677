"""`bundler build`: the Kaggle dataset folder (wheels, weights, `bundle.json`, `dataset-metadata.json`)."""

from bundler.dataset.dataset_folder import BuildResult, build_dataset

__all__ = ["BuildResult", "build_dataset"]
