"""The device matrix: every setting that differs on CUDA, run on CPU through the real pipeline.

Kaggle scores the notebook on a GPU, where the engine runs channels_last, fp16 autocast and one
replica per GPU; this machine has none. Each of those settings is a field of `DeviceSet` that a
test can switch on for CPU, so this module runs the product

    {contiguous (NCHW), channels_last} x {fp32, bf16 autocast, fp16 autocast}
    x {1, 2 replicas} x {1, 4 TTA views} x {gating off, per_image, per_class}

through `kernel_src.run.run()`: its submission (compared by Dice) and the probabilities its
`Predictor.predict` returned for each batch (watched, not replaced), each against the plain result:
NCHW, fp32, one device, same TTA and gating. Models (`tests.tiny.make_matrix_models`): Unet on
smp's resnet18, FPN on timm-universal MobileNetV3 at half the image width, DeepLabV3Plus on the
same encoder, and a timm MobileNetV3 classifier, with seeded random weights whose last layers
are rescaled so masks cover set fractions of the pixels and gating thresholds sit at least
`MIN_GATING_MARGIN` from every classifier probability: masks have pixels, some classes pass the
gate and some do not, and one image passes no class (per_image skips it).

Seven 32x128 PNG images (lossless, so the engine sees the pixels the maker saw) in batches of
3: batches of 3, 3 and 1, a batch of 3 split 2 + 1 over two replicas; 4 images per forward call,
so 3 images x 4 views go through in calls of 4.

Tolerances (`PROB_TOLERANCE`: largest and mean absolute difference of a probability), with
the largest measured (every configuration of the tta4 off, tta4 per_class, tta1 per_image rows):
- fp32: 2e-5 / 1e-6 (measured 5.4e-6 / 2.4e-7). channels_last and a split batch only reorder
  float sums, but the rescaled last layers multiply that noise by up to a few hundred (the
  random DeepLabV3Plus's output is nearly constant before rescaling).
- fp16 autocast: 0.02 / 1e-3 (measured 4.9e-3 / 2.7e-4). fp16 keeps an 11-bit significand:
  about 5e-4 relative error per rounding, through ~20 layers, at logits spread over +-6.
- bf16 autocast: 0.1 / 5e-3 (measured 0.041 / 2.0e-3). bf16 keeps 8 bits, eight times coarser
  than fp16; the largest differences sit at pixels whose probability is near 0.5.
Masks: the mean Dice over every image x class pair (Severstal's metric; a pair empty in both is
1) is at least 0.99 for every configuration (measured: 1.0 for fp32, 0.9992 fp16, 0.9953
bf16), and the gating decisions are identical (the thresholds' margin, 0.10, is far above any
precision's error on the classifier).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import kernel_src.run as run_module
from kernel_src.devices import DeviceSet, resolve_devices
from kernel_src.models import load_models
from kernel_src.predict import BatchResult, Predictor
from kernel_src.profiler import Profiler
from kernel_src.rle import decode
from kernel_src.run import RunResult, run
from kernel_src.spec import TTA_VIEWS, InferenceSpec
from kernel_src.submission import read_masks
from tests.tiny import (
    MATRIX_HEIGHT,
    MATRIX_WIDTH,
    MatrixModels,
    make_matrix_models,
    matrix_images,
    model_dict,
    write_image,
    write_sample,
)

H, W = MATRIX_HEIGHT, MATRIX_WIDTH
NUM_CLASSES = 4
N_IMAGES = 7
BATCH_SIZE = 3  # 7 images: batches of 3, 3, 1; two replicas split a batch of 3 as 2 + 1
IMAGES_PER_CALL = 4  # 3 images x 4 views = 12 stacked inputs: three calls of 4

MEMORY_FORMATS = ("contiguous", "channels_last")
PRECISIONS = ("fp32", "bf16", "fp16")
REPLICAS = (1, 2)
VIEWS: dict[int, tuple[str, ...]] = {1: ("identity",), 4: TTA_VIEWS}
GATING = ("off", "per_image", "per_class")
PLAIN = ("contiguous", "fp32", 1)  # the reference every other configuration is compared with

PROB_TOLERANCE = {"fp32": (2e-5, 1e-6), "fp16": (0.02, 1e-3), "bf16": (0.1, 5e-3)}  # (max, mean) |dp|
DICE_MIN = 0.99
MIN_GATING_MARGIN = 0.02  # a classifier probability's least distance from its threshold (fp32)

Masks = dict[str, list[npt.NDArray[np.uint8]]]


@dataclass(frozen=True)
class Batches:
    """The engine's `BatchResult`s of one run, joined in image order."""

    probs: npt.NDArray[np.float32]
    allowed: npt.NDArray[np.bool_]
    segmented: npt.NDArray[np.bool_]
    nonfinite: npt.NDArray[np.bool_]
    images_skipped: int


