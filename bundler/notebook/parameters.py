"""The notebook's `CONFIG` (the cell tagged `parameters`): what it holds, how it is written as Python
source, read back, and overridden by an injected cell (papermill style) for a dry-run.

- `notebook_config(cfg, manifest)`: the CONFIG a render writes (docs/ARCHITECTURE.md lists its keys;
  `kernel_src.notebook.CONFIG_KEYS` is what the notebook accepts);
- `config_source(config, comments=)`: `CONFIG = {...}` as deterministic, readable source;
- `notebook_parameters(nb)`: the CONFIG of a rendered notebook's `parameters` cell;
- `with_parameters(nb, overrides)`: a copy with an `injected-parameters` cell after it.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

from bundler.config import BundleConfig
from bundler.errors import RenderError
from kernel_src.bundle import MANIFEST
from kernel_src.paths import INPUT_ROOT, WORKING_DIR

CONFIG_NAME = "CONFIG"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def _inference(cfg: BundleConfig, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The inference spec with each model's sha256 taken from the manifest."""
    path = cfg.dataset.out / MANIFEST
    weights = {str(w.get("file")): w for w in manifest.get("weights", []) if isinstance(w, dict)}
    models = []
    for model in cfg.inference.models:
        entry = weights.get(model.file)
        if entry is None:
            raise RenderError(
                f"{path} has no weight file {model.file} for model {model.name!r}; rebuild with `bundler build`"
            )
        models.append(dataclasses.replace(model, sha256=str(entry.get("sha256", ""))))
    n, m = len(cfg.inference.classifiers), len(cfg.inference.segmenters)
    spec = dataclasses.replace(
        cfg.inference,
        classifiers=tuple(models[:n]),
        segmenters=tuple(models[n : n + m]),
        regressors=tuple(models[n + m :]),
    )
    return spec.to_dict()


def notebook_config(cfg: BundleConfig, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's CONFIG (see docs/ARCHITECTURE.md and kernel_src.notebook.CONFIG_KEYS)."""
    return {
        "bundle_name": cfg.name,
        "bundle_hash": str(manifest["hash"]),
        "dataset_id": cfg.dataset.id,
        "bundle_dir": None,
        "input_root": INPUT_ROOT,
        "working_dir": WORKING_DIR,
        "data_dir": None,
        "sample_submission": cfg.competition.sample_submission,
        "test_images": cfg.competition.test_images,
        "install_wheels": "auto",
        "inference": _inference(cfg, manifest),
    }


CONFIG_COMMENTS = {
    "bundle_name": "found by bundle.json 'bundle' under input_root",
    "bundle_hash": "the bundle.json 'hash' this notebook was rendered for",
    "dataset_id": "attach this dataset (Add Input)",
    "bundle_dir": "None: searched under input_root",
    "input_root": "where Kaggle mounts the inputs",
    "working_dir": "submission.csv and profile.json go here",
    "data_dir": "None: searched under input_root (either mount layout)",
    "sample_submission": "looked for under input_root",
    "test_images": "the image folder beside the sample submission",
    "install_wheels": "auto (wheels not yet installed) | always | never",
}


def config_source(config: Mapping[str, Any], *, comments: bool) -> str:
    notes = CONFIG_COMMENTS if comments else {}
    return f"{CONFIG_NAME} = {literal(config, comments=notes)}\n"


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def notebook_parameters(nb: NotebookNode) -> dict[str, Any]:
    """The CONFIG of the notebook's `parameters` cell."""
    cell = next((c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise RenderError("the notebook has no cell tagged 'parameters'; render it with `bundler render-notebook`")
    try:
        return parse_assignment(str(cell.source), CONFIG_NAME)
    except ValueError as e:
        raise RenderError(f"the notebook's parameters cell: {e}; re-render it with `bundler render-notebook`") from None


def with_parameters(nb: NotebookNode, overrides: Mapping[str, Any]) -> NotebookNode:
    """A copy of `nb` with an `injected-parameters` cell after its `parameters` cell (papermill style).

    `overrides` are CONFIG keys (nested dicts such as `inference` are merged key by key; paths
    become strings). The injected cell assigns the whole effective CONFIG. An earlier injected
    cell is replaced. Unknown top-level keys are refused.
    """
    base = notebook_parameters(nb)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise RenderError(f"CONFIG has no setting {unknown[0]!r}; known: {', '.join(base)}")
    merged = _merge(base, overrides)
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    index = next(i for i, c in enumerate(out.cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", []))
    cell = new_code_cell("# Parameters\n" + config_source(merged, comments=False))  # type: ignore[no-untyped-call]
    cell["id"] = INJECTED_TAG
    cell.metadata["tags"] = [INJECTED_TAG]
    out.cells.insert(index + 1, cell)
    nbformat.validate(out)
    return out


# --- CONFIG as Python source: a deterministic, readable literal that ast.literal_eval reads back ---


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise RenderError(f"CONFIG value {value!r} cannot be written into the notebook; use a finite number")
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return '"' + text[1:-1] + '"' if text[0] == "'" and '"' not in text else text
    raise RenderError(f"CONFIG value {value!r} ({type(value).__name__}) cannot be written into the notebook")


def literal(value: Any, *, comments: Mapping[str, str] | None = None, indent: int = 0) -> str:
    """`value` (dicts, lists, scalars) as Python source; `comments` annotate top-level keys."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        lines = ["{"]
        for key, item in value.items():
            note = f"  # {comments[key]}" if comments and key in comments else ""
            lines.append(f"{inner}{_scalar(str(key))}: {literal(item, indent=indent + 4)},{note}")
        return "\n".join([*lines, pad + "}"])
    if isinstance(value, list | tuple):
        items = [literal(v, indent=indent + 4) for v in value]
        flat = "[" + ", ".join(items) + "]"
        if all("\n" not in i for i in items) and len(flat) + indent <= 100:
            return flat
        return "\n".join(["[", *(f"{inner}{i}," for i in items), pad + "]"])
    return _scalar(value)


def parse_assignment(source: str, name: str) -> dict[str, Any]:
    """The dict literal assigned to `name` in `source` (the last such assignment)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"not valid Python ({e.msg}, line {e.lineno})") from None
    found: Any = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                found = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"{name} is not a plain literal (line {node.lineno})") from None
    if not isinstance(found, dict):
        raise ValueError(f"no `{name} = {{...}}` assignment")
    return found
