"""`bundle.toml` -> typed, frozen, validated objects. Every error names the key and the fix.

Each key is declared once, as a dataclass field: its default, its help and the rules its value
must meet sit with the field (`_key`; kernel_src.settings.setting for the kernel's `[inference]`,
`[submission]` and model settings). `_read` reads any table from those declarations, and
bundler.config_reference writes docs/config.md from them. Relative paths in `bundle.toml` are
resolved against the folder that holds it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from bundler.display import shown_path
from bundler.errors import ConfigError
from kernel_src.errors import SpecError
from kernel_src.inputs import InputSpec
from kernel_src.layout import SubmissionSpec, contradicted_rle_order
from kernel_src.model_kinds import MODEL_KINDS, kinds_for
from kernel_src.rows import RowSpec
from kernel_src.settings import found, missing_value, setting, settings, typed, wrong
from kernel_src.spec import PREPROCESS_SUFFIX, RENAMED_SETTINGS, InferenceSpec, ModelSpec
from kernel_src.tasks import TASKS, TaskSpec

DEFAULT_CONFIG = Path("bundle.toml")
# The one home of these patterns (the wheels' target reads PYTHON_VERSION from here).
SLUG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9-]*$")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # bundle.name and each model's name (fullmatch)
PYTHON_VERSION = re.compile(r"3\.\d+")  # target.python, e.g. "3.12" (fullmatch)
# The one home of the dry-run's runtime names (`bundler.dryrun.runtime` makes them).
RUNTIME_IMAGE = "image"  # the notebook run in a twin of the Kaggle image
RUNTIME_LOCAL = "local"  # the notebook run in the Python bundler runs from
DRYRUN_RUNTIMES = (RUNTIME_IMAGE, RUNTIME_LOCAL)  # dryrun.runtime, `bundler dry-run --runtime`
# Kaggle's rules for names, checked here and again on kernel-metadata.json (bundler.notebook.kernel_metadata)
# Kaggle's machine shapes (kaggle-cli docs, 2026-09) and the retired ones with what Kaggle runs
# instead (kaggle 2.2.5's `_RETIRED_ACCELERATORS`): a retired shape is refused naming its replacement.
MACHINE_SHAPES = (
    "NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem",
    "NvidiaL4",
    "NvidiaL4X1",
    "NvidiaTeslaA100",
    "NvidiaH100",
    "NvidiaRtxPro6000",
    "TpuV5E8",
    "TpuV6E8",
    "None",
)
RETIRED_SHAPES = {
    "NvidiaTeslaP100": "NvidiaTeslaT4",
    "TpuV38": "TpuV5E8",
    "Tpu1VmV38": "TpuV5E8",
    "TpuV232": "None (CPU)",
    "TpuV2256": "None (CPU)",
}


def machine_shape_problem(shape: str) -> str:
    """'' for a machine shape Kaggle offers; else what is wrong and the fix."""
    retired = {k.lower(): (k, v) for k, v in RETIRED_SHAPES.items()}.get(shape.lower())
    if retired:
        return f"{retired[0]} is retired on Kaggle (sessions run on {retired[1]} instead); use {retired[1]!r}"
    if shape not in MACHINE_SHAPES:
        return f"{shape!r} is not a Kaggle machine shape; use one of {', '.join(MACHINE_SHAPES)}"
    return ""


KERNEL_NAME_MIN = 5  # a notebook's title and the slug of its id: at least this many characters
DATASET_NAME_CHARS = (6, 50)  # a dataset's title and the slug of its id: this many characters, ends included
_DATASET_CHARS = f"{DATASET_NAME_CHARS[0]} to {DATASET_NAME_CHARS[1]}"
KAGGLE_DIR = Path("build", "kaggle")  # what bundler keeps of its Kaggle rounds, beside bundle.toml
_RUN_FOLDER = re.compile(r"v(\d+)")  # a kernel version's downloaded outputs: build/kaggle/v<N>/


def kaggle_run_dir(root: Path, version: int) -> Path:
    """Where kernel version `version`'s outputs are downloaded: `build/kaggle/v<N>/` of the project `root`."""
    return root / KAGGLE_DIR / f"v{version}"


