"""Inside the notebook, before anything is imported: find the bundle, verify it, install it.

STDLIB ONLY: this module runs before the vendored wheels are installed, so it may import
nothing that is not part of Python itself, and from kernel_src only `errors`, `paths` and `inputs`
(stdlib only too).

- `find_bundle` looks for the dataset folder whose `bundle.json` names the bundle, under the
  input root at any depth up to 6 (`/kaggle/input/<slug>/`, `/kaggle/input/datasets/<owner>/<slug>/`,
  and a Kaggle Model's `/kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>/`).
- `gather_parts` joins a bundle shipped as parts (each its own dataset: the wheels apart from
  the weights, so a new model does not re-upload every wheel): the folder with bundle.json
  lacks some files, which are looked for in the part folders (a `bundle-part.json` naming the
  bundle) up to 6 levels below the input root (a Kaggle Model mounts at
  `models/<owner>/<model>/<framework>/<variation>/<version>/`), and linked into one folder.
- `verify_bundle` checks every wheel and weight of the manifest (present, size, sha256) and
  names each missing or corrupt file, before any model is loaded.
- `install_wheels` installs the vendored wheels with pip, offline (`--no-index --no-deps`).
- `find_competition_data` finds the sample submission and the test image folder (or, for a file
  reader of `[input]`, its file) under either mount layout (`/kaggle/input/<slug>/`,
  `/kaggle/input/competitions/<slug>/`).
- `prepare(config)` does all of it in order for the notebook's setup cell.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError
from .inputs import IMAGES, READERS
from .paths import INPUT_ROOT

MANIFEST = "bundle.json"
MANIFEST_FORMAT = 1  # bundle.json's "format"; bundler writes it, the notebook and bundler read it
FILE_GROUPS = ("wheels", "weights", "preprocess")  # the manifest's lists of file records
OPTIONAL_GROUPS = ("preprocess",)  # may be absent (bundles built before it existed)
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_DEPTH = 3
PART_MANIFEST = "bundle-part.json"  # in each part's folder: {"bundle", "part", "hash", "files": [...]}
PART_DEPTH = 6  # models/<owner>/<model>/<framework>/<variation>/<version>/
INSTALL_MODES = ("auto", "always", "never")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "WANDB_MODE": "offline",
}
FIX_UPLOAD = (
    "re-upload the bundle (`bundler build`, then `kaggle datasets version -p <dataset folder> -m MSG`) "
    "and attach its latest version to the notebook"
)


@dataclass(frozen=True)
class CompetitionData:
    folder: Path
    sample_submission: Path
    test_dir: Path  # the test image folder; for a file reader of [input], the data folder its path is relative to


@dataclass(frozen=True)
class Prepared:
    """What the setup cell found: the verified bundle and the competition data."""

    bundle_dir: Path
    manifest: dict[str, Any]
    data: CompetitionData
    installed: tuple[str, ...]  # wheel files installed by this run (empty when none were needed)


def set_offline_env() -> None:
    """No library may try the network: set the offline switches before anything imports them."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def sha256_file(path: Path, advance: Callable[[int], None] | None = None, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks; `advance(n)` is told each block's size (a progress bar).

    The one file hash of the project: the build, the notebook and the dry-run all use this one.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if advance is not None:
                advance(len(block))
    return digest.hexdigest()


def kernel_src_hash(folder: Path) -> str:
    """sha256 of the sorted lines '<relative path> <sha256>' of every .py file under `folder`."""
    folder = Path(folder)
    lines = sorted(
        f"{p.relative_to(folder).as_posix()} {sha256_file(p)}\n"
        for p in folder.rglob("*.py")
        if "__pycache__" not in p.parts
    )
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return "is not an object"
    name = record.get("file")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        return 'has no flat "file" name'
    if not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"]):
        return f'({name}) has no 64-hex "sha256"'
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f'({name}) has no byte "size"'
    return None


