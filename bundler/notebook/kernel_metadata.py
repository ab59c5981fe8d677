"""kernel-metadata.json: written or updated from bundle.toml, validated like the Kaggle CLI does.

`kaggle kernels push -p DIR` reads `DIR/kernel-metadata.json`. The fields bundler manages are
(re)written on every render; every other field a user added by hand is kept, and the user's
extra `dataset_sources` / `competition_sources` are merged after bundler's own. `is_private`
is written as true unless the file already says otherwise. `enable_internet` is always written
as false: the CLI defaults it to true, and a code competition refuses a notebook with internet.
`docker_image_pinning_type` is "original" unless the file says otherwise: the notebook keeps running
on the image it first ran on, the one the baseline describes. `bundler push` pins bundler's datasets
(the bundle's, and the wheels' when `dataset.wheels_id` ships them apart) to the versions it waited
for (`owner/slug/N`); a re-render keeps those pins.

`validate_metadata` applies the checks the Kaggle CLI makes before it sends anything
(kaggle-api `kernels_push`), so a push never fails on the metadata; like the CLI's `get_bool`, it
takes the strings "true"/"false" for booleans (what `kaggle kernels init` writes). It is stricter
than the CLI where the CLI's leniency surprises: `enable_internet` must be present and false (the
CLI turns internet on when it is absent), a retired `machine_shape` (NvidiaTeslaP100) is refused
naming its replacement (the CLI only warns, and Kaggle runs another machine), and the title must
slugify to the id's slug (the CLI only warns, and Kaggle may rename the notebook or conflict).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bundler.config import KERNEL_NAME_MIN, BundleConfig, machine_shape_problem
from bundler.errors import MetadataError

LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
BOOLEAN_FIELDS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
BOOLEAN_STRINGS = ("true", "false")


def _code_file(cfg: BundleConfig) -> str:
    """The notebook's path relative to the metadata's folder, as `kaggle kernels push -p` reads it."""
    return Path(os.path.relpath(cfg.kernel.notebook.resolve(), cfg.kernel.metadata.resolve().parent)).as_posix()


def _union(ours: list[str], theirs: Any) -> list[str]:
    extra = [s for s in theirs if s not in ours] if isinstance(theirs, list) else []
    return [*ours, *extra]


def read_existing(path: Path) -> dict[str, Any]:
    """The current kernel-metadata.json, {} when there is none."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MetadataError(f"{path}: not valid JSON ({e}); fix or delete it and render again") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: must hold a JSON object; fix or delete it and render again")
    return data


def our_datasets(cfg: BundleConfig) -> list[str]:
    """bundler's own datasets: `dataset.id`, and `dataset.wheels_id` when the wheels are a part of their own;
    with the weights in a Kaggle Model (`dataset.weights_model`), only the dataset that holds the wheels."""
    if cfg.dataset.weights_model:
        return [cfg.dataset.wheels_id or cfg.dataset.id]
    return [cfg.dataset.id, *([cfg.dataset.wheels_id] if cfg.dataset.wheels_id else [])]


def _our_dataset(ref: str, sources: Any, version: int | None) -> str:
    """`owner/slug/N` when `version` is given or the file already pins `ref`, else `owner/slug`."""
    if version is not None:
        return f"{ref}/{version}"
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, str) and re.fullmatch(re.escape(ref) + r"/\d+", source):
            return source
    return ref


def _other_sources(cfg: BundleConfig, sources: Any) -> list[str]:
    """The user's own dataset sources: every entry but ours, pinned or not."""
    ours = re.compile("(" + "|".join(re.escape(r) for r in our_datasets(cfg)) + r")(/\d+)?")
    return [s for s in sources if not (isinstance(s, str) and ours.fullmatch(s))] if isinstance(sources, list) else []