def kaggle_run_dirs(root: Path) -> dict[int, Path]:
    """Every `build/kaggle/v<N>/` folder of the project `root`, by N."""
    folders = (root / KAGGLE_DIR).glob("v*")
    return {int(m.group(1)): p for p in folders if (m := _RUN_FOLDER.fullmatch(p.name)) and p.is_dir()}


@dataclass(frozen=True)
class Rule:
    """A condition a key's value must meet: `test(value)`; else the error `message` (formatted with
    `key`, `value` and `slug`, the part after the value's '/'); `text`: the condition in the reference."""

    test: Callable[[Any], bool]
    message: str
    text: str


def _key(
    help: str,  # nbclient's word for it
    *rules: Rule,
    shown: str | None = None,
    missing: Any = MISSING,
    resolve: Callable[[Path, str], Any] | None = None,
) -> dict[str, Any]:
    """A bundle.toml key's metadata: kernel_src.settings.setting's, the rules its value must meet (in
    order), and `resolve(root, value)` where the field holds neither the string nor a path against root."""
    return {**setting(help, shown=shown, missing=missing), "rules": rules, "resolve": resolve}


def _positive(message: str) -> Rule:
    return Rule(lambda v: v > 0, message, "> 0")


def _baseline(root: Path, value: str) -> str:
    """A shipped baseline's name stays a name; anything that looks like a path is resolved."""
    if "/" in value or "\\" in value or value.endswith(".txt"):
        return str(_path(root, value))
    return value


def _owner_slug(what: str) -> Rule:
    """An id on Kaggle: "owner/slug"."""
    message = f"{{key}} = {{value!r}} must be 'owner/slug', the {what} on Kaggle"
    return Rule(lambda v: bool(SLUG_ID.match(v)), message, "`owner/slug`")


_NAME_RULE = Rule(
    lambda v: bool(NAME.fullmatch(v)),
    "{key} = {value!r}: a short name of letters, digits, '_', '.', '-' is required",
    "letters, digits, `_`, `.`, `-`",
)
_GB = _positive("{key} = {value!r} must be a positive number of GB")


@dataclass(frozen=True)
class ModelEntry:
    """A model as the user declares it: where their checkpoint is, and its kernel spec. The fields
    declared with `_key` are the model table's keys beside ModelSpec's."""

    role: str  # "classifier" | "segmenter" | "regressor" (kernel_src.model_kinds.ROLES)
    checkpoint: Path = field(
        metadata=_key(
            "your weights file: a state dict, a training checkpoint or TorchScript.",
            Rule(bool, "{key} is required: the path of the trained weights", ""),
        )
    )
    fp16: bool = field(metadata=_key("store the weights as float16 in the bundle.", missing=False))
    spec: ModelSpec  # `spec.file` is its file inside the (flat) bundle folder: <name>.<ext>
    checkpoint_key: str = field(
        default="",
        metadata=_key(
            'the key of a training checkpoint whose tensors ship, e.g. `"model_ema"`, `"ema"`, '
            '`"state_dict_ema"`, `"ema_shadow"`, `"swa_model"`.',
            shown="found by the build",
        ),
    )
    preprocess: Path | None = field(
        default=None,
        metadata=_key(
            "the model's albumentations validation pipeline as `A.save` wrote it (`.json` or `.yaml`), translated "
            'by the build; replaces `input_size`, `mean` and `std` (setting both is refused). See "Preprocessing '
            'as trained" in the README.',
        ),
    )


