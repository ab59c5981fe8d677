"""`bundler render-notebook`: kernel_src + the resolved config -> a standalone offline notebook.

The notebook is generated, never edited by hand, and deterministic (the same inputs give the
same bytes). Its cells, in order:

1. a header saying what it is, which bundle (name, dataset, hash) and which kernel_src hash it
   came from, and how to regenerate it;
2. `NOTEBOOK_STARTED_AT = time.time()`: the time budget counts from the notebook's start;
3. `CONFIG = {...}` tagged `parameters` (papermill style: a run may override paths, device,
   budget; see `with_parameters`);
4. a temporary folder for the code, then one `%%writefile` cell per kernel_src module (the real
   source, byte for byte), then a cell that checks the written files against the kernel_src
   hash and puts the folder first on `sys.path`;
5. setup: `kernel_src.notebook.setup(CONFIG)` (offline switches, bundle found and verified,
   wheels installed, competition data found: fails here, naming the file, before any model);
6. run: `kernel_src.notebook.main(CONFIG, ...)` writes submission.csv and profile.json.

Rendering requires the built bundle (`bundle.json` in `dataset.out`): the notebook is tied to
the bundle it will verify, so `bundler build` comes first.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from rich.console import Console

import kernel_src
from bundler import __version__
from bundler.build.manifest import read_manifest
from bundler.config import BundleConfig
from bundler.display import shown_path
from bundler.errors import ManifestError, RenderError
from bundler.notebook.kernel_metadata import read_existing, title_warning, write_metadata
from kernel_src.bundle import MANIFEST, kernel_src_hash

CONFIG_NAME = "CONFIG"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


@dataclass(frozen=True)
class RenderResult:
    notebook: Path
    metadata: Path
    bundle_hash: str
    kernel_src_hash: str
    push_command: str


def kernel_src_dir() -> Path:
    return Path(kernel_src.__file__).resolve().parent


def kernel_src_files(folder: Path) -> list[Path]:
    """Every module of the package (sorted, subpackages included): none is left out silently."""
    files = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    if not (folder / "__init__.py").is_file():
        raise RenderError(f"{folder}: not a package (no __init__.py); point the renderer at kernel_src/")
    return files


def _module_source(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RenderError(f"{path}: not UTF-8 text; save it as UTF-8 so the notebook can carry it") from None
    if text and not text.endswith("\n"):
        raise RenderError(f"{path}: add a newline at the end of the file (the notebook must carry it byte for byte)")
    if "\r" in text:
        raise RenderError(f"{path}: has Windows line endings; convert it to '\\n' line endings")
    first = text.split("\n", 1)[0]
    if first.lstrip().startswith((">>>", "...", "In [")):
        raise RenderError(f"{path}: its first line looks like a prompt, which IPython would strip; start with code")
    return text


def built_manifest(cfg: BundleConfig) -> dict[str, Any]:
    """The built bundle's manifest (`bundler.build.manifest.read_manifest`): the notebook verifies that bundle."""
    try:
        return read_manifest(cfg.dataset.out, cfg.name)
    except ManifestError as e:
        raise RenderError(str(e)) from None


