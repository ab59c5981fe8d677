"""`bundler push [--wait] [--no-run]`: the built bundle and its notebook onto Kaggle, in the safe order.

1. The dataset (`dataset.out`, flat): created the first time, else a new version whose message
   is the bundle hash and `git describe` when the project is a git repository. Skipped when
   the bundle hash equals the last one pushed (`build/kaggle/state.json`).
   Kaggle refuses a new version (HTTP 403) while the previous one is still processing: that
   refusal is waited out (the states shown) and the upload tried again.
2. Waits until that version is ready (its processing states shown as progress; FAILED is an
   error; a timeout says how to resume): a notebook pushed earlier would mount the previous one.
   Then the version's file list on Kaggle (names and sizes) must equal what was uploaded: a
   partial upload fails naming the files, and the next push uploads again.
3. Pins that version in kernel-metadata.json's `dataset_sources` (`owner/slug/N`), re-rendering
   the notebook first when it is stale (another bundle, bundle.toml or kernel_src).
4. Pushes the notebook: internet off, the image pinned ("original"), `--no-run` saves without
   running. A response listing invalid dataset, competition, kernel or model sources is an
   error (the Kaggle CLI only prints a line and goes on). The settings Kaggle kept are read
   back: internet on (or another machine shape) after the push is an error saying so.
5. With `--wait`, follows the run as `bundler status --wait` does and downloads its outputs.

A kernel version runs on Kaggle's GPUs (a weekly quota): when the notebook, its kernel-metadata.json
and therefore its sources are byte for byte those of the last version pushed, nothing is pushed and
that is said; `rerun` (`bundler push --rerun`) pushes anyway.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from bundler.config import BundleConfig
from bundler.dataset.manifest import METADATA, manifest_files, read_manifest
from bundler.dataset.parts import Part, bundle_parts
from bundler.display import shown_path
from bundler.errors import BundlerError, KaggleHTTPError, RemoteError
from bundler.notebook.kernel_metadata import check_metadata, read_existing, write_metadata
from bundler.remote.client import Kaggle, connect, poll_interval
from bundler.remote.kernel import StatusResult, kernel_status
from bundler.remote.state import RemoteState, load_state
from bundler.remote.wait import spinner, wait_for

DATASET_READY = "ready"
DATASET_FAILED = "failed"
DEFAULT_POLL_S = 10.0
DEFAULT_DATASET_TIMEOUT_S = 3600.0
DATASET_ENDED = (DATASET_READY, DATASET_FAILED, "deleted")
UPLOAD_TRIES = 3  # a version refused because the previous one is processing: waited for, then tried again


@dataclass(frozen=True)
class PushResult:
    bundle_hash: str
    parts: tuple[PartResult, ...]  # each part's id, pinned version and whether it was uploaded
    kernel_version: int | None
    url: str
    run: StatusResult | None  # with --wait: the finished run
    kernel_pushed: bool = True  # False: the notebook, metadata and sources were those of kernel_version


def git_describe(cfg: BundleConfig) -> str:
    """`git describe --tags --always --dirty` of the project, '' outside a repository."""
    try:
        done = subprocess.run(
            ["git", "describe", "--tags", "--always", "--dirty"],
            cwd=cfg.root,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def version_message(cfg: BundleConfig, bundle_hash: str, label: str = "bundle") -> str:
    describe = git_describe(cfg)
    return f"{label} {bundle_hash[:12]}" + (f" ({describe})" if describe else "")


def _wait_ended(ref: str, kaggle: Kaggle, interval: float, timeout_s: float, console: Console) -> str:
    """Poll the newest version's processing state of dataset `ref` until it ends; that state."""

    def poll() -> str:
        return kaggle.dataset_status(ref) or "not found"

    status, _ = wait_for(
        poll,
        # "not found" right after an upload is Kaggle catching up: keep polling until the timeout
        lambda s: s in DATASET_ENDED,
        what=f"dataset {ref}",
        interval=interval,
        timeout_s=timeout_s,
        resume="run `bundler push` again to go on waiting (nothing is uploaded twice)",
        console=console,
    )
    return status


