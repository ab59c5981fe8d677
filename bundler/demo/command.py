"""`bundler demo`: synthetic data, small CPU-trained models, then build, render and dry-run.

1. Synthetic Severstal-like data under `demo_data/` next to `bundle.toml`: `train/`, `holdout/`
   (labelled; the `[dryrun]` paths point at it) and `test/` (unlabelled). A marker file records
   the generator settings; the data is regenerated only when they differ.
2. Every model of `bundle.toml` is trained on the train split and written to its `checkpoint`
   as a training checkpoint (with optimizer state). A sidecar `<checkpoint>.json` records the
   training settings; a model whose checkpoint and sidecar match is not trained again.
3. `build_dataset`, `render_notebook` and (unless skipped) `dry_run` on the same config, then a
   short summary: where everything is, the holdout score against the all-empty submission, the
   projection against the budget, and the Kaggle commands to run next.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bundler.config import BundleConfig, ModelEntry, load_config
from bundler.demo.synthetic import make_dataset
from bundler.demo.train import (
    Size,
    SplitData,
    Task,
    TrainSettings,
    load_pipeline,
    load_split,
    load_split_albumentations,
    save_checkpoint,
    train_model,
)
from bundler.display import shown_path
from bundler.errors import DemoError
from bundler.scoring import dice_score
from bundler.tune import TuneResult, tune
from kernel_src.bundle import sha256_file
from kernel_src.model_kinds import MODEL_KINDS
from kernel_src.models import build_model
from kernel_src.submission import read_masks

DATA_DIR = "demo_data"
MARKER = ".demo-data.json"
GENERATOR_VERSION = 1  # bump when the demo's use of the generator changes


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. The defaults take a few minutes on 2 CPU cores."""

    n_train: int = 240
    n_holdout: int = 40
    n_test: int = 12
    clean_fraction: float = 0.5
    seed: int = 0
    classifier: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=5, batch_size=8, lr=3e-3))
    segmenter: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=3, batch_size=8, lr=3e-3))

    def data_key(self, height: int, width: int) -> dict[str, Any]:
        return {
            "generator": GENERATOR_VERSION,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "n_test": self.n_test,
            "clean_fraction": self.clean_fraction,
            "seed": self.seed,
            "height": height,
            "width": width,
        }


@dataclass(frozen=True)
class DemoData:
    root: Path
    train_images: Path
    train_labels: Path
    train_ids: tuple[str, ...]
    holdout_images: Path
    holdout_labels: Path
    holdout_sample: Path
    holdout_ids: tuple[str, ...]
    test_images: Path
    regenerated: bool


@dataclass(frozen=True)
class DemoResult:
    data: DemoData
    trained: tuple[str, ...]  # models trained by this call
    reused: tuple[str, ...]  # models whose checkpoint was already up to date
    dataset_dir: Path
    notebook: Path
    metadata: Path
    empty_score: float  # mean Dice of the all-empty submission on the holdout
    score: float | None = None  # the dry-run's holdout score (None when skipped or unscored)
    projected_s: float | None = None
    budget_s: float | None = None
    within_budget: bool | None = None
    dry_run_ok: bool | None = None
    dry_run_reason: str = ""
    report: Path | None = None
    tune: TuneResult | None = None  # `bundler tune` on the holdout, after the dry-run
    seconds: float = 0.0


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def _expected_holdout(cfg: BundleConfig, root: Path) -> dict[str, Path]:
    holdout = root / "holdout"
    wanted = {
        "test_dir": holdout / "test_images",
        "sample_submission": holdout / "sample_submission.csv",
        "labels": holdout / "labels.csv",
    }
    for key, path in wanted.items():
        actual = getattr(cfg.dryrun, key)
        if actual is None or Path(actual).resolve() != path.resolve():
            raise DemoError(
                f"bundle.toml: dryrun.{key} = {actual} is not where the demo writes its holdout split; "
                f"set it to {path.relative_to(cfg.root) if path.is_relative_to(cfg.root) else path}"
            )
    return wanted


