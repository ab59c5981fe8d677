"""The dry-run's inputs, each checked before anything runs; every error names the fix.

- the built bundle (`bundle.json` in `dataset.out`) -> `bundler build`;
- the rendered notebook, rendered for this bundle, this bundle.toml and this kernel_src
  -> `bundler render-notebook`;
- the test images folder (present, not empty), or for a file reader of `[input]` (arrays, CSV
  pixel rows) the folder its `path` is relative to (or the file itself), the reader opened on it
  (a file that does not fit the settings is the reader's one-line error);
- the sample submission (the `[submission]` layout, or a Severstal one; `num_classes` classes;
  ids matched to the folder's files by name, or by stem under `image_id = "stem"`);
- the labels (long train.csv form, or the `[submission]` layout when one is named; RLEs valid at
  each image's encode size; only images of the set);
- the calibration profile (a Kaggle run's profile.json).

`labels_of_the_set` keeps `dryrun.labels` from being applied to a `--test-dir` of another set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from bundler.config import BundleConfig, config_warnings
from bundler.dryrun.tree import image_files
from bundler.errors import DryRunError, ManifestError, RenderError
from bundler.scoring import mask_shapes
from kernel_src import rle
from kernel_src.bundle import kernel_src_hash
from kernel_src.errors import InputError, SubmissionFormatError
from kernel_src.inputs import READERS, input_files
from kernel_src.rows import RowSample, read_row_sample
from kernel_src.submission import SampleSubmission, masks_by_image, read_mask_rows, read_sample_submission

RENDER = "run `bundler render-notebook`"


@dataclass(frozen=True)
class Inputs:
    manifest: dict[str, Any]
    notebook: NotebookNode
    test_dir: Path
    test_images: tuple[str, ...]
    sample_submission: Path
    sample: SampleSubmission | RowSample  # RowSample: an image-level task's per-image rows (kernel_src.rows)
    labels: Path | None
    calibration_profile: dict[str, Any] | None
    warnings: tuple[str, ...] = field(default=())


def _manifest(cfg: BundleConfig) -> dict[str, Any]:
    from bundler.dataset.manifest import read_manifest

    try:
        return read_manifest(cfg.dataset.out, cfg.name)
    except ManifestError as e:
        raise DryRunError(str(e)) from None


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _notebook(cfg: BundleConfig, manifest: Mapping[str, Any]) -> NotebookNode:
    from bundler.notebook.parameters import notebook_config, notebook_parameters
    from bundler.notebook.render import kernel_src_dir

    path = cfg.kernel.notebook
    if not path.is_file():
        raise DryRunError(f"{path} not found: the notebook was never rendered; {RENDER}")
    try:
        nb: NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
        rendered = notebook_parameters(nb)
        expected = notebook_config(cfg, manifest)
    except (OSError, ValueError, RenderError) as e:
        raise DryRunError(f"{path}: cannot be read as a rendered notebook ({e}); {RENDER}") from None
    if rendered.get("bundle_hash") != manifest.get("hash"):
        raise DryRunError(
            f"{path} was rendered for bundle {str(rendered.get('bundle_hash'))[:12]}, but {cfg.dataset.out} holds "
            f"{str(manifest.get('hash'))[:12]}: the notebook is older than the bundle; {RENDER}"
        )
    changed = _differences(rendered, expected)
    if changed:
        raise DryRunError(f"{path} is older than bundle.toml (it differs in {', '.join(changed[:5])}); {RENDER}")
    meta = nb.metadata.get("bundler", {})
    if meta.get("kernel_src_hash") != kernel_src_hash(kernel_src_dir()):
        raise DryRunError(f"{path} carries an older kernel_src than this checkout's; {RENDER}")
    return nb


def data_folder(cfg: BundleConfig, test_dir: Path) -> Path:
    """The folder a file reader's `[input] path` is relative to: `test_dir` itself, or, when it names
    the reader's file (`--test-dir data/test.csv`), the folder that path is relative to."""
    spec = cfg.inference.input
    if not test_dir.is_file():
        return test_dir
    parts = Path(spec.path).parts
    if test_dir.parts[-len(parts) :] != parts:
        raise DryRunError(
            f"--test-dir {test_dir} is a file, but input.path is {spec.path!r}: pass the folder holding "
            f"{spec.path}, or that file"
        )
    return Path(*test_dir.parts[: -len(parts)]) if len(test_dir.parts) > len(parts) else Path()


