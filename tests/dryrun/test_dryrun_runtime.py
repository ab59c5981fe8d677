"""The dry-run's runtimes without the twin (bundler.dryrun.runtime), and the notebook's drift guard
(kernel_src.bundle.check_requirements) on made-up installed distributions.

Issue 12 item 2: nothing is ever pip-installed into the environment bundler runs from; the
kernel runs from a per-run overlay venv and the notebook's `pip install` lands there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from bundler.config import BundleConfig, parse_config
from bundler.dryrun import runtime as runtime_module
from bundler.dryrun.runtime import choose_runtime, local_runtime, local_sites, make_overlay
from bundler.errors import DryRunError
from bundler.target import interpreter
from kernel_src.bundle import FIX_DRIFT, check_requirements, unmet_requirements
from kernel_src.errors import BundleError
from tests.projects import VENDORED_PROBE, captured, make_vendoring_project, tiny_inference, tiny_project
from tests.wheelhouse import make_wheel


def _site_listing() -> set[str]:
    """What this environment has installed: its site folders' entries (a pip install adds a
    dist-info and a package; names only, since another process may write bytecode meanwhile)."""
    return {str(p) for site in local_sites() for p in site.iterdir() if p.name != "__pycache__"}


# --- the drift guard -------------------------------------------------------------------------


def _dist(site: Path, name: str, version: str, requires: list[str] = ()) -> None:  # type: ignore[assignment]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def _manifest(*wheels: tuple[str, str]) -> dict[str, object]:
    return {"wheels": [{"file": f"{n}-{v}-py3-none-any.whl", "name": n, "version": v} for n, v in wheels]}


def test_the_drift_guard_names_each_missing_or_unaccepted_requirement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _dist(
        site,
        "drift-vendored",
        "1.0",
        [
            "drift-old>=2.0",  # installed at 1.5: too old
            "drift-gone>=1",  # not installed at all
            "drift-fine>=1,<3",  # met
            "drift-py2-only; python_version < '3'",  # marker false here: not required
            "drift-extra-only; extra == 'gpu'",  # only with an extra: not required
        ],
    )
    _dist(site, "drift-old", "1.5")
    _dist(site, "drift-fine", "2.1")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    problems = unmet_requirements(_manifest(("drift-vendored", "1.0")))
    assert problems == [
        "drift-old 1.5 is installed, too old or too new (required by drift-vendored 1.0: drift-old>=2.0)",
        "drift-gone is not installed (required by drift-vendored 1.0: drift-gone>=1)",
    ]
    with pytest.raises(BundleError) as caught:
        check_requirements(_manifest(("drift-vendored", "1.0")))
    message = str(caught.value)
    assert "\n" not in message and "drift-old 1.5" in message and "drift-gone" in message
    assert message.endswith(f"Fix: {FIX_DRIFT}") and "refresh the baseline" in message and "bundler build" in message


def test_the_drift_guard_passes_met_requirements_and_skips_wheels_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    _dist(site, "drift-ok", "1.0", ["drift-dep>=1"])
    _dist(site, "drift-dep", "1.0")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    check_requirements(_manifest(("drift-ok", "1.0"), ("drift-never-installed", "2.0")))
    assert "requirements of the 2 vendored wheels are met" in capsys.readouterr().out
    check_requirements({"wheels": []})  # nothing vendored: nothing to check


def test_the_drift_guard_falls_back_to_pips_packaging(monkeypatch: pytest.MonkeyPatch) -> None:
    import kernel_src.bundle as bundle

    real = importlib.import_module

    def without_packaging(name: str) -> object:
        if name.startswith("packaging."):
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(importlib, "import_module", without_packaging)
    tools = bundle._packaging()
    assert tools is not None and tools[0].__module__.startswith("pip._vendor.packaging")


# --- the overlay: where the notebook's pip install lands -------------------------------------


@pytest.mark.slow
def test_a_pip_install_in_the_overlay_lands_in_the_overlay_not_in_this_environment(tmp_path: Path) -> None:
    rt = local_runtime()
    overlay = make_overlay(rt, tmp_path / "run", "python3")
    spec = json.loads((overlay.jupyter_path / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][:3] == [str(overlay.python), "-m", "ipykernel_launcher"]
    wheel = make_wheel(tmp_path / "w", "bundler-overlay-probe", "1.0")
    before = _site_listing()
    done = subprocess.run(
        [
            str(overlay.python),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(overlay.site_packages.glob("bundler_overlay_probe-1.0.dist-info"))
    assert _site_listing() == before
    seen = subprocess.run(
        [str(overlay.python), "-c", "import rich, bundler_overlay_probe, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert seen.returncode == 0, seen.stderr  # this environment's packages and the overlay's, both importable
    assert Path(seen.stdout.strip()) == overlay.folder


# --- choosing the runtime ---------------------------------------------------------------------


def _cfg(tmp_path: Path, python: str, runtime: str | None) -> BundleConfig:
    segmenter = {"name": "seg", "kind": "torchscript", "checkpoint": "seg.pt"}
    data = tiny_project(
        target={"requirements": [], "python": python},
        segmenters=[segmenter],
        inference=tiny_inference(gating={"mode": "off"}),
    )
    cfg = parse_config(data, tmp_path)
    return replace(cfg, dryrun=replace(cfg.dryrun, runtime=runtime))


def test_without_a_target_python_the_default_falls_back_to_local_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "find_target_python", lambda version: None)
    console, buf = captured()
    rt = choose_runtime(_cfg(tmp_path, "3.12", None), {"wheels": []}, console=console)
    assert rt.name == "local" and rt.engine == "nbclient"
    line = buf.getvalue().strip()
    assert "\n" not in line and line.startswith("runtime: local, because no Python 3.12 was found")
    assert "pyenv install 3.12" in line


def test_asking_for_the_image_without_a_target_python_names_the_fix_and_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "find_target_python", lambda version: None)
    with pytest.raises(DryRunError) as caught:
        choose_runtime(_cfg(tmp_path, "3.12", "image"), {"wheels": []}, console=Console(file=io.StringIO()))
    message = str(caught.value)
    assert "\n" not in message
    for part in ("--runtime image", "pyenv install 3.12", "uv python install 3.12", "BUNDLER_TARGET_PYTHON"):
        assert part in message
    assert "--runtime local" in message


def test_a_wrong_bundler_target_python_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(interpreter.PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(DryRunError, match=r"BUNDLER_TARGET_PYTHON=.*--runtime local"):
        choose_runtime(_cfg(tmp_path, "3.12", None), {"wheels": []}, console=Console(file=io.StringIO()))


def test_local_is_local_whatever_is_installed(tmp_path: Path) -> None:
    rt = choose_runtime(_cfg(tmp_path, "3.12", "local"), {"wheels": []}, console=Console(file=io.StringIO()))
    assert rt.name == "local" and rt.versions["torch"] == importlib.metadata.version("torch")
    assert rt.describe().startswith("local (Python 3.")


# --- a local dry-run that must install a vendored wheel -----------------------------------------


@pytest.mark.slow
def test_a_local_dry_run_installs_the_vendored_wheel_per_run_never_into_this_environment(tmp_path: Path) -> None:
    from bundler.dryrun.command import dry_run

    cfg = make_vendoring_project(tmp_path / "p", ["numpy>=1.20"], runtime="local")
    before = _site_listing()
    buf = io.StringIO()
    result = dry_run(cfg, console=Console(file=buf, width=200))
    assert result.ok, result.reason + "\n" + buf.getvalue()
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["runtime"]["name"] == "local" and summary["runtime"]["engine"] == "nbclient"
    executed = (result.out / "inference.ipynb").read_text()
    assert "installing 1 vendored wheels offline" in executed
    assert _site_listing() == before
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version(VENDORED_PROBE)


# --- papermill's engine with the notebook's kernelspec, on any machine -----------------------


@pytest.mark.slow
def test_papermill_runs_the_kernelspec_the_notebook_names_and_reports_the_failed_cell(tmp_path: Path) -> None:
    import nbformat

    from bundler.dryrun.execution import run_notebook
    from bundler.sandbox import NETWORK_AVAILABLE, Isolation

    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.metadata["kernelspec"] = {"name": "bundler-test-kernel", "display_name": "test", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("import sys\nprint('prefix', sys.prefix)"),  # type: ignore[no-untyped-call]
        nbformat.v4.new_code_cell("raise ValueError('boom')"),  # type: ignore[no-untyped-call]
        nbformat.v4.new_code_cell("print('never')"),  # type: ignore[no-untyped-call]
    ]
    notebook = tmp_path / "in.ipynb"
    nbformat.write(nb, notebook)  # type: ignore[no-untyped-call]
    overlay = make_overlay(local_runtime(), tmp_path / "run", "bundler-test-kernel")
    console, buf = captured()
    execution = run_notebook(
        notebook,
        tmp_path / "out" / "executed.ipynb",
        cwd=tmp_path,
        console=console,
        isolation=Isolation(NETWORK_AVAILABLE, False, "not needed for this test"),
        engine="papermill",
        env={"JUPYTER_PATH": str(overlay.jupyter_path)},
    )
    failure = execution.failure
    assert failure is not None
    assert (execution.status, failure.index, failure.ename, failure.evalue) == ("cell_failed", 1, "ValueError", "boom")
    assert f"prefix {overlay.folder}" in execution.log.read_text()  # the overlay's kernel, streamed line by line
    executed = json.loads((tmp_path / "out" / "executed.ipynb").read_text())
    assert "papermill" in executed["metadata"]
    assert "cell 0 done" in buf.getvalue()


def test_an_unknown_runtime_in_bundle_toml_names_the_key_and_the_choices(tmp_path: Path) -> None:
    from bundler.errors import ConfigError

    segmenter = {"name": "seg", "kind": "torchscript", "checkpoint": "seg.pt"}
    data = tiny_project(
        segmenters=[segmenter], inference=tiny_inference(gating={"mode": "off"}), dryrun={"runtime": "docker"}
    )
    with pytest.raises(ConfigError, match=r"dryrun.runtime = 'docker' must be one of image, local"):
        parse_config(data, tmp_path)
