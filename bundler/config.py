"""`bundle.toml` -> typed, frozen, validated objects. Every error names the key and the fix.

Relative paths in `bundle.toml` are resolved against the folder that holds it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.errors import ConfigError
from kernel_src.errors import SpecError
from kernel_src.spec import CLS_KINDS, RENAMED_SETTINGS, SEG_KINDS, InferenceSpec, ModelSpec

DEFAULT_CONFIG = Path("bundle.toml")
# The one home of these patterns (the wheels' target reads PYTHON_VERSION from here).
SLUG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9-]*$")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # bundle.name and each model's name (fullmatch)
PYTHON_VERSION = re.compile(r"3\.\d+")  # target.python, e.g. "3.12" (fullmatch)


@dataclass(frozen=True)
class ModelEntry:
    """A model as the user declares it: where their checkpoint is, and its kernel spec."""

    role: str  # "classifier" | "segmenter"
    checkpoint: Path  # the user's file: state dict, training checkpoint or TorchScript
    fp16: bool  # store the weights as float16 in the bundle
    spec: ModelSpec  # `spec.file` is its file inside the (flat) bundle folder: <name>.<ext>


@dataclass(frozen=True)
class CompetitionConfig:
    slug: str = "severstal-steel-defect-detection"
    sample_submission: str = "sample_submission.csv"  # file name looked for under /kaggle/input
    test_images: str = "test_images"  # folder name looked for under /kaggle/input
    hidden_test_images: int = 5506  # size of the scored rerun's test set, for the projection
    time_limit_s: float = 3600.0  # the competition's notebook limit


@dataclass(frozen=True)
class DatasetConfig:
    id: str  # "owner/slug" of the Kaggle dataset that carries wheels and weights
    title: str
    license: str = "CC0-1.0"
    private: bool = True
    out: Path = Path("build/dataset")


@dataclass(frozen=True)
class TargetConfig:
    python: str = "3.12"
    platforms: tuple[str, ...] = (
        "manylinux_2_35_x86_64",
        "manylinux_2_34_x86_64",
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
        "manylinux_2_26_x86_64",
        "manylinux_2_24_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "linux_x86_64",
    )
    baseline: str = "kaggle-2026-08"  # a name shipped under bundler/build/wheels/baselines/, or a path
    requirements: tuple[str, ...] = ("segmentation-models-pytorch",)
    find_links: tuple[Path, ...] = ()  # local wheelhouses searched before the index
    wheelhouse: Path = Path("wheels")  # the local wheelhouse: cached downloads, and wheels you drop there
    no_index: bool = False  # True: never reach an index (local wheelhouses only)


@dataclass(frozen=True)
class KernelConfig:
    id: str
    title: str
    notebook: Path = Path("build/inference.ipynb")
    metadata: Path = Path("kernel-metadata.json")
    enable_gpu: bool = True
    machine_shape: str = "NvidiaTeslaT4"


@dataclass(frozen=True)
class DryRunConfig:
    test_dir: Path | None = None
    sample_submission: Path | None = None
    labels: Path | None = None
    out: Path = Path("build/dryrun")
    time_budget_s: float | None = None  # None: the inference budget
    calibration: float | None = None  # seconds on Kaggle per second here (e.g. 0.1 on a T4)
    calibration_profile: Path | None = None  # a profile.json from a real Kaggle run


@dataclass(frozen=True)
class BundleConfig:
    root: Path  # folder holding bundle.toml; relative paths are resolved against it
    name: str
    competition: CompetitionConfig
    dataset: DatasetConfig
    target: TargetConfig
    kernel: KernelConfig
    models: tuple[ModelEntry, ...]
    inference: InferenceSpec
    dryrun: DryRunConfig


def _section(raw: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"bundle.toml: [{name}] must be a table")
    unknown = set(value) - known
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"bundle.toml: unknown key {name}.{key}; known keys: {', '.join(sorted(known))}")
    return value


def _fields(cls: type) -> set[str]:
    return set(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _path(root: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else root / p


def _baseline(root: Path, value: str) -> str:
    """A shipped baseline's name stays a name; anything that looks like a path is resolved."""
    if "/" in value or "\\" in value or value.endswith(".txt"):
        return str(_path(root, value))
    return value


def _id(key: str, value: Any, what: str) -> str:
    text = str(value or "")
    if not SLUG_ID.match(text):
        raise ConfigError(f"bundle.toml: {key} = {text!r} must be 'owner/slug', the {what} on Kaggle")
    return text


def _models(raw: Mapping[str, Any], root: Path) -> tuple[ModelEntry, ...]:
    entries: list[ModelEntry] = []
    for role, table, kinds in (("classifier", "classifiers", CLS_KINDS), ("segmenter", "segmenters", SEG_KINDS)):
        items = raw.get(table, [])
        if not isinstance(items, list):
            raise ConfigError(f"bundle.toml: {table} must be an array of tables ([[{table}]])")
        for i, item in enumerate(items):
            key = f"{table}[{i}]"
            data = dict(item)
            checkpoint = data.pop("checkpoint", None)
            if not checkpoint:
                raise ConfigError(f"bundle.toml: {key}.checkpoint is required: the path of the trained weights")
            fp16 = bool(data.pop("fp16", False))
            if "file" in data:
                raise ConfigError(f"bundle.toml: {key}.file is set by the build; give checkpoint instead")
            name = str(data.get("name", ""))
            if not NAME.fullmatch(name):
                raise ConfigError(
                    f"bundle.toml: {key}.name = {name!r}: give each model a name of letters, digits, '_', '.', '-'"
                )
            ext = "pt" if data.get("kind") == "torchscript" else "safetensors"
            data["file"] = f"{name}.{ext}"
            try:
                spec = ModelSpec.from_dict(data, key, kinds)
            except SpecError as e:
                raise ConfigError(f"bundle.toml: {e.key}: {e.message}") from None
            entries.append(ModelEntry(role=role, checkpoint=_path(root, checkpoint), fp16=fp16, spec=spec))
    return tuple(entries)