def manifest_problem(data: Any) -> str | None:
    """What keeps `data` from being a bundle manifest (None: it is one). The one contract of
    bundle.json, kept by the notebook (`read_manifest`) and by bundler (`bundler.dataset.manifest`):
    format `MANIFEST_FORMAT`, a "bundle" name, a 64-hex "hash", and "wheels"/"weights" lists of
    records with a flat "file" name, a 64-hex "sha256" and a byte "size"."""
    if not isinstance(data, Mapping) or not isinstance(data.get("bundle"), str) or not data["bundle"]:
        return 'not a bundler manifest (no "bundle" name)'
    if data.get("format") != MANIFEST_FORMAT:
        return f"manifest format {data.get('format')!r}; this code reads format {MANIFEST_FORMAT}"
    if not isinstance(data.get("hash"), str) or not _SHA256.fullmatch(data["hash"]):
        return 'no 64-hex "hash"'
    for section in FILE_GROUPS:
        items = data.get(section, [] if section in OPTIONAL_GROUPS else None)
        if not isinstance(items, list):
            return f'"{section}" is not a list'
        for i, record in enumerate(items):
            problem = _record_problem(record)
            if problem:
                return f"{section}[{i}] {problem}"
    return None


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no bundle manifest here; point CONFIG['bundle_dir'] at the bundle folder") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: the manifest cannot be read ({e}); {FIX_UPLOAD}") from None
    problem = manifest_problem(data)
    if problem:
        raise BundleError(f"{path}: {problem}; {FIX_UPLOAD}")
    return dict(data)


def _folders(root: Path, depth: int) -> Iterable[Path]:
    """Folders 1..depth levels below root, breadth first, each level in sorted order."""
    level = [root]
    for _ in range(depth):
        children: list[Path] = []
        for folder in level:
            try:
                children.extend(sorted(e for e in folder.iterdir() if e.is_dir()))
            except OSError:
                continue
        yield from children
        level = children


def find_bundle(input_root: Path, bundle_name: str, override: Path | None = None, bundle_hash: str = "") -> Path:
    """The folder holding the bundle.json of `bundle_name` (`override` when given)."""
    if override is not None:
        folder = Path(override)
        manifest = read_manifest(folder)
        if manifest["bundle"] != bundle_name:
            raise BundleError(
                f"{folder / MANIFEST} is bundle {manifest['bundle']!r}, not {bundle_name!r}; "
                "fix CONFIG['bundle_dir'] or CONFIG['bundle_name']"
            )
        return folder
    root = Path(input_root)
    if not root.is_dir():
        raise BundleError(
            f"input folder {root} does not exist; attach the bundle dataset, or set CONFIG['input_root'] "
            "(or CONFIG['bundle_dir']) for a run outside Kaggle"
        )
    found: list[tuple[Path, dict[str, Any]]] = []
    others: list[str] = []
    for folder in _folders(root, PART_DEPTH):
        if not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = read_manifest(folder)
        except BundleError as e:  # not a usable bundle: said in the message when nothing is found
            others.append(f"{folder} (unusable: {str(e).split(': ', 1)[-1].split(';')[0]})")
            continue
        if manifest["bundle"] == bundle_name:
            found.append((folder, manifest))
        else:
            others.append(f"{folder} ({manifest['bundle']!r})")
    if not found:
        seen = f"; bundles seen: {', '.join(others)}" if others else "; no bundle.json was found at all"
        raise BundleError(
            f"bundle {bundle_name!r} not found: no {MANIFEST} naming it in the folders up to {PART_DEPTH} levels "
            f"below {root}{seen}. Fix: attach the bundle's dataset to the notebook (Add Input), "
            "or set CONFIG['bundle_dir']"
        )
    if len(found) > 1 and bundle_hash:
        matching = [f for f in found if f[1].get("hash") == bundle_hash]
        if matching:
            found = matching
    if len(found) > 1:
        print(f"bundle {bundle_name!r} is attached {len(found)} times; using {found[0][0]}", file=sys.stderr)
    return found[0][0]


def _part_folders(root: Path, bundle_name: str) -> list[Path]:
    """The folders up to PART_DEPTH below `root` whose bundle-part.json names `bundle_name`."""
    found = []
    for folder in _folders(root, PART_DEPTH):
        path = folder / PART_MANIFEST
        if not path.is_file():
            continue
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(part, dict) and part.get("bundle") == bundle_name:
            found.append(folder)
    return found