@dataclass(frozen=True)
class Matrix:
    """The bundle and test images every configuration shares."""

    bundle_dir: Path
    models: MatrixModels
    images: npt.NDArray[np.uint8]
    test_dir: Path
    sample: Path


@dataclass(frozen=True)
class Reference:
    """The plain (NCHW, fp32, one device) result of one TTA x gating setting."""

    masks: Masks
    gating: dict[str, object]
    batch: Batches


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    root = tmp_path_factory.mktemp("matrix")
    images = matrix_images(N_IMAGES)
    models = make_matrix_models(root / "bundle", images, num_classes=NUM_CLASSES)
    ids = [f"m{i:02d}.png" for i in range(N_IMAGES)]
    for image_id, image in zip(ids, images, strict=True):
        write_image(root / "test" / image_id, image)
    sample = write_sample(root / "sample_submission.csv", ids, num_classes=NUM_CLASSES)
    return Matrix(root / "bundle", models, images, root / "test", sample)


def spec_for(matrix: Matrix, views: int, gating: str, memory_format: str, precision: str) -> InferenceSpec:
    segmenters = [{**model_dict(m), "tta": list(VIEWS[views])} for m in matrix.models.segmenters]
    return InferenceSpec.from_dict(
        {
            "num_classes": NUM_CLASSES,
            "image_height": H,
            "image_width": W,
            "batch_size": BATCH_SIZE,
            "device": "cpu",
            "memory_format": memory_format,
            "precision": precision,
            "images_per_call": IMAGES_PER_CALL,
            "time_budget_s": 3600.0,
            "loader_workers": 1,
            "classifiers": [model_dict(matrix.models.classifier)],
            "segmenters": segmenters,
            "gating": {"mode": gating, "thresholds": list(matrix.models.thresholds)},
            "postprocess": {"threshold": 0.5, "min_component": 0, "min_area": 0},
        }
    )


def run_through(
    matrix: Matrix, spec: InferenceSpec, devices: DeviceSet, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[RunResult, Batches]:
    """`run()` on the matrix images, and what its Predictor returned for each batch: the engine's
    own Predictor class, watched (every result kept, nothing changed), so the probabilities come
    from the very forwards that wrote the submission."""
    seen: list[BatchResult] = []

    class Watched(Predictor):
        def predict(self, images: npt.NDArray[np.uint8]) -> BatchResult:
            result = super().predict(images)
            seen.append(result)
            return result

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "Predictor", Watched)
        result = run(
            spec,
            bundle_dir=matrix.bundle_dir,
            test_dir=matrix.test_dir,
            sample_submission=matrix.sample,
            out_dir=out_dir,
            progress=False,
            devices=devices,
        )
    assert [len(b.probs) for b in seen] == [3, 3, 1], "batches of 3, 3 and 1 images"
    batches = Batches(
        probs=np.concatenate([b.probs for b in seen]),
        allowed=np.concatenate([b.allowed for b in seen]),
        segmented=np.concatenate([b.segmented for b in seen]),
        nonfinite=np.concatenate([b.nonfinite for b in seen]),
        images_skipped=sum(b.images_skipped for b in seen),
    )
    return result, batches


def submission_masks(result: RunResult) -> Masks:
    rows = read_masks(result.submission_path, NUM_CLASSES)
    return {image_id: [decode(rle, (H, W), "F") for rle in rles] for image_id, rles in rows.items()}


def mean_dice(got: Masks, want: Masks) -> float:
    """Severstal's metric: the mean over image x class pairs of Dice, 1 where both are empty."""
    assert sorted(got) == sorted(want)
    scores = []
    for image_id, masks in want.items():
        for a, b in zip(got[image_id], masks, strict=True):
            total = int(a.sum()) + int(b.sum())
            scores.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def references() -> dict[tuple[int, str], Reference]:
    """The plain results computed so far, by (views, gating): each is computed once per module."""
    return {}


