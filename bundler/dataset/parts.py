"""The bundle as Kaggle receives it: one dataset, or parts that each get their own versions.

A dataset version is never incremental: in one dataset, a new model re-uploads every wheel.
With `dataset.wheels_id` set the built folder (`dataset.out`, unchanged) is shipped as two parts:

- `wheels`: every wheel, as the dataset `wheels_id` (changes when the requirements change);
- `weights`: bundle.json, the weights and the preprocessing files, as the dataset `id` (changes
  with each experiment; it carries bundle.json, which the notebook looks for first).

With `dataset.weights_model` (`owner/model/framework/variation`) the `weights` part is a Kaggle
Model variation instead (its folder carries `model-instance-metadata.json`, and `build/parts/model/`
the `model-metadata.json` that creates the model when it is missing); the wheels then go in
`wheels_id`, else in `id`.

Each part is a folder under `build/parts/<part>/` of hard links (copies where links fail) with
its own `dataset-metadata.json` and `bundle-part.json` (bundle, part, hash, file records), and
its own hash: the wheels' is the manifest hash of the wheel records alone, the weights' is derived
from the whole bundle hash (its bundle.json names every file, so a new wheel changes it too).
`bundler push` uploads a part only when its hash differs from the one it last pushed; the
notebook joins the parts by `kernel_src.bundle.gather_parts`. Without `wheels_id` there is one
part, `bundle`, which is `dataset.out` itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.config import BundleConfig, DatasetConfig
from bundler.dataset.fingerprint import sha256_text
from bundler.dataset.manifest import MANIFEST, METADATA, bundle_hash, dataset_metadata, json_text, manifest_files
from bundler.errors import ManifestError
from kernel_src.bundle import PART_MANIFEST as PART_MANIFEST

PARTS_DIR = Path("build", "parts")
MODEL_METADATA = "model-metadata.json"
INSTANCE_METADATA = "model-instance-metadata.json"
NOT_UPLOADED = (METADATA, MODEL_METADATA, INSTANCE_METADATA)  # the kaggle client never uploads these
TITLE_MAX = 50  # a dataset title's most characters (Kaggle's rule)
SIZE_LIMIT = 200 * 10**9  # bytes per dataset version, as Kaggle's dataset docs state it; not checked by the API here


def size_limit() -> int:
    """Kaggle's limit on a part, in bytes: SIZE_LIMIT, or `BUNDLER_PART_LIMIT_BYTES` (tests, a changed limit)."""
    raw = os.environ.get("BUNDLER_PART_LIMIT_BYTES", "")
    try:
        return int(raw) if raw else SIZE_LIMIT
    except ValueError:
        raise ManifestError(f"BUNDLER_PART_LIMIT_BYTES = {raw!r} must be a whole number of bytes") from None


@dataclass(frozen=True)
class Part:
    """One thing Kaggle versions: a dataset folder to upload, its id and its hash."""

    name: str  # "bundle" (one dataset), "wheels", "weights"
    id: str  # owner/slug on Kaggle; a model variation's owner/model/framework/variation
    folder: Path
    hash: str
    files: dict[str, int]  # file name -> bytes, as uploaded (the metadata file left out)
    home: str = "dataset"  # where it lives on Kaggle: a "dataset", or a "model" (a Kaggle Model variation)

    @property
    def model_card(self) -> Path:
        """The folder whose model-metadata.json creates the model (a model part only)."""
        return self.folder.parent / "model"

    @property
    def size(self) -> int:
        return sum(self.files.values())


def _uploaded(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name not in NOT_UPLOADED}