def gather_parts(bundle_dir: Path, input_root: Path, manifest: Mapping[str, Any], joined: Path) -> Path:
    """`bundle_dir` when it holds every file of the manifest; else `joined`, a folder of links to
    bundle.json and to each file where a part folder of this bundle holds it (missing ones are
    left for `verify_bundle` to name)."""
    bundle_dir = Path(bundle_dir)
    names = [str(e["file"]) for e in _entries(manifest, bundle_dir)]
    if all((bundle_dir / n).is_file() for n in names):
        return bundle_dir
    places = [bundle_dir, *_part_folders(Path(input_root), str(manifest.get("bundle")))]
    joined = Path(joined)
    joined.mkdir(parents=True, exist_ok=True)
    for name in [MANIFEST, *names]:
        source = next((folder / name for folder in places if (folder / name).is_file()), None)
        link = joined / name
        if link.is_symlink():  # from an earlier run: point it at what is attached now
            link.unlink()
        if source is not None:
            link.symlink_to(source.resolve())
    parts = ", ".join(str(f) for f in places[1:]) or "none found"
    print(f"bundle {manifest.get('bundle')!r} comes in parts: {bundle_dir}, {parts}; joined in {joined}")
    return joined


def _entries(manifest: Mapping[str, Any], bundle_dir: Path) -> list[dict[str, Any]]:
    return [{"group": group, **item} for group in FILE_GROUPS for item in manifest.get(group, [])]


def verify_bundle(
    bundle_dir: Path, manifest: Mapping[str, Any] | None = None, required: Iterable[str] = ()
) -> dict[str, Any]:
    """Every wheel and weight of the manifest present, with its size and sha256. Returns the manifest.

    `required` names files (the models' weights) that the manifest itself must list.
    """
    bundle_dir = Path(bundle_dir)
    data = dict(manifest) if manifest is not None else read_manifest(bundle_dir)
    problem = manifest_problem(data)
    if problem:
        raise BundleError(f"{bundle_dir / MANIFEST}: {problem}; {FIX_UPLOAD}")
    listed = {e["file"] for e in _entries(data, bundle_dir)}
    problems = [
        f"weight file {f} that the notebook's models need is not in its manifest" for f in required if f not in listed
    ]
    for entry in _entries(data, bundle_dir):
        kind = {"wheels": "wheel", "weights": "weight file"}.get(entry["group"], "preprocessing file")
        path = bundle_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{kind} {entry['file']} is missing")
            continue
        size = path.stat().st_size
        if "size" in entry and size != entry["size"]:
            problems.append(f"{kind} {entry['file']} has {size} bytes, the manifest says {entry['size']}")
            continue
        if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            problems.append(f"{kind} {entry['file']} is corrupt (sha256 differs from the manifest)")
    if problems:
        raise BundleError(
            f"bundle {data.get('bundle')!r} in {bundle_dir} is incomplete: "
            + "; ".join(problems)
            + f". Fix: {FIX_UPLOAD}"
        )
    return data


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_wheels(wheels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for w in wheels if _installed_version(str(w.get("name", ""))) != str(w.get("version", ""))]


def install_wheels(bundle_dir: Path, manifest: Mapping[str, Any], mode: str | bool = "auto") -> tuple[str, ...]:
    """Install the vendored wheels offline. Returns the wheel files installed.

    mode "auto": only the wheels whose distribution is not installed at that version (none when
    all are: a local dry-run on another Python never tries the target's wheels); "always": every
    wheel; "never": none. True and False mean "auto" and "never".
    """
    if isinstance(mode, bool):
        mode = "auto" if mode else "never"
    if mode not in INSTALL_MODES:
        raise BundleError(f"CONFIG['install_wheels'] = {mode!r} must be one of {list(INSTALL_MODES)}")
    bundle_dir = Path(bundle_dir)
    wheels = [e for e in _entries(manifest, bundle_dir) if e["group"] == "wheels"]
    if mode == "never" or not wheels:
        return ()
    todo = wheels if mode == "always" else _missing_wheels(wheels)
    if not todo:
        print(f"all {len(wheels)} vendored wheels are already installed at their versions")
        return ()
    files = [str(w["file"]) for w in todo]
    argv = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(bundle_dir)]
    if mode == "always":
        argv.append("--force-reinstall")
    argv += [str(bundle_dir / f) for f in files]
    print(f"installing {len(files)} vendored wheels offline: {', '.join(files)}")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        named = [f for f in files if f in tail] or files
        raise BundleError(
            f"pip could not install the vendored wheel(s) {', '.join(named)} from {bundle_dir} "
            f"(exit status {done.returncode}). Fix: rebuild the bundle for the notebook's Python "
            f"({sys.version_info.major}.{sys.version_info.minor}) with `bundler build`. pip said:\n{tail}"
        )
    importlib.invalidate_caches()
    still = _missing_wheels(todo)
    if still:
        names = ", ".join(f"{w.get('name')}=={w.get('version')}" for w in still)
        raise BundleError(f"pip ran but {names} is still not installed at that version; restart the kernel and rerun")
    return tuple(files)


