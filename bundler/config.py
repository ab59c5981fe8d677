"""`bundle.toml` -> typed, frozen, validated objects. Every error names the key and the fix.

Relative paths in `bundle.toml` are resolved against the folder that holds it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, overload

from bundler.display import shown_path
from bundler.errors import ConfigError
from kernel_src.errors import SpecError
from kernel_src.layout import SubmissionSpec
from kernel_src.spec import CLS_KINDS, PREPROCESS_SUFFIX, RENAMED_SETTINGS, SEG_KINDS, InferenceSpec, ModelSpec

DEFAULT_CONFIG = Path("bundle.toml")
# The one home of these patterns (the wheels' target reads PYTHON_VERSION from here).
SLUG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9-]*$")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # bundle.name and each model's name (fullmatch)
PYTHON_VERSION = re.compile(r"3\.\d+")  # target.python, e.g. "3.12" (fullmatch)
# The one home of the dry-run's runtime names (`bundler.dryrun.runtime` makes them).
RUNTIME_IMAGE = "image"  # the notebook run in a twin of the Kaggle image
RUNTIME_LOCAL = "local"  # the notebook run in the Python bundler runs from
DRYRUN_RUNTIMES = (RUNTIME_IMAGE, RUNTIME_LOCAL)  # dryrun.runtime, `bundler dry-run --runtime`


@dataclass(frozen=True)
class ModelEntry:
    """A model as the user declares it: where their checkpoint is, and its kernel spec."""

    role: str  # "classifier" | "segmenter"
    checkpoint: Path  # the user's file: state dict, training checkpoint or TorchScript
    fp16: bool  # store the weights as float16 in the bundle
    spec: ModelSpec  # `spec.file` is its file inside the (flat) bundle folder: <name>.<ext>
    checkpoint_key: str = ""  # the checkpoint's key whose tensors ship (e.g. "model_ema"); "": found by the build
    preprocess: Path | None = None  # the user's albumentations pipeline file (A.save), translated by the build


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
    baseline: str = "kaggle-2026-08-12"  # a name shipped under bundler/build/wheels/baselines/, or a path
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
    runtime: str | None = None  # "image" (a twin of the Kaggle image) | "local"; None: image where one can be made


@dataclass(frozen=True)
class MachineConfig:
    """The target machine's limits the dry-run holds a run to (GB = 10^9 bytes; the low end of what
    Kaggle reports: a run over any of them is "Notebook Exceeded Allowed Compute", a zero)."""

    ram_gb: float = 29.0  # RAM of the notebook's machine (Kaggle reports 29-32 GB)
    gpu_memory_gb: float = 15.0  # usable memory of EACH GPU (a T4 has 16 GB, about 15 usable)
    working_disk_gb: float = 20.0  # what /kaggle/working keeps


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
    machine: MachineConfig = MachineConfig()
    source: str = DEFAULT_CONFIG.name  # the file read, as shown to the user: errors name it, not "bundle.toml"


_Scalar = TypeVar("_Scalar", int, float, bool, str)
_WANTED: dict[type, str] = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_FOUND = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"))


def _found(value: Any) -> str:
    """What a TOML value is, in the words of the TOML spec (a boolean is not reported as an integer)."""
    for type_, words in _FOUND:
        if isinstance(value, type_):
            return words
    return "a table" if isinstance(value, Mapping) else f"a {type(value).__name__}"


def _wrong_type(key: str, value: Any, wanted: str) -> ConfigError:
    shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ConfigError(f"{key} = {shown} must be {wanted} (found {_found(value)})")


@overload
def _get(section: str, table: Mapping[str, Any], key: str, type_: type[_Scalar], default: _Scalar) -> _Scalar: ...
@overload
def _get(section: str, table: Mapping[str, Any], key: str, type_: type[_Scalar], default: None) -> _Scalar | None: ...
def _get(section: str, table: Mapping[str, Any], key: str, type_: type[_Scalar], default: Any) -> Any:
    """`table[key]` if present, else `default`; a value of another type is refused naming `section.key`.

    Integers refuse floats and booleans (TOML's `true` is no count); numbers (`float`) take integers
    too; booleans refuse the strings "true"/"false"; strings refuse everything else (paths are strings).
    """
    if key not in table:
        return default
    value = table[key]
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise _wrong_type(f"{section}.{key}", value, _WANTED[type_])
    return value


def _get_strings(section: str, table: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """An array of strings (`requirements = ["pkg==1.0"]`); a bare string is refused, not read per character."""
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _wrong_type(f"{section}.{key}", value, 'an array of strings, e.g. ["a", "b"]')
    return tuple(value)


def _section(raw: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table (found {_found(value)})")
    unknown = set(value) - known
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown key {name}.{key}; known keys: {', '.join(sorted(known))}")
    return value


def _fields(cls: type) -> set[str]:
    return set(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _path(root: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


def _baseline(root: Path, value: str) -> str:
    """A shipped baseline's name stays a name; anything that looks like a path is resolved."""
    if "/" in value or "\\" in value or value.endswith(".txt"):
        return str(_path(root, value))
    return value


def _id(section: str, table: Mapping[str, Any], what: str) -> str:
    key, text = f"{section}.id", _get(section, table, "id", str, "")
    if not SLUG_ID.match(text):
        raise ConfigError(f"{key} = {text!r} must be 'owner/slug', the {what} on Kaggle")
    return text


def _models(raw: Mapping[str, Any], root: Path) -> tuple[ModelEntry, ...]:
    entries: list[ModelEntry] = []
    for role, table, kinds in (("classifier", "classifiers", CLS_KINDS), ("segmenter", "segmenters", SEG_KINDS)):
        items = raw.get(table, [])
        if not isinstance(items, list):
            raise ConfigError(f"{table} must be an array of tables ([[{table}]])")
        for i, item in enumerate(items):
            key = f"{table}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{key} must be a table ([[{table}]]) (found {_found(item)})")
            data = dict(item)
            checkpoint = _get(key, data, "checkpoint", str, "")
            if not checkpoint:
                raise ConfigError(f"{key}.checkpoint is required: the path of the trained weights")
            fp16 = _get(key, data, "fp16", bool, False)
            del data["checkpoint"]
            data.pop("fp16", None)
            checkpoint_key = _get(key, data, "checkpoint_key", str, "")
            preprocess = _get(key, data, "preprocess", str, "")
            data.pop("checkpoint_key", None)
            data.pop("preprocess", None)
            if preprocess:  # the pipeline decides size and normalisation: two sources would disagree
                for clash in ("mean", "std", "input_size"):
                    if clash in data:
                        raise ConfigError(
                            f"{key}.{clash} is set by {key}.preprocess (the albumentations pipeline); remove one"
                        )
                data["preprocess"] = f"{_get(key, data, 'name', str, '')}{PREPROCESS_SUFFIX}"
            if "file" in data:
                raise ConfigError(f"{key}.file is set by the build; give checkpoint instead")
            name = _get(key, data, "name", str, "")
            if not NAME.fullmatch(name):
                raise ConfigError(f"{key}.name = {name!r}: give each model a name of letters, digits, '_', '.', '-'")
            ext = "pt" if data.get("kind") == "torchscript" else "safetensors"
            data["file"] = f"{name}.{ext}"
            try:
                spec = ModelSpec.from_dict(data, key, kinds)
            except SpecError as e:
                raise ConfigError(f"{e.key}: {e.message}") from None
            entries.append(
                ModelEntry(
                    role=role,
                    checkpoint=_path(root, checkpoint),
                    fp16=fp16,
                    spec=spec,
                    checkpoint_key=checkpoint_key,
                    preprocess=_path(root, preprocess) if preprocess else None,
                )
            )
    return tuple(entries)


