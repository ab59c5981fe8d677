"""Project fixtures the tests share: bundle.toml text, its model tables, and tiny projects made
under tmp_path. (tests/tiny.py makes the tiny models, tests/wheelhouse.py the wheels.)

- `toml_text(data)`: the bundle.toml text of plain data;
- `tiny_project(**sections)`: the data of the tiny CPU project the end-to-end tests start from
  (4 classes, 64x256 images, batch 4, one loader worker, precision fp32, per-class gating at 0.5, a
  600 s budget), a section replaced by keyword;
- `model_table(spec, checkpoint)`: one `[[classifiers]]` / `[[segmenters]]` entry;
- `write_project(root, data)`: `root/bundle.toml`; its path;
- `write_built_manifest(cfg)`: bundle.json for the weights already in the dataset folder, as
  `bundler build` leaves it when the venv has every library (no wheels);
- `make_dryrun_project(root)`: a built bundle, a rendered notebook and a labelled holdout;
- `demo_cfg(root)` / `write_fake_manifest(cfg)`: the repository's demo bundle.toml resolved
  against `root`, with a manifest of made-up hashes (rendering reads no weights);
- `quiet()`: a console that prints nowhere; `captured()`: one whose output a test reads back;
- `make_vendoring_project(root, requires, runtime=...)`: a built bundle with a traced TorchScript
  segmenter and one vendored wheel (`VENDORED_PROBE`) the notebook must install;
- `write_bundle(root)` / `save_checkpoints(root)` / `build(cfg)` / `snapshot` / `leftovers`: the build
  tests' project (a timm classifier and an smp segmenter as training checkpoints) and its checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bundler.config import BundleConfig, load_config, parse_config
from bundler.dataset.dataset_folder import BuildResult, build_dataset
from kernel_src.bundle import sha256_file
from kernel_src.models import build_model
from kernel_src.spec import ModelSpec
from tests.tiny import IMAGE_HEIGHT, IMAGE_WIDTH, _TinySegNet, make_tiny_models, model_dict
from tests.wheelhouse import make_wheel

ROOT = Path(__file__).resolve().parent.parent
FAKE_BUNDLE_HASH = "ab" * 32
DRYRUN_IMAGES = 6  # images in make_dryrun_project's holdout
DRYRUN_HIDDEN = 50  # competition.hidden_test_images of make_dryrun_project


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _table(header: str, values: Mapping[str, Any]) -> list[str]:
    pairs = [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None and not isinstance(v, Mapping)]
    return [header, *pairs, ""]


def toml_text(data: Mapping[str, Any]) -> str:
    """bundle.toml text: top-level tables, their sub-tables (`[inference.gating]`) and arrays of
    tables (`[[segmenters]]`), in `data`'s order; a None value leaves its key out (the default).
    Values are written as JSON, which is TOML for the strings, numbers, booleans and lists used here."""
    out: list[str] = []
    for name, table in data.items():
        if isinstance(table, list):
            for entry in table:
                out += _table(f"[[{name}]]", entry)
            continue
        out += _table(f"[{name}]", table)
        for sub, values in table.items():
            if isinstance(values, Mapping):
                out += _table(f"[{name}.{sub}]", values)
    return "\n".join(out)


def tiny_inference(**changes: Any) -> dict[str, Any]:
    """The tiny project's [inference] table with `changes`."""
    inference: dict[str, Any] = {
        "num_classes": 4,
        "image_height": IMAGE_HEIGHT,
        "image_width": IMAGE_WIDTH,
        "batch_size": 4,
        "device": "cpu",
        "precision": "fp32",
        "loader_workers": 1,
        "time_budget_s": 600,
        "gating": {"mode": "per_class", "thresholds": 0.5},
        "postprocess": {"threshold": 0.5, "min_component": 0, "min_area": 0},
    }
    inference.update(changes)
    return inference


def tiny_project(**sections: Any) -> dict[str, Any]:
    """The tiny project's bundle.toml data, each section given by keyword replacing (or adding) its table."""
    data: dict[str, Any] = {
        "bundle": {"name": "tiny-bundle"},
        "competition": {"slug": "tiny-comp"},
        "dataset": {"id": "tester/tiny-bundle-dataset", "title": "tiny bundle for tests"},
        "target": {"requirements": [], "no_index": True},
        "kernel": {"id": "tester/tiny-notebook", "title": "Tiny notebook"},
        "inference": tiny_inference(),
    }
    data.update(sections)
    return data


def model_table(spec: ModelSpec, checkpoint: Path | str, **changes: Any) -> dict[str, Any]:
    """One [[classifiers]] / [[segmenters]] entry for `spec`, its weights read from `checkpoint`."""
    data = model_dict(spec)
    table = {"checkpoint": str(checkpoint)}
    table |= {k: data[k] for k in ("name", "kind", "arch", "encoder", "input_size", "tta", "weight") if k in data}
    table.update(changes)
    return table


