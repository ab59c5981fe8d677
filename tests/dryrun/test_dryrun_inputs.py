"""Each bad input of a dry-run stops it before anything runs, with a message naming the fix."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bundler.config import BundleConfig
from bundler.dryrun.inputs import check_inputs
from bundler.errors import DryRunError
from tests.projects import quiet


@pytest.fixture
def cfg(project: BundleConfig) -> BundleConfig:
    from bundler.notebook.render import render_notebook

    render_notebook(project, console=quiet())  # kernel_src may have changed since the fixture ran
    return project


def _dryrun(cfg: BundleConfig, **changes: object) -> BundleConfig:
    return replace(cfg, dryrun=replace(cfg.dryrun, **changes))


def test_good_inputs_pass(cfg: BundleConfig) -> None:
    inputs = check_inputs(cfg)
    assert len(inputs.test_images) == 6
    assert inputs.sample.layout == "wide"
    assert inputs.labels == cfg.dryrun.labels
    assert inputs.warnings == ()


def test_bundle_never_built(cfg: BundleConfig, tmp_path: Path) -> None:
    bad = replace(cfg, dataset=replace(cfg.dataset, out=tmp_path / "nothing"))
    with pytest.raises(DryRunError, match=r"bundle\.json not found: the bundle was never built; run `bundler build`"):
        check_inputs(bad)


def test_notebook_never_rendered(cfg: BundleConfig, tmp_path: Path) -> None:
    bad = replace(cfg, kernel=replace(cfg.kernel, notebook=tmp_path / "missing.ipynb"))
    with pytest.raises(DryRunError, match="never rendered; run `bundler render-notebook`"):
        check_inputs(bad)


def test_notebook_older_than_the_bundle(cfg: BundleConfig, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(cfg.dataset.out, dataset)
    manifest = json.loads((dataset / "bundle.json").read_text())
    manifest["hash"] = "f" * 64
    (dataset / "bundle.json").write_text(json.dumps(manifest))
    bad = replace(cfg, dataset=replace(cfg.dataset, out=dataset))
    with pytest.raises(DryRunError, match="older than the bundle; run `bundler render-notebook`"):
        check_inputs(bad)


def test_notebook_older_than_the_config(cfg: BundleConfig) -> None:
    bad = replace(cfg, inference=replace(cfg.inference, batch_size=3))
    with pytest.raises(DryRunError, match=r"older than bundle\.toml \(it differs in inference\.batch_size\)"):
        check_inputs(bad)


def test_test_folder_missing_empty_or_not_given(cfg: BundleConfig, tmp_path: Path) -> None:
    with pytest.raises(DryRunError, match="does not exist: fix --test-dir"):
        check_inputs(_dryrun(cfg, test_dir=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DryRunError, match="holds no images"):
        check_inputs(_dryrun(cfg, test_dir=tmp_path / "empty"))
    with pytest.raises(DryRunError, match=r"pass --test-dir DIR or set dryrun\.test_dir"):
        check_inputs(_dryrun(cfg, test_dir=None))


def test_sample_submission_of_another_layout(cfg: BundleConfig, tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("id,predicted\na.jpg,1\n")
    with pytest.raises(DryRunError, match=r"does not match the configured layout.*unknown header"):
        check_inputs(_dryrun(cfg, sample_submission=odd))


def test_sample_submission_with_too_few_classes(cfg: BundleConfig, tmp_path: Path) -> None:
    assert cfg.dryrun.sample_submission is not None
    lines = cfg.dryrun.sample_submission.read_text().splitlines()
    three = tmp_path / "three.csv"
    three.write_text("\n".join(line for line in lines if not line.split(",")[0].endswith("_4")) + "\n")
    with pytest.raises(DryRunError, match=r"lacks the keys for classes \[4\].*fix inference.num_classes \(now 4\)"):
        check_inputs(_dryrun(cfg, sample_submission=three))


def test_sample_submission_for_other_images(cfg: BundleConfig, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"zzz.jpg_{c},\n" for c in range(1, 5)))
    with pytest.raises(DryRunError, match="names none of the 6 images"):
        check_inputs(_dryrun(cfg, sample_submission=other))


def test_labels_for_images_not_in_the_set(cfg: BundleConfig, tmp_path: Path) -> None:
    assert cfg.dryrun.labels is not None
    labels = tmp_path / "labels.csv"
    labels.write_text(cfg.dryrun.labels.read_text() + "ghost.jpg,1,1 5\n")
    with pytest.raises(DryRunError, match=r"name 1 image\(s\) not in the test set \(e.g. \['ghost.jpg'\]\)"):
        check_inputs(_dryrun(cfg, labels=labels))


def test_labels_in_the_wrong_form_or_with_bad_rles(cfg: BundleConfig, tmp_path: Path) -> None:
    wide = tmp_path / "wide.csv"
    wide.write_text("ImageId_ClassId,EncodedPixels\n")
    with pytest.raises(DryRunError, match=r"train\.csv form ImageId,ClassId,EncodedPixels"):
        check_inputs(_dryrun(cfg, labels=wide))
    assert cfg.dryrun.labels is not None
    first_image = cfg.dryrun.labels.read_text().splitlines()[1].split(",")[0]
    broken = tmp_path / "broken.csv"
    broken.write_text(f"ImageId,ClassId,EncodedPixels\n{first_image},2,1 99999999\n")
    with pytest.raises(DryRunError, match=r"line 2.*past the mask"):
        check_inputs(_dryrun(cfg, labels=broken))
    broken.write_text(f"ImageId,ClassId,EncodedPixels\n{first_image},1.0,1 9\n")
    with pytest.raises(DryRunError, match=r"^labels .*broken\.csv line 2: image .* has ClassId '1\.0'; expected"):
        check_inputs(_dryrun(cfg, labels=broken))


def test_missing_labels_file_and_bad_calibration_profile(cfg: BundleConfig, tmp_path: Path) -> None:
    with pytest.raises(DryRunError, match=r"labels file .* does not exist"):
        check_inputs(_dryrun(cfg, labels=tmp_path / "none.csv"))
    bad = tmp_path / "profile.json"
    bad.write_text("{not json")
    with pytest.raises(DryRunError, match=r"calibration profile .* cannot be read"):
        check_inputs(_dryrun(cfg, calibration_profile=bad))


def test_an_empty_labels_file_ends_in_one_line(cfg: BundleConfig, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DryRunError, match=r"^labels .*empty\.csv: the file is empty \(no header\); expected"):
        check_inputs(_dryrun(cfg, labels=empty))


def test_an_unreadable_bundle_json_is_named_as_such(cfg: BundleConfig, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(cfg.dataset.out, dataset)
    (dataset / "bundle.json").write_text("{not json")
    bad = replace(cfg, dataset=replace(cfg.dataset, out=dataset))
    with pytest.raises(DryRunError, match=r"bundle\.json: cannot be read \(Expecting property name") as e:
        check_inputs(bad)
    assert "not found" not in str(e.value) and "never built" not in str(e.value)
