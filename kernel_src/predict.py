"""Classifier gating and the segmentation ensemble for one batch of decoded images.

For a batch of uint8 RGB images `[N, H, W, 3]` (all at the spec's image size):

- Preprocessing per model (`kernel_src.preprocess.model_input`): channels in the model's order
  (`channels = "bgr"` swaps them), then its translated albumentations pipeline when it has one,
  else `x / 255` resized to its `input_size` (bilinear, like `cv2.resize`'s default) and
  `(x - mean) / std` per channel.
- Classifiers (any number): each model's TTA views of one input size are stacked into one forward
  pass (a scale view is a pass of its own); the views are merged per the model's `tta_merge`
  (`kernel_src.tta.merge`), then averaged over classifiers with their weights.
- Gating: `off`; `per_class` (a class whose probability is below its threshold gets an empty
  mask); `per_image` (an image where some class reaches its threshold keeps every class). In
  both modes an image none of whose classes passes is not segmented at all: no segmentation
  forward pass sees it (`images_skipped`).
- Segmentation: each model's views of one input size are stacked into one forward batch, every
  view is undone and the views merged per `tta_merge` (`tta.merge`: probabilities), the
  pipeline's geometry undone (`preprocess.model_output`: a pad cropped, a crop placed back, a
  resize resized back to the image size), and the models averaged with their weights.
- NaN in a model's output for an image (any view, any pixel) leaves that model out for that
  image only: the other models' weights are renormalised for it (`nan_segmenters`,
  `nan_classifiers`). Only when every segmenter gave NaN does the image get empty masks
  (`nonfinite`); when every classifier did, it is segmented ungated (`ungated`). +/-Inf logits
  (an fp16 overflow) are saturated probabilities, 1 or 0, not failures.
- Outputs may come in any memory layout (smp answers channels_last input with a channels_last
  output): nothing here `view`s a model output flat.
- A model that raises is reported as `ModelRunError(name)` so the caller can drop it and retry.
- Faults outside a model's forward (the upload, a model's input preparation, the merge, the
  per-model output handling, the copy back) are the batch's, not a model's: out of memory there
  predicts the batch again in halves (after emptying the CUDA cache), down to one image, and the
  smaller share is kept for the rest of the run (profile.json `batch_split_by_oom`); any other
  error, or out of memory at one image, raises `BatchError` for the caller to give that batch's
  rows the fallback (empty masks) and go on.

Everything runs under `torch.inference_mode()`, split across the `DeviceSet`'s devices; each
device's share of a model runs under that device's context on the replica `LoadedModel.replica_for`
names (another device's when the model failed its test forward there: the share is moved there and
its outputs back), in the model's own precision and layout (`models.call_context`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .devices import DeviceSet
from .errors import BatchError, ModelRunError
from .models import LoadedModel, call_context, check_output, free_memory, is_out_of_memory
from .preprocess import model_input, model_output
from .profiler import Profiler
from .spec import InferenceSpec
from .tta import merge, stack_group, view_groups


@dataclass
class BatchResult:
    """Predictions for one batch. `probs` are zeros for images that were not segmented, and for
    images where every segmentation model gave NaN (`nonfinite`)."""

    probs: npt.NDArray[np.float32]  # [N, C, H, W]
    allowed: npt.NDArray[np.bool_]  # [N, C]: False where gating empties the class
    nonfinite: npt.NDArray[np.bool_]  # [N]: every segmentation model gave NaN for it -> empty masks
    segmented: npt.NDArray[np.bool_]  # [N]: the image went through the segmentation models
    ungated: npt.NDArray[np.bool_]  # [N]: every classifier gave NaN for it -> segmented ungated
    pairs_gated_out: int = 0
    images_skipped: int = 0  # gating let no class of the image through: no segmentation forward
    # image index -> the segmenters / classifiers whose output for it held NaN (dropped for it)
    nan_segmenters: dict[int, list[str]] = field(default_factory=dict)
    nan_classifiers: dict[int, list[str]] = field(default_factory=dict)


class Predictor:
    """Runs gating and the ensemble on batches. Counters: `forward_images[name]` counts the images
    (not views) each model has been given, for profiling and tests."""

    def __init__(
        self,
        spec: InferenceSpec,
        classifiers: Sequence[LoadedModel],
        segmenters: Sequence[LoadedModel],
        devices: DeviceSet,
        profiler: Profiler,
    ) -> None:
        self.spec = spec
        self.classifiers = list(classifiers)
        self.segmenters = list(segmenters)
        self.devices = devices
        self.profiler = profiler
        self.gating_mode = spec.gating.mode if self.classifiers else "off"
        self.forward_images: dict[str, int] = {m.spec.name: 0 for m in (*self.classifiers, *self.segmenters)}
        self._thresholds = torch.tensor(spec.gating.thresholds or (0.5,) * spec.num_classes)
        self._pin = devices.pin_memory  # False once pinning has failed (no CUDA): plain copies from then on
        self.images_per_batch = 0  # most images predicted at once (0: the whole batch); halved by out of memory

    def drop(self, name: str) -> None:
        """Stop using a model (it failed, or the budget guard dropped it)."""
        self.classifiers = [m for m in self.classifiers if m.spec.name != name]
        self.segmenters = [m for m in self.segmenters if m.spec.name != name]
        if not self.classifiers:
            self.gating_mode = "off"

    def set_views(self, name: str, views: tuple[str, ...]) -> None:
        for m in self.segmenters:
            if m.spec.name == name:
                m.views = views

    def _pinned(self, host: torch.Tensor) -> torch.Tensor:
        """`host` in pinned memory; unchanged (and pinning off for the run, noted once in
        profile.json's devices.pin_memory_fallback) where torch cannot pin, e.g. without CUDA."""
        try:
            return host.pin_memory()
        except RuntimeError as e:
            self._pin = False
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.profiler.devices["pin_memory_fallback"] = f"plain copies: pinning failed ({reason})"
            return host

    def _upload(self, images: npt.NDArray[np.uint8]) -> list[torch.Tensor]:
        """Float [n,3,H,W] in [0,1] per device chunk (a channels_last view of the NHWC upload when
        the device set uses channels_last, else contiguous NCHW); pinned + non_blocking when set."""
        chunks = []
        for i, start, stop in self.devices.split(len(images)):
            host = torch.from_numpy(np.ascontiguousarray(images[start:stop]))
            if self._pin:
                host = self._pinned(host)
            t = host.to(self.devices.devices[i], non_blocking=self._pin)
            x = t.permute(0, 3, 1, 2).float().div_(255.0)
            chunks.append(x if self.devices.channels_last else x.contiguous())
        return chunks

    def _prepare(self, x: torch.Tensor, lm: LoadedModel) -> torch.Tensor:
        x = model_input(x, lm.spec, lm.preprocess)
        return x.contiguous(memory_format=torch.channels_last) if lm.channels_last else x

    def _run_on(self, lm: LoadedModel, device: int, x: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """`_forward` of device `device`'s share `x` under its replica's device context; a share whose
        device has no working replica of the model is computed on another and its outputs come back."""
        r = lm.replica_index(device)
        with self.devices.context(r):
            if r == device:
                return self._forward(lm, lm.replicas[r], self._prepare(x, lm), kind)
            outs = self._forward(lm, lm.replicas[r], self._prepare(x.to(self.devices.devices[r]), lm), kind)
        return [o.to(self.devices.devices[device]) for o in outs]

    def _forward(self, lm: LoadedModel, replica: nn.Module, x: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """Each view's raw output for `x`, as float32: the views of one input size stacked into one
        batch (`tta.view_groups`), each batch run by `_call`."""
        n = x.shape[0]
        outs: list[torch.Tensor] = []
        order: list[int] = []
        for factor, index in view_groups(lm.views):
            out = self._call(lm, replica, stack_group(x, [lm.views[i] for i in index], factor), kind)
            outs.extend(out[j * n : (j + 1) * n] for j in range(len(index)))
            order.extend(index)
        self.forward_images[lm.spec.name] += n
        return [outs[order.index(i)] for i in range(len(lm.views))]

    def _call(self, lm: LoadedModel, replica: nn.Module, batch: torch.Tensor, kind: str) -> torch.Tensor:
        """Raw output for `batch` (stacked views), as float32, in calls of at most
        `lm.images_per_call` images (eval-mode models give the same numbers either way).

        Out of memory is not a model failure: the same images are tried again with half the call
        size (after emptying the CUDA cache), down to one image; the smaller size is kept for the
        rest of the run and recorded in profile.json `call_sizes[name]["reduced_by_oom"]`. Any
        other error, or out of memory at one image, raises ModelRunError."""
        name = lm.spec.name
        total = batch.shape[0]
        while True:
            step = lm.images_per_call if 0 < lm.images_per_call < total else total
            try:
                with call_context(lm, self.devices):
                    if step < total:
                        out = torch.cat([replica(batch[i : i + step]) for i in range(0, total, step)])
                    else:
                        out = replica(batch)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"returned {type(out).__name__}, not a tensor")
                check_output(name, kind, out, total, self.spec.outputs(kind))
            except Exception as e:
                if step == 1 or not is_out_of_memory(e):
                    raise ModelRunError(name, e) from e
            else:
                break
            # out of memory above one image: retried outside the except block, so the failed
            # call's tensors (held by the traceback) are released before the cache is emptied
            free_memory(self.devices)
            lm.images_per_call = step // 2
            record = self.profiler.call_sizes.setdefault(name, {"chosen": step, "measured_s": {}, "reduced_by_oom": []})
            record["reduced_by_oom"].append(lm.images_per_call)
        return out.float()

    def _classify(self, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[str]]]:
        """(probabilities [N, C], ungated [N], nan) on the CPU. Each image's probabilities are the
        weighted mean over the classifiers whose output for it holds no NaN (weights renormalised
        per image); `ungated` marks images every classifier gave NaN for (probabilities 0 there);
        `nan` maps an image index to the classifiers dropped for it."""
        n = sum(c.shape[0] for c in chunks)
        total = torch.zeros(n, self.spec.num_classes)
        covered = torch.zeros(n)  # summed weight of the classifiers usable for each image
        weights = sum(m.spec.weight for m in self.classifiers)
        nan: dict[int, list[str]] = {}
        queued: list[tuple[LoadedModel, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        for lm in self.classifiers:  # every classifier queued on every device before any result is read
            parts = []
            with self.profiler.stage(f"classifier:{lm.spec.name}"):
                for (i, _, _), x in zip(self.devices.split(n), chunks, strict=True):
                    outs = self._run_on(lm, i, x, "classifier")
                    bad = _nan_images(outs)
                    # sigmoid(+-inf) is 1 or 0 (saturated, e.g. an fp16 overflow), only NaN drops the model
                    views = merge([o.reshape(o.shape[0], -1) for o in outs], lm.views, lm.spec.tta_merge)
                    parts.append((views.masked_fill(bad[:, None], 0.0), bad))
            queued.append((lm, parts))
        for lm, parts in queued:
            probs = torch.cat([p.cpu() for p, _ in parts])
            bad_all = torch.cat([b.cpu() for _, b in parts])
            total += probs * (lm.spec.weight / weights)
            covered += (~bad_all).float() * lm.spec.weight
            for j in bad_all.nonzero().flatten().tolist():
                nan.setdefault(j, []).append(lm.spec.name)
        ungated = covered <= 0
        _renormalise(total, covered, weights, nan)
        return total, ungated, nan

    def _segment(self, images: npt.NDArray[np.uint8]) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[str]]]:
        """(probabilities [n, C, H, W], failed [n], nan) on the CPU for `images`. Each image's
        probabilities are the weighted mean over the segmenters whose output for it holds no NaN
        (weights renormalised per image); `failed` marks images every segmenter gave NaN for
        (probabilities 0 there); `nan` maps an image index to the segmenters dropped for it."""
        n, h, w = images.shape[0], images.shape[1], images.shape[2]
        with self.profiler.stage("preprocess"):
            chunks = self._upload(images)
        split = self.devices.split(n)
        acc = [torch.zeros(x.shape[0], self.spec.num_classes, h, w, device=x.device) for x in chunks]
        covered = torch.zeros(n)  # summed weight of the segmenters usable for each image
        weights = sum(m.spec.weight for m in self.segmenters)
        nan: dict[int, list[str]] = {}
        # (model, weight, image range, NaN flags on the device): read once every model is queued
        flags: list[tuple[str, float, int, int, torch.Tensor]] = []
        for lm in self.segmenters:
            outs = []
            with self.profiler.stage(f"segmenter:{lm.spec.name}"):
                for (i, _, _), x in zip(split, chunks, strict=True):
                    outs.append(self._run_on(lm, i, x, "segmenter"))
            with self.profiler.stage("tta_merge"):
                for (_, start, stop), views, a in zip(split, outs, acc, strict=True):
                    bad = _nan_images(views)
                    # the views merged in the model's frame (a scale view resized to the unscaled
                    # input's size), then the pipeline's geometry undone onto the image
                    probs = merge(views, lm.views, lm.spec.tta_merge, (views[0].shape[-2], views[0].shape[-1]))
                    probs = model_output(probs, lm.preprocess, (h, w))
                    a.add_(probs.masked_fill(bad[:, None, None, None], 0.0), alpha=lm.spec.weight / weights)
                    flags.append((lm.spec.name, lm.spec.weight, start, stop, bad))
        total = torch.cat([a.cpu() for a in acc]) if acc else torch.zeros(0, self.spec.num_classes, h, w)
        for name, weight, start, stop, bad in flags:  # no model waited on the host before this point
            bad_cpu = bad.cpu()
            covered[start:stop] += (~bad_cpu).float() * weight
            for j in bad_cpu.nonzero().flatten().tolist():
                nan.setdefault(start + j, []).append(name)
        failed = covered <= 0
        _renormalise(total, covered, weights, nan)
        return total, failed, nan

    @torch.inference_mode()
    def predict(self, images: npt.NDArray[np.uint8]) -> BatchResult:
        """Gate and segment `images` [N, H, W, 3] uint8 RGB. An image no class of which passes the
        gate (either mode) gets no segmentation forward; an image every classifier gave NaN for is
        segmented ungated. A fault outside the models' forwards is contained as the module
        docstring says: halves on out of memory, else `BatchError`."""
        if not self.segmenters:
            raise ModelRunError("<ensemble>", "no segmentation model is left")
        n = len(images)
        while True:
            step = self.images_per_batch if 0 < self.images_per_batch < n else n
            try:
                return _concat([self._predict(images[i : i + step]) for i in range(0, n, step)])
            except ModelRunError:
                raise
            except Exception as e:
                if step <= 1 or not is_out_of_memory(e):
                    raise BatchError(n, e) from e
            # out of memory above one image: retried outside the except block, so the failed
            # attempt's tensors (held by the traceback) are released before the cache is emptied
            free_memory(self.devices)
            self.images_per_batch = step // 2
            self.profiler.batch_split_by_oom.append(self.images_per_batch)

    def _predict(self, images: npt.NDArray[np.uint8]) -> BatchResult:
        """`predict` for images predicted at once."""
        n, h, w = images.shape[0], images.shape[1], images.shape[2]
        c = self.spec.num_classes
        allowed = torch.ones(n, c, dtype=torch.bool)
        ungated = torch.zeros(n, dtype=torch.bool)
        nan_classifiers: dict[int, list[str]] = {}
        if self.gating_mode != "off":
            with self.profiler.stage("preprocess"):
                chunks = self._upload(images)
            gate, ungated, nan_classifiers = self._classify(chunks)
            del chunks
            passed = (gate >= self._thresholds) | ungated[:, None]
            per_image = passed.any(dim=1, keepdim=True).expand(n, c)
            allowed = passed if self.gating_mode == "per_class" else per_image.clone()
        skipped = ~allowed.any(dim=1)
        index = (~skipped).nonzero().flatten()
        probs = torch.zeros(n, c, h, w)
        nonfinite = torch.zeros(n, dtype=torch.bool)
        nan_segmenters: dict[int, list[str]] = {}
        if len(index):
            subset = images if len(index) == n else images[index.numpy()]
            seg_probs, failed, nan = self._segment(subset)
            probs[index], nonfinite[index] = seg_probs, failed
            nan_segmenters = {int(index[j]): names for j, names in nan.items()}
        return BatchResult(
            probs=probs.numpy(),
            allowed=allowed.numpy(),
            nonfinite=nonfinite.numpy(),
            segmented=(~skipped).numpy(),
            ungated=ungated.numpy(),
            pairs_gated_out=int((~allowed).sum()),
            images_skipped=int(skipped.sum()),
            nan_segmenters=nan_segmenters,
            nan_classifiers=nan_classifiers,
        )


def _concat(results: Sequence[BatchResult]) -> BatchResult:
    """One BatchResult for consecutive parts of a batch (image indices shifted to the whole's)."""
    if len(results) == 1:
        return results[0]
    offsets = np.cumsum([0, *(len(r.probs) for r in results)])
    return BatchResult(
        probs=np.concatenate([r.probs for r in results]),
        allowed=np.concatenate([r.allowed for r in results]),
        nonfinite=np.concatenate([r.nonfinite for r in results]),
        segmented=np.concatenate([r.segmented for r in results]),
        ungated=np.concatenate([r.ungated for r in results]),
        pairs_gated_out=sum(r.pairs_gated_out for r in results),
        images_skipped=sum(r.images_skipped for r in results),
        nan_segmenters={
            int(o) + j: v for r, o in zip(results, offsets, strict=False) for j, v in r.nan_segmenters.items()
        },
        nan_classifiers={
            int(o) + j: v for r, o in zip(results, offsets, strict=False) for j, v in r.nan_classifiers.items()
        },
    )


def _nan_images(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n] bool on the outputs' device: the images for which any view's output [n, ...] holds NaN.
    `reshape`, not `view`: a channels_last output cannot be viewed flat."""
    bad = torch.isnan(views[0]).reshape(views[0].shape[0], -1).any(dim=1)
    for out in views[1:]:
        bad |= torch.isnan(out).reshape(out.shape[0], -1).any(dim=1)
    return bad


def _renormalise(total: torch.Tensor, covered: torch.Tensor, weights: float, nan: dict[int, list[str]]) -> None:
    """Rescale, in place, the images of `total` (accumulated with weight/`weights`) that some model
    was dropped for, so their usable models' weights sum to one. Images no model covered stay 0."""
    for j in nan:
        if covered[j] > 0:
            total[j] *= weights / float(covered[j])
