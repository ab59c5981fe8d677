"""The dry-run on the twin of the Kaggle image (issue 12, items 1, 2 and 6), end to end.

The twin is real: a venv of the target Python holding the baseline's versions, created once in
the user's cache folder (`bundler.dryrun.twin.twins_dir()`) and reused by every later run on this
machine. Its first creation downloads torch and its CUDA wheels (about 3 GB, a few minutes);
these tests create it when it is missing and are skipped only where no Python of the target's
version exists (`bundler.build.wheels.interpreter`).

The tiny bundle: a TorchScript segmenter (torch is all it needs) and a vendored wheel the twin
lacks, which the notebook's setup cell installs offline, inside the twin's per-run overlay.
The segmenter is TRACED: one scripted by torch 2.14 (tests.tiny.make_torchscript_segmenter) does
not load on the image's torch 2.10 (its serialized F.interpolate calls an op 2.10 lacks), which
is the twin's first catch; a trace records plain aten ops.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from bundler.build.wheels.interpreter import find_target_python
from bundler.config import BundleConfig, load_config
from bundler.dryrun.twin import twins_dir
from kernel_src.bundle import sha256_file
from kernel_src.spec import ModelSpec
from tests.projects import DRYRUN_HIDDEN, DRYRUN_IMAGES, model_table, quiet, tiny_inference, tiny_project, write_project
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, _TinySegNet
from tests.wheelhouse import make_wheel

TARGET = "3.12"
_found = find_target_python(TARGET)
pytestmark = pytest.mark.skipif(
    _found is None,
    reason=f"no Python {TARGET} here for the twin of the image: `pyenv install {TARGET}`, "
    f"`uv python install {TARGET}` or BUNDLER_TARGET_PYTHON",
)
PROBE = "bundler-twin-probe"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def _traced_segmenter(dest: Path, name: str = "traced-seg") -> ModelSpec:
    torch.manual_seed(0)
    traced = torch.jit.trace(_TinySegNet(4).eval(), torch.zeros(1, 3, 32, 128))  # type: ignore[no-untyped-call]
    spec = ModelSpec(name=name, kind="torchscript", file=f"{name}.pt", input_size=(32, 128), tta=("identity",))
    dest.mkdir(parents=True, exist_ok=True)
    traced.save(str(dest / spec.file))
    return spec


def _manifest(cfg: BundleConfig, wheels: list[Path]) -> None:
    out = cfg.dataset.out
    weights = [
        {
            "file": m.spec.file,
            "model": m.spec.name,
            "kind": m.spec.kind,
            "sha256": sha256_file(out / m.spec.file),
            "size": (out / m.spec.file).stat().st_size,
        }
        for m in cfg.models
    ]
    records: list[dict[str, Any]] = []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        records.append(
            {
                "file": wheel.name,
                "name": name.replace("_", "-"),
                "version": version,
                "sha256": sha256_file(wheel),
                "size": wheel.stat().st_size,
                "reason": "a test wheel the image lacks",
            }
        )
    lines = sorted(f"{e['file']} {e['sha256']}" for e in [*weights, *records])
    manifest = {
        "format": 1,
        "bundle": cfg.name,
        "hash": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "created_by": "tests",
        "wheels": records,
        "weights": weights,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2))


def make_twin_project(root: Path, requires: list[str]) -> BundleConfig:
    """A built tiny bundle (a TorchScript segmenter, one vendored wheel requiring `requires`), its
    rendered notebook and a holdout of DRYRUN_IMAGES images, dry-run on the image's runtime."""
    from bundler.demo.synthetic import make_dataset
    from bundler.notebook.render import render_notebook

    dataset = root / "build" / "dataset"
    seg = _traced_segmenter(dataset)
    wheel = make_wheel(dataset, PROBE, "1.0", requires)
    make_dataset(root / "holdout", DRYRUN_IMAGES, seed=3, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    data = tiny_project(
        competition={"hidden_test_images": DRYRUN_HIDDEN},
        dataset={"id": "tester/tiny-bundle", "title": "tiny test bundle"},
        target={"requirements": [], "python": TARGET},
        kernel={
            "id": "tester/tiny-kernel",
            "title": "Tiny kernel",
            "notebook": "build/inference.ipynb",
            "metadata": "build/kernel-metadata.json",
        },
        inference=tiny_inference(batch_size=2, time_budget_s=None, gating={"mode": "off"}),
        segmenters=[model_table(seg, "unused.pth")],
        dryrun={
            "test_dir": "holdout/test_images",
            "sample_submission": "holdout/sample_submission.csv",
            "labels": "holdout/labels.csv",
            "out": "build/dryrun",
            "runtime": "image",
        },
    )
    cfg = load_config(write_project(root, data))
    _manifest(cfg, [wheel])
    render_notebook(cfg, console=quiet())
    return cfg


def _site_listing(python_sites: list[Path]) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for site in python_sites if site.is_dir() for p in site.iterdir()}


@pytest.mark.slow
def test_the_notebook_installs_the_vendored_wheel_inside_the_twin_and_passes(tmp_path: Path) -> None:
    from bundler.dryrun.command import dry_run
    from bundler.dryrun.runtime import local_sites

    cfg = make_twin_project(tmp_path / "p", ["numpy>=1.20"])
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
    assert f"installing 1 vendored wheels offline: {PROBE.replace('-', '_')}-1.0-py3-none-any.whl" in executed
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

    cfg = make_twin_project(tmp_path / "p", ["numpy>=99", "bundler-absent-dependency>=1.0"])
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
