"""The image-level engine (classification, regression, ordinal: kernel_src.tasks): images -> every
model x TTA view, batched -> merged per image -> per-key rows (kernel_src.rows).

`run_images(ctx)` is `kernel_src.run.ENGINES["images"]`; `kernel_src.run.run` gives it the spec,
the inputs, the devices, the profiler and the reporter, and writes profile.json after it.

1. reads the sample submission (`kernel_src.rows.read_row_sample`: its header checked against the
   `[submission]` settings, its keys, the images to predict and the key each belongs to);
2. loads the task's models (`kernel_src.models.load_task_models`), each head checked against the
   task's classes or values with a test forward;
3. streams the images from `ImageLoader` in batches of `batch_size` (a batch never mixes sizes):
   one upload per batch, each model's TTA views stacked into one forward per input size, merged by
   its `tta_merge` in the task's activation (`kernel_src.tta.merge`), the models' weighted mean
   (`ImagePredictor`), the task's `finish` (target units) -- no per-image Python loop over models;
4. accumulates each image's prediction into its key (mean or max over the key's images);
5. after every batch the budget guard may step down (fewer TTA views, then fewer models, then
   the fallback for every image left);
6. always writes every key's row (`write_rows`), also when a model fails or the run raises.

A model whose output for an image holds NaN (or, for raw values, +/-Inf) is left out for that image
(the other models' weights renormalised); an image no model gave a finite output for, a missing or
unreadable image, and an image the guard left, get no prediction: their key takes the mean (max)
of its other images, and a key with none takes the task's `fallback` (profile.json `task`:
`fallback_rows`,
`fallback_examples`, `models_left_out`: images predicted without a model that gave NaN;
`problems.nonfinite` lists the images every model gave NaN for).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from .errors import ModelRunError
from .guard import BudgetGuard
from .images import ImageLoader, LoadedImage, shape_batches
from .models import LoadedModel, load_task_models
from .predict import Predictor, _renormalise
from .rows import RowSample, read_row_sample, write_rows
from .tta import merge

if TYPE_CHECKING:
    from .devices import DeviceSet
    from .profiler import Profiler
    from .run import RunContext
    from .spec import InferenceSpec

Floats = npt.NDArray[np.float64]
FALLBACK_EXAMPLES = 5  # profile.json task.fallback_examples: the first keys that took the fallback


class ImagePredictor(Predictor):
    """The ensemble of an image-level task on one batch: `predict(images)` -> (merged [n, head] in
    the task's activation, failed [n]: no model gave a finite output, {image index: models left
    out}). The task's models are the base class's `segmenters` list (dropped and thinned alike)."""

    def __init__(
        self, spec: InferenceSpec, models: Sequence[LoadedModel], devices: DeviceSet, profiler: Profiler
    ) -> None:
        super().__init__(spec, (), models, devices, profiler)
        task = spec.task.task
        self.role = task.role
        self.head = spec.outputs(task.role)
        self.activation = task.activation(spec.task)

    @torch.inference_mode()
    def predict_images(
        self, images: npt.NDArray[np.uint8]
    ) -> tuple[Floats, npt.NDArray[np.bool_], dict[int, list[str]]]:
        if not self.segmenters:
            raise ModelRunError("<ensemble>", "no model is left")
        n = images.shape[0]
        with self.profiler.stage("preprocess"):
            chunks = self._upload(images)
        total = torch.zeros(n, self.head, dtype=torch.float64)
        covered = torch.zeros(n, dtype=torch.float64)  # summed weight of the models usable per image
        weights = sum(m.spec.weight for m in self.segmenters)
        nan: dict[int, list[str]] = {}
        raw_values = self.activation == "identity"
        for lm in self.segmenters:
            parts = []
            with self.profiler.stage(f"{self.role}:{lm.spec.name}"):
                for (i, _, _), x in zip(self.devices.split(n), chunks, strict=True):
                    outs = self._forward(lm, lm.replicas[i], self._prepare(x, lm), self.role)
                    bad = _bad_images(outs, raw_values)
                    merged = merge(
                        [o.reshape(o.shape[0], -1) for o in outs],
                        lm.views,
                        lm.spec.tta_merge,
                        activation=self.activation,
                    )
                    parts.append((merged.masked_fill(bad[:, None], 0.0), bad))
                probs = torch.cat([p.cpu() for p, _ in parts]).double()
                bad_all = torch.cat([b.cpu() for _, b in parts])
            total += probs * (lm.spec.weight / weights)
            covered += (~bad_all).double() * lm.spec.weight
            for j in bad_all.nonzero().flatten().tolist():
                nan.setdefault(j, []).append(lm.spec.name)
        failed = covered <= 0
        _renormalise(total, covered, weights, nan)
        return total.numpy(), failed.numpy(), nan


def _bad_images(views: Sequence[torch.Tensor], raw_values: bool) -> torch.Tensor:
    """[n] bool: images any view's output holds NaN for (raw values: +/-Inf too; a logit of +/-Inf
    is a saturated probability, not a failure)."""
    test = (lambda t: ~torch.isfinite(t)) if raw_values else torch.isnan
    bad = test(views[0]).reshape(views[0].shape[0], -1).any(dim=1)
    for out in views[1:]:
        bad |= test(out).reshape(out.shape[0], -1).any(dim=1)
    return bad


class _ImageEngine:
    """One run's loop over batches of an image-level task; accumulates each key's prediction."""

    def __init__(self, ctx: RunContext, predictor: ImagePredictor, guard: BudgetGuard, sample: RowSample) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.taskspec = ctx.spec.task
        self.task = ctx.spec.task.task
        self.predictor = predictor
        self.guard = guard
        self.sample = sample
        self.total = len(sample.image_ids)
        self.keys_of = np.asarray(sample.image_keys, dtype=np.int64)
        width = len(self.taskspec.fallback_prediction(ctx.spec.num_classes))
        self.aggregate = ctx.spec.rows.aggregate
        start = -np.inf if self.aggregate == "max" else 0.0
        self.acc: Floats = np.full((len(sample.keys), width), start, dtype=np.float64)
        self.counts = np.zeros(len(sample.keys), dtype=np.int64)
        self.done = 0
        self.batches = 0
        self.left_out = 0  # images predicted without one or more models that gave NaN for them
        self.progress_every = max(1, -(-self.total // self.spec.batch_size) // 20)

    @property
    def stopped(self) -> bool:
        return self.guard.empty_rest or not self.predictor.segmenters

    def run(self, loader: ImageLoader) -> None:
        """Predict batch by batch, images of one size per batch; once stopped, the rest is left to
        the fallback (not decoded)."""
        items = enumerate(self._timed(loader))
        for batch in shape_batches(items, self.spec.batch_size, lambda item: item[1].image, lambda: self.stopped):
            self._batch(batch)
        if self.done < self.total:
            self.ctx.reporter.warn("fallback_rest", f"the last {self.total - self.done} images get no prediction")

    def _timed(self, loader: ImageLoader) -> Iterator[LoadedImage]:
        profiler = self.ctx.profiler
        iterator = iter(loader)
        while True:
            begin = profiler.clock()
            loaded = next(iterator, None)
            profiler.add("wait_images", profiler.clock() - begin)
            if loaded is None:
                return
            profiler.add("decode", loaded.decode_s)
            yield loaded

    def _predict(
        self, images: npt.NDArray[np.uint8]
    ) -> tuple[Floats, npt.NDArray[np.bool_], dict[int, list[str]]] | None:
        """The predictor's answer, dropping any model that fails; None when no model is left."""
        while self.predictor.segmenters:
            try:
                return self.predictor.predict_images(images)
            except ModelRunError as e:
                self.ctx.profiler.problem(
                    "model_failures", {"model": e.model, "after_images": self.done, "error": e.detail}
                )
                self.ctx.reporter.warn("model_failure", f"{e}; dropped after {self.done} images")
                self.predictor.drop(e.model)
                self.guard.forget(e.model)
        return None

    def _batch(self, batch: Sequence[tuple[int, LoadedImage]]) -> None:
        profiler, reporter = self.ctx.profiler, self.ctx.reporter
        if self.batches == 0:
            profiler.mark_first_batch()
            self.guard.start()
        before = profiler.stage_seconds()
        for _, loaded in batch:
            if loaded.issue is not None:
                profiler.problem(loaded.issue, loaded.image_id, loaded.problem)
                suffix = "" if loaded.issue == "converted" else " -> no prediction"
                reporter.warn(loaded.issue, f"{loaded.problem}{suffix}")
        valid = [(index, loaded) for index, loaded in batch if loaded.image is not None]
        if valid and not self.stopped:
            images = np.stack([loaded.image for _, loaded in valid if loaded.image is not None])
            result = self._predict(images)
            if result is not None:
                merged, failed, nan = result
                self._report_nonfinite([loaded.image_id for _, loaded in valid], failed, nan)
                finish = self.task.finish
                assert finish is not None
                with profiler.stage("finish"):
                    keep = np.flatnonzero(~failed)
                    prediction = finish(self.taskspec, merged[keep])
                    keys = self.keys_of[np.asarray([valid[j][0] for j in keep], dtype=np.int64)]
                    if self.aggregate == "max":
                        np.maximum.at(self.acc, keys, prediction)
                    else:
                        np.add.at(self.acc, keys, prediction)
                    np.add.at(self.counts, keys, 1)
        self.done += len(batch)
        self.batches += 1
        profiler.images = self.done
        after = profiler.stage_seconds()
        role = self.task.role
        model_s = {
            name: after.get(f"{role}:{name}", 0.0) - before.get(f"{role}:{name}", 0.0) for name in self.guard.active
        }
        for step in self.guard.after_batch(self.done, len(batch), model_s, 0.0):
            if step.action == "drop_tta" and step.model is not None:
                self.predictor.set_views(step.model, step.views)
            elif step.action == "drop_model" and step.model is not None:
                self.predictor.drop(step.model)
            reporter.warn(
                "budget",
                f"after {step.after_images} images, projected {step.projected_s:.0f} s of "
                f"{self.guard.budget_s:.0f} s: {step.action} ({step.detail})",
            )
        if self.batches % self.progress_every == 0 or self.done == self.total:
            now = profiler.clock()
            elapsed = now - profiler.started_at
            reporter.info(f"[{self.done:>6}/{self.total} images] {elapsed:7.1f} s elapsed")

    def _report_nonfinite(
        self, image_ids: Sequence[str], failed: npt.NDArray[np.bool_], nan: dict[int, list[str]]
    ) -> None:
        record = self.ctx.profiler.nonfinite_outputs
        for j, names in sorted(nan.items()):
            for name in names:
                record["models"][name] = record["models"].get(name, 0) + 1
            image_id, models = image_ids[j], ", ".join(names)
            if failed[j]:
                self.ctx.profiler.problem("nonfinite", image_id, f"{image_id}: NaN in the output of {models}")
                self.ctx.reporter.warn("nonfinite", f"{image_id}: NaN in the output of {models} -> no prediction")
            else:
                self.left_out += 1
                self.ctx.reporter.warn(
                    "nonfinite_output", f"{image_id}: NaN in the output of {models} -> left out for this image"
                )

    def predictions(self) -> tuple[Floats, list[str]]:
        """[keys, width]: each key's aggregated prediction, the fallback where none of its images
        was predicted; and the keys that took the fallback."""
        counts = self.counts[:, None]
        peak = self.aggregate == "max"
        out = np.where(counts > 0, self.acc, 0.0) if peak else self.acc / np.maximum(counts, 1)
        empty = self.counts == 0
        out[empty] = np.asarray(self.taskspec.fallback_prediction(self.spec.num_classes))
        return out, [self.sample.keys[k] for k in np.flatnonzero(empty).tolist()]

    def write(self) -> None:
        """Every key's row, the fallback counted in profile.json `task`."""
        predictions, fallen = self.predictions()
        with self.ctx.profiler.stage("write"):
            write_rows(self.ctx.submission_path, self.sample, self.spec.rows, self.task, self.taskspec, predictions)
        self.ctx.profiler.task_record = task_record(self.spec, self.sample, fallen, self.left_out)


