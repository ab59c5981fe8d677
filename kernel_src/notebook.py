"""What the rendered notebook's cells call: `setup(CONFIG)`, then `main(CONFIG, ...)`.

`CONFIG` is the notebook's `parameters` cell (papermill style). `setup` checks it, then
finds, verifies and installs the bundle and finds the competition data (`kernel_src.bundle`),
all before torch or any model library is imported. `main` runs the pipeline
(`kernel_src.run.run`) and writes `submission.csv` and `profile.json` to `working_dir`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import Prepared, prepare
from .errors import BundleError, SpecError
from .paths import WORKING_DIR
from .spec import InferenceSpec

if TYPE_CHECKING:
    from .run import RunResult

CONFIG_KEYS = (
    "bundle_name",  # matched against bundle.json "bundle"
    "bundle_hash",  # compared with bundle.json "hash" (a warning when they differ)
    "dataset_id",  # the Kaggle dataset that carries the bundle (named in error messages)
    "bundle_dir",  # None: searched under input_root
    "input_root",  # /kaggle/input
    "working_dir",  # /kaggle/working: submission.csv and profile.json go here
    "data_dir",  # None: searched under input_root
    "sample_submission",  # file name of the sample submission
    "test_images",  # folder name of the test images
    "install_wheels",  # "auto" | "always" | "never" (True: "auto", False: "never")
    "inference",  # InferenceSpec.to_dict()
)
REQUIRED_KEYS = ("bundle_name", "inference")


def check_config(config: Mapping[str, Any]) -> InferenceSpec:
    """CONFIG has known keys only and a valid inference spec, which is returned."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise BundleError(f"CONFIG[{unknown[0]!r}] is not a setting; known settings: {', '.join(CONFIG_KEYS)}")
    for key in REQUIRED_KEYS:
        if not config.get(key):
            raise BundleError(f"CONFIG[{key!r}] is required; re-render the notebook with `bundler render-notebook`")
    inference = config["inference"]
    if not isinstance(inference, Mapping):
        raise BundleError("CONFIG['inference'] must be a dict (InferenceSpec.to_dict())")
    try:
        return InferenceSpec.from_dict(inference)
    except SpecError as e:
        raise BundleError(f"CONFIG['inference'] {e.key}: {e.message}") from None


def _model_files(spec: InferenceSpec) -> list[str]:
    models = spec.models
    return [m.file for m in models] + [m.preprocess for m in models if m.preprocess]


def _check_hashes(spec: InferenceSpec, prepared: Prepared) -> None:
    """A warning when a model's file in the bundle is not the one the notebook was rendered for."""
    weights = {str(w.get("file")): w for w in prepared.manifest.get("weights", []) if isinstance(w, dict)}
    for model in spec.models:
        listed = weights.get(model.file, {}).get("sha256")
        if model.sha256 and listed and model.sha256 != listed:
            print(
                f"warning: model {model.name!r}: {model.file} in the bundle is not the file this notebook was "
                "rendered for; re-render with `bundler render-notebook` after `bundler build`",
                file=sys.stderr,
            )


def setup(config: Mapping[str, Any]) -> Prepared:
    """The setup cell: CONFIG checked, bundle found, verified and installed, data found."""
    spec = check_config(config)
    prepared = prepare(config, required=_model_files(spec))
    _check_hashes(spec, prepared)
    return prepared


def main(config: Mapping[str, Any], *, started_at: float | None = None, prepared: Prepared | None = None) -> RunResult:
    """The run cell: predict every test image and write submission.csv and profile.json.

    `started_at` (epoch seconds) is when the notebook started: the time budget counts from it.
    `prepared` is what `setup` returned; `setup` runs here when it is None.
    """
    started = time.time() if started_at is None else float(started_at)
    spec = check_config(config)
    if prepared is None:
        prepared = setup(config)
    out_dir = Path(str(config.get("working_dir") or WORKING_DIR))
    out_dir.mkdir(parents=True, exist_ok=True)

    from .run import run  # torch and the model libraries are imported from here on

    return run(
        spec,
        bundle_dir=prepared.bundle_dir,
        test_dir=prepared.data.test_dir,
        sample_submission=prepared.data.sample_submission,
        out_dir=out_dir,
        started_at=started,
        progress=True,
    )