@dataclass(frozen=True)
class CompetitionConfig:
    """The competition the notebook is for."""

    slug: str = field(
        default="severstal-steel-defect-detection",
        metadata=_key("the competition; its data is found under `/kaggle/input` at run time, wherever it is mounted."),
    )
    sample_submission: str = field(
        default="sample_submission.csv", metadata=_key("file name looked for under `/kaggle/input`.")
    )
    test_images: str = field(default="test_images", metadata=_key("folder name looked for under `/kaggle/input`."))
    hidden_test_images: int = field(
        default=5506,
        metadata=_key(
            "images on the scored rerun, for the projection.",
            _positive("{key} must be a positive count of images"),
        ),
    )
    time_limit_s: float = field(
        default=3600.0,
        metadata=_key(
            "the competition's notebook limit in seconds.",
            Rule(lambda v: not v <= 0, "{key} must be positive seconds", "> 0"),
        ),
    )


@dataclass(frozen=True)
class DatasetConfig:
    """The Kaggle dataset that carries the wheels and weights."""

    id: str = field(
        metadata=_key(
            "the Kaggle dataset carrying wheels and weights.",
            _owner_slug("dataset that carries the wheels and weights"),
            Rule(
                lambda v: DATASET_NAME_CHARS[0] <= len(v.split("/")[1]) <= DATASET_NAME_CHARS[1],
                "{key} slug {slug!r} must be " + _DATASET_CHARS + " characters (Kaggle's rule)",
                f"slug {_DATASET_CHARS} characters",
            ),
        )
    )
    title: str = field(
        metadata=_key(
            "the dataset's title.",
            Rule(
                lambda v: DATASET_NAME_CHARS[0] <= len(v) <= DATASET_NAME_CHARS[1],
                "{key} = {value!r} must be " + _DATASET_CHARS + " characters (Kaggle's rule)",
                f"{_DATASET_CHARS} characters",
            ),
        )
    )
    wheels_id: str | None = field(
        default=None,
        metadata=_key(
            "ship the bundle in two parts: the wheels as this dataset of their own (`owner/slug`; they change "
            "rarely), bundle.json and the weights in `id`; `bundler push` uploads only the part that changed "
            "and pins each one's version.",
            _owner_slug("dataset that carries the wheels"),
            Rule(
                lambda v: DATASET_NAME_CHARS[0] <= len(v.split("/")[1]) <= DATASET_NAME_CHARS[1],
                "{key} slug {slug!r} must be " + _DATASET_CHARS + " characters (Kaggle's rule)",
                f"slug {_DATASET_CHARS} characters",
            ),
            shown="none: wheels and weights in one dataset",
        ),
    )
    weights_model: str | None = field(
        default=None,
        metadata=_key(
            "ship bundle.json and the weights as this Kaggle Model variation (`owner/model/framework/variation`, "
            "e.g. `you/severstal-unet/pyTorch/default`; created when missing, a new version per change, pinned in "
            "`model_sources`); the wheels then go in `wheels_id`, else in `id`.",
            Rule(
                lambda v: len(v.split("/")) == 4 and all(v.split("/")),
                "{key} = {value!r} must be 'owner/model/framework/variation' (e.g. 'you/my-model/pyTorch/default')",
                "`owner/model/framework/variation`",
            ),
            shown="none: the weights in a dataset",
        ),
    )
    model_license: str = field(
        default="Apache 2.0",
        metadata=_key("the licence of the model variation (`weights_model`), by the name Kaggle lists it under."),
    )
    license: str = field(default="CC0-1.0", metadata=_key("recorded in `dataset-metadata.json`."))
    private: bool = field(
        default=True,
        metadata=_key(
            "recorded in `dataset-metadata.json`; the CLI's `create` makes a dataset public only with `--public`."
        ),
    )
    out: Path = field(default=Path("build/dataset"), metadata=_key("the dataset folder."))


