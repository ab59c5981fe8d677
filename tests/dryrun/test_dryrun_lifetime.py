"""A dry-run's processes and exits: killed parents leave no orphans, Ctrl-C exits 130, a failed
demo dry-run fails the demo, and another set's test folder never takes `dryrun.labels`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_notebook

from bundler.cli import main
from bundler.config import BundleConfig, load_config
from bundler.dryrun.inputs import labels_of_the_set
from tests.projects import ROOT, tiny_inference, tiny_project, write_project

SEGMENTER = {"name": "unet", "kind": "smp", "arch": "Unet", "encoder": "resnet18", "checkpoint": "unet.pth"}


def _project(tmp_path: Path) -> Path:
    data = tiny_project(
        inference=tiny_inference(gating={"mode": "off"}),
        segmenters=[SEGMENTER],
        dryrun={"test_dir": "holdout/test_images", "sample_submission": "holdout/s.csv", "labels": "holdout/l.csv"},
    )
    return write_project(tmp_path, data)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


PARENT = """
import io, sys
from pathlib import Path
from rich.console import Console
from bundler.dryrun.execution import run_notebook
from bundler.sandbox import probe
nb, work = Path(sys.argv[1]), Path(sys.argv[2])
run_notebook(nb, work / "out" / "n.ipynb", cwd=work, console=Console(file=io.StringIO()), isolation=probe())
"""

CELL = """
import json, os, time
with open("pids.json.tmp", "w") as f:
    json.dump({"kernel": os.getpid(), "child": os.getppid()}, f)