def task_record(spec: InferenceSpec, sample: RowSample, fallen: Sequence[str], left_out: int) -> dict[str, Any]:
    """profile.json `task` (docs/tasks.md)."""
    return {
        "name": spec.task.name,
        "form": spec.rows.form,
        "rows": len(sample.keys),
        "images": len(sample.image_ids),
        "aggregate": spec.rows.aggregate,
        "fallback": list(spec.task.fallback_prediction(spec.num_classes)),
        "fallback_rows": len(fallen),
        "fallback_examples": list(fallen[:FALLBACK_EXAMPLES]),
        "models_left_out": left_out,
    }


def run_images(ctx: RunContext) -> None:
    """`kernel_src.run.ENGINES["images"]`: the module docstring's steps."""
    from .run import image_loader, open_input

    spec, profiler = ctx.spec, ctx.profiler
    task = spec.task.task
    with profiler.stage("setup"):
        sample = read_row_sample(ctx.sample_submission, spec.rows, spec.num_classes, spec.outputs(task.role))
        # row ids ("0", "1", ...) name no file: an image folder's are file names, an array's or CSV's its ids
        open_input(ctx, sample.image_ids, "file" if spec.rows.image_id == "row" else spec.rows.image_id)
    ctx.reporter.info(
        f"{len(sample.keys)} rows from {len(sample.image_ids)} images ({task.name}, {spec.rows.form} rows) "
        f"on {profiler.device}"
    )
    with profiler.stage("load_models"):
        models = load_task_models(spec, ctx.bundle_dir, ctx.devices, profiler)
    predictor = ImagePredictor(spec, models, ctx.devices, profiler)
    guard = ctx.guard = BudgetGuard(
        spec.time_budget_s, ctx.started, len(sample.image_ids), segmenters=getattr(spec, task.table)
    )
    engine = _ImageEngine(ctx, predictor, guard, sample)
    try:
        with image_loader(ctx, sample.image_ids) as loader:
            engine.run(loader)
    finally:
        engine.write()  # a complete submission, also when the run raised