@dataclass(frozen=True)
class TargetConfig:
    """The Kaggle image the bundle is for."""

    python: str = field(
        default="3.12",
        metadata=_key(
            "the image's Python.",
            Rule(lambda v: bool(PYTHON_VERSION.fullmatch(v)), "{key} = {value!r} must look like '3.12'", "like `3.12`"),
        ),
    )
    platforms: tuple[str, ...] = field(
        default=(
            "manylinux_2_35_x86_64",
            "manylinux_2_34_x86_64",
            "manylinux_2_28_x86_64",
            "manylinux_2_27_x86_64",
            "manylinux_2_26_x86_64",
            "manylinux_2_24_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
            "linux_x86_64",
        ),
        metadata=_key("wheel tags accepted."),
    )
    baseline: str = field(
        default="kaggle-2026-08-12",
        metadata=_key(
            "what the image already has: a baseline shipped in `bundler/target/baselines/`, or the path of "
            "your own `pip freeze --all` file (see the README's baselines).",
            resolve=_baseline,
        ),
    )
    requirements: tuple[str, ...] = field(
        default=("segmentation-models-pytorch",),
        metadata=_key("what the notebook needs; the build vendors their whole closure minus the baseline."),
    )
    find_links: tuple[Path, ...] = field(default=(), metadata=_key("local wheelhouses searched before the index."))
    wheelhouse: Path = field(
        default=Path("wheels"),
        metadata=_key(
            "the local wheelhouse: the build's wheel cache, and the wheels you drop there to ship them (see the "
            'README\'s "Your own wheels").'
        ),
    )
    no_index: bool = field(
        default=False, metadata=_key("`true`: never reach an index (same as `bundler build --no-index`).")
    )


@dataclass(frozen=True)
class KernelConfig:
    """The notebook on Kaggle. `enable_internet` is always written `false` (a code competition refuses a
    notebook with internet on)."""

    id: str = field(
        metadata=_key(
            f"the notebook on Kaggle (Kaggle wants a slug of at least {KERNEL_NAME_MIN} characters).",
            _owner_slug("notebook"),
        )
    )
    title: str = field(
        metadata=_key(
            "the notebook's title.",
            Rule(
                lambda v: len(v) >= KERNEL_NAME_MIN,
                "{key} = {value!r} must be at least " + str(KERNEL_NAME_MIN) + " characters (Kaggle's rule)",
                f"at least {KERNEL_NAME_MIN} characters",
            ),
        )
    )
    notebook: Path = field(default=Path("build/inference.ipynb"), metadata=_key("the rendered notebook."))
    metadata: Path = field(
        default=Path("kernel-metadata.json"), metadata=_key("`kernel-metadata.json` (the folder you push from).")
    )
    enable_gpu: bool = field(default=True, metadata=_key("run the notebook with a GPU."))
    machine_shape: str = field(
        default="NvidiaTeslaT4",
        metadata=_key(
            "Kaggle's machine shape (`NvidiaTeslaT4` is the T4 x2 pool); retired shapes (`NvidiaTeslaP100`) are "
            "refused naming their replacement.",
            Rule(lambda v: not machine_shape_problem(v), "{key}: {problem}", "a shape Kaggle offers"),
        ),
    )


@dataclass(frozen=True)
class DryRunConfig:
    """`bundler dry-run`'s inputs and outputs; CLI flags override them."""

    test_dir: Path | None = field(
        default=None,
        metadata=_key(
            "a local test set's images (`--test-dir`); for a file reader of `[input]`, the folder its `path` is "
            "relative to, or the file itself.",
            shown="",
        ),
    )
    sample_submission: Path | None = field(
        default=None, metadata=_key("its sample submission (`--sample-submission`).", shown="")
    )
    labels: Path | None = field(
        default=None,
        metadata=_key(
            "its labels, in the long train.csv form, or in the `[submission]` layout when one is named; optional, "
            "enables the score (`--labels`).",
            shown="",
        ),
    )
    out: Path = field(default=Path("build/dryrun"), metadata=_key("the dry-run's folder."))
    time_budget_s: float | None = field(
        default=None,
        metadata=_key(
            "the dry-run's budget (`--time-budget`).",
            Rule(
                lambda v: v > 0,
                "{key} = {value:g} must be positive seconds (or leave it out: the inference budget)",
                "> 0",
            ),
            shown="the inference budget",
        ),
    )
    calibration: float | None = field(
        default=None,
        metadata=_key(
            "Kaggle seconds per local second, e.g. 0.1 on a T4 (`--calibration`).",
            Rule(
                lambda v: not v <= 0,
                "{key} must be a positive factor (Kaggle seconds per local second)",
                "> 0",
            ),
            shown="none",
        ),
    )
    calibration_profile: Path | None = field(
        default=None, metadata=_key("a `profile.json` from a real Kaggle run (`--calibrate`).", shown="none")
    )
    runtime: str | None = field(
        default=None,
        metadata=_key(
            "`image`: the twin of the Kaggle image; `local`: the Python bundler runs from (`--runtime`).",
            Rule(
                lambda v: v in DRYRUN_RUNTIMES,
                f"{{key}} = {{value!r}} must be one of {', '.join(DRYRUN_RUNTIMES)} "
                "(image: a twin of the Kaggle image; local: this Python, quick)",
                "one of " + ", ".join(f'`"{r}"`' for r in DRYRUN_RUNTIMES),
            ),
            shown="`image` where a Python of `target.python` is found, else `local`, said in one line",
        ),
    )