def _wait_ready(ref: str, kaggle: Kaggle, interval: float, timeout_s: float, console: Console) -> None:
    status = _wait_ended(ref, kaggle, interval, timeout_s, console)
    if status != DATASET_READY:
        raise RemoteError(
            f"dataset {ref}: the new version's processing ended {status.upper()} on Kaggle; "
            "see the dataset's page, then `bundler build --force` and `bundler push` again"
        )


def check_folder(cfg: BundleConfig, manifest: Mapping[str, Any]) -> None:
    """The dataset folder holds dataset-metadata.json and every file of bundle.json at its size."""
    out = cfg.dataset.out
    problems = [] if (out / METADATA).is_file() else [f"{METADATA} is missing"]
    for record in manifest_files(manifest):
        path = out / str(record["file"])
        if not path.is_file():
            problems.append(f"{record['file']} is missing")
        elif path.stat().st_size != record["size"]:
            problems.append(f"{record['file']} is {path.stat().st_size} bytes, bundle.json says {record['size']}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise RemoteError(f"{shown_path(out)} is not the bundle bundle.json describes ({shown}); run `bundler build`")


def uploaded_files(folder: Path) -> dict[str, int]:
    """{name: size} of what `datasets version -p folder` uploads: the top level, less the metadata file."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != METADATA}


def compare_files(expected: Mapping[str, int], listed: Mapping[str, int]) -> list[str]:
    """What differs between the files uploaded and the files Kaggle lists, each naming the file."""
    problems = [f"{name} ({size} bytes) is missing" for name, size in expected.items() if name not in listed]
    problems += [
        f"{name} is {listed[name]} bytes, the bundle's is {size}"
        for name, size in expected.items()
        if name in listed and listed[name] != size
    ]
    problems += [f"{name} was never part of the bundle" for name in listed if name not in expected]
    return problems


def _check_uploaded(part: Part, version: int, kaggle: Kaggle, state: RemoteState) -> None:
    """The ready version holds every uploaded file at its size; else forget the upload and fail naming them."""
    problems = compare_files(part.files, kaggle.dataset_files(part.id, version))
    if problems:
        state.part(part.name).clear()  # the next push uploads again instead of trusting this version
        state.save()
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise RemoteError(
            f"dataset {part.id} v{version} on Kaggle is not what was uploaded ({shown}); "
            "the upload was partial: run `bundler push` again to upload a new version"
        )


def _upload(
    cfg: BundleConfig,
    kaggle: Kaggle,
    part: Part,
    current: str | None,
    *,
    interval: float,
    timeout_s: float,
    console: Console,
) -> None:
    """Create the dataset or upload a new version; a refusal while the previous version processes is waited out."""
    ref = part.id
    folder = shown_path(part.folder)
    size_mb = part.size / 1e6
    for attempt in range(1, UPLOAD_TRIES + 1):
        started = time.monotonic()
        try:
            with spinner(console, f"uploading {folder} to {ref}: {len(part.files)} files, {size_mb:,.1f} MB"):
                if current is None:
                    console.print(
                        f"dataset {ref}: creating it from {folder} ({'private' if cfg.dataset.private else 'public'})"
                    )
                    kaggle.create_dataset(part.folder, public=not cfg.dataset.private)
                else:
                    message = version_message(cfg, part.hash, part.name)
                    console.print(f"dataset {ref}: new version from {escape(str(folder))}: {escape(str(message))}")
                    kaggle.version_dataset(part.folder, message)
        except KaggleHTTPError as e:
            if current is None or e.status != 403 or attempt == UPLOAD_TRIES:
                raise
            now = kaggle.dataset_status(ref)
            if now is None or now in DATASET_ENDED:  # not a version in the way: a refusal of the access
                raise
            console.print(f"dataset {ref}: Kaggle refused the new version while the previous one is {now}; waiting")
            _wait_ended(ref, kaggle, interval, timeout_s, console)
            continue
        console.print(f"  uploaded {len(part.files)} files, {size_mb:,.1f} MB in {time.monotonic() - started:.0f} s")
        return


@dataclass(frozen=True)
class PartResult:
    """A part after the push: its id, the ready version the notebook pins, whether this push uploaded it."""

    name: str
    id: str
    hash: str
    version: int
    uploaded: bool
    home: str = "dataset"  # where the part lives on Kaggle: a "dataset" or a "model" variation


def push_part(
    cfg: BundleConfig, kaggle: Kaggle, state: RemoteState, part: Part, *, interval: float, timeout_s: float,
    console: Console,
) -> PartResult:
    """Steps 1 and 2 for one part: uploaded when its hash changed, then waited for and checked."""
    if part.home == "model":
        return _push_model_part(cfg, kaggle, state, part, console=console)
    ref = part.id
    label = "bundle" if part.name == "bundle" else f"part {part.name}"
    recorded = state.part(part.name)
    same = recorded.get("hash") == part.hash and recorded.get("id") == ref
    if same and isinstance(recorded.get("version"), int):
        console.print(f"dataset {ref}: {label} {part.hash[:12]} unchanged since v{recorded['version']}; not uploaded")
        return PartResult(part.name, ref, part.hash, int(recorded["version"]), False)
    uploaded = False
    if same:
        console.print(f"dataset {ref}: {label} {part.hash[:12]} already uploaded; waiting for it to be ready")
    else:
        current = kaggle.dataset_status(ref)
        if current not in (None, *DATASET_ENDED):
            console.print(f"dataset {ref}: an earlier version is still {current}; Kaggle refuses a second upload")
            current = _wait_ended(ref, kaggle, interval, timeout_s, console)
        _upload(cfg, kaggle, part, current, interval=interval, timeout_s=timeout_s, console=console)
        uploaded = True
        recorded.clear()
        recorded.update(id=ref, hash=part.hash, version=None, uploaded_at=_now())
        state.save()
    _wait_ready(ref, kaggle, interval, timeout_s, console)
    version = kaggle.dataset_version_number(ref)
    _check_uploaded(part, version, kaggle, state)
    recorded.update(version=version, ready_at=_now())
    state.save()
    console.print(f"[green]dataset[/] {ref} v{version} ready")
    return PartResult(part.name, ref, part.hash, version, uploaded)


def _push_model_part(
    cfg: BundleConfig, kaggle: Kaggle, state: RemoteState, part: Part, *, console: Console
) -> PartResult:
    """The weights as a Kaggle Model variation: the model created when missing, the variation created
    (version 1) or given a new version when the part's hash changed; its file list then checked."""
    handle = part.id
    owner, model = handle.split("/")[:2]
    recorded = state.part(part.name)
    if recorded.get("hash") == part.hash and recorded.get("id") == handle and isinstance(recorded.get("version"), int):
        since = recorded["version"]
        console.print(f"model {handle}: part {part.name} {part.hash[:12]} unchanged since v{since}; not uploaded")
        return PartResult(part.name, handle, part.hash, int(recorded["version"]), False, "model")
    me = kaggle.username
    if me and owner != me:
        raise RemoteError(
            f"dataset.weights_model {handle!r}: the model's owner {owner!r} is not the account pushing ({me!r}); "
            f"a model owned by someone else cannot take a new version: use '{me}/{model}/...' in bundle.toml"
        )
    if kaggle.model_owner(f"{owner}/{model}") is None:
        console.print(f"model {owner}/{model}: creating it ({'private' if cfg.dataset.private else 'public'})")
        kaggle.create_model(part.model_card)
    before = kaggle.model_version(handle)
    folder = shown_path(part.folder)
    with spinner(console, f"uploading {folder} to model {handle}: {len(part.files)} files, {part.size / 1e6:,.1f} MB"):
        try:
            if before is None:
                console.print(f"model {handle}: creating the variation from {folder}")
                kaggle.create_model_variation(part.folder)
            else:
                message = version_message(cfg, part.hash, part.name)
                console.print(f"model {handle}: new version from {escape(str(folder))}: {escape(message)}")
                kaggle.version_model_variation(handle, part.folder, message)
        except KaggleHTTPError as e:
            if e.status == 400 and before is None:
                raise RemoteError(
                    f"{e} (is dataset.model_license = {cfg.dataset.model_license!r} a licence name Kaggle knows?)"
                ) from None
            raise
    version = kaggle.model_version(handle)
    if version is None or version == before:
        raise RemoteError(f"model {handle}: Kaggle reports no new version after the upload; see the model's page")
    recorded.clear()
    recorded.update(id=handle, hash=part.hash, version=None, uploaded_at=_now())
    state.save()
    problems = compare_files(part.files, kaggle.model_files(handle, version))
    if problems:
        recorded.clear()
        state.save()
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise RemoteError(
            f"model {handle} v{version} on Kaggle is not what was uploaded ({shown}); "
            "the upload was partial: run `bundler push` again to upload a new version"
        )
    recorded.update(version=version, ready_at=_now())
    state.save()
    console.print(f"[green]model[/] {handle} v{version} ready")
    return PartResult(part.name, handle, part.hash, version, True, "model")


def push_dataset(
    cfg: BundleConfig, kaggle: Kaggle, state: RemoteState, *, interval: float, timeout_s: float, console: Console
) -> tuple[str, list[PartResult]]:
    """(bundle hash, each part after steps 1 and 2)."""
    manifest = read_manifest(cfg.dataset.out, cfg.name)
    check_folder(cfg, manifest)
    try:
        parts = bundle_parts(cfg, manifest)
    except BundlerError as e:
        raise RemoteError(str(e)) from None
    results = [
        push_part(cfg, kaggle, state, part, interval=interval, timeout_s=timeout_s, console=console) for part in parts
    ]
    return str(manifest["hash"]), results


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _fresh_notebook(cfg: BundleConfig, console: Console) -> None:
    """Re-render when the notebook on disk is not the one this bundle, bundle.toml and kernel_src make."""
    from bundler.notebook.render import build_notebook, built_manifest, notebook_bytes, render_notebook

    path = cfg.kernel.notebook
    expected = notebook_bytes(build_notebook(cfg, built_manifest(cfg)))
    if path.is_file() and path.read_bytes() == expected:
        return
    state = "stale" if path.is_file() else "missing"
    rendered = render_notebook(cfg, console=Console(file=io.StringIO()))  # its "push it with" hint is ours to do
    console.print(f"notebook {escape(shown_path(path))} was {state}: rendered for bundle {rendered.bundle_hash[:12]}")


def _check_kept(cfg: BundleConfig, kaggle: Kaggle, version: int, console: Console) -> None:
    """Read back what Kaggle kept: internet must be off; another machine shape than asked is said."""
    try:
        kept = kaggle.kernel_settings(cfg.kernel.id)
    except RemoteError as e:  # the push itself went through: say what could not be checked
        console.print(
            f"[yellow]warning:[/] notebook {cfg.kernel.id} v{version}: its settings could not be read back "
            f"({escape(str(e))}); check on Kaggle that internet is off"
        )
        return
    if kept["enable_internet"] is not False:
        raise RemoteError(
            f"notebook {cfg.kernel.id} v{version}: Kaggle reports internet "
            f"{'ON' if kept['enable_internet'] else 'unknown'} although kernel-metadata.json says false; a code "
            "competition refuses it: turn internet off in the notebook's settings on Kaggle, then push again"
        )
    shape = kept["machine_shape"]
    if shape and shape != cfg.kernel.machine_shape:
        console.print(
            f"[yellow]warning:[/] notebook {cfg.kernel.id} v{version} runs on {shape}, "
            f"not the {cfg.kernel.machine_shape} asked for"
        )


def _invalid_sources(invalid: dict[str, list[str]]) -> str:
    return "; ".join(f"{kind} sources {sources}" for kind, sources in invalid.items())


def push(
    cfg: BundleConfig,
    *,
    console: Console,
    wait: bool = False,
    no_run: bool = False,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    kaggle: Kaggle | None = None,
    rerun: bool = False,
) -> PushResult:
    """Steps 1-5 of the module doc; `rerun` pushes the notebook even when it is unchanged."""
    state = load_state(cfg)
    interval = poll_interval(poll_s, DEFAULT_POLL_S)
    kaggle = kaggle or connect(say=lambda line: console.print(escape(line)))
    bundle_hash, parts = push_dataset(
        cfg,
        kaggle,
        state,
        interval=interval,
        timeout_s=timeout_s if timeout_s is not None else DEFAULT_DATASET_TIMEOUT_S,
        console=console,
    )
    _fresh_notebook(cfg, console)
    metadata = write_metadata(cfg, pins={p.id: p.version for p in parts})  # a model's handle pins model_sources
    meta: dict[str, Any] = read_existing(metadata)
    check_metadata(meta, metadata)
    pinned = ", ".join(f"{p.home} {p.id}/{p.version}" for p in parts)
    console.print(f"kernel-metadata.json: {pinned}, internet off, image pinned")
    fingerprint = hashlib.sha256(cfg.kernel.notebook.read_bytes() + b"\0" + metadata.read_bytes()).hexdigest()
    last = state.last_kernel_version
    if not rerun and last is not None and state.kernel(last).get("fingerprint") == fingerprint:
        console.print(
            f"notebook {cfg.kernel.id}: unchanged since v{last} (notebook, metadata and sources); not pushed, "
            "so no GPU quota is spent; `bundler push --rerun` pushes it anyway"
        )
        url = str(state.kernel(last).get("url") or "")
        return PushResult(bundle_hash, tuple(parts), last, url, None, kernel_pushed=False)
    with spinner(console, f"pushing notebook {cfg.kernel.id}"):
        response = kaggle.push_kernel(metadata.parent, no_run=no_run)
    if response.error:
        raise RemoteError(f"notebook {cfg.kernel.id}: Kaggle refused the push ({response.error})")
    if response.version is not None:
        state.last_kernel_version = response.version
        state.kernel(response.version).update(
            pushed_at=_now(),
            bundle_hash=bundle_hash,
            dataset_version=parts[-1].version,  # the part carrying bundle.json
            parts={p.name: p.version for p in parts},
            status="saved" if no_run else "queued",
            url=response.url,
            fingerprint=fingerprint,
        )
        state.save()
    if response.invalid:
        ours = any(s.startswith(tuple(p.id for p in parts)) for s in response.invalid.get("dataset", []))
        fix = (
            f"bundler's own dataset version is gone or not yours: delete {shown_path(state.path)} and push again"
            if ours
            else f"fix them in {shown_path(metadata)} (or bundle.toml) and push again"
        )
        raise RemoteError(
            f"notebook {cfg.kernel.id} v{response.version}: Kaggle dropped invalid "
            f"{_invalid_sources(response.invalid)}; {fix}"
        )
    if response.version is None:
        raise RemoteError(f"notebook {cfg.kernel.id}: Kaggle answered without a version number; see {response.url}")
    _check_kept(cfg, kaggle, response.version, console)
    action = "saved without running" if no_run else "pushed and running"
    console.print(f"[green]notebook[/] {cfg.kernel.id} v{response.version} {action}: {response.url}")
    run = None
    if wait and not no_run:
        run = kernel_status(
            cfg,
            console=console,
            version=response.version,
            wait=True,
            poll_s=interval,
            timeout_s=timeout_s,
            kaggle=kaggle,
        )
    elif not no_run:
        console.print(f"follow it with: [bold]bundler status --wait[/] (v{response.version})")
    return PushResult(bundle_hash, tuple(parts), response.version, response.url, run)