def _reader_input(cfg: BundleConfig, test_dir: Path) -> tuple[Path, tuple[str, ...]]:
    """A file reader's data folder and the ids its file offers, the reader opened as the notebook will."""
    from kernel_src.images import PixelSettings
    from kernel_src.readers import open_reader

    spec, inf = cfg.inference.input, cfg.inference
    folder = data_folder(cfg, test_dir)
    for name in input_files(spec):
        if not (folder / name).is_file():
            raise DryRunError(
                f"{folder / name} does not exist: --test-dir (dryrun.test_dir) is the folder the [input] files "
                f"are relative to (input.path = {spec.path!r}); fix it or the path"
            )
    try:
        with open_reader(spec, folder, pixels=PixelSettings(inf.bit_depth, inf.pixel_max, inf.image_channels)) as r:
            ids = r.ids
    except InputError as e:
        raise DryRunError(str(e)) from None
    if not ids:
        raise DryRunError(f"{folder / spec.path} holds no images: point --test-dir at the test set's data")
    return folder, ids


def _test_dir(cfg: BundleConfig) -> tuple[Path, tuple[str, ...]]:
    test_dir = cfg.dryrun.test_dir
    if test_dir is None:
        raise DryRunError("no test images folder: pass --test-dir DIR or set dryrun.test_dir in bundle.toml")
    if READERS[cfg.inference.input.reader].file:
        if not test_dir.exists():
            raise DryRunError(f"test data {test_dir} does not exist: fix --test-dir or dryrun.test_dir")
        return _reader_input(cfg, test_dir)
    if not test_dir.is_dir():
        raise DryRunError(f"test images folder {test_dir} does not exist: fix --test-dir or dryrun.test_dir")
    names = tuple(p.name for p in image_files(test_dir))
    if not names:
        raise DryRunError(
            f"test images folder {test_dir} holds no images (.jpg, .png, ...): point --test-dir at the folder of images"
        )
    return test_dir, names


def _sample(cfg: BundleConfig, images: tuple[str, ...]) -> tuple[Path, SampleSubmission | RowSample, list[str]]:
    path = cfg.dryrun.sample_submission
    if path is None:
        raise DryRunError(
            "no sample submission: pass --sample-submission CSV or set dryrun.sample_submission in bundle.toml"
        )
    if not path.is_file():
        raise DryRunError(
            f"sample submission {path} does not exist: fix --sample-submission or dryrun.sample_submission"
        )
    n = cfg.inference.num_classes
    spec = cfg.inference
    try:
        sample: SampleSubmission | RowSample
        if spec.task.task.image_level:  # per-image rows, read as the notebook reads them
            sample = read_row_sample(path, spec.rows, n, spec.outputs(spec.task.task.role))
        else:
            sample = read_sample_submission(path, n, spec.submission)
    except ValueError as e:
        raise DryRunError(
            f"sample submission does not match the configured layout: {e}. Give the competition's "
            f"sample_submission.csv for these images, or fix inference.num_classes (now {n}) or [submission]"
        ) from None
    present = _ids_of(cfg, images)
    absent = [i for i in sample.image_ids if i not in present]
    if len(absent) == len(sample.image_ids):
        raise DryRunError(
            f"sample submission {path} names none of the {len(images)} images in {cfg.dryrun.test_dir} "
            f"(e.g. {sample.image_ids[:1]}): give the sample submission made for that folder"
        )
    warnings = []
    if absent:
        warnings.append(
            f"the sample submission lists {len(absent)} image(s) not in the test folder (e.g. {absent[0]}); "
            "the notebook will report them missing and write empty masks"
        )
    return path, sample, warnings


