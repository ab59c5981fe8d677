"""What `bundler build` prints at the end: the folder's files, what each is, and the upload commands."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bundler.config import BundleConfig
from bundler.dataset.manifest import MANIFEST, METADATA
from bundler.display import shown_path


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _what_weight(w: Mapping[str, Any]) -> str:
    params = int(w.get("parameters", 0))
    return f"weights of {w.get('model')} ({w.get('kind')}, {w.get('dtype')}, {params / 1e6:.2f}M parameters)"


def files_table(folder: Path, manifest: Mapping[str, Any]) -> tuple[Table, int]:
    """A row per file of the folder (manifest records first), and the folder's total size."""
    table = Table(title=f"bundle {manifest.get('bundle')}: {folder}", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("what", overflow="fold")
    total = 0
    listed: set[str] = set()
    rows: list[tuple[str, int, str]] = []
    for w in manifest.get("wheels", []):
        reason = str(w.get("reason", ""))
        rows.append((str(w["file"]), int(w["size"]), f"wheel {w.get('name')} {w.get('version')}: {reason}"))
    for w in manifest.get("weights", []):
        rows.append((str(w["file"]), int(w["size"]), _what_weight(w)))
    for p in manifest.get("preprocess", []):
        transforms = " > ".join(str(t) for t in p.get("transforms", []))
        what = f"preprocessing of {p.get('model')} from {p.get('source')}: {transforms} (proved against albumentations)"
        rows.append((str(p["file"]), int(p["size"]), what))
    for name, what in ((MANIFEST, "manifest the notebook checks"), (METADATA, "read by the Kaggle CLI")):
        path = folder / name
        rows.append((name, path.stat().st_size if path.is_file() else 0, what))
    for name, size, what in rows:
        listed.add(name)
        total += size
        table.add_row(escape(name), human_size(size), escape(what))
    for path in sorted(folder.iterdir()):  # never expected: shown so nothing is uploaded unseen
        if path.name not in listed:
            size = path.stat().st_size
            total += size
            table.add_row(escape(path.name), human_size(size), "[red]not in the manifest[/]")
    table.add_section()
    table.add_row("total", human_size(total), f"{len(rows)} files, no sub-folders: every wheel and weight is uploaded")
    return table, total


def _shown_path(path: Path) -> str:
    return shlex.quote(shown_path(path))


def upload_commands(cfg: BundleConfig, folder: Path, manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(first upload, later uploads): the exact Kaggle CLI commands for this folder."""
    shown = _shown_path(folder)
    create = f"kaggle datasets create -p {shown}" + ("" if cfg.dataset.private else " --public")
    message = f"bundle {manifest.get('bundle')} {str(manifest.get('hash', ''))[:12]}"
    version = f"kaggle datasets version -p {shown} -m {shlex.quote(message)}"
    return create, version


def print_report(
    console: Console,
    cfg: BundleConfig,
    folder: Path,
    manifest: Mapping[str, Any],
    *,
    from_baseline: Sequence[tuple[str, str]] = (),
    timings: Mapping[str, float] | None = None,
) -> int:
    """Print the table, what the baseline already had, the size, the times and the commands."""
    table, total = files_table(folder, manifest)
    console.print(table)
    if from_baseline:
        have = ", ".join(f"{n} {v}" for n, v in sorted(from_baseline))
        console.print(
            f"Already in the image (baseline {escape(str(manifest.get('baseline')))}), not vendored: {escape(have)}",
            soft_wrap=True,
        )
    line = f"Bundle size {human_size(total)}"
    if timings:
        line += "; build times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    console.print(line, soft_wrap=True)
    create, version = upload_commands(cfg, folder, manifest)
    console.print("Upload it (the folder is flat, so every file goes up):")
    console.print(f"  first time:  {escape(create)}", soft_wrap=True)
    console.print(f"  afterwards:  {escape(version)}", soft_wrap=True)
    if not cfg.dataset.private:
        console.print("  (dataset.private = false: `create` gets --public; `version` never changes visibility)")
    return total