def _inference(cfg: BundleConfig, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The inference spec with each model's sha256 taken from the manifest."""
    path = cfg.dataset.out / MANIFEST
    weights = {str(w.get("file")): w for w in manifest.get("weights", []) if isinstance(w, dict)}
    models = []
    for model in (*cfg.inference.classifiers, *cfg.inference.segmenters):
        entry = weights.get(model.file)
        if entry is None:
            raise RenderError(
                f"{path} has no weight file {model.file} for model {model.name!r}; rebuild with `bundler build`"
            )
        models.append(dataclasses.replace(model, sha256=str(entry.get("sha256", ""))))
    n = len(cfg.inference.classifiers)
    spec = dataclasses.replace(cfg.inference, classifiers=tuple(models[:n]), segmenters=tuple(models[n:]))
    return spec.to_dict()


def notebook_config(cfg: BundleConfig, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's CONFIG (see docs/ARCHITECTURE.md and kernel_src.notebook.CONFIG_KEYS)."""
    return {
        "bundle_name": cfg.name,
        "bundle_hash": str(manifest["hash"]),
        "dataset_id": cfg.dataset.id,
        "bundle_dir": None,
        "input_root": "/kaggle/input",
        "working_dir": "/kaggle/working",
        "data_dir": None,
        "sample_submission": cfg.competition.sample_submission,
        "test_images": cfg.competition.test_images,
        "install_wheels": "auto",
        "inference": _inference(cfg, manifest),
    }


CONFIG_COMMENTS = {
    "bundle_name": "found by bundle.json 'bundle' under input_root",
    "bundle_hash": "the bundle.json 'hash' this notebook was rendered for",
    "dataset_id": "attach this dataset (Add Input)",
    "bundle_dir": "None: searched under input_root",
    "input_root": "where Kaggle mounts the inputs",
    "working_dir": "submission.csv and profile.json go here",
    "data_dir": "None: searched under input_root (either mount layout)",
    "sample_submission": "looked for under input_root",
    "test_images": "the image folder beside the sample submission",
    "install_wheels": "auto (wheels not yet installed) | always | never",
}


def config_source(config: Mapping[str, Any], *, comments: bool) -> str:
    notes = CONFIG_COMMENTS if comments else {}
    return f"{CONFIG_NAME} = {literal(config, comments=notes)}\n"


def _header(cfg: BundleConfig, manifest: Mapping[str, Any], src_hash: str, modules: list[str]) -> str:
    models = ", ".join(
        f"`{m.name}` ({m.kind} {m.arch}{' ' + m.encoder if m.encoder else ''})".replace(" )", ")")
        for m in (*cfg.inference.classifiers, *cfg.inference.segmenters)
    )
    return "\n".join(
        [
            f"# {cfg.kernel.title}",
            "",
            f"Offline inference notebook for the code competition `{cfg.competition.slug}`, generated by "
            f"`bundler render-notebook` (bundler {__version__}) from `kernel_src/` and `bundle.toml`. "
            "Do not edit it by hand: edit those and run `bundler render-notebook` again.",
            "",
            "| | |",
            "|---|---|",
            f"| bundle | `{cfg.name}` (dataset `{cfg.dataset.id}`) |",
            f"| bundle hash | `{manifest['hash']}` |",
            f"| kernel_src hash | `{src_hash}` |",
            f"| kernel_src modules | {', '.join(f'`{m}`' for m in modules)} |",
            f"| models | {models} |",
            "",
            "Cells: the start time; `CONFIG` (tagged `parameters`: override paths, device or budget there); "
            "the kernel_src modules written to a temporary folder and checked against the hash above; setup "
            "(offline, find and verify the bundle, install its wheels, find the competition data); the run, "
            "which writes `submission.csv` and `profile.json` to the working folder.",
        ]
    )


def _code(source: str) -> NotebookNode:
    cell: NotebookNode = new_code_cell(source)  # type: ignore[no-untyped-call]
    return cell


def _markdown(source: str) -> NotebookNode:
    cell: NotebookNode = new_markdown_cell(source)  # type: ignore[no-untyped-call]
    return cell


def _cell(cell: NotebookNode, cell_id: str, tags: list[str] | None = None) -> NotebookNode:
    cell["id"] = cell_id
    if tags:
        cell.metadata["tags"] = tags
    return cell


def build_notebook(cfg: BundleConfig, manifest: Mapping[str, Any], src_dir: Path | None = None) -> NotebookNode:
    """The notebook for `cfg`, the built bundle's `manifest` and the kernel_src package in `src_dir`."""
    src_dir = src_dir or kernel_src_dir()
    files = kernel_src_files(src_dir)
    rel = [p.relative_to(src_dir).as_posix() for p in files]
    src_hash = kernel_src_hash(src_dir)
    subdirs = sorted({str(Path(r).parent.as_posix()) for r in rel if "/" in r})
    config = notebook_config(cfg, manifest)

    mkdirs = "".join(f'(KERNEL_SRC_DIR / "{d}").mkdir(parents=True)\n' for d in subdirs)
    cells = [
        _cell(_markdown(_header(cfg, manifest, src_hash, rel)), "header"),
        _cell(
            _code("import time\n\nNOTEBOOK_STARTED_AT = time.time()  # the time budget counts from here\n"),
            "started-at",
        ),
        _cell(_code(config_source(config, comments=True)), "parameters", [PARAMETERS_TAG]),
        _cell(
            _code(
                "import sys\nimport tempfile\nfrom pathlib import Path\n\n"
                f'KERNEL_SRC_HASH = "{src_hash}"\n'
                'KERNEL_DIR = Path(tempfile.mkdtemp(prefix="bundler_kernel_"))\n'
                'KERNEL_SRC_DIR = KERNEL_DIR / "kernel_src"\n'
                "KERNEL_SRC_DIR.mkdir()\n" + mkdirs
            ),
            "kernel-src-folder",
        ),
    ]
    for path, name in zip(files, rel, strict=True):
        cell_id = "src-" + name.removesuffix(".py").replace("/", "-").replace("_", "-").strip("-")
        cells.append(_cell(_code(f"%%writefile {{KERNEL_SRC_DIR}}/{name}\n" + _module_source(path)), cell_id))
    cells += [
        _cell(
            _code(
                "for _name in [m for m in sys.modules if m == 'kernel_src' or m.startswith('kernel_src.')]:\n"
                "    del sys.modules[_name]  # a re-run imports the files just written\n"
                "sys.path.insert(0, str(KERNEL_DIR))\n\n"
                "import kernel_src\n"
                "from kernel_src.bundle import kernel_src_hash\n\n"
                "if Path(kernel_src.__file__).parent != KERNEL_SRC_DIR:\n"
                '    raise RuntimeError(f"kernel_src was imported from {kernel_src.__file__}, not {KERNEL_SRC_DIR}")\n'
                "if kernel_src_hash(KERNEL_SRC_DIR) != KERNEL_SRC_HASH:\n"
                '    raise RuntimeError("the kernel_src files written differ from the rendered ones; re-render")\n'
                'print(f"kernel_src {KERNEL_SRC_HASH[:12]} ready in {KERNEL_SRC_DIR}")\n'
            ),
            "kernel-src-import",
        ),
        _cell(
            _code(
                "from kernel_src.notebook import setup\n\n"
                "PREPARED = setup(CONFIG)  # offline; finds and verifies the bundle, installs wheels, finds data\n"
            ),
            "setup",
        ),
        _cell(
            _code(
                "from kernel_src.notebook import main\n\n"
                "result = main(CONFIG, started_at=NOTEBOOK_STARTED_AT, prepared=PREPARED)\n"
                'print(f"wrote {result.submission_path} and {result.profile_path}")\n'
            ),
            "run",
        ),
    ]
    nb: NotebookNode = new_notebook(cells=cells)  # type: ignore[no-untyped-call]
    nb.metadata = nbformat.from_dict(  # type: ignore[no-untyped-call]
        {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {
                "codemirror_mode": {"name": "ipython", "version": 3},
                "file_extension": ".py",
                "mimetype": "text/x-python",
                "name": "python",
                "nbconvert_exporter": "python",
                "pygments_lexer": "ipython3",
                "version": cfg.target.python,
            },
            "bundler": {
                "bundle": cfg.name,
                "bundle_hash": str(manifest["hash"]),
                "kernel_src_hash": src_hash,
                "version": __version__,
            },
        }
    )
    nbformat.validate(nb)
    return nb


def notebook_bytes(nb: NotebookNode) -> bytes:
    """The notebook as the bytes written: sorted keys, fixed indentation, a final newline."""
    text: str = nbformat.writes(nb, version=4)  # type: ignore[no-untyped-call]
    return (text + "\n").encode("utf-8")


def write_notebook(nb: NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = notebook_bytes(nb)
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def notebook_parameters(nb: NotebookNode) -> dict[str, Any]:
    """The CONFIG of the notebook's `parameters` cell."""
    cell = next((c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise RenderError("the notebook has no cell tagged 'parameters'; render it with `bundler render-notebook`")
    try:
        return parse_assignment(str(cell.source), CONFIG_NAME)
    except ValueError as e:
        raise RenderError(f"the notebook's parameters cell: {e}; re-render it with `bundler render-notebook`") from None


def with_parameters(nb: NotebookNode, overrides: Mapping[str, Any]) -> NotebookNode:
    """A copy of `nb` with an `injected-parameters` cell after its `parameters` cell (papermill style).

    `overrides` are CONFIG keys (nested dicts such as `inference` are merged key by key; paths
    become strings). The injected cell assigns the whole effective CONFIG. An earlier injected
    cell is replaced. Unknown top-level keys are refused.
    """
    base = notebook_parameters(nb)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise RenderError(f"CONFIG has no setting {unknown[0]!r}; known: {', '.join(base)}")
    merged = _merge(base, overrides)
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    index = next(i for i, c in enumerate(out.cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", []))
    cell = _cell(_code("# Parameters\n" + config_source(merged, comments=False)), INJECTED_TAG, [INJECTED_TAG])
    out.cells.insert(index + 1, cell)
    nbformat.validate(out)
    return out


def render_notebook(cfg: BundleConfig, *, console: Console) -> RenderResult:
    """Write the notebook (`kernel.notebook`) and kernel-metadata.json (`kernel.metadata`)."""
    manifest = built_manifest(cfg)
    src_dir = kernel_src_dir()
    nb = build_notebook(cfg, manifest, src_dir)
    write_notebook(nb, cfg.kernel.notebook)
    write_metadata(cfg)
    src_hash = str(nb.metadata["bundler"]["kernel_src_hash"])
    folder = shown_path(cfg.kernel.metadata.parent)
    push = f"kaggle kernels push -p {folder}"
    console.print(f"[green]notebook[/] {shown_path(cfg.kernel.notebook)} ({len(nb.cells)} cells)")
    console.print(f"  bundle {cfg.name} {str(manifest['hash'])[:12]}, kernel_src {src_hash[:12]}")
    console.print(f"[green]metadata[/] {shown_path(cfg.kernel.metadata)} (kernel {cfg.kernel.id})")
    warning = title_warning(read_existing(cfg.kernel.metadata))
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"push it with: [bold]{push}[/]")
    return RenderResult(
        notebook=cfg.kernel.notebook,
        metadata=cfg.kernel.metadata,
        bundle_hash=str(manifest["hash"]),
        kernel_src_hash=src_hash,
        push_command=push,
    )


# --- CONFIG as Python source: a deterministic, readable literal that ast.literal_eval reads back ---


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise RenderError(f"CONFIG value {value!r} cannot be written into the notebook; use a finite number")
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return '"' + text[1:-1] + '"' if text[0] == "'" and '"' not in text else text
    raise RenderError(f"CONFIG value {value!r} ({type(value).__name__}) cannot be written into the notebook")


def literal(value: Any, *, comments: Mapping[str, str] | None = None, indent: int = 0) -> str:
    """`value` (dicts, lists, scalars) as Python source; `comments` annotate top-level keys."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        lines = ["{"]
        for key, item in value.items():
            note = f"  # {comments[key]}" if comments and key in comments else ""
            lines.append(f"{inner}{_scalar(str(key))}: {literal(item, indent=indent + 4)},{note}")
        return "\n".join([*lines, pad + "}"])
    if isinstance(value, list | tuple):
        items = [literal(v, indent=indent + 4) for v in value]
        flat = "[" + ", ".join(items) + "]"
        if all("\n" not in i for i in items) and len(flat) + indent <= 100:
            return flat
        return "\n".join(["[", *(f"{inner}{i}," for i in items), pad + "]"])
    return _scalar(value)


def parse_assignment(source: str, name: str) -> dict[str, Any]:
    """The dict literal assigned to `name` in `source` (the last such assignment)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"not valid Python ({e.msg}, line {e.lineno})") from None
    found: Any = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                found = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"{name} is not a plain literal (line {node.lineno})") from None
    if not isinstance(found, dict):
        raise ValueError(f"no `{name} = {{...}}` assignment")
    return found
