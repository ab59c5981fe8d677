"""`bundler demo --task classification`: a synthetic Digit Recognizer, two small CNNs, then the
regular commands on it.

1. The competition's files under `<project>/demo_data/` (`bundler.demo.digits`): train.csv,
   test.csv, sample_submission.csv, and the labelled twin `holdout/` the dry-run scores. A marker
   records the generator settings; the files are regenerated only when they differ.
2. Two timm CNNs (`DIGIT_MODELS`) trained on train.csv on the CPU (`bundler.demo.digits_train`),
   written as training checkpoints under `<project>/models/` with a sidecar `<checkpoint>.json`
   of what they depend on (a checkpoint whose sidecar matches is reused), each scored on the
   holdout (accuracy) as a check of the training itself.
3. `<project>/bundle.toml` (`write_bundle_toml`, the one place the demo's settings are written),
   then `bundler build`, `render-notebook` and `dry-run` (scored by accuracy) on it (`bundler tune` has no
   search for the image-level tasks yet).

The project folder is its own: the Severstal demo's bundle.toml is never touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bundler.demo.digits import DigitSplits, make_competition, read_pixel_csv
from bundler.demo.digits_train import predict_proba, prepare, train_classifier
from bundler.demo.train import TrainSettings, save_checkpoint
from bundler.display import shown_path

DATA_DIR = "demo_data"
MARKER = ".demo-digits.json"
GENERATOR_VERSION = 1  # bump when the digits' drawing changes
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitModel:
    """One of the demo's CNNs: its name in bundle.toml and its timm architecture."""

    name: str
    arch: str


# timm's smallest CNNs (a ResNet and a BYOBNet of a few hundred thousand weights): 28 x 28 is
# enough for their strides, and two of them train in about a minute on two CPU cores
DIGIT_MODELS = (DigitModel("digits-resnet", "test_resnet"), DigitModel("digits-byobnet", "test_byobnet"))


