"""The pipeline: sample submission -> models -> streamed batches -> submission.csv + profile.json.

`run(spec, bundle_dir=..., test_dir=..., sample_submission=..., out_dir=...)` resolves the devices,
starts the profiler and hands the run to the engine of the spec's task (`ENGINES[task.engine]`,
kernel_src.tasks): `images` for classification, regression and ordinal (kernel_src.image_run),
`masks` for segmentation, which:

1. reads the sample submission found at run time (its rows, layout and column order);
2. loads every model (timed) and checks it with a test forward: configuration problems
   (`ModelError`, `SpecError`, `BundleError` from `kernel_src.errors`) raise here, before any image;
3. streams the images in batches of `spec.batch_size` from the background loader: gating and
   ensemble on this thread, then post-processing, RLE and the rows written in one worker thread
   while the next batch is predicted (at most one batch waits there; nothing accumulates);
   under `image_sizes = "own"` a batch holds images of one size only (each size fills its own);
   with an `encode_size`, probabilities are resized to it before post-processing; in a
   per-object `[submission]` layout each connected component is its own RLE;
4. after every batch the budget guard may step down (fewer TTA views, fewer models, empty masks);
5. always writes every row of `submission.csv`, and `profile.json` even when it raises.

Bad images (missing, unreadable) get empty masks and a warning naming them; converted ones
(single-channel, other size) are predicted. NaN in a model's output for an image leaves that model
out for that image only (the other models' weights renormalised for it); +/-Inf logits (an fp16
overflow) are saturated probabilities (sigmoid gives 1 or 0), not failures. profile.json counts:
- `problems.nonfinite`: images that got empty masks because every segmentation model gave NaN;
- `nonfinite_outputs.models`: {model: images whose output from that model held NaN};
- `nonfinite_outputs.segmenter_dropped` / `classifier_dropped`: images predicted / gated without
  one or more models that gave NaN for them (the others covered them);
- `nonfinite_outputs.ungated`: images every classifier gave NaN for, segmented without gating.

A model that raises mid-run is dropped (recorded in `problems.model_failures`) and the batch is
predicted again without it; with no segmentation model left, every remaining image gets empty masks.
A fault outside the models' forwards (`kernel_src.predict`: out of memory already retried in halves
down to one image, or a CUDA error in the merge) gives that batch's images empty masks, is recorded
in `problems.batch_failures` (the image ids and the error) and the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .devices import DeviceSet, resolve_devices
from .errors import BatchError, BundleError, ModelRunError
from .guard import BudgetGuard
from .images import ImageLoader, LoadedImage, PixelSettings, shape_batches
from .inputs import READERS
from .models import PRECISION_CHECK_IMAGES, load_models
from .paths import PROFILE_FILE, SUBMISSION_FILE
from .postprocess import postprocess
from .predict import BatchResult, Predictor
from .profiler import Profiler
from .readers import Reader, open_reader
from .rle import encode, encode_objects
from .spec import InferenceSpec
from .submission import SubmissionWriter, read_sample_submission

WARNINGS_PER_KIND = 20  # warnings printed per problem kind; the full lists are in profile.json


@dataclass(frozen=True)
class RunResult:
    submission_path: Path
    profile_path: Path
    profile: dict[str, Any]


class _Reporter:
    """Warnings on stderr (a few per kind, then a count) and progress lines on stdout."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self._seen: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        seen = self._seen[kind] = self._seen.get(kind, 0) + 1
        if seen <= WARNINGS_PER_KIND:
            print(f"WARNING [{kind}] {message}", file=sys.stderr, flush=True)
        if seen == WARNINGS_PER_KIND:
            print(f"WARNING [{kind}] further {kind} warnings are only listed in profile.json", file=sys.stderr)

    def info(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)


