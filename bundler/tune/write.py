"""`bundle.toml` updated in place with tuned values, comments and layout kept (tomlkit round trip).

Only `[inference.gating]` (`mode`, `thresholds`) and `[inference.postprocess]` (`threshold`,
`min_component`, `min_area`, `one_class_per_pixel`) are touched; a key's inline comment stays
with it, tables missing from the file are added. The new text is checked with the same reader
`bundler` uses (`parse_config`) before the file is replaced (atomically), so a write never leaves
a bundle.toml that `bundler` refuses. Returns the unified diff (empty when nothing changed).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from bundler.config import parse_config
from bundler.errors import BundlerError, TuneError

GATING_KEYS = ("mode", "thresholds")
POSTPROCESS_KEYS = ("threshold", "min_component", "min_area", "one_class_per_pixel")


def _table(parent: Any, name: str) -> Any:
    if name not in parent:
        parent[name] = tomlkit.table()
    table = parent[name]
    if not isinstance(table, (Table, dict)):
        raise TuneError(f"bundle.toml: {name} is not a table; make it [{name}] to let `bundler tune --write` edit it")
    return table


def updated_text(text: str, values: Mapping[str, Any], *, gating: bool) -> str:
    """`text` (bundle.toml) with the tuned `values` (`Choice.values` keys) written in."""
    doc = tomlkit.parse(text)
    inference = _table(doc, "inference")
    if gating:
        table = _table(inference, "gating")
        for key in GATING_KEYS:
            table[key] = values[key]
    table = _table(inference, "postprocess")
    for key in POSTPROCESS_KEYS:
        table[key] = values[key]
    return tomlkit.dumps(doc)


def diff(old: str, new: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), name, f"{name} (tuned)")
    )


def write_values(path: Path, values: Mapping[str, Any], *, gating: bool) -> str:
    """Write the tuned values into `path`; the diff."""
    old = path.read_text(encoding="utf-8")
    new = updated_text(old, values, gating=gating)
    if new == old:
        return ""
    try:
        parse_config(tomllib.loads(new), path.resolve().parent)
    except (BundlerError, tomllib.TOMLDecodeError) as e:
        raise TuneError(f"{path}: the tuned values would not be accepted ({e}); the file is left as it was") from None
    staging = path.with_name(path.name + ".tune-tmp")
    staging.write_text(new, encoding="utf-8")
    staging.replace(path)
    return diff(old, new, path.name)
