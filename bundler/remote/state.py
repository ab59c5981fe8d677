"""What bundler remembers of its Kaggle rounds: `build/kaggle/state.json`, and the downloads beside it.

The file records the last pushed bundle hash and the dataset version it became (for a bundle in
parts, `bundler.dataset.parts`, each part's hash and version), every kernel
version pushed (with the bundle and dataset version it ran on, and its last known status) and
every submission. Downloaded outputs of kernel version N go under `build/kaggle/v<N>/`
(submission.csv, profile.json, the log). Credentials are never written here: the Kaggle client
reads them from where it always does, and nothing bundler stores holds them.

Writes are atomic (a temporary file renamed over the old one); an unreadable state file is an
error naming the file and the fix, never silently reset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.config import KAGGLE_DIR, BundleConfig, kaggle_run_dir
from bundler.errors import RemoteError

STATE_FILE = "state.json"
STATE_FORMAT = 1


def kaggle_dir(cfg: BundleConfig) -> Path:
    """`build/kaggle/` of the project (beside bundle.toml)."""
    return cfg.root / KAGGLE_DIR


def version_dir(cfg: BundleConfig, version: int) -> Path:
    """Where kernel version `version`'s outputs are downloaded."""
    return kaggle_run_dir(cfg.root, version)


@dataclass
class RemoteState:
    """The parsed `state.json`; mutate, then `save`."""

    path: Path
    dataset: dict[str, Any] = field(default_factory=dict)  # hash, version (None while processing), pushed_at
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # "wheels" / "weights" -> as `dataset`
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)  # "N" -> record of kernel version N
    last_kernel_version: int | None = None
    submissions: list[dict[str, Any]] = field(default_factory=list)

    def part(self, name: str) -> dict[str, Any]:
        """The record of part `name` ("bundle": the one dataset, kept as `dataset`), created empty when unknown."""
        return self.dataset if name == "bundle" else self.parts.setdefault(name, {})

    def part_lines(self) -> list[str]:
        """One line per part pushed: its name, dataset, version (or that it is still processing) and hash."""
        records = {"bundle": self.dataset, **self.parts} if self.dataset else dict(self.parts)
        lines = []
        for name, record in records.items():
            if not record:
                continue
            version = record.get("version")
            at = f"v{version}" if isinstance(version, int) else "uploaded, not yet ready"
            lines.append(f"{name}: {record.get('id')} {at} (hash {str(record.get('hash'))[:12]})")
        return lines

    def kernel(self, version: int) -> dict[str, Any]:
        """The record of kernel version `version` (created empty when unknown)."""
        return self.kernels.setdefault(str(version), {})

    def save(self) -> None:
        data = {
            "format": STATE_FORMAT,
            "dataset": self.dataset,
            "parts": self.parts,
            "kernels": self.kernels,
            "last_kernel_version": self.last_kernel_version,
            "submissions": self.submissions,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def load_state(cfg: BundleConfig) -> RemoteState:
    """`build/kaggle/state.json`, empty when bundler never pushed from this project."""
    path = kaggle_dir(cfg) / STATE_FILE
    if not path.is_file():
        return RemoteState(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RemoteError(f"{path}: unreadable ({e}); delete it and run `bundler push` again") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise RemoteError(f"{path}: not a bundler state file of format {STATE_FORMAT}; delete it and push again")
    last = data.get("last_kernel_version")
    return RemoteState(
        path,
        dataset=dict(data.get("dataset") or {}),
        parts={str(k): dict(v) for k, v in (data.get("parts") or {}).items()},
        kernels={str(k): dict(v) for k, v in (data.get("kernels") or {}).items()},
        last_kernel_version=int(last) if isinstance(last, int) else None,
        submissions=list(data.get("submissions") or []),
    )
