"""The dry-run's scoring of an image-level task: the task and metric read from the config where it
declares them (segmentation otherwise), and the report's section with its confusion matrix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from bundler.dryrun.command import image_task
from bundler.dryrun.report import render_report
from bundler.scoring import score_submission


def _cfg(competition: dict[str, Any], inference: dict[str, Any]) -> Any:
    return SimpleNamespace(competition=SimpleNamespace(**competition), inference=SimpleNamespace(**inference))


def test_a_config_without_a_task_is_segmentation() -> None:
    assert image_task(_cfg({}, {})) == (None, None)
    assert image_task(_cfg({"task": "segmentation"}, {})) == (None, None)


def test_the_task_and_metric_are_read_where_declared() -> None:
    assert image_task(_cfg({"task": "classification"}, {})) == ("classification", None)
    assert image_task(_cfg({}, {"task": "ordinal", "metric": "qwk"})) == ("ordinal", "qwk")
    # a [task] table read into the inference spec (its `name`, and a `metric` where it has one)
    table = SimpleNamespace(name="regression", metric="mae")
    assert image_task(_cfg({}, {"task": table})) == ("regression", "mae")
    assert image_task(_cfg({}, {"task": SimpleNamespace(name="segmentation")})) == (None, None)


def test_the_report_shows_the_row_score_with_its_figure(tmp_path: Path) -> None:
    sample, labels, submission = tmp_path / "sample.csv", tmp_path / "labels.csv", tmp_path / "submission.csv"
    pd.DataFrame({"ImageId": [1, 2, 3, 4], "Label": [0] * 4}).to_csv(sample, index=False)
    pd.DataFrame({"ImageId": [1, 2, 3, 4], "Label": [7, 1, 7, 2]}).to_csv(labels, index=False)
    pd.DataFrame({"ImageId": [1, 2, 3, 4], "Label": [7, 1, 1, 2]}).to_csv(submission, index=False)
    scored = score_submission(submission, labels, sample=sample, task="classification")
    assert scored.score == 0.75 and scored.worst == (("3", "7", "1", 1.0),)
    page = render_report({"ok": True, "reason": "", "score": scored.score, "row_score": scored.to_dict()}, None, [])
    assert "accuracy = <b>0.7500</b>" in page and 'alt="confusion matrix"' in page
    assert "mean Dice (the competition metric)" not in page


def test_an_image_level_submission_is_complete_when_it_has_every_key_of_the_sample(tmp_path: Path) -> None:
    from bundler.dryrun.command import _complete
    from kernel_src.rows import RowSample

    sample = RowSample(tmp_path / "s.csv", ("ImageId", "Label"), ("1", "2", "3"), ("0", "1", "2"), (0, 1, 2))
    good = tmp_path / "good.csv"
    good.write_text("ImageId,Label\n1,7\n2,0\n3,3\n")
    assert _complete(good, sample) == ""
    short = tmp_path / "short.csv"
    short.write_text("ImageId,Label\n1,7\n3,3\n")
    assert "2 rows for 2 keys, the sample lists 3" in _complete(short, sample)
    header = tmp_path / "header.csv"
    header.write_text("ImageId,label\n1,7\n2,0\n3,3\n")
    assert "header" in _complete(header, sample)


def test_tune_says_it_has_no_search_for_an_image_level_task(tmp_path: Path) -> None:
    import tomllib

    import pytest

    from bundler.config import parse_config
    from bundler.demo.classification import DigitDemoSettings, bundle_toml
    from bundler.errors import TuneError
    from bundler.tune import tune
    from tests.projects import quiet

    cfg = parse_config(tomllib.loads(bundle_toml(DigitDemoSettings())), tmp_path)
    with pytest.raises(TuneError, match=r"for \[task\] name = 'classification' it has no search yet"):
        tune(cfg, console=quiet())
