"""The dry-run's engines: a registry, and one CellFailure and one marked notebook whichever engine ran it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from rich.console import Console

from bundler.dryrun._child import main as child_main
from bundler.dryrun.engines import ENGINES, Engine, NbclientEngine, PapermillEngine, get_engine
from bundler.dryrun.execution import run_notebook
from bundler.errors import DryRunError
from bundler.notebook.failure import MARKER_TAG, PAPERMILL_MARKER_TAG, CellFailure, failing_cell, own_cells
from bundler.sandbox import NETWORK_AVAILABLE, Isolation

FAILING = """
def check(threshold):
    raise ValueError(f"threshold {threshold} is out of range")
check(2)
"""


def test_engines_are_registered_by_name_and_an_unknown_one_names_them(tmp_path: Path) -> None:
    assert {"nbclient": NbclientEngine, "papermill": PapermillEngine} == ENGINES
    assert get_engine("nbclient") is NbclientEngine and get_engine("papermill") is PapermillEngine
    assert all(issubclass(cls, Engine) for cls in ENGINES.values())
    with pytest.raises(DryRunError, match=r"no dry-run engine 'docker': the engines are nbclient, papermill"):
        get_engine("docker")
    with pytest.raises(DryRunError, match="the engines are nbclient, papermill"):  # refused before a child starts
        run_notebook(
            tmp_path / "in.ipynb",
            tmp_path / "out" / "in.ipynb",
            cwd=tmp_path,
            console=Console(file=io.StringIO()),
            isolation=Isolation(NETWORK_AVAILABLE, False, "test"),
            engine="docker",
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        child_main(["a.ipynb", "b.ipynb", "r.json", "--cwd", str(tmp_path), "--engine", "docker"])


@pytest.mark.slow
def test_both_engines_give_the_same_failure_and_mark_the_same_cell(tmp_path: Path) -> None:
    nb = new_notebook(
        cells=[
            new_markdown_cell("# tiny"),
            new_code_cell("x = 1\nprint('set up')", id="setup"),
            new_code_cell(FAILING, id="run", metadata={"tags": ["run"]}),
            new_code_cell("print('never')", id="after"),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    failures: dict[str, CellFailure] = {}
    saved: dict[str, nbformat.NotebookNode] = {}
    for name in ENGINES:
        dest, result = tmp_path / f"{name}.ipynb", tmp_path / f"{name}.result.json"
        assert get_engine(name)().execute_notebook(src, dest, result, cwd=tmp_path, timeout=120) == 1
        data = json.loads(result.read_text())
        assert data["status"] == "cell_failed", data
        failures[name] = CellFailure.from_dict(data["failure"])
        saved[name] = nbformat.read(dest, as_version=4)
        assert failing_cell([dest], "") == failures[name]  # what `bundler status` reads from the saved notebook
    failure = failures["nbclient"]
    assert (failure.cell, failure.index, failure.ename) == ("run", 2, "ValueError")
    assert failure.evalue == "threshold 2 is out of range"
    assert any("check(2)" in line for line in failure.traceback)
    assert not any("\x1b[" in line for line in failure.traceback)
    assert failures["papermill"] == failure
    for name, done in saved.items():
        tags = [c.metadata.get("tags", []) for c in done.cells]
        assert PAPERMILL_MARKER_TAG not in {t for ts in tags for t in ts}, name  # bundler's markers only
        marked = [i for i, ts in enumerate(tags) if MARKER_TAG in ts]
        assert marked == [0, 3], name  # at the top, and just before the failing cell
        assert done.cells[4].id == "run"
        assert "ValueError: threshold 2 is out of range" in done.cells[3].source
        assert [c.id for c in own_cells(done)] == [c.id for c in nb.cells]
    assert "papermill" in saved["papermill"].metadata