@dataclass(frozen=True)
class MachineConfig:
    """The target machine's limits the dry-run holds a run to (GB = 10^9 bytes; the low end of what
    Kaggle reports for the default "T4 x2" machine: a run over any of them is "Notebook Exceeded
    Allowed Compute", a zero)."""

    ram_gb: float = field(
        default=29.0,
        metadata=_key("RAM (Kaggle reports 29-32 GB); compared with the notebook process's peak resident memory.", _GB),
    )
    gpu_memory_gb: float = field(
        default=15.0,
        metadata=_key(
            "usable memory of EACH GPU (a T4 has 16 GB, about 15 usable); compared with the peak torch reserved "
            "per device, or where no GPU ran (a CPU dry-run) with the peak estimated at model load.",
            _GB,
        ),
    )
    working_disk_gb: float = field(
        default=20.0, metadata=_key("what `/kaggle/working` keeps; compared with the bytes written there.", _GB)
    )


@dataclass(frozen=True)
class BundleConfig:
    """The whole bundle.toml. `name` is `[bundle] name`."""

    root: Path  # folder holding bundle.toml; relative paths are resolved against it
    name: str = field(metadata=_key("written to `bundle.json` and matched by the notebook.", _NAME_RULE))
    competition: CompetitionConfig
    dataset: DatasetConfig
    target: TargetConfig
    kernel: KernelConfig
    models: tuple[ModelEntry, ...]
    inference: InferenceSpec
    dryrun: DryRunConfig
    machine: MachineConfig = MachineConfig()
    source: str = DEFAULT_CONFIG.name  # the file read, as shown to the user: errors name it, not "bundle.toml"


# bundle.toml's tables: [name] -> the dataclass whose settings are its keys (BundleConfig: [bundle] name)
TABLES: dict[str, type] = {
    "bundle": BundleConfig,
    "competition": CompetitionConfig,
    "dataset": DatasetConfig,
    "target": TargetConfig,
    "kernel": KernelConfig,
    "inference": InferenceSpec,
    "submission": SubmissionSpec,
    "input": InputSpec,
    "task": TaskSpec,
    "dryrun": DryRunConfig,
    "machine": MachineConfig,
}
MODEL_TABLES = {  # [[name]]: (role, the model kinds it may take)
    "classifiers": ("classifier", kinds_for("classifier")),
    "segmenters": ("segmenter", kinds_for("segmenter")),
    "regressors": ("regressor", kinds_for("regressor")),  # regression and ordinal tasks
}
# [submission] of an image-level task (kernel_src.rows): its keys, read instead of the layout's
ROW_TABLE = RowSpec
# [submission] rle_order is inference.rle_order, given in either place
SUBMISSION_RLE_ORDER = "the same setting as `inference.rle_order` (give it in one place)."


def table_keys(cls: type) -> dict[str, Field[Any]]:
    """The keys of the table `cls` declares, by name: its settings, less those the build fills in."""
    return {f.name: f for f in settings(cls) if not f.metadata["by_build"]}