def load_config(path: Path = DEFAULT_CONFIG) -> BundleConfig:
    """Read and validate `bundle.toml`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run from the project root or pass --config PATH")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return parse_config(raw, path.resolve().parent)


def parse_config(raw: Mapping[str, Any], root: Path) -> BundleConfig:
    top_known = {
        "bundle",
        "competition",
        "dataset",
        "target",
        "kernel",
        "inference",
        "classifiers",
        "segmenters",
        "dryrun",
    }
    unknown = set(raw) - top_known
    if unknown:
        raise ConfigError(f"bundle.toml: unknown section [{sorted(unknown)[0]}]; known: {', '.join(sorted(top_known))}")

    bundle = _section(raw, "bundle", {"name"})
    name = str(bundle.get("name", ""))
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"bundle.toml: bundle.name = {name!r}: a short name of letters, digits, '_', '.', '-' is required"
        )

    comp_raw = _section(raw, "competition", _fields(CompetitionConfig))
    competition = CompetitionConfig(**comp_raw)
    if competition.hidden_test_images < 1:
        raise ConfigError("bundle.toml: competition.hidden_test_images must be a positive count of images")
    if competition.time_limit_s <= 0:
        raise ConfigError("bundle.toml: competition.time_limit_s must be positive seconds")

    ds = _section(raw, "dataset", _fields(DatasetConfig))
    dataset = DatasetConfig(
        id=_id("dataset.id", ds.get("id"), "dataset that carries the wheels and weights"),
        title=str(ds.get("title", "")),
        license=str(ds.get("license", "CC0-1.0")),
        private=bool(ds.get("private", True)),
        out=_path(root, ds.get("out", "build/dataset")),
    )
    if not 6 <= len(dataset.title) <= 50:
        raise ConfigError(f"bundle.toml: dataset.title = {dataset.title!r} must be 6 to 50 characters (Kaggle's rule)")
    if not 6 <= len(dataset.id.split("/")[1]) <= 50:
        raise ConfigError(
            f"bundle.toml: dataset.id slug {dataset.id.split('/')[1]!r} must be 6 to 50 characters (Kaggle's rule)"
        )

    tg = _section(raw, "target", _fields(TargetConfig))
    defaults = TargetConfig()
    target = TargetConfig(
        python=str(tg.get("python", defaults.python)),
        platforms=tuple(str(p) for p in tg.get("platforms", defaults.platforms)),
        baseline=_baseline(root, str(tg.get("baseline", defaults.baseline))),
        requirements=tuple(str(r) for r in tg.get("requirements", defaults.requirements)),
        find_links=tuple(_path(root, p) for p in tg.get("find_links", ())),
        wheelhouse=_path(root, tg.get("wheelhouse", "wheels")),
        no_index=bool(tg.get("no_index", False)),
    )
    if not PYTHON_VERSION.fullmatch(target.python):
        raise ConfigError(f"bundle.toml: target.python = {target.python!r} must look like '3.12'")

    kn = _section(raw, "kernel", _fields(KernelConfig))
    kernel = KernelConfig(
        id=_id("kernel.id", kn.get("id"), "notebook"),
        title=str(kn.get("title", "")),
        notebook=_path(root, kn.get("notebook", "build/inference.ipynb")),
        metadata=_path(root, kn.get("metadata", "kernel-metadata.json")),
        enable_gpu=bool(kn.get("enable_gpu", True)),
        machine_shape=str(kn.get("machine_shape", "NvidiaTeslaT4")),
    )
    if len(kernel.title) < 5:
        raise ConfigError(f"bundle.toml: kernel.title = {kernel.title!r} must be at least 5 characters (Kaggle's rule)")

    models = _models(raw, root)
    # renamed keys pass through so InferenceSpec.from_dict can name what replaces them
    inference_keys = set(InferenceSpec.__dataclass_fields__) - {"classifiers", "segmenters"} | set(RENAMED_SETTINGS)
    inf = dict(_section(raw, "inference", inference_keys))
    inf.setdefault("time_budget_s", competition.time_limit_s - 300.0)
    inf["classifiers"] = [m.spec.__dict__ for m in models if m.role == "classifier"]
    inf["segmenters"] = [m.spec.__dict__ for m in models if m.role == "segmenter"]
    try:
        inference = InferenceSpec.from_dict(inf)
    except SpecError as e:
        prefix = "" if e.key.startswith(("classifiers", "segmenters")) else "inference."
        raise ConfigError(f"bundle.toml: {prefix}{e.key}: {e.message}") from None

    dr = _section(raw, "dryrun", _fields(DryRunConfig))
    opt = {
        k: _path(root, dr[k]) for k in ("test_dir", "sample_submission", "labels", "calibration_profile") if dr.get(k)
    }
    dryrun = DryRunConfig(
        out=_path(root, dr.get("out", "build/dryrun")),
        time_budget_s=float(dr["time_budget_s"]) if "time_budget_s" in dr else None,
        calibration=float(dr["calibration"]) if "calibration" in dr else None,
        **opt,
    )
    if dryrun.calibration is not None and dryrun.calibration <= 0:
        raise ConfigError("bundle.toml: dryrun.calibration must be a positive factor (Kaggle seconds per local second)")

    return BundleConfig(
        root=root,
        name=name,
        competition=competition,
        dataset=dataset,
        target=target,
        kernel=kernel,
        models=models,
        inference=inference,
        dryrun=dryrun,
    )
