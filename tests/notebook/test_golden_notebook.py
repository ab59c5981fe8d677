"""The demo's rendered notebook against a normalised golden copy (tests/notebook/golden/demo-notebook.json).

The notebook is rendered from the repository's bundle.toml (the demo's) and a made-up manifest:
the manifest gives the notebook only hashes, which are normalised away, so the copy is the demo's
notebook. Normalised: each `%%writefile` cell keeps its first line and its body becomes
`<kernel_src/NAME.py>` (the kernel_src modules are checked byte for byte by test_render.py), every
sha256 becomes `<sha256>` and bundler's version `<version>`. What stays is what a reviewer should
see change: the cells' order, ids and tags, the CONFIG cell's keys, values and comments, and the
code of the cells around the modules.

To refresh it after an intended change: `BUNDLER_UPDATE_GOLDEN=1 python -m pytest
tests/notebook/test_golden_notebook.py` writes the file (the test then skips, saying so); review
and commit the diff.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

from bundler import __version__
from bundler.notebook.parameters import CONFIG_NAME, parse_assignment
from bundler.notebook.render import build_notebook, notebook_bytes
from tests.projects import ROOT, demo_cfg, write_fake_manifest

GOLDEN = Path(__file__).resolve().parent / "golden" / "demo-notebook.json"
UPDATE_ENV = "BUNDLER_UPDATE_GOLDEN"
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")
WRITEFILE = re.compile(r'%%writefile "\{KERNEL_SRC_DIR\}/(?P<name>[^"]+)"\n')  # quoted: a path may hold spaces
DIFF_LINES = 120  # of the whole-notebook diff shown after the outline's


def normalise(nb: NotebookNode) -> NotebookNode:
    """A copy of `nb` with module bodies, hashes and bundler's version replaced by placeholders."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        source = str(cell.source)
        found = WRITEFILE.match(source)
        if found:
            source = f"{found.group(0)}<kernel_src/{found.group('name')}>\n"
        cell.source = _placeholders(source)
    nb.metadata = json.loads(_placeholders(json.dumps(nb.metadata)))
    return nb


def _placeholders(text: str) -> str:
    return SHA256.sub("<sha256>", text).replace(f"bundler {__version__}", "bundler <version>")


def rendered(root: Path) -> str:
    """The demo's notebook as rendered now (its project under `root`), normalised: the text the
    golden file holds."""
    cfg = demo_cfg(root, manifest=False)
    nb = build_notebook(cfg, write_fake_manifest(cfg))
    nb.metadata["bundler"]["version"] = "<version>"
    text = notebook_bytes(normalise(nb)).decode("utf-8")
    assert str(root) not in text, "the rendered notebook names the test's temporary folder"
    return text


def outline(text: str) -> list[str]:
    """One line per cell (id, type, tags), then one per CONFIG key path: what a changed cell order,
    tag or CONFIG key shows up in."""
    nb = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
    lines = []
    config: dict[str, Any] = {}
    for cell in nb.cells:
        tags = ",".join(cell.metadata.get("tags", []))
        lines.append(f"cell {cell.id} ({cell.cell_type})" + (f" tags={tags}" if tags else ""))
        if cell.source.startswith(f"{CONFIG_NAME} = "):
            config = parse_assignment(cell.source, CONFIG_NAME)
    return lines + [f"{CONFIG_NAME}{path}" for path in _key_paths(config)]


def _key_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [f"{prefix}[{k!r}]", *_key_paths(v, f"{prefix}[{k!r}]")]]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) if isinstance(v, dict) for p in _key_paths(v, f"{prefix}[{i}]")]
    return []


def differences(golden: str, now: str) -> str:
    """The cells' and CONFIG keys' diff first, then the whole normalised notebook's (cut short)."""
    parts = []
    was, is_ = outline(golden), outline(now)
    if was != is_:
        diff = difflib.unified_diff(was, is_, "golden", "rendered now", lineterm="", n=1)
        parts.append("cells (id, type, tags) and CONFIG keys:\n" + "\n".join(diff))
    whole = list(difflib.unified_diff(golden.splitlines(), now.splitlines(), "golden", "rendered now", lineterm=""))
    if whole:
        more = f"\n... {len(whole) - DIFF_LINES} more lines" if len(whole) > DIFF_LINES else ""
        parts.append("the normalised notebook:\n" + "\n".join(whole[:DIFF_LINES]) + more)
    return "\n\n".join(parts)


def test_the_demo_notebook_matches_its_golden_copy(tmp_path: Path) -> None:
    now = rendered(tmp_path)
    if os.environ.get(UPDATE_ENV) == "1":
        GOLDEN.write_text(now, encoding="utf-8")
        pytest.skip(f"{UPDATE_ENV}=1: wrote {GOLDEN.relative_to(ROOT)}; review and commit its diff")
    assert GOLDEN.is_file(), f"no golden copy: run with {UPDATE_ENV}=1 to write {GOLDEN.relative_to(ROOT)}"
    found = differences(GOLDEN.read_text(encoding="utf-8"), now)
    assert not found, (
        f"the demo's rendered notebook differs from {GOLDEN.relative_to(ROOT)}; if the change is intended, "
        f"refresh it with {UPDATE_ENV}=1 and review the diff:\n\n{found}"
    )


def test_the_golden_copy_has_placeholders_not_bodies_or_hashes() -> None:
    golden = GOLDEN.read_text(encoding="utf-8")
    nb = nbformat.reads(golden, as_version=4)  # type: ignore[no-untyped-call]
    modules = [c for c in nb.cells if c.id.startswith("src-")]
    assert modules and all(re.fullmatch(r'%%writefile "[^"]+"\n<kernel_src/\S+\.py>\n', c.source) for c in modules)
    assert "<sha256>" in golden and not SHA256.search(golden)
    assert __version__ not in golden


def test_a_changed_cell_order_tag_or_config_key_is_named_in_the_diff() -> None:
    golden = GOLDEN.read_text(encoding="utf-8")
    nb = nbformat.reads(golden, as_version=4)  # type: ignore[no-untyped-call]
    setup = next(i for i, c in enumerate(nb.cells) if c.id == "setup")
    nb.cells[setup], nb.cells[setup + 1] = nb.cells[setup + 1], nb.cells[setup]  # run before setup
    parameters = next(c for c in nb.cells if c.id == "parameters")
    parameters.metadata["tags"] = ["parameters", "injected"]
    parameters.source = parameters.source.replace('"working_dir":', '"output_dir":')
    changed = notebook_bytes(nb).decode("utf-8")

    found = differences(golden, changed)
    outline_diff = found.split("\n\n")[0]
    assert outline_diff.startswith("cells (id, type, tags) and CONFIG keys:")
    moved = [c for c in ("setup", "run") if f"-cell {c} (code)" in outline_diff and f"+cell {c} (code)" in outline_diff]
    assert moved, outline_diff  # difflib shows one of the two swapped cells as moved
    assert "-cell parameters (code) tags=parameters\n" in outline_diff
    assert "+cell parameters (code) tags=parameters,injected" in outline_diff
    assert "-CONFIG['working_dir']" in outline_diff and "+CONFIG['output_dir']" in outline_diff
    assert differences(golden, golden) == ""
