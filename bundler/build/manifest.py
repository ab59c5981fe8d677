"""`bundle.json` (the manifest the notebook checks) and `dataset-metadata.json` (for the Kaggle CLI).

The one writer and the one reader of `bundle.json` on bundler's side (the notebook's own reader
is `kernel_src.bundle.read_manifest`, which needs only "bundle" to find the folder).
`read_manifest(folder, bundle)` is strict and raises `ManifestError` naming the file and the fix
(`bundler build`) unless the file is JSON of format `FORMAT` naming `bundle`, with a 64-hex
"hash" and "wheels"/"weights" lists whose records each carry a flat "file", a 64-hex "sha256"
and a byte "size". Render and dry-run call it; the build's no-op check calls it too and treats
any error as "rebuild".

The bundle's `hash` is the sha256 of the sorted lines `<file> <sha256>` of every wheel and weight,
each line ended by a newline (the layout of `sha256sum` output with one space).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bundler import __version__
from bundler.build.fingerprint import sha256_text
from bundler.config import BundleConfig, DatasetConfig
from bundler.errors import ManifestError
from kernel_src.bundle import MANIFEST as MANIFEST  # the one definition of the file name

METADATA = "dataset-metadata.json"
FORMAT = 1
REBUILD = "rebuild it with `bundler build`"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return "is not an object"
    name = record.get("file")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        return 'has no flat "file" name'
    if not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"]):
        return f'({name}) has no 64-hex "sha256"'
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f'({name}) has no byte "size"'
    return None


def read_manifest(folder: Path, bundle: str) -> dict[str, Any]:
    """The manifest of the bundle folder `folder`, which must be bundle `bundle`; see the module doc."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} not found: the bundle was never built; run `bundler build` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path}: cannot be read ({e}); {REBUILD}") from None
    if not isinstance(data, dict) or not isinstance(data.get("hash"), str) or not _SHA256.fullmatch(data["hash"]):
        raise ManifestError(f'{path}: not a bundler manifest (no 64-hex "hash"); {REBUILD}')
    if data.get("format") != FORMAT:
        raise ManifestError(
            f"{path}: manifest format {data.get('format')!r}, this bundler reads format {FORMAT}; {REBUILD}"
        )
    if data.get("bundle") != bundle:
        raise ManifestError(
            f"{path} is bundle {data.get('bundle')!r}, but bundle.toml names {bundle!r}; "
            "rebuild with `bundler build` after changing bundle.name"
        )
    for section in ("wheels", "weights"):
        items = data.get(section)
        if not isinstance(items, list):
            raise ManifestError(f'{path}: "{section}" is not a list; {REBUILD}')
        for i, record in enumerate(items):
            problem = _record_problem(record)
            if problem:
                raise ManifestError(f"{path}: {section}[{i}] {problem}; {REBUILD}")
    return data


def manifest_files(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The wheel and weight records of a manifest that `read_manifest` returned."""
    return [*manifest["wheels"], *manifest["weights"]]


def up_to_date(folder: Path, cfg: BundleConfig, inputs: str) -> dict[str, Any] | None:
    """The existing manifest when `folder` was built from these inputs and is still intact, else None.

    Intact: every recorded wheel and weight is there with its recorded size, the metadata file says
    what the config says, and there is nothing else in the folder (no strays, no sub-folders).
    """
    try:
        manifest = read_manifest(folder, cfg.name)
    except ManifestError:
        return None  # none, damaged or another bundle's: rebuild
    if manifest.get("inputs") != inputs:
        return None
    try:
        metadata = (folder / METADATA).read_text(encoding="utf-8")
    except OSError:
        return None
    if metadata != json_text(dataset_metadata(cfg.dataset)):
        return None
    expected = {MANIFEST, METADATA}
    for record in manifest_files(manifest):
        name = str(record["file"])
        path = folder / name
        if not path.is_file() or path.stat().st_size != record["size"]:
            return None
        expected.add(name)
    present = {p.name for p in folder.iterdir()}
    if present != expected or any((folder / n).is_dir() for n in present):
        return None
    return manifest