os.replace("pids.json.tmp", "pids.json")
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_dry_run_leaves_no_executor_or_kernel_running(tmp_path: Path) -> None:
    nb = new_notebook(cells=[new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "n.ipynb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "n.ipynb"), str(tmp_path)], env=env)
    pids_file = tmp_path / "pids.json"
    deadline = time.monotonic() + 120
    while not pids_file.exists() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert pids_file.exists(), "the notebook's cell never started"
    pids = json.loads(pids_file.read_text())
    assert _alive(pids["kernel"]) and _alive(pids["child"])
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while (_alive(pids["kernel"]) or _alive(pids["child"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = {name: pid for name, pid in pids.items() if _alive(pid)}
    for pid in survivors.values():
        os.kill(pid, signal.SIGKILL)  # do not leave them to the rest of the suite
    assert survivors == {}, f"still running after the parent was killed: {survivors}"


def test_ctrl_c_exits_130_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bundler.dryrun

    def interrupted(cfg: BundleConfig, *, console: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bundler.dryrun, "dry_run", interrupted)
    result = CliRunner().invoke(main, ["dry-run", "--config", str(_project(tmp_path))])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Traceback" not in result.output


def test_a_failed_dry_run_fails_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bundler.demo

    outcome = {"dry_run_ok": False}

    def demo(config_path: Path, *, console: Any, dry_run: bool, runtime: str | None) -> SimpleNamespace:
        return SimpleNamespace(dry_run_ok=outcome["dry_run_ok"], dry_run_reason="model 'fpn' failed after 2 images")

    monkeypatch.setattr(bundler.demo, "run_demo", demo)
    failed = CliRunner().invoke(main, ["demo", "--config", str(tmp_path / "bundle.toml")])
    assert failed.exit_code == 1
    assert "demo failed: its dry-run failed: model 'fpn' failed after 2 images" in failed.output
    outcome["dry_run_ok"] = True
    assert CliRunner().invoke(main, ["demo", "--config", str(tmp_path / "bundle.toml")]).exit_code == 0


def test_another_test_folder_does_not_take_the_configured_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(_project(tmp_path))
    assert cfg.dryrun.labels == tmp_path / "holdout" / "l.csv"
    same, note = labels_of_the_set(cfg, tmp_path / "holdout" / "test_images")
    assert same is cfg and note == ""
    other, note = labels_of_the_set(cfg, tmp_path / "other")
    assert other.dryrun.labels is None
    assert note.startswith("dryrun.labels (") and "not scored; pass --labels" in note

    import bundler.dryrun

    seen: list[BundleConfig] = []

    def record(cfg: BundleConfig, *, console: Any) -> SimpleNamespace:
        seen.append(cfg)
        return SimpleNamespace(ok=True, reason="")

    monkeypatch.setattr(bundler.dryrun, "dry_run", record)
    args = ["dry-run", "--config", str(tmp_path / "bundle.toml"), "--test-dir", str(tmp_path / "other")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen[-1].dryrun.labels is None and "not scored; pass --labels" in result.output
    given = CliRunner().invoke(main, [*args, "--labels", str(tmp_path / "mine.csv")])
    assert given.exit_code == 0 and seen[-1].dryrun.labels == tmp_path / "mine.csv"


def test_the_kernel_writes_its_temporary_files_where_it_is_told(tmp_path: Path) -> None:
    """The dry-run gives the child TMPDIR inside the tree, so the module cells' folder goes with it."""
    import io

    from rich.console import Console

    from bundler.dryrun.execution import run_notebook
    from bundler.sandbox import NETWORK_AVAILABLE, Isolation

    source = textwrap.dedent("""
        import tempfile
        print("made", tempfile.mkdtemp(prefix="bundler_kernel_"))
    """)
    nb = new_notebook(cells=[new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "t.ipynb")
    tmp = tmp_path / "tree-tmp"
    tmp.mkdir()
    ex = run_notebook(
        tmp_path / "t.ipynb",
        tmp_path / "out" / "t.ipynb",
        cwd=tmp_path,
        console=Console(file=io.StringIO()),
        isolation=Isolation(NETWORK_AVAILABLE, False, "test"),
        env={"TMPDIR": str(tmp)},
    )
    assert ex.ok, ex
    assert [p.name.startswith("bundler_kernel_") for p in tmp.iterdir()] == [True]


GROUP_PARENT = """
import io, sys
from pathlib import Path
from rich.console import Console
import bundler.cli as cli
from bundler.dryrun.execution import run_notebook
from bundler.sandbox import probe
nb, work = Path(sys.argv[1]), Path(sys.argv[2])

@cli._reports_errors
def command():
    ex = run_notebook(nb, work / "out" / "n.ipynb", cwd=work, console=Console(file=io.StringIO()), isolation=probe())
    print(f"returned {ex.status}", flush=True)

command()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and PR_SET_PDEATHSIG as on Linux")
def test_sigint_to_the_whole_process_group_is_an_interrupt_not_a_failed_cell(tmp_path: Path) -> None:
    """Issue 27 item 4: a CI runner's or an editor's stop sends SIGINT to the whole process group, to a
    bundler that may have inherited SIGINT ignored. It must exit 130 "interrupted", with the notebook's
    runner and kernel gone, not report the kernel's interrupted cell as the notebook's failure."""
    nb = new_notebook(cells=[new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "n.ipynb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def ignore_sigint_in_own_group() -> None:
        os.setpgrp()  # its own group, so that the group signal below reaches nothing of pytest's
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a shell without job control

    parent = subprocess.Popen(
        [sys.executable, "-c", GROUP_PARENT, str(tmp_path / "n.ipynb"), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint_in_own_group,
    )  # fmt: skip
    pids_file = tmp_path / "pids.json"
    deadline = time.monotonic() + 120
    while not pids_file.exists() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert pids_file.exists(), "the notebook's cell never started"
    pids = json.loads(pids_file.read_text())
    os.killpg(parent.pid, signal.SIGINT)
    out, err = parent.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while (_alive(pids["kernel"]) or _alive(pids["child"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = {name: pid for name, pid in pids.items() if _alive(pid)}
    for pid in survivors.values():
        os.kill(pid, signal.SIGKILL)
    assert parent.returncode == 130, (out, err)
    assert "interrupted" in err and "returned" not in out and "Traceback" not in err
    assert survivors == {}, f"still running after the interrupt: {survivors}"
