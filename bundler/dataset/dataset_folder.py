"""`bundler build`: one FLAT Kaggle dataset folder with every wheel and weight the notebook needs.

The folder (default `build/dataset/`) holds `bundle.json`, `dataset-metadata.json`, the vendored
`*.whl` and one weight file per model, all at the top level, so `kaggle datasets version -p DIR`
uploads every file (the Kaggle CLI skips sub-folders by default).

- Atomic: the folder is built beside the old one (`<out>.partial-<pid>`) and swapped in only on
  success; a failure or Ctrl-C removes the staging folder and leaves the old folder as it was.
- No-op: the fingerprint of the inputs is stored in `bundle.json` ("inputs"); when it is unchanged
  and the folder is intact, nothing is downloaded, converted or written.
- Credentials never leave the machine: credential files and key material among the inputs, and
  in the finished folder's wheels, fail the build with `CredentialError`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bundler.config import BundleConfig, ModelEntry
from bundler.dataset import credentials
from bundler.dataset.fingerprint import HashCache, input_fingerprint
from bundler.dataset.manifest import MANIFEST, METADATA, build_manifest, dataset_metadata, up_to_date, write_json
from bundler.dataset.summary import print_report
from bundler.errors import BuildError
from bundler.outdir import check_out_folder, replace_contents
from bundler.sandbox import pid_alive

if TYPE_CHECKING:
    from bundler.dataset.weights import WeightRecord
    from bundler.dataset.wheels.vendor import WheelPlan

CACHE_DIR = Path("build/.cache")  # under the folder of bundle.toml


@dataclass(frozen=True)
class BuildResult:
    """What a build produced (or found up to date)."""

    out: Path
    up_to_date: bool  # True: the folder already matched the inputs; nothing was written
    manifest: dict[str, Any]
    total_bytes: int
    seconds: float
    timings: dict[str, float]  # phase -> seconds
    from_baseline: tuple[tuple[str, str], ...] = ()  # (name, version) the image already has
    warnings: tuple[str, ...] = ()


def model_keys(models: tuple[ModelEntry, ...]) -> list[str]:
    """The `bundle.toml` key of each model, e.g. `segmenters[1]`."""
    counts = {"classifier": 0, "segmenter": 0}
    keys = []
    for entry in models:
        keys.append(f"{entry.role}s[{counts[entry.role]}]")
        counts[entry.role] += 1
    return keys


def cache_dir(cfg: BundleConfig) -> Path:
    return cfg.root / CACHE_DIR


def _progress(console: Console, *, bytes_: bool = False) -> Progress:
    counter = DownloadColumn() if bytes_ else TaskProgressColumn()
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        counter,
        TimeElapsedColumn(),
        console=console,
    )


def _check_out(out: Path) -> None:
    """Refuse an `out` that cannot become the bundle folder: a path under a file (`--out
    /etc/passwd/x`) or under a folder that cannot be written (the swap renames beside `out`; a
    read-only mount is found by writing, before any conversion), a file, or a folder this tool did
    not build (a user's `--out ~/Documents`)."""
    check_out_folder(
        out,
        what=f"dataset folder {out} (dataset.out, or --out)",
        owned=lambda folder: (folder / MANIFEST).is_file(),
        error=BuildError,
        fix="choose another dataset.out (or --out)",
    )


def _remove_stale(out: Path) -> None:
    """Staging and set-aside folders left by builds whose process is gone."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(re.escape(out.name) + r"\.(?:partial|old)-(\d+)")
    for path in out.parent.iterdir():
        m = pattern.fullmatch(path.name)
        if m and path.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    """Put `staging` where `out` is: old aside, new in, old deleted; the old comes back on failure."""
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    had_old = out.exists()
    if had_old:
        try:
            out.rename(old)
        except OSError:  # a mount point (EBUSY) or a folder that cannot be renamed: replace what it holds
            replace_contents(staging, out)
            return
    try:
        staging.rename(out)
    except BaseException:
        if had_old:
            old.rename(out)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh staging folder beside `out`, removed on any failure (Ctrl-C included)."""
    staging = out.parent / f"{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _assert_contents(folder: Path, expected: set[str]) -> None:
    """Flat, and exactly the files of the manifest: nothing skipped, nothing uploaded unseen."""
    nested = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if nested:
        raise BuildError(
            f"the bundle folder would hold sub-folders ({', '.join(nested)}), which `kaggle datasets version` "
            "skips; this is a bug in bundler: please report it"
        )
    present = {p.name for p in folder.iterdir()}
    if present != expected:
        extra, missing = sorted(present - expected), sorted(expected - present)
        raise BuildError(
            f"the bundle folder does not match its manifest (not listed: {extra or 'none'}; missing: "
            f"{missing or 'none'}); this is a bug in bundler: please report it"
        )


def _checkpoint_hashes(cfg: BundleConfig, keys: list[str], console: Console) -> list[str]:
    """Check each checkpoint exists and is not a credential file by name, then hash it (cached)."""
    from bundler.dataset.checkpoint_file import check_checkpoint_path

    for entry, key in zip(cfg.models, keys, strict=True):
        check_checkpoint_path(entry, key)
        credentials.check_name(entry.checkpoint, f"{key}.checkpoint")
    cache = HashCache(cache_dir(cfg) / "sha256.json")
    todo = [m.checkpoint for m in cfg.models if cache.cached(m.checkpoint) is None]
    if todo:
        with _progress(console, bytes_=True) as progress:
            task = progress.add_task("hashing checkpoints", total=sum(p.stat().st_size for p in todo))
            for path in todo:
                cache.sha256(path, lambda n: progress.advance(task, n))
    hashes = [cache.sha256(m.checkpoint) for m in cfg.models]
    cache.save()
    return hashes


def _convert_weights(cfg: BundleConfig, keys: list[str], staging: Path, console: Console) -> list[WeightRecord]:
    from bundler.dataset.weights import convert

    records = []
    with _progress(console, bytes_=True) as progress:
        task = progress.add_task(
            "checking checkpoints for credentials", total=sum(m.checkpoint.stat().st_size for m in cfg.models)
        )
        for entry, key in zip(cfg.models, keys, strict=True):
            credentials.check_content(entry.checkpoint, f"{key}.checkpoint", lambda n: progress.advance(task, n))
            # pickled strings never look like JSON text: read the non-tensor data as the pickles hold it
            credentials.scan_checkpoint(entry.checkpoint, f"{key}.checkpoint")
    with _progress(console) as progress:
        task = progress.add_task("converting weights", total=len(cfg.models))
        for entry, key in zip(cfg.models, keys, strict=True):

            def step(what: str, name: str = entry.spec.name) -> None:
                progress.update(task, description=f"{escape(name)}: {escape(what)}")

            size = (cfg.inference.image_height, cfg.inference.image_width)
            record = convert(entry, key, cfg.inference.outputs(entry.role), staging, step, image_size=size)
            records.append(record)
            progress.advance(task)
        progress.update(task, description="weights converted")
    for record in records:
        for note in record.notes:
            console.print(f"{escape(record.model)}: {escape(note)}", soft_wrap=True)
    return records


def _preprocessing(cfg: BundleConfig, keys: list[str], staging: Path, console: Console) -> list[dict[str, Any]]:
    """Each model's albumentations pipeline translated, proved and written (bundler.dataset.preprocess)."""
    from bundler.dataset.preprocess import build_preprocess

    todo = [(entry, key) for entry, key in zip(cfg.models, keys, strict=True) if entry.preprocess is not None]
    if not todo:
        return []
    size = (cfg.inference.image_height, cfg.inference.image_width)
    records = []
    with _progress(console) as progress:
        task = progress.add_task("translating preprocessing", total=len(todo))
        for entry, key in todo:

            def step(what: str, name: str = entry.spec.name) -> None:
                progress.update(task, description=f"{escape(name)}: {escape(what)}")

            records.append(build_preprocess(entry, key, size, staging, step))
            progress.advance(task)
        progress.update(task, description="preprocessing translated and proved")
    return records


def _vendor(cfg: BundleConfig, staging: Path, console: Console) -> WheelPlan:
    from bundler.dataset.wheels.vendor import vendor_wheels

    return vendor_wheels(
        cfg.target, staging, wheelhouse=cfg.target.wheelhouse, uv_cache=cache_dir(cfg) / "uv", console=console
    )


def build_dataset(cfg: BundleConfig, *, console: Console, force: bool = False) -> BuildResult:
    """Build (or find up to date) the dataset folder `cfg.dataset.out`. `force` rebuilds even
    when the inputs are unchanged (e.g. to pick up a new release of an unpinned requirement)."""
    started = time.perf_counter()
    out = cfg.dataset.out
    _check_out(out)
    _remove_stale(out)  # even when the build turns out up to date
    keys = [f"{cfg.source} {key}" for key in model_keys(cfg.models)]  # "other.toml segmenters[0]"
    checkpoint_sha = _checkpoint_hashes(cfg, keys, console)
    inputs = input_fingerprint(cfg, checkpoint_sha)
    timings = {"hashing": time.perf_counter() - started}

    existing = None if force else up_to_date(out, cfg, inputs)
    if existing is not None:
        console.print(
            f"[green]{escape(str(out))} is up to date[/]: the inputs have not changed, so nothing was "
            "downloaded, converted or written.",
            soft_wrap=True,
        )
        total = print_report(console, cfg, out, existing)
        seconds = time.perf_counter() - started
        return BuildResult(out, True, existing, total, seconds, {**timings, "total": seconds})

    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging(out) as staging:
        t = time.perf_counter()
        weights = _convert_weights(cfg, keys, staging, console)
        timings["weights"] = time.perf_counter() - t
        if any(m.preprocess is not None for m in cfg.models):
            t = time.perf_counter()
            preprocessing = _preprocessing(cfg, keys, staging, console)
            timings["preprocess"] = time.perf_counter() - t
        else:
            preprocessing = []
        t = time.perf_counter()
        plan = _vendor(cfg, staging, console)
        timings["wheels"] = time.perf_counter() - t
        wheels = [
            {
                "file": w.file,
                "name": w.name,
                "version": w.version,
                "sha256": w.sha256,
                "size": w.size,
                "reason": w.reason,
            }
            for w in plan.wheels
        ]
        manifest = build_manifest(cfg, wheels, [r.to_dict() for r in weights], inputs, preprocessing)
        write_json(staging / METADATA, dataset_metadata(cfg.dataset))
        write_json(staging / MANIFEST, manifest)
        _assert_contents(
            staging,
            {
                MANIFEST,
                METADATA,
                *(str(w["file"]) for w in wheels),
                *(r.file for r in weights),
                *(str(p["file"]) for p in preprocessing),
            },
        )
        credentials.scan_folder(staging, [MANIFEST, METADATA, *(r.file for r in weights)])
        _swap(staging, out)
    seconds = time.perf_counter() - started
    timings["total"] = seconds
    console.print(f"[green]built {escape(str(out))}[/]", soft_wrap=True)
    total = print_report(console, cfg, out, manifest, from_baseline=plan.from_baseline, timings=timings)
    return BuildResult(out, False, manifest, total, seconds, timings, plan.from_baseline, plan.warnings)