def write_project(root: Path, data: Mapping[str, Any]) -> Path:
    """`root/bundle.toml` holding `data`; its path."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "bundle.toml"
    path.write_text(toml_text(data), encoding="utf-8")
    return path


def write_built_manifest(cfg: BundleConfig) -> dict[str, Any]:
    """bundle.json for the weights in `cfg.dataset.out`, as `bundler build` leaves it (no wheels:
    the venv has every library)."""
    return write_manifest_with_wheels(cfg, [])


def make_dryrun_project(root: Path, *, budget: float | None = None, labels: bool = True) -> BundleConfig:
    """Under `root`: bundle.toml, a built bundle (one tiny classifier and segmenter), its rendered
    notebook, and a holdout of DRYRUN_IMAGES synthetic images (with labels unless `labels=False`)."""
    from bundler.demo.synthetic import make_dataset
    from bundler.notebook.render import render_notebook

    dataset = root / "build" / "dataset"
    classifiers, segmenters = make_tiny_models(dataset)
    cls, seg = classifiers[0], segmenters[0]
    for path in dataset.iterdir():
        if path.name not in {cls.file, seg.file}:
            path.unlink()
    make_dataset(root / "holdout", DRYRUN_IMAGES, seed=3, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    dryrun: dict[str, Any] = {
        "test_dir": "holdout/test_images",
        "sample_submission": "holdout/sample_submission.csv",
        "out": "build/dryrun",
        "runtime": "local",  # the quick mode; the twin of the image has its own tests (test_dryrun_twin)
    }
    if labels:
        dryrun["labels"] = "holdout/labels.csv"
    if budget is not None:
        dryrun["time_budget_s"] = budget
    data = tiny_project(
        competition={"hidden_test_images": DRYRUN_HIDDEN},
        dataset={"id": "tester/tiny-bundle", "title": "tiny test bundle"},
        target={"requirements": []},
        kernel={
            "id": "tester/tiny-kernel",
            "title": "Tiny kernel",
            "notebook": "build/inference.ipynb",
            "metadata": "build/kernel-metadata.json",
        },
        inference=tiny_inference(
            batch_size=2,
            time_budget_s=None,
            gating={"mode": "per_class", "thresholds": [0.5] * 4},
            postprocess={"threshold": [0.5] * 4, "min_component": [0] * 4, "min_area": [0] * 4},
        ),
        classifiers=[model_table(cls, "unused.pth")],
        segmenters=[model_table(seg, "unused.pth")],
        dryrun=dryrun,
    )
    cfg = load_config(write_project(root, data))
    write_built_manifest(cfg)
    render_notebook(cfg, console=quiet())
    return cfg


def demo_cfg(root: Path, manifest: bool = True) -> BundleConfig:
    """The demo bundle.toml resolved against `root`, with a fake built-bundle manifest when asked."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bundle.toml").write_text((ROOT / "bundle.toml").read_text())
    cfg = parse_config(tomllib.loads((ROOT / "bundle.toml").read_text()), root)
    if manifest:
        write_fake_manifest(cfg)
    return cfg


def write_fake_manifest(cfg: BundleConfig, **changes: Any) -> dict[str, Any]:
    """bundle.json with FAKE_BUNDLE_HASH and made-up weight hashes and sizes, `changes` applied."""
    data: dict[str, Any] = {
        "format": 1,
        "bundle": cfg.name,
        "hash": FAKE_BUNDLE_HASH,
        "wheels": [],
        "weights": [
            {"file": m.spec.file, "model": m.spec.name, "sha256": f"{i:064x}", "size": 10}
            for i, m in enumerate(cfg.models)
        ],
    }
    data.update(changes)
    cfg.dataset.out.mkdir(parents=True, exist_ok=True)
    (cfg.dataset.out / "bundle.json").write_text(json.dumps(data))
    return data


# --- the build tests' project: a timm classifier and an smp segmenter as training checkpoints ---

BUILD_TOML = """
[bundle]
name = "tiny-bundle"

[dataset]
id = "someone/tiny-bundle-data"
title = "tiny bundle for tests"
out = "out/dataset"

[target]
{target}

[kernel]
id = "someone/tiny-kernel"
title = "tiny kernel"

[inference]
num_classes = 4

[inference.gating]
mode = "per_image"

[[classifiers]]
name = "cls-tiny"
kind = "timm"
arch = "test_resnet"
checkpoint = "models/cls.pth"
fp16 = {fp16}

[[segmenters]]
name = "seg-tiny"
kind = "smp"
arch = "Linknet"
encoder = "tu-test_efficientnet"
checkpoint = "{seg_checkpoint}"
"""


def save_checkpoints(root: Path, num_classes: int = 4) -> None:
    """A timm classifier as a training checkpoint, an smp segmenter with Lightning prefixes."""
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cls = build_model(ModelSpec(name="c", kind="timm", file="c", arch="test_resnet"), num_classes)
    opt = torch.optim.SGD(cls.parameters(), lr=0.1, momentum=0.9)
    cls(torch.rand(2, 3, 32, 32)).mean().backward()
    opt.step()
    torch.save({"model": cls.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}, models / "cls.pth")
    seg = build_model(
        ModelSpec(name="s", kind="smp", file="s", arch="Linknet", encoder="tu-test_efficientnet"), num_classes
    )
    state = {f"model.{k}": v for k, v in seg.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 2, "global_step": 40}, models / "seg.ckpt")