def _labels(cfg: BundleConfig, sample: SampleSubmission | RowSample, images: tuple[str, ...]) -> Path | None:
    path = cfg.dryrun.labels
    if path is None:
        return None
    if not path.is_file():
        raise DryRunError(f"labels file {path} does not exist: fix --labels or dryrun.labels (or leave it out)")
    if isinstance(sample, RowSample):  # per-image labels: read and checked by the scoring (bundler.scoring.rows)
        return path
    n = cfg.inference.num_classes
    layout = cfg.inference.submission  # labels are read in the [submission] layout (long form under "auto")
    try:
        rows = read_mask_rows(path, n, labels=True, submission=layout)
        merge = layout.per_object
        masks_by_image(rows, n, str(path), merge=merge)  # one mask per image x class
    except SubmissionFormatError as e:
        raise DryRunError(f"labels {e}") from None
    known = set(sample.image_ids) & _ids_of(cfg, images)
    outside = sorted({row.image_id for row in rows} - known)
    if outside:
        raise DryRunError(
            f"labels {path} name {len(outside)} image(s) not in the test set (e.g. {outside[:3]}): "
            "give the labels of exactly these test images"
        )
    test_dir = cfg.dryrun.test_dir or Path()  # set: _test_dir checked it first
    shapes = mask_shapes(cfg.inference, test_dir, sorted({row.image_id for row in rows}))
    for row in rows:
        h, w = shapes.get(row.image_id, (0, 0))
        if not h:
            continue  # a file OpenCV cannot read: its own problem is reported by the run
        try:
            rle.parse(row.rle, h * w)
        except ValueError as e:
            raise DryRunError(
                f"labels {path} line {row.line} ({row.image_id}, class {row.class_id}): {e}; labels must be RLEs of "
                f"{h}x{w} masks (the size masks are encoded at: inference.encode_size, image size)"
            ) from None
    return path


def _ids_of(cfg: BundleConfig, images: tuple[str, ...]) -> set[str]:
    """The image ids the test folder's files stand for: file names, or their stems under
    `[submission] image_id = "stem"`; a file reader's ids as they are."""
    if READERS[cfg.inference.input.reader].file:
        return set(images)
    if cfg.inference.submission.image_id == "stem":
        return {Path(i).stem for i in images}
    return set(images)


def labels_of_the_set(cfg: BundleConfig, test_dir: Path) -> tuple[BundleConfig, str]:
    """`cfg` for a dry-run on `test_dir` given without labels: `dryrun.labels` belong to
    `dryrun.test_dir`, so on another folder they are dropped (they would fail, or score the wrong
    set), with a note saying so; '' when nothing changed."""
    labels, own = cfg.dryrun.labels, cfg.dryrun.test_dir
    if labels is None or (own is not None and own.resolve() == test_dir.resolve()):
        return cfg, ""
    note = f"dryrun.labels ({labels}) belong to dryrun.test_dir ({own}), not to {test_dir}: not scored; pass --labels"
    return replace(cfg, dryrun=replace(cfg.dryrun, labels=None)), note


def _calibration_profile(cfg: BundleConfig) -> dict[str, Any] | None:
    path = cfg.dryrun.calibration_profile
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DryRunError(
            f"calibration profile {path} cannot be read ({e}): "
            "give the profile.json that a Kaggle run of this notebook wrote"
        ) from None
    if not isinstance(data, dict):
        raise DryRunError(f"calibration profile {path} is not a profile.json object: give a Kaggle run's profile.json")
    return data


def check_inputs(cfg: BundleConfig) -> Inputs:
    """Every input of the dry-run, checked in the order a user would fix them."""
    manifest = _manifest(cfg)
    nb = _notebook(cfg, manifest)
    test_dir, images = _test_dir(cfg)
    sample_path, sample, warnings = _sample(cfg, images)
    labels = _labels(cfg, sample, images)
    calibration = _calibration_profile(cfg)
    warnings = [*config_warnings(cfg), *warnings]
    return Inputs(manifest, nb, test_dir, images, sample_path, sample, labels, calibration, tuple(warnings))
