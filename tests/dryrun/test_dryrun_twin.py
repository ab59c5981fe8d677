"""The dry-run on the twin of the Kaggle image (issue 12, items 1, 2 and 6), end to end.

The twin is real: a venv of the target Python holding the baseline's versions, created once in
the user's cache folder (`bundler.dryrun.twin.twins_dir()`) and reused by every later run on this
machine. Its first creation downloads torch and its CUDA wheels (about 3 GB, a few minutes);
these tests create it when it is missing and are skipped only where no Python of the target's
version exists (`bundler.target.interpreter`).

The tiny bundle (tests.projects.make_vendoring_project): a traced TorchScript segmenter (torch is
all it needs) and a vendored wheel the twin lacks, which the notebook's setup cell installs
offline, inside the twin's per-run overlay. (A segmenter SCRIPTED by torch 2.14 does not load on
the image's torch 2.10: its serialized F.interpolate calls an op 2.10 lacks; the twin's first catch.)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bundler.dryrun.twin import twins_dir
from bundler.target.interpreter import find_target_python
from tests.projects import VENDORED_PROBE, make_vendoring_project

TARGET = "3.12"
_found = find_target_python(TARGET)
pytestmark = pytest.mark.skipif(
    _found is None,
    reason=f"no Python {TARGET} here for the twin of the image: `pyenv install {TARGET}`, "
    f"`uv python install {TARGET}` or BUNDLER_TARGET_PYTHON",
)


def _site_listing(python_sites: list[Path]) -> set[str]:
    """The site folders' entries (a pip install adds a dist-info and a package); names only."""
    return {str(p) for site in python_sites if site.is_dir() for p in site.iterdir() if p.name != "__pycache__"}


@pytest.mark.slow
def test_the_notebook_installs_the_vendored_wheel_inside_the_twin_and_passes(tmp_path: Path) -> None:
    from bundler.dryrun.command import dry_run
    from bundler.dryrun.runtime import local_sites

    cfg = make_vendoring_project(tmp_path / "p", ["numpy>=1.20"], runtime="image")
    user_sites = list(local_sites())
    before = _site_listing(user_sites)
    buf = io.StringIO()
    result = dry_run(cfg, console=Console(file=buf, width=200))
    log = buf.getvalue()
    assert result.ok, result.reason + "\n" + log
    summary = json.loads((result.out / "summary.json").read_text())
    runtime = summary["runtime"]
    assert runtime["name"] == "image" and runtime["engine"] == "papermill"
    assert runtime["python"].startswith(TARGET + ".")
    assert runtime["torch"] == "2.10.0" and runtime["numpy"] == "2.0.2"  # the baseline's, not this venv's
    assert "runtime: image (Python 3.12" in log
    executed = (result.out / "inference.ipynb").read_text()
    assert f"installing 1 vendored wheels offline: {VENDORED_PROBE.replace('-', '_')}-1.0-py3-none-any.whl" in executed
    assert "requirements of the 1 vendored wheels are met" in executed
    assert "papermill" in json.loads(executed)["metadata"]  # run by papermill's engine
    twin = Path(runtime["where"])
    assert twin.parent == twins_dir()
    twin_site = next(twin.glob("lib/python3.*/site-packages"))
    assert not list(twin_site.glob("bundler_twin_probe*")), "the twin must stay pristine"
    assert _site_listing(user_sites) == before, "nothing may be installed into the environment bundler runs from"


@pytest.mark.slow
def test_the_drift_guard_stops_the_setup_cell_when_the_twin_lacks_a_requirement(tmp_path: Path) -> None:
    from bundler.dryrun.command import dry_run

    cfg = make_vendoring_project(tmp_path / "p", ["numpy>=99", "bundler-absent-dependency>=1.0"], runtime="image")
    buf = io.StringIO()
    result = dry_run(cfg, console=Console(file=buf, width=200))
    assert not result.ok
    summary = json.loads((result.out / "summary.json").read_text())
    failed = summary["failed_cell"]
    assert failed["ename"] == "BundleError", failed
    assert "numpy 2.0.2 is installed, too old or too new" in failed["evalue"]
    assert "bundler-absent-dependency is not installed" in failed["evalue"]
    assert "refresh the baseline" in failed["evalue"] and "bundler build" in failed["evalue"]
    assert not (result.out / "profile.json").exists(), "no model may run after the guard stopped the setup cell"