@dataclass(frozen=True)
class DigitDemoSettings:
    """Sizes of the classification demo."""

    n_train: int = 2000
    n_test: int = 1000
    n_holdout: int = 500
    seed: int = 0
    training: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=3, batch_size=64, lr=3e-3))

    def data_key(self) -> dict[str, Any]:
        return {
            "generator": GENERATOR_VERSION,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_holdout": self.n_holdout,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TrainedDigitModel:
    name: str
    checkpoint: Path
    trained: bool  # False: an up-to-date checkpoint was reused
    holdout_accuracy: float
    seconds: float


@dataclass(frozen=True)
class DigitDemoResult:
    project: Path
    config: Path
    data: DigitSplits
    models: tuple[TrainedDigitModel, ...]
    ensemble_accuracy: float  # the two models' mean probabilities on the holdout
    steps: dict[str, Any] = field(default_factory=dict)  # what each regular command reported
    seconds: float = 0.0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def make_digit_data(project: Path, settings: DigitDemoSettings, console: Console) -> DigitSplits:
    """The competition's files under `<project>/demo_data/`, reused when the marker's settings match."""
    root = project / DATA_DIR
    marker = root / MARKER
    key = settings.data_key()
    expected = ("train.csv", "test.csv", "sample_submission.csv", "holdout/test.csv", "holdout/labels.csv")
    if _read_json(marker) == key and all((root / name).is_file() for name in expected):
        console.print(f"[green]reusing[/] synthetic digits in {escape(str(root))} (same generator settings)")
        return DigitSplits(
            root, root / "train.csv", root / "test.csv", root / "sample_submission.csv",
            root / "holdout" / "test.csv", root / "holdout" / "sample_submission.csv", root / "holdout" / "labels.csv",
        )  # fmt: skip
    marker.unlink(missing_ok=True)
    began = time.perf_counter()
    splits = make_competition(
        root, n_train=settings.n_train, n_test=settings.n_test, n_holdout=settings.n_holdout, seed=settings.seed
    )
    marker.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    console.print(
        f"synthetic digits: {settings.n_train} train, {settings.n_test} test, {settings.n_holdout} holdout rows "
        f"in {time.perf_counter() - began:.1f} s ({escape(str(root))})"
    )
    return splits


def checkpoint_of(project: Path, model: DigitModel) -> Path:
    return project / "models" / f"{model.name}.pth"


def _training_key(model: DigitModel, settings: DigitDemoSettings) -> Any:
    return json.loads(
        json.dumps(
            {
                "model": {"kind": "timm", "arch": model.arch, "input_size": [28, 28]},
                "normalization": {"mean": list(MEAN), "std": list(STD)},
                "num_classes": NUM_CLASSES,
                "training": settings.training.to_dict(),
                "data": settings.data_key(),
                "torch": torch.__version__.split("+")[0],
            }
        )
    )


def _build(model: DigitModel) -> torch.nn.Module:
    import timm  # type: ignore[import-untyped]

    built: torch.nn.Module = timm.create_model(model.arch, pretrained=False, num_classes=NUM_CLASSES)
    return built


def train_digit_models(
    project: Path, data: DigitSplits, settings: DigitDemoSettings, console: Console
) -> tuple[list[TrainedDigitModel], float]:
    """Each of DIGIT_MODELS trained (or reused) and scored on the holdout; and the accuracy of their
    mean probabilities (what the notebook's ensemble will predict, with the identity view)."""
    holdout_images, _ = read_pixel_csv(data.holdout_test_csv, labelled=False)
    truth = np.loadtxt(data.holdout_labels, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)[:, 1]
    holdout = prepare(holdout_images)
    train: tuple[torch.Tensor, torch.Tensor] | None = None
    results, probabilities = [], []
    for model in DIGIT_MODELS:
        checkpoint = checkpoint_of(project, model)
        sidecar = checkpoint.with_name(checkpoint.name + ".json")
        key = _training_key(model, settings)
        net = _build(model)
        began = time.perf_counter()
        reuse = checkpoint.is_file() and _read_json(sidecar) == key
        if reuse:
            net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
        else:
            if train is None:
                images, labels = read_pixel_csv(data.train_csv, labelled=True)
                assert labels is not None
                train = (prepare(images), torch.from_numpy(labels))
            torch.manual_seed(settings.training.seed)
            net = _build(model)
            report, optimizer = train_classifier(net, *train, settings.training, mean=MEAN, std=STD)
            save_checkpoint(checkpoint, net, optimizer, epoch=report.epochs, metrics=report.metrics())
            sidecar.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
        proba = predict_proba(net, holdout, mean=MEAN, std=STD)
        probabilities.append(proba)
        accuracy = float((proba.argmax(dim=1).numpy() == truth).mean())
        results.append(TrainedDigitModel(model.name, checkpoint, not reuse, accuracy, time.perf_counter() - began))
        verb = "reused" if reuse else "trained"
        console.print(
            f"{verb} {model.name} ({model.arch}): holdout accuracy {accuracy:.4f} "
            f"in {time.perf_counter() - began:.0f} s"
        )
    mean = torch.stack(probabilities).mean(dim=0)
    return results, float((mean.argmax(dim=1).numpy() == truth).mean())


def bundle_toml(settings: DigitDemoSettings) -> str:
    """The demo's bundle.toml. The image-level keys are those of the task setting ([task],
    [submission] preset: docs/config.md); test.csv is read by the CSV pixel-row reader."""
    models = "\n".join(
        f"""
[[classifiers]]
name = "{m.name}"
kind = "timm"
arch = "{m.arch}"
checkpoint = "models/{m.name}.pth"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
tta = ["identity"]                           # a flipped digit is another digit
"""
        for m in DIGIT_MODELS
    )
    return f"""# The classification demo's configuration, written by `bundler demo --task classification`:
# a synthetic Digit Recognizer (28 x 28 grey digits as CSV pixel rows) and two small timm CNNs.
# Relative paths are resolved against this folder. Every key is documented in docs/config.md.

[bundle]
name = "digits-demo"

[competition]
slug = "digit-recognizer"
sample_submission = "sample_submission.csv"
hidden_test_images = 28000
time_limit_s = 3600

[dataset]
id = "your-kaggle-name/bundler-digits-demo"
title = "bundler digits demo bundle"
license = "CC0-1.0"
private = true
out = "build/dataset"

[target]
python = "3.12"
baseline = "kaggle-2026-08-12"
requirements = []                            # timm is in the image

[kernel]
id = "your-kaggle-name/digits-bundler-inference"
title = "Digits bundler inference"
notebook = "build/inference.ipynb"
enable_gpu = true
machine_shape = "NvidiaTeslaT4"

[inference]
num_classes = {NUM_CLASSES}
image_height = 28
image_width = 28
batch_size = 256
device = "auto"

[task]
name = "classification"
labels = "single"

[input]
reader = "csv_pixels"                        # test.csv: one image a row, pixel0..pixel783
path = "test.csv"
shape = [28, 28]

[submission]
preset = "digit-recognizer"                  # ImageId,Label with 1-based ImageIds

[dryrun]
test_dir = "{DATA_DIR}/holdout"
sample_submission = "{DATA_DIR}/holdout/sample_submission.csv"
labels = "{DATA_DIR}/holdout/labels.csv"     # ImageId,Label: the dry-run scores accuracy
{models}"""


def write_bundle_toml(project: Path, settings: DigitDemoSettings) -> Path:
    path = project / "bundle.toml"
    path.write_text(bundle_toml(settings), encoding="utf-8")
    return path


def run_classification_demo(
    project: Path, *, console: Console, dry_run: bool = True, settings: DigitDemoSettings | None = None
) -> DigitDemoResult:
    """Everything `bundler demo --task classification` does, in `project` (created when missing)."""
    from bundler.config import load_config
    from bundler.dataset.dataset_folder import build_dataset
    from bundler.dryrun.command import dry_run as run_dry_run
    from bundler.notebook.render import render_notebook

    began = time.perf_counter()
    settings = settings or DigitDemoSettings()
    project.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]1/4 synthetic digits and two small CNNs")
    data = make_digit_data(project, settings, console)
    models, ensemble = train_digit_models(project, data, settings, console)
    config = write_bundle_toml(project, settings)
    result = DigitDemoResult(project, config, data, tuple(models), ensemble)
    cfg = load_config(config)
    steps: dict[str, Any] = {}
    console.rule("[bold]2/4 bundler build")
    steps["build"] = build_dataset(cfg, console=console).out
    console.rule("[bold]3/4 bundler render-notebook")
    steps["notebook"] = render_notebook(cfg, console=console).notebook
    if dry_run:
        console.rule("[bold]4/4 bundler dry-run")
        verdict = run_dry_run(cfg, console=console)
        steps.update(dry_run_ok=verdict.ok, dry_run_reason=verdict.reason, score=verdict.summary.get("score"))
        # `bundler tune` has no search for the image-level tasks yet (issue 22 item 5): not run, and said
        console.print("[dim]bundler tune: not run (no search for classification yet; the dry-run scored it)[/]")
    result = replace(result, steps=steps, seconds=time.perf_counter() - began)
    print_digit_summary(result, console)
    return result


def print_digit_summary(result: DigitDemoResult, console: Console) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("project", shown_path(result.project))
    table.add_row("bundle.toml", shown_path(result.config))
    for m in result.models:
        table.add_row(m.name, f"holdout accuracy {m.holdout_accuracy:.4f} ({'trained' if m.trained else 'reused'})")
    table.add_row("both (mean probabilities)", f"holdout accuracy {result.ensemble_accuracy:.4f}")
    if result.steps.get("score") is not None:
        table.add_row("dry-run score", f"{float(result.steps['score']):.4f} (accuracy on the holdout)")
    if "dry_run_ok" in result.steps:
        reason = escape(str(result.steps["dry_run_reason"]))
        table.add_row("dry-run", "[green]PASS[/]" if result.steps["dry_run_ok"] else f"[red]FAIL[/]: {reason}")
    table.add_row("demo time", f"{result.seconds:,.0f} s")
    console.rule("[bold]classification demo done")
    console.print(table)