def load_config(path: Path = DEFAULT_CONFIG) -> BundleConfig:
    """Read and validate `bundle.toml`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; pass --config PATH naming the bundle.toml file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run from the project root or pass --config PATH")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, so not a bundle.toml; pass --config PATH naming one") from None
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot be read ({e.strerror or e}); pass --config PATH naming a readable file"
        ) from None
    return parse_config(raw, path.resolve().parent, shown_path(path))


def parse_config(raw: Mapping[str, Any], root: Path, source: str = DEFAULT_CONFIG.name) -> BundleConfig:
    """Validate `raw` (bundle.toml's data); every error is one line starting with `source`, the file read."""
    try:
        return replace(_parse(raw, root), source=source)
    except ConfigError as e:
        # messages are written without the file; one written with the default name is renamed, not doubled
        raise ConfigError(f"{source}: {str(e).removeprefix(DEFAULT_CONFIG.name + ': ')}") from None


def _parse(raw: Mapping[str, Any], root: Path) -> BundleConfig:
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
        "submission",
        "machine",
    }
    unknown = set(raw) - top_known
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; known: {', '.join(sorted(top_known))}")

    bundle = _section(raw, "bundle", {"name"})
    name = _get("bundle", bundle, "name", str, "")
    if not NAME.fullmatch(name):
        raise ConfigError(f"bundle.name = {name!r}: a short name of letters, digits, '_', '.', '-' is required")

    comp_raw = _section(raw, "competition", _fields(CompetitionConfig))
    d_comp = CompetitionConfig
    competition = CompetitionConfig(
        slug=_get("competition", comp_raw, "slug", str, d_comp.slug),
        sample_submission=_get("competition", comp_raw, "sample_submission", str, d_comp.sample_submission),
        test_images=_get("competition", comp_raw, "test_images", str, d_comp.test_images),
        hidden_test_images=_get("competition", comp_raw, "hidden_test_images", int, d_comp.hidden_test_images),
        time_limit_s=_get("competition", comp_raw, "time_limit_s", float, d_comp.time_limit_s),
    )
    if competition.hidden_test_images < 1:
        raise ConfigError("competition.hidden_test_images must be a positive count of images")
    if competition.time_limit_s <= 0:
        raise ConfigError("competition.time_limit_s must be positive seconds")

    ds = _section(raw, "dataset", _fields(DatasetConfig))
    dataset = DatasetConfig(
        id=_id("dataset", ds, "dataset that carries the wheels and weights"),
        title=_get("dataset", ds, "title", str, ""),
        license=_get("dataset", ds, "license", str, "CC0-1.0"),
        private=_get("dataset", ds, "private", bool, True),
        out=_path(root, _get("dataset", ds, "out", str, "build/dataset")),
    )
    if not 6 <= len(dataset.title) <= 50:
        raise ConfigError(f"dataset.title = {dataset.title!r} must be 6 to 50 characters (Kaggle's rule)")
    if not 6 <= len(dataset.id.split("/")[1]) <= 50:
        raise ConfigError(f"dataset.id slug {dataset.id.split('/')[1]!r} must be 6 to 50 characters (Kaggle's rule)")

    tg = _section(raw, "target", _fields(TargetConfig))
    defaults = TargetConfig()
    target = TargetConfig(
        python=_get("target", tg, "python", str, defaults.python),
        platforms=_get_strings("target", tg, "platforms", defaults.platforms),
        baseline=_baseline(root, _get("target", tg, "baseline", str, defaults.baseline)),
        requirements=_get_strings("target", tg, "requirements", defaults.requirements),
        find_links=tuple(_path(root, p) for p in _get_strings("target", tg, "find_links", ())),
        wheelhouse=_path(root, _get("target", tg, "wheelhouse", str, "wheels")),
        no_index=_get("target", tg, "no_index", bool, False),
    )
    if not PYTHON_VERSION.fullmatch(target.python):
        raise ConfigError(f"target.python = {target.python!r} must look like '3.12'")

    kn = _section(raw, "kernel", _fields(KernelConfig))
    kernel = KernelConfig(
        id=_id("kernel", kn, "notebook"),
        title=_get("kernel", kn, "title", str, ""),
        notebook=_path(root, _get("kernel", kn, "notebook", str, "build/inference.ipynb")),
        metadata=_path(root, _get("kernel", kn, "metadata", str, "kernel-metadata.json")),
        enable_gpu=_get("kernel", kn, "enable_gpu", bool, True),
        machine_shape=_get("kernel", kn, "machine_shape", str, "NvidiaTeslaT4"),
    )
    if len(kernel.title) < 5:
        raise ConfigError(f"kernel.title = {kernel.title!r} must be at least 5 characters (Kaggle's rule)")

    models = _models(raw, root)
    # renamed keys pass through so InferenceSpec.from_dict can name what replaces them
    inference_keys = set(InferenceSpec.__dataclass_fields__) - {"classifiers", "segmenters", "submission"}
    inf = dict(_section(raw, "inference", inference_keys | set(RENAMED_SETTINGS)))
    # [submission] (kernel_src.layout): the file's shape; its rle_order is inference.rle_order
    sub = dict(_section(raw, "submission", set(SubmissionSpec.__dataclass_fields__) | {"rle_order"}))
    if "rle_order" in sub:
        order = sub.pop("rle_order")
        if "rle_order" in inf and inf["rle_order"] != order:
            raise ConfigError(
                f"submission.rle_order = {order!r} and inference.rle_order = {inf['rle_order']!r} disagree; keep one"
            )
        inf["rle_order"] = order
    inf["submission"] = sub
    inf.setdefault("time_budget_s", competition.time_limit_s - 300.0)
    inf["classifiers"] = [m.spec.__dict__ for m in models if m.role == "classifier"]
    inf["segmenters"] = [m.spec.__dict__ for m in models if m.role == "segmenter"]
    try:
        inference = InferenceSpec.from_dict(inf)
    except SpecError as e:
        prefix = "" if e.key.startswith(("classifiers", "segmenters", "submission")) else "inference."
        raise ConfigError(f"{prefix}{e.key}: {e.message}") from None

    dr = _section(raw, "dryrun", _fields(DryRunConfig))
    opt = {
        k: _path(root, v)
        for k in ("test_dir", "sample_submission", "labels", "calibration_profile")
        if (v := _get("dryrun", dr, k, str, ""))
    }
    dryrun = DryRunConfig(
        out=_path(root, _get("dryrun", dr, "out", str, "build/dryrun")),
        time_budget_s=_get("dryrun", dr, "time_budget_s", float, None),
        calibration=_get("dryrun", dr, "calibration", float, None),
        runtime=_get("dryrun", dr, "runtime", str, None),
        **opt,
    )
    if dryrun.runtime is not None and dryrun.runtime not in DRYRUN_RUNTIMES:
        raise ConfigError(
            f"dryrun.runtime = {dryrun.runtime!r} must be one of {', '.join(DRYRUN_RUNTIMES)} "
            "(image: a twin of the Kaggle image; local: this Python, quick)"
        )
    if dryrun.calibration is not None and dryrun.calibration <= 0:
        raise ConfigError("dryrun.calibration must be a positive factor (Kaggle seconds per local second)")

    mc = _section(raw, "machine", _fields(MachineConfig))
    machine = MachineConfig(**{k: _get("machine", mc, k, float, getattr(MachineConfig, k)) for k in mc})
    for key in _fields(MachineConfig):
        if not getattr(machine, key) > 0:
            raise ConfigError(f"machine.{key} = {getattr(machine, key)!r} must be a positive number of GB")

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
        machine=machine,
    )