class _Engine:
    """One run's loop over batches; holds the state a batch updates."""

    def __init__(
        self,
        spec: InferenceSpec,
        predictor: Predictor,
        guard: BudgetGuard,
        profiler: Profiler,
        writer: SubmissionWriter,
        reporter: _Reporter,
        total: int,
    ) -> None:
        self.spec = spec
        self.predictor = predictor
        self.guard = guard
        self.profiler = profiler
        self.writer = writer
        self.reporter = reporter
        self.total = total
        self.done = 0
        self.batches = 0
        self.progress_every = max(1, -(-total // spec.batch_size) // 20)
        self._empty: list[str | tuple[str, ...]] = [""] * spec.num_classes
        self._worker: ThreadPoolExecutor | None = None  # post-processing, RLE and writing (see run)
        self._pending: Future[None] | None = None  # the batch in the worker

    @property
    def stopped(self) -> bool:
        """Nothing more will be predicted: the guard ran out of time, or every segmenter failed."""
        return self.guard.empty_rest or not self.predictor.segmenters

    def run(self, loader: ImageLoader) -> None:
        """Predict batch by batch; once stopped, leave the rest to the writer's empty rows
        (without decoding them). Images of different sizes (`image_sizes = "own"`) never share a
        batch: each size fills its own, and the writer holds rows that come ahead of their turn.

        Post-processing, RLE and writing a batch's rows run in one worker thread while the next
        batch is predicted: at most one batch waits there (its probabilities held), and the rows
        reach the writer in batch order, so the submission is the one a serial loop writes."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprocess") as worker:
            self._worker = worker
            try:
                self._run(loader)
            except BaseException:
                with contextlib.suppress(Exception):  # the error in flight is the one to report
                    self._wait()
                raise
            finally:
                self._worker = None
            self._wait()  # the last batch's rows written (or its error raised) before the writer closes

    def _run(self, loader: ImageLoader) -> None:
        for batch in shape_batches(self._timed(loader), self.spec.batch_size, _image, lambda: self.stopped):
            self._batch(batch)
        if self.done < self.total:
            self.reporter.warn("empty_rest", f"the last {self.total - self.done} images get empty masks")

    def _timed(self, loader: ImageLoader) -> Iterator[LoadedImage]:
        """The loader's images, charging the time spent waiting for them and decoding them."""
        iterator = iter(loader)
        while True:
            begin = time.perf_counter()
            loaded = next(iterator, None)
            self.profiler.add("wait_images", time.perf_counter() - begin)
            if loaded is None:
                return
            self.profiler.add("decode", loaded.decode_s)
            yield loaded

    def _report_problems(self, batch: Sequence[LoadedImage]) -> None:
        for loaded in batch:
            if loaded.issue is not None:
                self.profiler.problem(loaded.issue, loaded.image_id, loaded.problem)
                suffix = "" if loaded.issue == "converted" else " -> empty masks"
                self.reporter.warn(loaded.issue, f"{loaded.problem}{suffix}")

    def _predict(self, images: np.ndarray[Any, np.dtype[np.uint8]], image_ids: Sequence[str]) -> BatchResult | None:
        """Predict, dropping any model that fails; None when no segmentation model is left or the
        batch failed outside the models (recorded: its images get empty masks)."""
        while self.predictor.segmenters:
            try:
                return self.predictor.predict(images)
            except BatchError as e:
                ids = list(image_ids)
                self.profiler.problem("batch_failures", {"images": ids, "after_images": self.done, "error": e.detail})
                self.reporter.warn(
                    "batch_failure",
                    f"{e} -> empty masks for {', '.join(ids[:3])}"
                    + (f" and {len(ids) - 3} more" if len(ids) > 3 else ""),
                )
                return None
            except ModelRunError as e:
                self.profiler.problem(
                    "model_failures", {"model": e.model, "after_images": self.done, "error": e.detail}
                )
                self.reporter.warn("model_failure", f"{e}; dropped after {self.done} images")
                self.predictor.drop(e.model)
                self.guard.forget(e.model)
        return None

    def _report_nonfinite(self, image_ids: Sequence[str], result: BatchResult) -> None:
        """Count (profile.json `nonfinite_outputs`, `problems.nonfinite`) and warn about every model
        output with NaN; `image_ids` are the ids of the batch's predicted images, in order."""
        record = self.profiler.nonfinite_outputs
        for nan, role in ((result.nan_classifiers, "classifier"), (result.nan_segmenters, "segmenter")):
            for j, names in sorted(nan.items()):
                for name in names:
                    record["models"][name] = record["models"].get(name, 0) + 1
                image_id, models = image_ids[j], ", ".join(names)
                if role == "segmenter" and result.nonfinite[j]:
                    self.profiler.problem("nonfinite", image_id, f"{image_id}: NaN in the output of {models}")
                    self.reporter.warn("nonfinite", f"{image_id}: NaN in the output of {models} -> empty masks")
                elif role == "classifier" and result.ungated[j]:
                    record["ungated"] += 1
                    self.reporter.warn("nonfinite_output", f"{image_id}: NaN in the output of {models} -> not gated")
                else:
                    record[f"{role}_dropped"] += 1
                    self.reporter.warn(
                        "nonfinite_output", f"{image_id}: NaN in the output of {models} -> left out for this image"
                    )

    def _predicted(self, batch: Sequence[LoadedImage]) -> tuple[list[int], BatchResult] | None:
        """The batch's prediction (on this thread) and the indices of its predicted images; None
        when nothing of it is predicted (no readable image, the run stopped, no model left)."""
        valid = [i for i, loaded in enumerate(batch) if loaded.image is not None]
        if not valid or self.stopped:
            return None
        images = np.stack([image for i in valid if (image := batch[i].image) is not None])
        result = self._predict(images, [batch[i].image_id for i in valid])
        if result is None:
            return None
        gating = self.profiler.gating_record
        gating["images_segmented"] += int(result.segmented.sum())
        gating["images_skipped"] += result.images_skipped
        gating["pairs_gated_out"] += result.pairs_gated_out
        self._report_nonfinite([batch[i].image_id for i in valid], result)
        return valid, result

    def _rles(
        self, batch: Sequence[LoadedImage], predicted: tuple[list[int], BatchResult] | None
    ) -> list[list[str | tuple[str, ...]]]:
        """One RLE list per image of `batch` (empty strings for images not predicted); in a
        per-object layout a class's entry is a tuple of one RLE per object. Runs in the worker
        thread: its stages are wall-timed there (no device events, no syncs)."""
        rles: list[list[str | tuple[str, ...]]] = [list(self._empty) for _ in batch]
        if predicted is None:
            return rles
        valid, result = predicted
        keep = [j for j in range(len(valid)) if result.segmented[j] and not result.nonfinite[j]]
        begin = time.perf_counter()
        masks = {
            j: postprocess(self._at_encode_size(result.probs[j]), self.spec.postprocess)
            & result.allowed[j][:, None, None]
            for j in keep
        }
        middle = time.perf_counter()
        self.profiler.add("postprocess", middle - begin)
        objects = self.spec.submission.per_object
        for j, mask in masks.items():
            order = self.spec.rle_order
            if objects:
                rles[valid[j]] = [tuple(encode_objects(mask[k], order)) for k in range(mask.shape[0])]
            else:
                rles[valid[j]] = [encode(mask[k], order) for k in range(mask.shape[0])]
        self.profiler.add("rle", time.perf_counter() - middle)
        return rles

    def _finish(self, batch: Sequence[LoadedImage], predicted: tuple[list[int], BatchResult] | None) -> None:
        """The worker's part of a batch: post-processing, RLE, and its rows to the writer."""
        rles = self._rles(batch, predicted)
        begin = time.perf_counter()
        for loaded, image_rles in zip(batch, rles, strict=True):
            self.writer.add(loaded.image_id, image_rles)
        self.profiler.add("write", time.perf_counter() - begin)

    def _wait(self) -> None:
        """Wait for the batch in the worker (re-raising its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _at_encode_size(self, probs: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """[C, H, W] probabilities resized (bilinear) to `encode_size` when one is set and differs."""
        size = self.spec.encode_size
        if size is None or tuple(probs.shape[1:]) == size:
            return probs
        resized = F.interpolate(torch.from_numpy(probs)[None], size=size, mode="bilinear", align_corners=False)
        return resized[0].numpy()

    def _batch(self, batch: Sequence[LoadedImage]) -> None:
        if self.batches == 0:
            self.profiler.mark_first_batch()
            self.guard.start()
        before = self.profiler.stage_seconds()
        self._report_problems(batch)
        predicted = self._predicted(batch)
        self._wait()  # the previous batch's rows: at most one batch in the worker
        if self._worker is None:
            self._finish(batch, predicted)
        else:
            self._pending = self._worker.submit(self._finish, batch, predicted)
        self.done += len(batch)
        self.batches += 1
        self.profiler.images = self.done
        self.profiler.flush()  # the batch's results are on the host: its events are complete
        self.profiler.batch_done(self.done)
        after = self.profiler.stage_seconds()
        model_s = {
            name: after.get(f"segmenter:{name}", 0.0) - before.get(f"segmenter:{name}", 0.0)
            for name in self.guard.active
        }
        # The classifiers' seconds: a part of the guard's projection that no step down saves.
        classifier_s = sum(s - before.get(k, 0.0) for k, s in after.items() if k.startswith("classifier:"))
        for step in self.guard.after_batch(self.done, len(batch), model_s, classifier_s):
            if step.action == "drop_tta" and step.model is not None:
                self.predictor.set_views(step.model, step.views)
            elif step.action == "drop_model" and step.model is not None:
                self.predictor.drop(step.model)
            self.reporter.warn(
                "budget",
                f"after {step.after_images} images, projected {step.projected_s:.0f} s of "
                f"{self.guard.budget_s:.0f} s: {step.action} ({step.detail})",
            )
        if self.batches % self.progress_every == 0 or self.done == self.total:
            self._progress()

    def _progress(self) -> None:
        now = self.profiler.clock()
        elapsed = now - self.profiler.started_at
        first = self.profiler.first_batch_at if self.profiler.first_batch_at is not None else now
        per_image = (now - first) / max(self.done, 1)
        projected = elapsed + (self.total - self.done) * per_image
        self.reporter.info(
            f"[{self.done:>6}/{self.total} images] {elapsed:7.1f} s elapsed, {per_image * 1000:6.1f} ms/image, "
            f"projected {projected:7.1f} s of {self.guard.budget_s:.0f} s"
        )


def _describe(devices: DeviceSet | None) -> tuple[str, int]:
    if devices is None:
        return "unknown", 0
    return devices.describe(), len(devices.devices) if devices.cuda else 0


def _precision_samples(
    spec: InferenceSpec,
    devices: DeviceSet,
    image_ids: Sequence[str],
    reader: Reader,
    size: tuple[int, int] | None,
    pixels: PixelSettings,
) -> np.ndarray[Any, np.dtype[np.uint8]] | None:
    """The first few decodable test images of one size (`models.PRECISION_CHECK_IMAGES`), for the
    load-time fp16/bf16 check against fp32; None under fp32 (nothing to check) or when none decodes."""
    if devices.autocast_dtype is None:
        return None
    images: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
    for image_id in image_ids[: 4 * PRECISION_CHECK_IMAGES]:
        loaded = reader.load(image_id, size, pixels)
        if loaded.image is not None and (not images or loaded.image.shape == images[0].shape):
            images.append(loaded.image)
        if len(images) == PRECISION_CHECK_IMAGES:
            break
    return np.stack(images) if images else None


@dataclass
class RunContext:
    """What every engine gets from `run`: the spec, the inputs, the devices resolved, the profiler
    and the reporter; an engine sets `guard` once it has one (profile.json's `guard` comes from it)."""

    spec: InferenceSpec
    bundle_dir: Path
    test_dir: Path
    sample_submission: Path
    submission_path: Path
    started: float
    devices: DeviceSet
    profiler: Profiler
    reporter: _Reporter
    guard: BudgetGuard | None = None
    reader: Reader | None = None  # the input reader an engine opened (`open_input`); `run` closes it


def _masks(ctx: RunContext) -> None:
    """The segmentation engine: gating, the ensemble, masks, RLE rows in the `[submission]` layout."""
    spec, profiler, reporter = ctx.spec, ctx.profiler, ctx.reporter
    with profiler.stage("setup"):
        sample = read_sample_submission(Path(ctx.sample_submission), spec.num_classes, spec.submission)
        reader = open_input(ctx, sample.image_ids, spec.submission.image_id)
    reporter.info(f"{len(sample.image_ids)} images ({sample.layout} layout) on {profiler.device}")
    with profiler.stage("load_models"):
        samples = _precision_samples(spec, ctx.devices, sample.image_ids, reader, _size(spec), _pixels(spec))
        classifiers, segmenters = load_models(spec, Path(ctx.bundle_dir), ctx.devices, profiler, samples)
    # from here stage times come from events read once per batch (loading was wall-timed)
    profiler.events = ctx.devices.event
    predictor = Predictor(spec, classifiers, segmenters, ctx.devices, profiler)
    profiler.gating_record["mode"] = predictor.gating_mode
    total = len(sample.image_ids)
    guard = ctx.guard = BudgetGuard(spec.time_budget_s, ctx.started, total, segmenters=spec.segmenters)
    with (
        SubmissionWriter(ctx.submission_path, sample) as writer,
        image_loader(ctx, sample.image_ids) as loader,
    ):
        _Engine(spec, predictor, guard, profiler, writer, reporter, total).run(loader)


def _image(loaded: LoadedImage) -> np.ndarray[Any, np.dtype[np.uint8]] | None:
    return loaded.image


def _size(spec: InferenceSpec) -> tuple[int, int] | None:
    return None if spec.image_sizes == "own" else (spec.image_height, spec.image_width)


def _pixels(spec: InferenceSpec) -> PixelSettings:
    return PixelSettings(spec.bit_depth, spec.pixel_max, spec.image_channels)


def open_input(ctx: RunContext, image_ids: Sequence[str], image_id: str) -> Reader:
    """The run's input reader (`[input]`, kernel_src.readers), opened before any model loads so that an
    input that does not fit fails fast (a CSV is parsed here, arrays mapped); `run` closes it."""
    ctx.reader = open_reader(ctx.spec.input, Path(ctx.test_dir), image_ids, image_id, _pixels(ctx.spec))
    return ctx.reader


def image_loader(ctx: RunContext, image_ids: Sequence[str]) -> ImageLoader:
    """The background loader for `image_ids` through the run's reader (`open_input` first), as the spec
    declares the images (size, pixels, workers)."""
    spec = ctx.spec
    if ctx.reader is None:
        raise RuntimeError("image_loader before open_input: open the run's reader first")
    prefetch = max(2 * spec.batch_size, spec.loader_workers + 1)
    return ImageLoader(
        Path(ctx.test_dir), image_ids, workers=spec.loader_workers, prefetch=prefetch, size=_size(spec),
        pixels=_pixels(spec), reader=ctx.reader,
    )  # fmt: skip


def _images(ctx: RunContext) -> None:
    from .image_run import run_images  # the image-level tasks' engine

    run_images(ctx)


# kernel_src.tasks.Task.engine -> the engine that runs the task
ENGINES: dict[str, Callable[[RunContext], None]] = {"masks": _masks, "images": _images}


def run(
    spec: InferenceSpec,
    *,
    bundle_dir: Path,
    test_dir: Path,
    sample_submission: Path,
    out_dir: Path,
    started_at: float | None = None,
    progress: bool = True,
    devices: DeviceSet | None = None,
    sync_stages: bool = False,
) -> RunResult:
    """Write `out_dir/submission.csv` and `out_dir/profile.json` for the images in `test_dir`.

    `devices` None: `resolve_devices` from the spec's device, memory_format and precision; a
    given DeviceSet (e.g. two CPU replicas in channels_last with bf16 autocast) runs every
    CUDA-only branch through the real pipeline on CPU. The task (`spec.task`, kernel_src.tasks)
    picks the engine (`ENGINES`): masks for segmentation, per-image rows for the others. Stage times
    come from timing events read once per batch (`Profiler.flush`); `sync_stages` synchronises every
    device around every stage instead, as the engine used to (the GPU check measures what those
    waits cost)."""
    started = time.time() if started_at is None else started_at
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    submission_path, profile_path = out_dir / SUBMISSION_FILE, out_dir / PROFILE_FILE
    reporter = _Reporter(progress)
    profiler = Profiler(started, torch_version=torch.__version__)
    profiler.guard_record["budget_s"] = spec.time_budget_s
    profiler.working_dir = out_dir  # profile.json reports the bytes written here (Kaggle keeps 20 GB)
    ctx: RunContext | None = None
    try:
        with profiler.stage("setup"):
            if devices is None:
                devices = resolve_devices(spec.device, memory_format=spec.memory_format, precision=spec.precision)
            profiler.device, profiler.gpus = _describe(devices)
            profiler.devices = devices.to_dict()
            profiler.sync = devices.synchronize if sync_stages else None
            if not Path(test_dir).is_dir():
                what = "the test images" if not READERS[spec.input.reader].file else (
                    f"the folder holding {spec.input.path} (input.path)"
                )
                raise BundleError(f"test_dir {test_dir} is not a folder; point test_dir at {what}")
        ctx = RunContext(
            spec, Path(bundle_dir), Path(test_dir), Path(sample_submission), submission_path, started, devices,
            profiler, reporter,
        )  # fmt: skip
        ENGINES[spec.task.task.engine](ctx)
    except BaseException as e:
        profiler.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if ctx is not None and ctx.reader is not None:
            ctx.reader.close()
        profiler.finish()
        guard = ctx.guard if ctx is not None else None
        if guard is not None:
            profiler.guard_record = guard.to_dict()
            profiler.guard_record["images_left_empty"] = guard.total_images - profiler.images
        profile_path.write_text(json.dumps(profiler.to_dict(), indent=2) + "\n", encoding="utf-8")
    reporter.info(profiler.table())
    return RunResult(submission_path, profile_path, profiler.to_dict())
