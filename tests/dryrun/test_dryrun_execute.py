"""Executing notebooks in a child process, with and without the network (real kernels)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from rich.console import Console

from bundler.dryrun.execution import run_notebook
from bundler.notebook.failure import MARKER_TAG
from bundler.sandbox import NETWORK_AVAILABLE, Isolation, probe

ISOLATION = probe()
NO_ISOLATION = Isolation(NETWORK_AVAILABLE, False, "test")

SOCKET_CELL = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(("192.0.2.1", 443))
"""


def _notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# test"), *(new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120), buf


def test_runs_in_cwd_and_keeps_outputs(tmp_path: Path) -> None:
    work = tmp_path / "working"
    work.mkdir()
    nb = _notebook(
        tmp_path / "a.ipynb",
        "import os\nprint('cwd', os.getcwd())",
        "open('out.txt', 'w').write('hi')",
        "import time\ntime.sleep(0.6)",
    )
    console, buf = _console()
    ex = run_notebook(nb, tmp_path / "out" / "a.ipynb", cwd=work, console=console, isolation=ISOLATION)
    assert ex.ok, ex
    assert ex.failure is None
    assert (work / "out.txt").read_text() == "hi"
    done = nbformat.read(tmp_path / "out" / "a.ipynb", as_version=4)
    assert f"cwd {work}" in done.cells[1].outputs[0]["text"]
    assert "cell 2 done" in buf.getvalue()
    slept = re.search(r"cell 3 done in (\d+\.\d) s", buf.getvalue())
    assert slept and float(slept.group(1)) >= 0.5  # timed to the cell's reply, not to its request
    assert f"[cell 1] cwd {work}" in ex.log.read_text()


def test_failing_cell_is_reported_with_its_traceback(tmp_path: Path) -> None:
    nb = _notebook(tmp_path / "b.ipynb", "x = 1", "def boom():\n    raise ValueError('bad threshold')\nboom()", "y = 2")
    console, _ = _console()
    out = tmp_path / "out" / "b.ipynb"
    ex = run_notebook(nb, out, cwd=tmp_path, console=console, isolation=NO_ISOLATION)
    assert ex.status == "cell_failed" and ex.failure is not None
    assert ex.failure.index == 2
    assert ex.failure.ename == "ValueError"
    assert ex.failure.evalue == "bad threshold"
    traceback = "\n".join(ex.failure.traceback)
    assert "boom()" in traceback
    assert "\x1b[" not in traceback
    done = nbformat.read(out, as_version=4)  # saved although it failed, the failed cell marked (papermill's way)
    tagged = [i for i, c in enumerate(done.cells) if MARKER_TAG in c.metadata.get("tags", [])]
    assert tagged == [0, 3]  # at the top, and just before the failing cell (cell 2 before the markers)
    assert all(done.cells[i].cell_type == "markdown" for i in tagged)
    assert f"(`{ex.failure.cell}`): ValueError: bad threshold" in done.cells[3].source
    assert done.cells[4].outputs[-1]["output_type"] == "error"
    assert not done.cells[5].get("outputs")


@pytest.mark.skipif(not ISOLATION.isolated, reason=f"no network namespace here: {ISOLATION.reason}")
def test_socket_to_outside_fails_without_network(tmp_path: Path) -> None:
    nb = _notebook(tmp_path / "c.ipynb", "print('kernel up over loopback')", SOCKET_CELL)
    console, _ = _console()
    ex = run_notebook(nb, tmp_path / "out" / "c.ipynb", cwd=tmp_path, console=console, isolation=ISOLATION)
    assert ex.status == "cell_failed" and ex.failure is not None, ex
    assert ex.failure.index == 2
    assert ex.failure.ename == "OSError"
    assert "unreachable" in ex.failure.evalue.lower()


def test_kernel_death_is_reported(tmp_path: Path) -> None:
    nb = _notebook(tmp_path / "d.ipynb", "import os\nos._exit(1)", "print('never')")
    console, _ = _console()
    ex = run_notebook(nb, tmp_path / "out" / "d.ipynb", cwd=tmp_path, console=console, isolation=NO_ISOLATION)
    assert ex.status == "kernel_died", json.dumps(ex.__dict__, default=str)
    assert ex.failure is not None and ex.failure.index == 1


@pytest.mark.slow
def test_a_cell_past_the_time_limit_is_stopped_and_named(tmp_path: Path) -> None:
    nb = _notebook(tmp_path / "e.ipynb", "x = 1", "import time\ntime.sleep(60)")
    console, _ = _console()
    ex = run_notebook(
        nb, tmp_path / "out" / "e.ipynb", cwd=tmp_path, console=console, isolation=NO_ISOLATION, timeout_s=3
    )
    assert ex.status == "timeout"
    assert ex.failure is not None and ex.failure.index == 2