def _model_sources(cfg: BundleConfig, sources: Any, pins: Mapping[str, int]) -> list[str]:
    """The user's model sources, after ours (`dataset.weights_model`) pinned: by `pins`, else as the file
    pins it already; unpinned it is left out, as Kaggle wants a version (`bundler push` adds it)."""
    theirs = [s for s in sources if isinstance(s, str)] if isinstance(sources, list) else []
    handle = cfg.dataset.weights_model
    if not handle:
        return theirs
    ours = re.compile(re.escape(handle) + r"/\d+")
    kept = next((s for s in theirs if ours.fullmatch(s)), None)
    pinned = f"{handle}/{pins[handle]}" if handle in pins else kept
    return [*([pinned] if pinned else []), *(s for s in theirs if not ours.fullmatch(s))]


def kernel_metadata(
    cfg: BundleConfig, existing: Mapping[str, Any] | None = None, *, pins: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The metadata for `cfg`: bundler's fields first (in a fixed order), then the user's others.

    Each of our datasets is pinned as `owner/slug/N` when `pins` gives its N (what `bundler push`
    does once version N is ready); a pin already in the file is kept by a re-render.
    """
    old = dict(existing or {})
    managed: dict[str, Any] = {
        "id": cfg.kernel.id,
        "title": cfg.kernel.title,
        "code_file": _code_file(cfg),
        "language": "python",
        "kernel_type": "notebook",
        "is_private": old.get("is_private", True),
        "enable_gpu": cfg.kernel.enable_gpu,
        "enable_internet": False,
        "machine_shape": cfg.kernel.machine_shape,
        "dataset_sources": _union(
            [_our_dataset(ref, old.get("dataset_sources"), (pins or {}).get(ref)) for ref in our_datasets(cfg)],
            _other_sources(cfg, old.get("dataset_sources")),
        ),
        "competition_sources": _union([cfg.competition.slug], old.get("competition_sources")),
        # the image the notebook was first run on (and the baseline describes) stays its image
        "docker_image_pinning_type": old.get("docker_image_pinning_type", "original"),
    }
    if cfg.dataset.weights_model:  # else the user's own model_sources, if any, are kept as they are
        managed["model_sources"] = _model_sources(cfg, old.get("model_sources"), pins or {})
    return {**managed, **{k: v for k, v in old.items() if k not in managed}}


def _slugify(text: str) -> str:
    """python-slugify's result for an ASCII title (what the CLI compares): quotes dropped, runs of others -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"['\"]+", "", text.lower())).strip("-")


def _check_sources(meta: Mapping[str, Any], field: str, pattern: str, form: str, problems: list[str]) -> None:
    value = meta.get(field, [])
    if not isinstance(value, list):
        problems.append(f"{field} must be a JSON list of {form} strings")
        return
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(pattern, item):
            problems.append(f"{field} entry {item!r} must look like {form}")


