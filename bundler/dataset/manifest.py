"""`bundle.json` (the manifest the notebook checks) and `dataset-metadata.json` (for the Kaggle CLI).

The one writer and the one reader of `bundle.json` on bundler's side. The contract itself (format
`MANIFEST_FORMAT`, a "bundle" name, a 64-hex "hash", "wheels"/"weights" lists whose records each
carry a flat "file", a 64-hex "sha256" and a byte "size") is `kernel_src.bundle.manifest_problem`,
which the notebook's own reader keeps too. `read_manifest(folder, bundle)` raises `ManifestError`
naming the file and the fix (`bundler build`) when the file breaks it or names another bundle.
Render and dry-run call it; the build's no-op check calls it too and treats any error as "rebuild".

The bundle's `hash` is the sha256 of the sorted lines `<file> <sha256>` of every wheel, weight and
preprocessing file,
each line ended by a newline (the layout of `sha256sum` output with one space).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bundler import __version__
from bundler.config import BundleConfig, DatasetConfig
from bundler.dataset.fingerprint import sha256_text
from bundler.errors import ManifestError
from kernel_src.bundle import MANIFEST as MANIFEST  # the one definition of the file name
from kernel_src.bundle import MANIFEST_FORMAT, manifest_problem

METADATA = "dataset-metadata.json"
REBUILD = "rebuild it with `bundler build`"


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
    preprocess: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The manifest of a bundle folder; `wheels`, `weights` and `preprocess` (the models' translated
    albumentations pipelines, bundler.dataset.preprocess) are its file records."""
    files = [(str(w["file"]), str(w["sha256"])) for w in (*wheels, *weights, *preprocess)]
    return {
        "format": MANIFEST_FORMAT,
        "bundle": cfg.name,
        "hash": bundle_hash(files),
        "created_by": f"bundler {__version__}",
        "target": {"python": cfg.target.python, "platforms": list(cfg.target.platforms)},
        "baseline": cfg.target.baseline,
        "requirements": list(cfg.target.requirements),
        "wheels": [dict(w) for w in wheels],
        "weights": [dict(w) for w in weights],
        "preprocess": [dict(p) for p in preprocess],
        "inputs": inputs,
    }


def json_text(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json_text(data), encoding="utf-8")


def read_manifest(folder: Path, bundle: str) -> dict[str, Any]:
    """The manifest of the bundle folder `folder`, which must be bundle `bundle`; see the module doc."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} not found: the bundle was never built; run `bundler build` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path}: cannot be read ({e}); {REBUILD}") from None
    problem = manifest_problem(data)
    if problem:
        raise ManifestError(f"{path}: {problem}; {REBUILD}")
    if data["bundle"] != bundle:
        raise ManifestError(
            f"{path} is bundle {data['bundle']!r}, but bundle.toml names {bundle!r}; "
            "rebuild with `bundler build` after changing bundle.name"
        )
    return dict(data)


def manifest_files(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The wheel, weight and preprocessing records of a manifest that `read_manifest` returned."""
    return [*manifest["wheels"], *manifest["weights"], *manifest.get("preprocess", [])]


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
