"""Vendoring the demo's real requirement from PyPI (network: excluded from the default run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from bundler.config import TargetConfig
from bundler.dataset.wheels.vendor import vendor_wheels
from bundler.target.baseline import load_baseline


@pytest.mark.network
@pytest.mark.slow
def test_smp_for_the_kaggle_image(tmp_path: Path) -> None:
    target = TargetConfig(requirements=("segmentation-models-pytorch==0.6.0",))
    plan = vendor_wheels(target, tmp_path / "dest", wheelhouse=tmp_path / "cache", console=Console())
    baseline = load_baseline(target.baseline)
    assert [(w.name, w.version) for w in plan.wheels] == [("segmentation-models-pytorch", "0.6.0")]
    assert plan.wheels[0].file.endswith("-py3-none-any.whl")
    assert all(baseline.get(w.name) is None for w in plan.wheels)
    from_image = dict(plan.from_baseline)
    assert from_image["torch"] == "2.10.0+cu128" and from_image["timm"] == "1.0.26"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [plan.wheels[0].file]
