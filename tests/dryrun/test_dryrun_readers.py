"""The dry-run with a file reader of `[input]` (kernel_src.readers): its input checks accept the
reader's file (the folder it is relative to, or the file itself) and name what does not fit; the
Kaggle-like tree carries the file where the notebook looks for it; and (slow) a dry-run of the tiny
project from an `.npz` writes the submission its PNG files give."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from bundler.config import BundleConfig, load_config
from bundler.dryrun.inputs import check_inputs
from bundler.dryrun.tree import make_tree, remove_tree
from bundler.errors import DryRunError
from kernel_src.bundle import find_competition_data, input_location
from tests.projects import DRYRUN_IMAGES, make_dryrun_project, quiet, write_built_manifest

NPZ_INPUT = '\n[input]\nreader = "npz"\npath = "test.npz"\narray = "images"\nids = "ids"\n'


def _with_input(cfg: BundleConfig, table: str, test_dir: str, name: str) -> BundleConfig:
    """`cfg`'s project with an `[input]` table and its own dryrun.test_dir and out, built and rendered."""
    from bundler.notebook.render import render_notebook

    path = cfg.root / "bundle.toml"
    text = path.read_text(encoding="utf-8").replace('test_dir = "holdout/test_images"', f'test_dir = "{test_dir}"')
    path.write_text(text + table, encoding="utf-8")
    changed = load_config(path)
    changed = replace(changed, dryrun=replace(changed.dryrun, out=cfg.root / "build" / name))
    write_built_manifest(changed)
    render_notebook(changed, console=quiet())
    return changed


def _holdout_arrays(root: Path) -> tuple[np.ndarray, list[str]]:
    files = sorted((root / "holdout" / "test_images").iterdir())
    images = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files])
    return images, [p.name for p in files]


@pytest.fixture
def npz_project(tmp_path: Path) -> BundleConfig:
    cfg = make_dryrun_project(tmp_path)
    images, ids = _holdout_arrays(tmp_path)
    (tmp_path / "arrays").mkdir()
    np.savez(tmp_path / "arrays" / "test.npz", images=images, ids=np.array(ids))
    return _with_input(cfg, NPZ_INPUT, "arrays", "npz")


def test_the_input_checks_accept_a_readers_folder_or_file(npz_project: BundleConfig) -> None:
    inputs = check_inputs(npz_project)
    assert inputs.test_dir == npz_project.root / "arrays"
    assert len(inputs.test_images) == DRYRUN_IMAGES and inputs.warnings == ()
    assert set(inputs.sample.image_ids) == set(inputs.test_images)
    npz = npz_project.root / "arrays" / "test.npz"
    as_file = replace(npz_project, dryrun=replace(npz_project.dryrun, test_dir=npz))
    assert check_inputs(as_file).test_dir == npz_project.root / "arrays"


def test_a_readers_file_that_is_absent_or_does_not_fit_is_named(npz_project: BundleConfig) -> None:
    elsewhere = npz_project.root / "holdout"
    with pytest.raises(DryRunError, match=r"test\.npz does not exist: --test-dir \(dryrun\.test_dir\) is the folder"):
        check_inputs(replace(npz_project, dryrun=replace(npz_project.dryrun, test_dir=elsewhere)))
    other = npz_project.root / "holdout" / "sample_submission.csv"
    with pytest.raises(DryRunError, match=r"is a file, but input\.path is 'test\.npz'"):
        check_inputs(replace(npz_project, dryrun=replace(npz_project.dryrun, test_dir=other)))
    np.savez(npz_project.root / "arrays" / "test.npz", images=np.zeros((2, 3, 4, 5)), ids=np.array(["a", "b"]))
    with pytest.raises(DryRunError, match=r"shape \[2, 3, 4, 5\] is not N x H x W"):
        check_inputs(npz_project)


def test_a_csv_of_another_width_stops_the_dry_run_before_it_runs(tmp_path: Path) -> None:
    cfg = make_dryrun_project(tmp_path)
    images, ids = _holdout_arrays(tmp_path)
    (tmp_path / "rows").mkdir()
    flat = images[..., 0].reshape(len(images), -1)
    frame = pd.DataFrame(flat, columns=[f"pixel{k}" for k in range(flat.shape[1])])
    frame.insert(0, "name", ids)
    frame.to_csv(tmp_path / "rows" / "test.csv", index=False)
    table = '\n[input]\nreader = "csv_pixels"\npath = "test.csv"\nid_column = "name"\nshape = [64, 255]\n'
    changed = _with_input(cfg, table, "rows", "csv")
    with pytest.raises(DryRunError) as e:
        check_inputs(changed)
    assert "test.csv: rows hold 16384 pixel columns" in str(e.value) and "input.shape = [64, 255]" in str(e.value)


def test_the_kaggle_like_tree_carries_the_readers_files_where_the_notebook_finds_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    np.save(data / "sub" / "x.npy", np.zeros((2, 3, 4), np.uint8))
    np.save(data / "ids.npy", np.array(["a", "b"]))
    (tmp_path / "sample.csv").write_text("ImageId,Label\na,0\nb,0\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    tree = make_tree(
        tmp_path / "tree",
        bundle_src=bundle,
        dataset_id="me/bundle",
        competition_slug="digits",
        test_dir=data,
        test_images_name="test_images",
        sample_submission_src=tmp_path / "sample.csv",
        sample_submission_name="sample_submission.csv",
        input_files=("sub/x.npy", "ids.npy"),
    )
    try:
        assert (tree.competition_dir / "sub" / "x.npy").read_bytes() == (data / "sub" / "x.npy").read_bytes()
        assert (tree.competition_dir / "ids.npy").is_file()
        assert not (tree.competition_dir / "test_images").exists()
        config = {"inference": {"input": {"reader": "npy", "path": "sub/x.npy", "ids": "ids.npy"}}}
        name, is_file = input_location(config)
        found = find_competition_data(tree.input_root, "sample_submission.csv", name, test_file=is_file)
        assert found.test_dir == tree.competition_dir
    finally:
        remove_tree(tree.root)


@pytest.mark.slow
def test_a_dry_run_from_an_npz_writes_the_submission_its_pngs_give(npz_project: BundleConfig, tmp_path: Path) -> None:
    from bundler.dryrun.command import dry_run

    buf = io.StringIO()
    result = dry_run(npz_project, console=Console(file=buf, width=160))
    assert result.ok, result.reason + "\n" + buf.getvalue()
    pngs = make_dryrun_project(tmp_path / "pngs")
    pngs = replace(pngs, dryrun=replace(pngs.dryrun, out=tmp_path / "pngs" / "build" / "png"))
    reference = dry_run(pngs, console=quiet())
    assert reference.ok, reference.reason
    written = (result.out / "submission.csv").read_bytes()
    assert written == (reference.out / "submission.csv").read_bytes()
    assert result.summary["images_predicted"] == DRYRUN_IMAGES
    report, png_report = ((r.out / "report.html").read_text() for r in (result, reference))
    shown = re.findall(r'alt="masks of ([^"]+)"', png_report)
    assert shown and re.findall(r'alt="masks of ([^"]+)"', report) == shown  # the overlays, from the array's rows
