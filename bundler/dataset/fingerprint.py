"""Content hashes, and the fingerprint of everything a build's output depends on.

`bundler build` stores the fingerprint in `bundle.json` ("inputs"); it covers the wheels dropped in
the local wheelhouse (not the wheels the build caches there). When it has not changed and
the folder's files still have their recorded sizes, the build downloads, converts and writes
nothing. Checkpoint hashes are cached by (path, size, mtime_ns) in `build/.cache/`, so a no-op
build does not re-read large files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from bundler import __version__
from bundler.config import BundleConfig
from bundler.dataset.wheels import wheelhouse
from bundler.target import baseline_path
from kernel_src.bundle import sha256_file
from kernel_src.model_kinds import MODEL_KINDS

BUILD_FORMAT = 1  # bump when the build writes other bytes from the same inputs
# the distributions whose versions change what a build writes: torch, each model kind's library, ...
LIBRARIES = tuple(
    dict.fromkeys(("torch", *(k.library for k in MODEL_KINDS.values() if k.library), "safetensors", "albumentations"))
)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class HashCache:
    """sha256 of files keyed by (resolved path, size, mtime_ns), kept in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._entries = {str(k): v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: hashes are recomputed

    def cached(self, path: Path) -> str | None:
        st = path.stat()
        entry = self._entries.get(str(path.resolve()))
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            sha = entry.get("sha256")
            return str(sha) if sha else None
        return None

    def sha256(self, path: Path, advance: Callable[[int], None] | None = None) -> str:
        hit = self.cached(path)
        if hit is not None:
            return hit
        st = path.stat()
        sha = sha256_file(path, advance)
        self._entries[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        self._dirty = True
        return sha

    def save(self) -> None:
        """Write the cache when it learnt something (atomically: a temporary file renamed)."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)
        self._dirty = False


def _wheelhouse(folder: Path) -> list[list[Any]]:
    """Names, sizes and mtimes of a find_links folder: a changed wheelhouse means a new resolution."""
    if not folder.is_dir():
        return [[str(folder), "missing"]]
    rows: list[list[Any]] = []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            rows.append([p.name, st.st_size, st.st_mtime_ns])
    return rows


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def input_fingerprint(cfg: BundleConfig, checkpoint_sha256: list[str]) -> str:
    """sha256 of every input that shapes the dataset folder (one checkpoint hash per model, in order)."""
    target = cfg.target
    baseline = baseline_path(target.baseline)
    data = {
        "build_format": BUILD_FORMAT,
        "bundler": __version__,
        "libraries": _library_versions(),
        "bundle": cfg.name,
        "dataset": {
            "id": cfg.dataset.id,
            "title": cfg.dataset.title,
            "license": cfg.dataset.license,
            "private": cfg.dataset.private,
        },
        "target": {
            "python": target.python,
            "platforms": list(target.platforms),
            "baseline": target.baseline,
            "baseline_sha256": sha256_file(baseline) if baseline.is_file() else None,
            "requirements": list(target.requirements),
            "no_index": target.no_index,
            "find_links": [[str(p), _wheelhouse(p)] for p in target.find_links],
            "wheelhouse": [str(target.wheelhouse), wheelhouse.fingerprint_rows(target.wheelhouse)],
        },
        "num_classes": cfg.inference.num_classes,
        "models": [
            {
                "role": m.role,
                "fp16": m.fp16,
                "spec": asdict(m.spec),
                "checkpoint_sha256": sha,
                "checkpoint_key": m.checkpoint_key,
                "preprocess_sha256": sha256_file(m.preprocess) if m.preprocess and m.preprocess.is_file() else None,
            }
            for m, sha in zip(cfg.models, checkpoint_sha256, strict=True)
        ],
    }
    return sha256_text(json.dumps(data, sort_keys=True, default=list))