def reference(
    matrix: Matrix,
    references: dict[tuple[int, str], Reference],
    views: int,
    gating: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Reference:
    """The plain result for (views, gating)."""
    key = (views, gating)
    if key not in references:
        spec = spec_for(matrix, views, gating, "contiguous", "fp32")
        devices = resolve_devices("cpu", memory_format="contiguous", precision="fp32", replicas=1)
        out_dir = tmp_path_factory.mktemp(f"plain-tta{views}-{gating}")
        result, batch = run_through(matrix, spec, devices, out_dir, monkeypatch)
        masks = submission_masks(result)
        # The premise: the comparison sees masks with pixels and gating that decides something.
        pixels = np.array([[int(m.sum()) for m in per_class] for per_class in masks.values()])
        partial = (pixels > 0) & (pixels < H * W)
        assert partial.sum() >= N_IMAGES, f"too few masks with both kinds of pixel to compare: {pixels.tolist()}"
        if gating != "off":
            assert batch.allowed.any() and not batch.allowed.all(), batch.allowed.tolist()
        if gating == "per_image":
            assert batch.images_skipped >= 1 and batch.segmented.any()
        references[key] = Reference(masks, dict(result.profile["gating"]), batch)
    return references[key]


def test_matrix_premise(matrix: Matrix) -> None:
    """Gating thresholds far from every classifier probability; one image passes no class."""
    probs, thresholds = matrix.models.classifier_probs, np.array(matrix.models.thresholds)
    assert matrix.models.margin >= MIN_GATING_MARGIN
    assert np.abs(probs - thresholds).min() >= MIN_GATING_MARGIN
    passed = probs >= thresholds
    assert passed.any(axis=0).all(), "every class passes on some image"
    assert (~passed.any(axis=1)).sum() >= 1, "some image passes no class"


CASES = [
    pytest.param(memory, precision, replicas, views, gating, id=f"{memory}-{precision}-x{replicas}-tta{views}-{gating}")
    for memory in MEMORY_FORMATS
    for precision in PRECISIONS
    for replicas in REPLICAS
    for views in VIEWS
    for gating in GATING
    if (memory, precision, replicas) != PLAIN
]


@pytest.mark.parametrize(("memory_format", "precision", "replicas", "views", "gating"), CASES)
def test_configuration_matches_plain_fp32(
    matrix: Matrix,
    references: dict[tuple[int, str], Reference],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    memory_format: str,
    precision: str,
    replicas: int,
    views: int,
    gating: str,
) -> None:
    want = reference(matrix, references, views, gating, tmp_path_factory, monkeypatch)
    spec = spec_for(matrix, views, gating, memory_format, precision)
    devices = resolve_devices("cpu", memory_format=memory_format, precision=precision, replicas=replicas)
    assert (devices.channels_last, devices.replicas) == (memory_format == "channels_last", replicas)

    result, got = run_through(matrix, spec, devices, tmp_path, monkeypatch)
    profile = result.profile
    assert profile["images"] == N_IMAGES
    assert profile["problems"]["model_failures"] == []
    assert {k: profile["devices"][k] for k in devices.to_dict()} == devices.to_dict()
    assert profile["gating"] == want.gating
    dice = mean_dice(submission_masks(result), want.masks)
    assert dice >= DICE_MIN, f"mean Dice {dice:.4f} against the plain NCHW fp32 submission"

    np.testing.assert_array_equal(got.allowed, want.batch.allowed)
    np.testing.assert_array_equal(got.segmented, want.batch.segmented)
    assert not got.nonfinite.any()
    diff = np.abs(got.probs - want.batch.probs)
    largest, mean = PROB_TOLERANCE[precision]
    assert diff.max() <= largest and diff.mean() <= mean, (
        f"probabilities differ by up to {diff.max():.2e} (mean {diff.mean():.2e}); {precision} allows {largest}/{mean}"
    )


def test_two_replicas_split_an_odd_batch(matrix: Matrix) -> None:
    """A batch of 3 on two replicas: 2 images to the first, 1 to the second, each replica its own
    model, and every image's probabilities back in its place (as one replica and alone give)."""
    spec = spec_for(matrix, 1, "off", "contiguous", "fp32")
    two = resolve_devices("cpu", memory_format="contiguous", precision="fp32", replicas=2)
    assert two.split(3) == [(0, 0, 2), (1, 2, 3)]
    assert two.split(1) == [(0, 0, 1)]

    def predictor(devices: DeviceSet) -> Predictor:
        profiler = Profiler(time.time())
        classifiers, segmenters = load_models(spec, matrix.bundle_dir, devices, profiler)
        return Predictor(spec, classifiers, segmenters, devices, profiler)

    split = predictor(two)
    calls: dict[tuple[str, int], list[int]] = {}
    for lm in split.segmenters:
        assert lm.replicas[0] is not lm.replicas[1]
        for i, replica in enumerate(lm.replicas):
            key = (lm.spec.name, i)
            replica.register_forward_hook(
                lambda _m, args, _out, key=key: calls.setdefault(key, []).append(len(args[0]))
            )
    got = split.predict(matrix.images[:3])
    assert calls == {(m.name, i): [2 - i] for m in matrix.models.segmenters for i in (0, 1)}

    one = predictor(resolve_devices("cpu", memory_format="contiguous", precision="fp32", replicas=1))
    np.testing.assert_allclose(got.probs, one.predict(matrix.images[:3]).probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.probs[2], one.predict(matrix.images[2:3]).probs[0], atol=1e-5, rtol=0)
