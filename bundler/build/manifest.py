"""`bundle.json` (the manifest the notebook checks) and `dataset-metadata.json` (for the Kaggle CLI).

The bundle's `hash` is the sha256 of the sorted lines `<file> <sha256>` of every wheel and weight,
each line ended by a newline (the layout of `sha256sum` output with one space).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bundler import __version__
from bundler.build.fingerprint import sha256_text
from bundler.config import BundleConfig, DatasetConfig
from kernel_src.bundle import MANIFEST as MANIFEST  # the one definition of the file name

METADATA = "dataset-metadata.json"
FORMAT = 1


def bundle_hash(files: Iterable[tuple[str, str]]) -> str:
    """sha256 of the sorted lines '<file> <sha256>\\n' (one per wheel and weight)."""
    return sha256_text("".join(f"{line}\n" for line in sorted(f"{name} {sha}" for name, sha in files)))


def dataset_metadata(dataset: DatasetConfig) -> dict[str, Any]:
    """What `kaggle datasets create/version` reads. `isPrivate` records intent only: the CLI's
    `create` makes a dataset public only when given `--public`."""
    return {
        "id": dataset.id,
        "title": dataset.title,
        "licenses": [{"name": dataset.license}],
        "isPrivate": dataset.private,
    }


def build_manifest(
    cfg: BundleConfig,
    wheels: Sequence[Mapping[str, Any]],
    weights: Sequence[Mapping[str, Any]],
    inputs: str,
) -> dict[str, Any]:
    """The manifest of a bundle folder; `wheels` and `weights` are its file records."""
    files = [(str(w["file"]), str(w["sha256"])) for w in (*wheels, *weights)]
    return {
        "format": FORMAT,
        "bundle": cfg.name,
        "hash": bundle_hash(files),
        "created_by": f"bundler {__version__}",
        "target": {"python": cfg.target.python, "platforms": list(cfg.target.platforms)},
        "baseline": cfg.target.baseline,
        "requirements": list(cfg.target.requirements),
        "wheels": [dict(w) for w in wheels],
        "weights": [dict(w) for w in weights],
        "inputs": inputs,
    }


def json_text(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json_text(data), encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none or an unreadable one."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifest_files(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The wheel and weight records of a manifest."""
    records: list[Mapping[str, Any]] = []
    for section in ("wheels", "weights"):
        items = manifest.get(section, [])
        if isinstance(items, list):
            records.extend(r for r in items if isinstance(r, Mapping))
    return records


def up_to_date(folder: Path, cfg: BundleConfig, inputs: str) -> dict[str, Any] | None:
    """The existing manifest when `folder` was built from these inputs and is still intact, else None.

    Intact: every recorded wheel and weight is there with its recorded size, the metadata file says
    what the config says, and there is nothing else in the folder (no strays, no sub-folders).
    """
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("inputs") != inputs:
        return None
    try:
        metadata = (folder / METADATA).read_text(encoding="utf-8")
    except OSError:
        return None
    if metadata != json_text(dataset_metadata(cfg.dataset)):
        return None
    expected = {MANIFEST, METADATA}
    for record in manifest_files(manifest):
        name = str(record.get("file", ""))
        path = folder / name
        if not name or "/" in name or not path.is_file() or path.stat().st_size != record.get("size"):
            return None
        expected.add(name)
    present = {p.name for p in folder.iterdir()}
    if present != expected or any((folder / n).is_dir() for n in present):
        return None
    return manifest