def model_keys() -> dict[str, Field[Any]]:
    """A [[classifiers]] or [[segmenters]] table's keys: ModelSpec's settings, then ModelEntry's."""
    entry = table_keys(ModelEntry)
    return {**{k: f for k, f in table_keys(ModelSpec).items() if k not in entry}, **entry}


def _section(raw: Mapping[str, Any], name: str, known: Iterable[str], renamed: Iterable[str] = ()) -> dict[str, Any]:
    """The table `[name]` of `raw` ({} when absent); a key outside `known` is refused naming them. A
    `renamed` key passes, for the kernel's spec to name what replaces it (it is not offered as known)."""
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table (found {found(value)})")
    unknown = set(value) - set(known) - set(renamed)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown key {name}.{key}; known keys: {', '.join(sorted(known))}")
    return value


def _typed(key: str, value: Any, type_: type) -> Any:
    """`value` checked against bundle.toml's types: a scalar, a path (a string), an array of strings or paths."""
    try:
        if get_origin(type_) is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise wrong(key, value, 'an array of strings, e.g. ["a", "b"]')
            return tuple(value)
        return typed(key, value, str if type_ is Path else type_)
    except SpecError as e:
        raise ConfigError(f"{e.key} = {e.message}") from None


def _read(cls: type, section: str, table: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The values of `cls`'s keys in `table`, by field name: each one typed, held to its rules and
    resolved (paths against `root`); a missing key takes its default, a required one is read as ""
    (its rules say what it needs), an optional path given as "" is None."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in table_keys(cls).items():
        key, type_ = f"{section}.{name}", hints[name]
        optional = type(None) in get_args(type_)
        if optional:  # `X | None`
            type_ = next(t for t in get_args(type_) if t is not type(None))
        value = _typed(key, table[name], type_) if name in table else missing_value(f)
        if value is MISSING:
            value = ""
        if value is not None:
            for rule in f.metadata["rules"]:
                if not rule.test(value):
                    slug = value.rpartition("/")[2] if isinstance(value, str) else ""
                    problem = machine_shape_problem(value) if isinstance(value, str) else ""
                    raise ConfigError(rule.message.format(key=key, value=value, slug=slug, problem=problem))
        if optional and value == "":
            value = None
        values[name] = _resolve(root, value, type_, f.metadata["resolve"])
    return values


def _resolve(root: Path, value: Any, type_: Any, resolve: Callable[[Path, str], Any] | None) -> Any:
    """A read value as its field holds it: a path (or paths) resolved against `root`, or `resolve`'s."""
    if value is None:
        return None
    if resolve is not None:
        return resolve(root, value)
    if type_ is Path:
        return _path(root, value)
    if get_args(type_) == (Path, ...):
        return tuple(_path(root, v) for v in value)
    return value


def _path(root: Path, value: str | Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


def _models(raw: Mapping[str, Any], root: Path) -> tuple[ModelEntry, ...]:
    entries: list[ModelEntry] = []
    known = model_keys()
    by_build = {f.name for f in settings(ModelSpec) if f.metadata["by_build"]} - set(known)
    for table, (role, kinds) in MODEL_TABLES.items():
        items = raw.get(table, [])
        if not isinstance(items, list):
            raise ConfigError(f"{table} must be an array of tables ([[{table}]])")
        for i, item in enumerate(items):
            key = f"{table}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{key} must be a table ([[{table}]]) (found {found(item)})")
            entry = _read(ModelEntry, key, item, root)
            data = {k: v for k, v in item.items() if k not in entry}
            if entry["preprocess"]:  # the pipeline decides size and normalisation: two sources would disagree
                for clash in ("mean", "std", "input_size"):
                    if clash in data:
                        raise ConfigError(
                            f"{key}.{clash} is set by {key}.preprocess (the albumentations pipeline); remove one"
                        )
                data["preprocess"] = f"{_typed(f'{key}.name', data.get('name', ''), str)}{PREPROCESS_SUFFIX}"
            for built in sorted(by_build & set(item)):
                raise ConfigError(f"{key}.{built} is set by the build; give checkpoint instead")
            unknown = set(item) - set(known)
            if unknown:
                raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown setting; known: {sorted(known)}")
            name = _typed(f"{key}.name", data.get("name", ""), str)
            if not NAME.fullmatch(name):
                raise ConfigError(f"{key}.name = {name!r}: give each model a name of letters, digits, '_', '.', '-'")
            kind = MODEL_KINDS.get(data["kind"]) if isinstance(data.get("kind"), str) else None
            data["file"] = name + (kind.weights.suffix if kind else "")  # another kind is refused just below
            try:
                spec = ModelSpec.from_dict(data, key, kinds)
            except SpecError as e:
                raise ConfigError(f"{e.key}: {e.message}") from None
            entries.append(ModelEntry(role=role, spec=spec, **entry))
    return tuple(entries)


def config_warnings(cfg: BundleConfig) -> list[str]:
    """Settings that are valid but contradict what is known of the competition (docs/formats.md)."""
    contradiction = contradicted_rle_order(cfg.competition.slug, cfg.inference.rle_order)
    return [contradiction] if contradiction else []


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
    known = {*TABLES, *MODEL_TABLES}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; known: {', '.join(sorted(known))}")

    def read(name: str) -> dict[str, Any]:
        cls = TABLES[name]
        return _read(cls, name, _section(raw, name, table_keys(cls)), root)

    bundle = read("bundle")
    competition = CompetitionConfig(**read("competition"))
    dataset = DatasetConfig(**read("dataset"))
    target = TargetConfig(**read("target"))
    kernel = KernelConfig(**read("kernel"))

    models = _models(raw, root)
    # renamed keys pass through so InferenceSpec.from_dict can name what replaces them
    inf = dict(_section(raw, "inference", table_keys(InferenceSpec), RENAMED_SETTINGS))
    task = dict(_section(raw, "task", table_keys(TaskSpec)))
    inf["task"] = task
    name = task.get("name", TaskSpec().name)
    if isinstance(name, str) and name in TASKS and TASKS[name].image_level:
        # [submission] of an image-level task: per-image rows (kernel_src.rows)
        inf["rows"] = dict(_section(raw, "submission", table_keys(RowSpec)))
        raw = {k: v for k, v in raw.items() if k != "submission"}
    # [submission] (kernel_src.layout): the file's shape; its rle_order is inference.rle_order
    sub = dict(_section(raw, "submission", [*table_keys(SubmissionSpec), "rle_order"]))
    if "rle_order" in sub:
        order = sub.pop("rle_order")
        if "rle_order" in inf and inf["rle_order"] != order:
            raise ConfigError(
                f"submission.rle_order = {order!r} and inference.rle_order = {inf['rle_order']!r} disagree; keep one"
            )
        inf["rle_order"] = order
    inf["submission"] = sub
    inf["input"] = dict(_section(raw, "input", table_keys(InputSpec)))  # [input] (kernel_src.inputs): the reader
    inf.setdefault("time_budget_s", competition.time_limit_s - 300.0)
    inf["classifiers"] = [m.spec.__dict__ for m in models if m.role == "classifier"]
    inf["segmenters"] = [m.spec.__dict__ for m in models if m.role == "segmenter"]
    inf["regressors"] = [m.spec.__dict__ for m in models if m.role == "regressor"]
    try:
        inference = InferenceSpec.from_dict(inf)
    except SpecError as e:
        prefix = "" if e.key.startswith((*MODEL_TABLES, "submission", "task", "rows", "input.")) else "inference."
        if e.key.startswith("rows"):  # the image-level rows are read from [submission]
            e = SpecError("submission" + e.key[len("rows") :], e.message)
        raise ConfigError(f"{prefix}{e.key}: {e.message}") from None

    return BundleConfig(
        root=root,
        name=bundle["name"],
        competition=competition,
        dataset=dataset,
        target=target,
        kernel=kernel,
        models=models,
        inference=inference,
        dryrun=DryRunConfig(**read("dryrun")),
        machine=MachineConfig(**read("machine")),
    )