FIX_DRIFT = (
    "the Kaggle image no longer matches the baseline this bundle was built against: refresh the baseline "
    "(target.baseline; take one with `!pip freeze --all` in a Kaggle notebook) and rebuild with `bundler build`"
)


def _packaging() -> tuple[Any, Any] | None:
    """(Requirement, Version) from `packaging`, else from pip's vendored copy (always there where pip
    is); None when neither can be imported."""
    for base in ("packaging", "pip._vendor.packaging"):
        try:
            requirements = importlib.import_module(base + ".requirements")
            version = importlib.import_module(base + ".version")
        except ImportError:
            continue
        return requirements.Requirement, version.Version
    return None


def unmet_requirements(manifest: Mapping[str, Any]) -> list[str]:
    """Each Requires-Dist of an installed vendored wheel (markers evaluated here, no extras) that
    what is installed does not meet, as 'pkg X (required by Y) ...' phrases; [] when all are met.

    Raises BundleError when no `packaging` can be imported to read them."""
    tools = _packaging()
    if tools is None:
        raise BundleError("cannot check the vendored wheels' requirements: neither packaging nor pip is importable")
    requirement, version = tools
    problems: list[str] = []
    for wheel in manifest.get("wheels", []):
        name = str(wheel.get("name", "")) if isinstance(wheel, Mapping) else ""
        if not name:
            continue
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed (install_wheels "never"): nothing of it will be imported from the bundle
        for text in requires:
            try:
                req = requirement(text)
            except Exception:  # a Requires-Dist line packaging cannot read is pip's business, not this check's
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            found = _installed_version(req.name)
            who = f"required by {name} {wheel.get('version')}: {text.strip()}"
            if found is None:
                problems.append(f"{req.name} is not installed ({who})")
                continue
            try:
                ok = req.specifier.contains(version(found), prereleases=True)
            except Exception:  # an installed version packaging cannot parse: not judged
                continue
            if not ok:
                problems.append(f"{req.name} {found} is installed, too old or too new ({who})")
    return problems


def check_requirements(manifest: Mapping[str, Any]) -> None:
    """The drift guard: stop, before any model loads, when an installed vendored wheel's requirement is
    missing or at a version it does not accept (the image drifted from the baseline)."""
    wheels = manifest.get("wheels", [])
    if not wheels:
        return
    problems = unmet_requirements(manifest)
    if problems:
        raise BundleError(f"the vendored wheels need what this image lacks: {'; '.join(problems)}. Fix: {FIX_DRIFT}")
    print(f"the requirements of the {len(wheels)} vendored wheels are met by what is installed")


