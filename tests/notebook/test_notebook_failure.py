"""One CellFailure: found in an executed notebook (markers not counted) or a log, marked as papermill marks one."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from bundler.notebook.failure import (
    MARKER_TAG,
    PAPERMILL_MARKER_TAG,
    CellFailure,
    failing_cell,
    failure_in_notebook,
    mark_failure,
    own_cells,
    unmarked,
)


def _failed_notebook() -> nbformat.NotebookNode:
    error = new_output(
        "error", ename="ValueError", evalue="bad <threshold>", traceback=["\x1b[31mValueError\x1b[0m: bad <threshold>"]
    )
    return new_notebook(
        cells=[
            new_markdown_cell("# title"),
            new_code_cell("setup()", id="setup", outputs=[new_output("stream", name="stdout", text="ok\n")]),
            new_code_cell("run()", id="run", outputs=[error]),
            new_code_cell("after()", id="after"),
        ]
    )


def test_the_failure_names_the_cell_by_its_id_and_keeps_its_index() -> None:
    failure = failure_in_notebook(_failed_notebook())
    expected = CellFailure("run", "ValueError", "bad <threshold>", ["ValueError: bad <threshold>"], index=2)
    assert failure == expected
    assert failure.message == "ValueError: bad <threshold>"
    assert CellFailure.from_dict(json.loads(json.dumps(expected.to_dict()))) == expected


def test_the_marked_notebook_says_which_cell_failed_and_why_and_reads_back_the_same() -> None:
    nb = _failed_notebook()
    failure = failure_in_notebook(nb)
    assert failure is not None
    mark_failure(nb, failure)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags == [[MARKER_TAG], [], [], [MARKER_TAG], [], []]  # at the top and just before the failing cell
    assert nb.cells[4].id == "run"
    top, before = nb.cells[0].source, nb.cells[3].source
    assert "cell 2</a> (`run`): ValueError: bad &lt;threshold&gt;" in top
    assert 'id="bundler-failed-cell"' in before and "(`run`): ValueError: bad &lt;threshold&gt;" in before
    assert failure_in_notebook(nb) == failure  # markers are not counted
    mark_failure(nb, failure)  # marking again leaves one pair of markers
    assert [c.id for c in nb.cells if MARKER_TAG in c.metadata.get("tags", [])] == [
        "bundler-failure-top",
        "bundler-failure-cell",
    ]
    assert [c.id for c in unmarked(nb).cells][1:] == ["setup", "run", "after"]


def test_papermills_markers_are_not_counted_either(tmp_path: Path) -> None:
    nb = _failed_notebook()
    for at in (2, 0):  # as papermill's raise_for_execution_errors inserts them
        marker = new_markdown_cell("An Exception was encountered")
        marker.metadata["tags"] = [PAPERMILL_MARKER_TAG]
        nb.cells.insert(at, marker)
    assert len(own_cells(nb)) == 4
    path = tmp_path / "__notebook__.ipynb"
    nbformat.write(nb, path)
    log = "line\n" * 30
    found = failing_cell([path], log)
    assert found is not None and (found.cell, found.index) == ("run", 2)
    assert found.log_tail == ["line"] * 20


def test_a_failure_without_a_cell_is_marked_at_the_top_only() -> None:
    nb = new_notebook(cells=[new_code_cell("x = 1", id="setup")])
    mark_failure(nb, CellFailure(None, "NoSuchKernel", "No such kernel named python9"))
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert "the run stopped: NoSuchKernel: No such kernel named python9" in nb.cells[0].source
