"""`noop_rebuild_s`: a second `bundler build` of a demo-like bundle with nothing changed.

The project is the demo's shape (bundle.toml's three models, real architectures with random
weights saved as training checkpoints), with `requirements = []` and a local, empty wheelhouse
(`no_index = true`) so nothing reaches the network. The first build converts the weights; the
second must find the folder up to date. The figure is the second `build_dataset` call; the
table also shows the whole `bundler build` command (a fresh interpreter) for the same no-op.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from kernel_src.models import build_model
from kernel_src.spec import ModelSpec

from .report import BenchResult, Figure, Target, seconds

TINY_ENCODER = "tu-mobilenetv3_small_050"

BUNDLE_TOML = """\
[bundle]
name = "bench-rebuild"

[dataset]
id = "bench-owner/bench-rebuild-bundle"
title = "bundler rebuild benchmark"
out = "build/dataset"

[target]
requirements = []
find_links = ["wheelhouse"]
no_index = true

[kernel]
id = "bench-owner/bench-rebuild-kernel"
title = "rebuild benchmark"

[inference]
num_classes = 4

[[classifiers]]
name = "cls-resnet18"
kind = "timm"
arch = "{cls_arch}"
checkpoint = "models/cls-resnet18.pth"

[[segmenters]]
name = "unet-resnet18"
kind = "smp"
arch = "Unet"
encoder = "{unet_encoder}"
checkpoint = "models/unet-resnet18.pth"
tta = ["identity", "hflip"]

[[segmenters]]
name = "fpn-mobilenet"
kind = "smp"
arch = "FPN"
encoder = "{fpn_encoder}"
checkpoint = "models/fpn-mobilenet.pth"
tta = ["identity", "vflip"]
"""


def make_project(root: Path, *, tiny: bool) -> Path:
    """A demo-like project under `root` (tiny encoders when `tiny`); the path of its bundle.toml."""
    archs = {
        "cls_arch": "test_resnet" if tiny else "resnet18",
        "unet_encoder": TINY_ENCODER if tiny else "resnet18",
        "fpn_encoder": TINY_ENCODER if tiny else "mobilenet_v2",
    }
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "wheelhouse").mkdir(exist_ok=True)
    models = [
        ModelSpec(name="cls-resnet18", kind="timm", file="", arch=archs["cls_arch"]),
        ModelSpec(name="unet-resnet18", kind="smp", file="", arch="Unet", encoder=archs["unet_encoder"]),
        ModelSpec(name="fpn-mobilenet", kind="smp", file="", arch="FPN", encoder=archs["fpn_encoder"]),
    ]
    for i, spec in enumerate(models):
        torch.manual_seed(i)
        model = build_model(spec, 4)
        # A training checkpoint, as users have them: the state dict under a key, plus extras.
        torch.save({"epoch": 3, "state_dict": model.state_dict()}, root / "models" / f"{spec.name}.pth")
    config = root / "bundle.toml"
    config.write_text(BUNDLE_TOML.format(**archs), encoding="utf-8")
    return config


def _bundler_command() -> list[str]:
    script = Path(sys.executable).with_name("bundler")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from bundler.cli import main; main()"]


def bench_rebuild(*, quick: bool, tiny: bool = False) -> BenchResult:
    from bundler.config import load_config
    from bundler.dataset.dataset_folder import build_dataset

    result = BenchResult("noop_rebuild_s")
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as tmp:
        config = make_project(Path(tmp), tiny=tiny)
        cfg = load_config(config)
        quiet = Console(file=io.StringIO(), width=120)
        start = time.perf_counter()
        first = build_dataset(cfg, console=quiet)
        first_s = time.perf_counter() - start
        if first.up_to_date:
            raise RuntimeError(f"noop_rebuild_s: the first build of {config} claims to be up to date")
        start = time.perf_counter()
        second = build_dataset(load_config(config), console=quiet)
        second_s = time.perf_counter() - start
        if not second.up_to_date:
            raise RuntimeError(f"noop_rebuild_s: the second build of {config} rebuilt; the no-op check failed")
        start = time.perf_counter()
        cli = subprocess.run(
            [*_bundler_command(), "build", "--config", str(config)], capture_output=True, text=True, check=False
        )
        cli_s = time.perf_counter() - start
        if cli.returncode != 0:
            raise RuntimeError(f"noop_rebuild_s: `bundler build` failed ({cli.returncode}): {cli.stderr[-2000:]}")
        size = sum(p.stat().st_size for p in (Path(tmp) / "models").iterdir())
    result.row(
        "checkpoints", f"{size / 1e6:.1f} MB", "3 models, " + ("tiny encoders" if tiny else "demo architectures")
    )
    result.row("first build", seconds(first_s), "converts the weights, writes the folder")
    result.row("second build_dataset()", seconds(second_s), "up to date: nothing written")
    result.row("second `bundler build`", seconds(cli_s), "the whole command, a fresh interpreter included")
    result.figures.append(Figure("noop_rebuild_s", second_s, Target(2.0, at_most=True)))
    return result