def _place(source: Path, dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _check_size(part: Part) -> Part:
    limit = size_limit()
    if part.size > limit:
        raise ManifestError(
            f"part {part.name} ({part.id}) is {part.size:,} bytes, over Kaggle's limit of {limit:,} bytes "
            "per version; ship fewer or smaller weights, or split the wheels off with dataset.wheels_id"
        )
    return part


def _wheels_metadata(dataset: DatasetConfig, wheels_id: str) -> dict[str, Any]:
    title = dataset.title[: TITLE_MAX - len(" wheels")].rstrip() + " wheels"
    return {**dataset_metadata(dataset), "id": wheels_id, "title": title}


def _model_metadata(cfg: BundleConfig, handle: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model-metadata.json, model-instance-metadata.json) for the variation `handle`."""
    owner, model, framework, variation = handle.split("/")
    about = f"bundle.json, weights and preprocessing of the bundler bundle {cfg.name!r}."
    card = {
        "ownerSlug": owner,
        "slug": model,
        "title": cfg.dataset.title,
        "isPrivate": cfg.dataset.private,
        "description": about,
    }
    instance = {
        "ownerSlug": owner,
        "modelSlug": model,
        "instanceSlug": variation,
        "framework": framework,
        "licenseName": cfg.dataset.model_license,
        "overview": about,
        "usage": "Attached to the bundler notebook; its setup cell finds and verifies these files.",
    }
    return card, instance


def bundle_parts(cfg: BundleConfig, manifest: Mapping[str, Any]) -> list[Part]:
    """The parts of the built bundle (`manifest`: its bundle.json), their folders laid out."""
    out = cfg.dataset.out
    model = cfg.dataset.weights_model
    wheels_id = cfg.dataset.wheels_id or (cfg.dataset.id if model else None)
    if not wheels_id:
        return [_check_size(Part("bundle", cfg.dataset.id, out, str(manifest["hash"]), _uploaded(out)))]
    if wheels_id == cfg.dataset.id and not model:
        raise ManifestError(
            f"dataset.wheels_id = {wheels_id!r} is dataset.id too; name another dataset for the wheels"
        )
    wheel_records = list(manifest["wheels"])
    other_records = [r for r in manifest_files(manifest) if r not in wheel_records]
    wheels_metadata = _wheels_metadata(cfg.dataset, wheels_id) if wheels_id != cfg.dataset.id else None
    weights_metadata: tuple[str, dict[str, Any]] = (METADATA, dataset_metadata(cfg.dataset))
    if model:
        card, instance = _model_metadata(cfg, model)
        card_dir = cfg.root / PARTS_DIR / "model"
        card_dir.mkdir(parents=True, exist_ok=True)
        (card_dir / MODEL_METADATA).write_text(json_text(card), encoding="utf-8")
        weights_metadata = (INSTANCE_METADATA, instance)
    plan: list[tuple[str, str, list[str], str, tuple[str, dict[str, Any]]]] = [
        (
            "weights",
            model or cfg.dataset.id,
            [MANIFEST, *(str(r["file"]) for r in other_records)],
            sha256_text(f"weights {manifest['hash']}\n"),
            weights_metadata,
        )
    ]
    if wheel_records:  # Kaggle refuses an empty dataset: no wheels, no wheels part
        files = [str(r["file"]) for r in wheel_records]
        plan.insert(
            0,
            (
                "wheels",
                wheels_id,
                files,
                bundle_hash((str(r["file"]), str(r["sha256"])) for r in wheel_records),
                (METADATA, wheels_metadata or dataset_metadata(cfg.dataset)),
            ),
        )
    parts = []
    for name, ref, files, digest, (metadata_name, metadata) in plan:
        folder = cfg.root / PARTS_DIR / name
        if folder.is_dir():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for file in files:
            _place(out / file, folder / file)
        records = [r for r in manifest_files(manifest) if str(r["file"]) in files]
        part_manifest = {"bundle": cfg.name, "part": name, "hash": digest, "files": records}
        (folder / PART_MANIFEST).write_text(json_text(part_manifest), encoding="utf-8")
        (folder / metadata_name).write_text(json_text(metadata), encoding="utf-8")
        home = "model" if metadata_name == INSTANCE_METADATA else "dataset"
        parts.append(_check_size(Part(name, ref, folder, digest, _uploaded(folder), home)))
    return parts