def make_demo_data(cfg: BundleConfig, settings: DemoSettings, console: Console) -> DemoData:
    """The three synthetic splits under `demo_data/`, reused when the marker's settings match."""
    root = cfg.root / DATA_DIR
    holdout = _expected_holdout(cfg, root)
    h, w = cfg.inference.image_height, cfg.inference.image_width
    key = settings.data_key(h, w)
    marker = root / MARKER
    splits = (
        ("train", settings.n_train, "train_images", settings.seed + 1),
        ("holdout", settings.n_holdout, "test_images", settings.seed + 2),
        ("test", settings.n_test, "test_images", settings.seed + 3),
    )
    current = _read_json(marker)
    regenerate = current != key or not all((root / name / images).is_dir() for name, _, images, _ in splits)
    if regenerate:
        marker.unlink(missing_ok=True)
        with _progress(console) as progress:
            task = progress.add_task("synthetic data", total=len(splits), info="")
            for name, n, images, seed in splits:
                progress.update(task, info=f"{name}: {n} images")
                if (root / name).exists():
                    shutil.rmtree(root / name)
                make_dataset(
                    root / name, n, seed=seed, height=h, width=w, clean_fraction=settings.clean_fraction,
                    image_dir_name=images,
                )  # fmt: skip
                progress.advance(task)
        (root / "test" / "labels.csv").unlink()  # the test split is unlabelled, like Kaggle's
        marker.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    else:
        console.print(f"[green]reusing[/] synthetic data in {escape(str(root))} (same generator settings)")
    ids = {name: tuple(sorted(p.name for p in (root / name / images).glob("*.jpg"))) for name, _, images, _ in splits}
    return DemoData(
        root=root,
        train_images=root / "train" / "train_images",
        train_labels=root / "train" / "labels.csv",
        train_ids=ids["train"],
        holdout_images=holdout["test_dir"],
        holdout_labels=holdout["labels"],
        holdout_sample=holdout["sample_submission"],
        holdout_ids=ids["holdout"],
        test_images=root / "test" / "test_images",
        regenerated=regenerate,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _size_of(cfg: BundleConfig, entry: ModelEntry) -> Size:
    return entry.spec.input_size or (cfg.inference.image_height, cfg.inference.image_width)


def training_key(cfg: BundleConfig, entry: ModelEntry, settings: TrainSettings, data_key: dict[str, Any]) -> Any:
    """What a checkpoint depends on; stored next to it so a second demo can reuse it."""
    s = entry.spec
    model: dict[str, Any] = {"kind": s.kind, "arch": s.arch, "encoder": s.encoder}
    model["input_size"] = list(_size_of(cfg, entry))
    norm: dict[str, Any] = {"mean": list(s.mean), "std": list(s.std)}
    if entry.preprocess is not None:  # the pipeline decides size and normalisation
        load_pipeline(entry.preprocess, (cfg.inference.image_height, cfg.inference.image_width))
        model["input_size"] = None
        norm = {"preprocess": sha256_file(entry.preprocess)}
    return json.loads(
        json.dumps(
            {
                "model": model,
                "normalization": norm,
                "num_classes": cfg.inference.num_classes,
                "training": settings.to_dict(),
                "data": data_key,
                "torch": torch.__version__.split("+")[0],
            }
        )
    )


def _sidecar(entry: ModelEntry) -> Path:
    return entry.checkpoint.with_name(entry.checkpoint.name + ".json")


def train_demo_models(
    cfg: BundleConfig, data: DemoData, settings: DemoSettings, console: Console
) -> tuple[list[str], list[str]]:
    """Train every model of `cfg` whose checkpoint is missing or stale. Returns (trained, reused)."""
    data_key = settings.data_key(cfg.inference.image_height, cfg.inference.image_width)
    todo: list[tuple[ModelEntry, TrainSettings, Any]] = []
    reused: list[str] = []
    for entry in cfg.models:
        if MODEL_KINDS[entry.spec.kind].builder is None:  # nothing to train: the file is the model
            trained = " and ".join(
                f"{k.name!r} {' or '.join(role + 's' for role in k.roles)}"
                for k in MODEL_KINDS.values()
                if k.builder is not None
            )
            raise DemoError(
                f"bundle.toml: model {entry.spec.name!r} has kind {entry.spec.kind!r}; the demo trains only {trained}"
            )
        train = settings.classifier if entry.role == "classifier" else settings.segmenter
        key = training_key(cfg, entry, train, data_key)
        if entry.checkpoint.is_file() and _read_json(_sidecar(entry)) == key:
            reused.append(entry.spec.name)
        else:
            todo.append((entry, train, key))
    if reused:
        console.print(f"[green]reusing[/] checkpoints of {', '.join(reused)} (same training settings)")
    if not todo:
        return [], reused

    sizes = sorted({_size_of(cfg, e) for e, _, _ in todo if e.preprocess is None})
    labels = read_masks(data.train_labels, cfg.inference.num_classes, labels=True)
    n = cfg.inference.num_classes
    with _progress(console) as progress:
        task = progress.add_task("loading train images", total=None, info=f"{len(data.train_ids)} images")
        split = load_split(data.train_images, labels, data.train_ids, sizes, num_classes=n) if sizes else {}
        progress.update(task, total=1, completed=1)
        for entry, train, key in todo:
            if entry.preprocess is not None:  # trained on what its albumentations pipeline makes
                pipeline = load_pipeline(entry.preprocess, (cfg.inference.image_height, cfg.inference.image_width))
                own = load_split_albumentations(data.train_images, labels, data.train_ids, pipeline, num_classes=n)
                _train_one(cfg, entry, train, key, own, progress)
            else:
                _train_one(cfg, entry, train, key, split[_size_of(cfg, entry)], progress)
    return [e.spec.name for e, _, _ in todo], reused


def _train_one(
    cfg: BundleConfig, entry: ModelEntry, train: TrainSettings, key: Any, data: SplitData, progress: Progress
) -> None:
    name = entry.spec.name
    torch.manual_seed(train.seed)
    model = build_model(entry.spec, cfg.inference.num_classes)
    h, w = data.images.shape[-2:]
    source = f", {entry.preprocess.name}" if entry.preprocess is not None else ""
    task = progress.add_task(f"training {name} ({h}x{w}{source})", total=None, info="")

    def step(done: int, total: int, loss: float) -> None:
        progress.update(task, completed=done, total=total, info=f"loss {loss:.3f}")

    task_kind: Task = "classifier" if entry.role == "classifier" else "segmenter"
    # a pipeline's images are normalised already: train_model's own normalisation is then the identity
    mean, std = (entry.spec.mean, entry.spec.std) if entry.preprocess is None else ((0.0,) * 3, (1.0,) * 3)
    report, optimizer = train_model(model, task_kind, data, train, mean=mean, std=std, on_step=step)
    save_checkpoint(entry.checkpoint, model, optimizer, epoch=report.epochs, metrics=report.metrics())
    _sidecar(entry).write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    progress.update(task, info=f"loss {report.first_loss:.3f} -> {report.last_loss:.3f} in {report.seconds:.0f} s")


def empty_submission_score(cfg: BundleConfig, data: DemoData) -> float:
    """Mean Dice of a submission that predicts no defect anywhere, on the holdout."""
    n = cfg.inference.num_classes
    frame = pd.DataFrame(
        {
            "ImageId_ClassId": [f"{i}_{c}" for i in data.holdout_ids for c in range(1, n + 1)],
            "EncodedPixels": [""] * (len(data.holdout_ids) * n),
        }
    )
    return dice_score(
        frame,
        data.holdout_labels,
        num_classes=n,
        shape=(cfg.inference.image_height, cfg.inference.image_width),
        order=cfg.inference.rle_order,
        image_ids=data.holdout_ids,
    ).mean


def run_demo(
    config_path: Path,
    *,
    console: Console,
    dry_run: bool = True,
    settings: DemoSettings | None = None,
    runtime: str | None = None,
) -> DemoResult:
    """Everything `bundler demo` does; returns where things are and the figures it printed. `runtime`
    overrides `[dryrun] runtime` (`bundler demo --runtime`, as `bundler dry-run --runtime`)."""
    from bundler.dataset.dataset_folder import build_dataset
    from bundler.dryrun.command import dry_run as run_dry_run
    from bundler.notebook.render import render_notebook

    began = time.perf_counter()
    settings = settings or DemoSettings()
    cfg = load_config(config_path)
    if runtime is not None:
        cfg = replace(cfg, dryrun=replace(cfg.dryrun, runtime=runtime))
    console.rule("[bold]1/5 synthetic data and demo models")
    data = make_demo_data(cfg, settings, console)
    trained, reused = train_demo_models(cfg, data, settings, console)
    empty = empty_submission_score(cfg, data)
    console.rule("[bold]2/5 bundler build")
    build = build_dataset(cfg, console=console)
    console.rule("[bold]3/5 bundler render-notebook")
    render = render_notebook(cfg, console=console)
    result = DemoResult(
        data=data,
        trained=tuple(trained),
        reused=tuple(reused),
        dataset_dir=build.out,
        notebook=render.notebook,
        metadata=render.metadata,
        empty_score=empty,
    )
    if dry_run:
        console.rule("[bold]4/5 bundler dry-run")
        verdict = run_dry_run(cfg, console=console)
        s = verdict.summary
        report = verdict.out / "report.html"
        result = replace(
            result,
            score=s.get("score"),
            projected_s=s.get("projected_seconds"),
            budget_s=s.get("budget_seconds"),
            within_budget=s.get("within_budget"),
            dry_run_ok=verdict.ok,
            dry_run_reason=verdict.reason,
            report=report if report.is_file() else None,
        )
        console.rule("[bold]5/5 bundler tune (holdout, 5-fold CV; bundle.toml left as it is)")
        result = replace(result, tune=tune(cfg, console=console, folds=min(5, len(data.holdout_ids))))
    result = replace(result, seconds=time.perf_counter() - began)
    print_summary(cfg, result, console)
    return result


def tune_note(result: TuneResult) -> str:
    """Current vs tuned (each fold tuned on the others), and what tuning did for each class that the
    models never predict (every labelled defect missed under both settings)."""
    gain = result.tuned - result.current
    note = f"{result.current:.4f} -> {result.tuned:.4f} mean Dice ({gain:+.4f}) with the proposed values"
    idle = []
    for c in result.summary["losses_tuned"]:
        k = int(c["class_id"]) - 1
        labelled = int(c["missed"]) + int(c["partial"])
        if labelled and int(c["missed"]) == labelled and int(c["false_positive"]) == 0:
            idle.append(
                f"class {k + 1}: {result.current_per_class[k]:.3f} -> {result.tuned_per_class[k]:.3f}, all "
                f"{labelled} defects still missed (the models never predict it: tuning only keeps it empty)"
            )
    return note + ("; " + "; ".join(idle) if idle else "")


def print_summary(cfg: BundleConfig, result: DemoResult, console: Console) -> None:
    """The closing note: where things are, score against the all-empty baseline, time, next steps."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("dataset folder", shown_path(result.dataset_dir))
    table.add_row("notebook", shown_path(result.notebook))
    table.add_row("kernel metadata", shown_path(result.metadata))
    if result.report is not None:
        table.add_row("dry-run report", shown_path(result.report))
    if result.score is not None:
        verdict = "[green]beats[/]" if result.score > result.empty_score else "[red]does not beat[/]"
        table.add_row(
            "holdout score",
            f"{result.score:.4f} (mean Dice) {verdict} the all-empty submission's {result.empty_score:.4f}",
        )
    else:
        table.add_row("holdout score", f"not measured (dry-run skipped); all-empty scores {result.empty_score:.4f}")
    if result.projected_s is not None and result.budget_s is not None:
        fits = "[green]within[/]" if result.within_budget else "[red]over[/]"
        table.add_row(
            "projection",
            f"{result.projected_s:,.0f} s for {cfg.competition.hidden_test_images} hidden images, {fits} the "
            f"{result.budget_s:,.0f} s budget (this machine's speed unless calibrated)",
        )
    if result.dry_run_ok is not None:
        table.add_row("dry-run", "[green]PASS[/]" if result.dry_run_ok else f"[red]FAIL[/]: {result.dry_run_reason}")
    if result.tune is not None:
        table.add_row("tuned (held-out CV)", tune_note(result.tune))
        table.add_row("tune report", shown_path(result.tune.report))
    table.add_row(
        "models", f"trained {', '.join(result.trained) or 'none'}; reused {', '.join(result.reused) or 'none'}"
    )
    table.add_row("demo time", f"{result.seconds:,.0f} s")
    console.rule("[bold]demo done")
    console.print(table)
    ds = shown_path(result.dataset_dir)
    kernel_dir = shown_path(result.metadata.parent)
    console.print("\n[bold]Next, on a machine with your Kaggle credentials[/] (edit dataset.id and kernel.id first):")
    console.print("  bundler push --wait     [dim]# dataset version, ready, pinned; notebook pushed and followed[/]")
    console.print("  bundler submit --wait   [dim]# submit that version, print the public score[/]")
    console.print("[dim]or by hand with the kaggle CLI (wait for the dataset version to be ready before the push):[/]")
    console.print(
        f"  kaggle datasets create -p {ds}        [dim]# first time; later: kaggle datasets version -p {ds} -m MSG[/]"
    )
    console.print(f"  kaggle kernels push -p {kernel_dir}")
    console.print(
        f"  kaggle competitions submit -c {cfg.competition.slug} -k {cfg.kernel.id} -v N -f submission.csv -m MSG"
    )