def validate_metadata(meta: Mapping[str, Any], folder: Path) -> list[str]:
    """Every violation of the Kaggle CLI's client-side rules, each naming the field and the fix."""
    problems: list[str] = []
    kernel_id = meta.get("id")
    if not kernel_id and not meta.get("id_no"):
        problems.append("id is missing: set kernel.id = 'owner/slug' in bundle.toml")
    elif kernel_id is not None:
        parts = str(kernel_id).split("/")
        if not isinstance(kernel_id, str) or len(parts) != 2 or not all(parts):
            problems.append(f"id {kernel_id!r} must be 'owner/slug' (kernel.id in bundle.toml)")
        elif len(parts[1]) < KERNEL_NAME_MIN:
            problems.append(
                f"id {kernel_id!r}: the slug must be at least {KERNEL_NAME_MIN} characters (kernel.id in bundle.toml)"
            )
    title = meta.get("title")
    if title is not None and (not isinstance(title, str) or len(title) < KERNEL_NAME_MIN):
        problems.append(f"title {title!r} must be at least {KERNEL_NAME_MIN} characters (kernel.title in bundle.toml)")
    code_file = meta.get("code_file")
    kernel_type = meta.get("kernel_type")
    if not code_file or not isinstance(code_file, str):
        problems.append("code_file is missing: it names the notebook, relative to the metadata's folder")
    elif not (folder / code_file).is_file():
        problems.append(f"code_file {code_file!r}: {folder / code_file} does not exist; run `bundler render-notebook`")
    elif kernel_type == "notebook":
        if not code_file.endswith(".ipynb"):
            problems.append(f"code_file {code_file!r} must be an .ipynb file for kernel_type 'notebook'")
        else:
            try:
                json.loads((folder / code_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                problems.append(f"code_file {code_file!r} is not notebook JSON ({e}); run `bundler render-notebook`")
    if meta.get("language") not in LANGUAGES:
        problems.append(f"language {meta.get('language')!r} must be one of {list(LANGUAGES)}")
    if kernel_type not in KERNEL_TYPES:
        problems.append(f"kernel_type {kernel_type!r} must be one of {list(KERNEL_TYPES)}")
    _check_sources(meta, "dataset_sources", r"[^/\s]+/[^/\s]+(/[^/\s]+)?", "'owner/slug[/version]'", problems)
    _check_sources(
        meta,
        "kernel_sources",
        rf"[^/\s]+/[^/\s]{{{KERNEL_NAME_MIN},}}",
        f"'owner/slug' (slug >= {KERNEL_NAME_MIN} characters)",
        problems,
    )
    _check_sources(
        meta,
        "model_sources",
        r"[^/\s]+/[^/\s]+/[^/\s]+/[^/\s]+/\d+",
        "'owner/model/framework/variation/version'",
        problems,
    )
    _check_sources(meta, "competition_sources", r"\S+", "a competition slug", problems)
    for field in BOOLEAN_FIELDS:
        # the CLI's get_bool also takes "true"/"false" strings (any case), which `kaggle kernels init` writes
        value = meta.get(field)
        if field in meta and not (
            isinstance(value, bool) or (isinstance(value, str) and value.lower() in BOOLEAN_STRINGS)
        ):
            problems.append(f'{field} = {meta[field]!r} must be true or false (a JSON boolean, or "true"/"false")')
    internet = meta.get("enable_internet")
    if "enable_internet" not in meta or internet is True or str(internet).lower() == "true":
        problems.append(
            f"enable_internet must be false (it is {internet!r}): a code competition refuses a notebook with "
            "internet, and the CLI turns it on when the field is absent"
        )
    shape = meta.get("machine_shape")
    if isinstance(shape, str) and machine_shape_problem(shape):
        problems.append(f"machine_shape {machine_shape_problem(shape)} (kernel.machine_shape in bundle.toml)")
    warning = title_warning(meta)
    if warning and not any(p.startswith(("id ", "title ")) for p in problems):  # a bad id or title: said once
        problems.append(warning)
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        problems.append(f"docker_image_pinning_type {pinning!r} must be one of {list(PINNING_TYPES)}")
    return problems


def check_metadata(meta: Mapping[str, Any], path: Path) -> None:
    """Raise MetadataError listing every violation in `meta` (to be written at `path`)."""
    problems = validate_metadata(meta, path.parent)
    if problems:
        raise MetadataError(f"{path}: " + "; ".join(problems))


def title_warning(meta: Mapping[str, Any]) -> str:
    """The CLI's warning when the title does not slugify to the id's slug ('' when it does)."""
    kernel_id, title = meta.get("id"), meta.get("title")
    if isinstance(kernel_id, str) and isinstance(title, str) and "/" in kernel_id:
        slug = kernel_id.split("/", 1)[1]
        if slug.lower() != _slugify(title):
            return (
                f"title {title!r} does not slugify to the id's slug {slug!r} (it gives {_slugify(title)!r}): the push "
                "would conflict or rename the notebook; make kernel.title in bundle.toml match the slug"
            )
    return ""


def write_metadata(cfg: BundleConfig, *, pins: Mapping[str, int] | None = None) -> Path:
    """Write or update kernel-metadata.json at `kernel.metadata`; validated before it is written.

    `pins`: {dataset id: version} of our datasets to pin in `dataset_sources` (`bundler push`).
    """
    path = cfg.kernel.metadata
    meta = kernel_metadata(cfg, read_existing(path), pins=pins)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_metadata(meta, path)
    text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path