def write_bundle(
    root: Path, *, fp16: bool = False, seg_checkpoint: str = "models/seg.ckpt", target: str = "requirements = []"
) -> Path:
    """bundle.toml and its checkpoints under `root`; returns the config path."""
    if not (root / "models" / "cls.pth").exists():
        save_checkpoints(root)
    path = root / "bundle.toml"
    path.write_text(
        BUILD_TOML.format(fp16=str(fp16).lower(), seg_checkpoint=seg_checkpoint, target=target), encoding="utf-8"
    )
    return path


def captured() -> tuple[Console, io.StringIO]:
    """A console whose output the test reads back."""
    buf = io.StringIO()
    return Console(file=buf, width=200, highlight=False), buf


def build(cfg: BundleConfig) -> tuple[BuildResult, str]:
    console, buf = captured()
    result = build_dataset(cfg, console=console)
    return result, buf.getvalue()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


# --- a bundle that vendors a wheel: the dry-run's runtimes (test_dryrun_twin, test_dryrun_runtime) ---

VENDORED_PROBE = "bundler-twin-probe"  # the vendored wheel's distribution


def make_traced_segmenter(dest: Path, name: str = "traced-seg") -> ModelSpec:
    """tests.tiny's segmenter TRACED (not scripted: a scripted F.interpolate of torch 2.14 does not load
    on the image's torch 2.10), saved as TorchScript in `dest`."""
    torch.manual_seed(0)
    traced = torch.jit.trace(_TinySegNet(4).eval(), torch.zeros(1, 3, 32, 128))  # type: ignore[no-untyped-call]
    spec = ModelSpec(name=name, kind="torchscript", file=f"{name}.pt", input_size=(32, 128), tta=("identity",))
    dest.mkdir(parents=True, exist_ok=True)
    traced.save(str(dest / spec.file))
    return spec


def write_manifest_with_wheels(cfg: BundleConfig, wheels: list[Path]) -> dict[str, Any]:
    """bundle.json for the weights of `cfg`'s models and `wheels`, all in the dataset folder."""
    out = cfg.dataset.out
    weights = [
        {
            "file": m.spec.file,
            "model": m.spec.name,
            "kind": m.spec.kind,
            "sha256": sha256_file(out / m.spec.file),
            "size": (out / m.spec.file).stat().st_size,
        }
        for m in cfg.models
    ]
    records: list[dict[str, Any]] = []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        records.append(
            {
                "file": wheel.name,
                "name": name.replace("_", "-"),
                "version": version,
                "sha256": sha256_file(wheel),
                "size": wheel.stat().st_size,
                "reason": "a test wheel the image lacks",
            }
        )
    lines = sorted(f"{e['file']} {e['sha256']}" for e in [*weights, *records])
    manifest = {
        "format": 1,
        "bundle": cfg.name,
        "hash": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "created_by": "tests",
        "wheels": records,
        "weights": weights,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def make_vendoring_project(root: Path, requires: list[str], *, runtime: str) -> BundleConfig:
    """A built tiny bundle (a traced TorchScript segmenter, one vendored wheel VENDORED_PROBE 1.0 requiring
    `requires`), its rendered notebook and a labelled holdout of DRYRUN_IMAGES images; dryrun.runtime `runtime`."""
    from bundler.demo.synthetic import make_dataset
    from bundler.notebook.render import render_notebook

    dataset = root / "build" / "dataset"
    seg = make_traced_segmenter(dataset)
    wheel = make_wheel(dataset, VENDORED_PROBE, "1.0", requires)
    make_dataset(root / "holdout", DRYRUN_IMAGES, seed=3, height=IMAGE_HEIGHT, width=IMAGE_WIDTH)
    data = tiny_project(
        competition={"hidden_test_images": DRYRUN_HIDDEN},
        dataset={"id": "tester/tiny-bundle", "title": "tiny test bundle"},
        target={"requirements": [], "python": "3.12"},
        kernel={
            "id": "tester/tiny-kernel",
            "title": "Tiny kernel",
            "notebook": "build/inference.ipynb",
            "metadata": "build/kernel-metadata.json",
        },
        inference=tiny_inference(batch_size=2, time_budget_s=None, gating={"mode": "off"}),
        segmenters=[model_table(seg, "unused.pth")],
        dryrun={
            "test_dir": "holdout/test_images",
            "sample_submission": "holdout/sample_submission.csv",
            "labels": "holdout/labels.csv",
            "out": "build/dryrun",
            "runtime": runtime,
        },
    )
    cfg = load_config(write_project(root, data))
    write_manifest_with_wheels(cfg, [wheel])
    render_notebook(cfg, console=quiet())
    return cfg