def find_competition_data(
    input_root: Path,
    sample_submission_name: str,
    test_images_name: str,
    override: Path | None = None,
    *,
    test_file: bool = False,
) -> CompetitionData:
    """The folder holding both the sample submission file and the test image folder; with
    `test_file`, `test_images_name` is a file relative to that folder (a file reader's `[input]
    path`), and the data folder itself is the `test_dir` the reader opens its path in."""
    if test_file:
        looked_for = f"{sample_submission_name} with {test_images_name} beside it"
        setting = "CONFIG['inference']['input']['path'] ([input] path in bundle.toml)"
    else:
        looked_for = f"{sample_submission_name} with a {test_images_name}/ folder beside it"
        setting = "CONFIG['test_images']"

    def found(folder: Path) -> tuple[bool, bool]:
        test = folder / test_images_name
        return (folder / sample_submission_name).is_file(), test.is_file() if test_file else test.is_dir()

    def data(folder: Path) -> CompetitionData:
        test_dir = folder if test_file else folder / test_images_name
        return CompetitionData(folder, folder / sample_submission_name, test_dir)

    if override is not None:
        folder = Path(override)
        if not all(found(folder)):
            raise BundleError(f"CONFIG['data_dir'] = {str(folder)!r} does not hold {looked_for}; fix the path")
        return data(folder)
    root = Path(input_root)
    half: list[str] = []
    for folder in _folders(root, MAX_DEPTH):
        has = found(folder)
        if all(has):
            return data(folder)
        if any(has):
            half.append(str(folder))
    partial = f"; only one of the two is in: {', '.join(half)}" if half else ""
    raise BundleError(
        f"competition data not found: no folder up to {MAX_DEPTH} levels below {root} holds {looked_for} "
        f"(searched {root}/<slug>/ and {root}/competitions/<slug>/ among others){partial}. Fix: attach the "
        "competition's data to the notebook, or set CONFIG['data_dir'] (and CONFIG['sample_submission'], "
        f"{setting} for other names)"
    )


def _joined_dir(bundle_name: str) -> Path:
    """Where a bundle in parts is joined: a temporary folder, never the notebook's output."""
    return Path(tempfile.gettempdir()) / f"bundler-parts-{re.sub(r'[^A-Za-z0-9_.-]', '_', bundle_name)}"


def input_location(config: Mapping[str, Any]) -> tuple[str, bool]:
    """What the run reads beside the sample submission: (CONFIG['test_images'], False) for the image
    folder, ([input] path, True) for a file reader (`kernel_src.inputs.READERS`)."""
    inference = config.get("inference")
    given = inference.get("input") if isinstance(inference, Mapping) else None
    given = given if isinstance(given, Mapping) else {}
    kind = READERS.get(str(given.get("reader") or IMAGES))
    if kind is not None and kind.file and given.get("path"):
        return str(given["path"]), True
    return str(config.get("test_images") or "test_images"), False


def _optional_path(config: Mapping[str, Any], key: str) -> Path | None:
    value = config.get(key)
    return None if value in (None, "") else Path(str(value))


def prepare(config: Mapping[str, Any], required: Iterable[str] = ()) -> Prepared:
    """The setup cell: offline switches, bundle found and verified, wheels installed, data found.

    Settings that are absent or None take their defaults. `required`: see `verify_bundle`.
    """
    set_offline_env()
    name = str(config["bundle_name"])
    expected = str(config.get("bundle_hash") or "")
    input_root = Path(str(config.get("input_root") or INPUT_ROOT))
    bundle_dir = find_bundle(input_root, name, _optional_path(config, "bundle_dir"), expected)
    bundle_dir = gather_parts(bundle_dir, input_root, read_manifest(bundle_dir), _joined_dir(name))
    manifest = verify_bundle(bundle_dir, required=required)
    if expected and manifest.get("hash") != expected:
        print(
            f"warning: {bundle_dir / MANIFEST} has hash {str(manifest.get('hash'))[:12]}, the notebook was rendered "
            f"for {expected[:12]}; re-render with `bundler render-notebook` or attach the matching dataset version",
            file=sys.stderr,
        )
    mode = config.get("install_wheels")
    installed = install_wheels(bundle_dir, manifest, "auto" if mode is None else mode)
    check_requirements(manifest)  # the drift guard: before any model library is imported
    test_name, test_file = input_location(config)
    data = find_competition_data(
        input_root,
        str(config.get("sample_submission") or "sample_submission.csv"),
        test_name,
        _optional_path(config, "data_dir"),
        test_file=test_file,
    )
    weights = manifest.get("weights", [])
    wheels = manifest.get("wheels", [])
    print(f"bundle {name!r}: {bundle_dir} verified ({len(weights)} weight files, {len(wheels)} wheels)")
    print(f"competition data: {data.sample_submission} and {data.folder / test_name if test_file else data.test_dir}")
    return Prepared(bundle_dir=bundle_dir, manifest=manifest, data=data, installed=installed)
