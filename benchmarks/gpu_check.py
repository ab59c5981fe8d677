"""`python -m benchmarks --gpu-check [--out DIR] [--wheels DIR]`: what only a GPU can measure, in 8 minutes.

Made for a bare GPU machine (Python 3.12, torch, timm, OpenCV, numpy, pandas, pytest; no smp, no
notebook packages, no network): carry the repository and `.gpu-wheels/` (gathered here with
`python -m benchmarks.gpu_preflight --gather`) and run `python3 -m benchmarks --gpu-check`.

1. Preflight (`benchmarks.gpu_preflight`): imports and versions; smp and the like installed from
   the carried wheels. A problem: one line per problem, `gpu_check=preflight_failed`, exit 3.
   Without CUDA: a line on stderr, `gpu_check=no_gpu`, exit 2.
2. Every measurement is written as one JSON line to `DIR/gpu_check.jsonl` (DIR: `--out`, else
   `$OUT`, else `gpu-check-out/`) the moment it is taken, so a run stopped by a time limit still
   reports what it measured. A step that would not finish within the 8 minutes is skipped and
   says so. The steps, on the first-place-scale ensemble of `bench_cuda` (4 classifiers + 9
   segmenters x 3 flip views at 256x1600, random weights, gate thresholds 0: every image
   segmented, the worst case):
   - `models`: per model, fp16 autocast (channels_last, as shipped) against true fp32 (TF32 off
     for matmuls and cuDNN) on 4 images: max and mean probability difference, NaN/Inf counts in
     the logits, and its FLOPs per image-view (`torch.utils.flop_counter`);
   - `run fp16`: `kernel_src.run.run` over `IMAGES` images (warm-up batch left out of the steady
     rate), stage syncs on, cudnn.benchmark off: per-stage milliseconds per image, steady
     images/s, peak memory (allocated, reserved, `mem_get_info`), NaN/Inf and model failures;
   - `run fp32`: the same over the first `COMPARE_IMAGES` images in true fp32; the mask Dice of
     fp16 against it;
   - `memory`: the ensemble loaded once, one batch of 2, 8 and 16 images each (every view of an
     image in the same call), peak allocated / reserved / used against a T4's 15 GB;
   - `run two replicas`: two replicas on GPU 0 (and on two GPUs when there are two): the split's
     cost, Dice against one;
   - `run syncs on`, `run cudnn.benchmark`: what synchronising every device around every stage
     costs (the engine times stages by events, one wait per batch) and what autotuning gains;
   - `t4x2_projection`: a labelled projection for Kaggle's T4 x2 (FLOPs per image over a range of
     T4 rates, the measured split efficiency, the CPU stages scaled to 4 cores) against 3,300 s;
   - `gpu_tests`: the `gpu`-marked tests (tests/kernel/test_gpu.py) in a child pytest, with what
     time is left.
3. The last line printed is `gpu_check=passed` (every step ran, the tests passed) or `failed`.

`CheckConfig(device="cpu", ...)` runs every step at tiny sizes on the CPU (the memory figures then
null): the test suite runs the whole check that way.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .gpu_preflight import DEFAULT_WHEELS, preflight
from .report import HIDDEN_IMAGES

if TYPE_CHECKING:
    import torch

    from bundler.demo.synthetic import SyntheticSet
    from kernel_src.devices import DeviceSet
    from kernel_src.spec import InferenceSpec, ModelSpec

ROOT = Path(__file__).resolve().parent.parent
JSONL = "gpu_check.jsonl"
GPU_TESTS = ("tests/kernel/test_gpu.py",)
DEADLINE_S = 480.0  # the whole check, preflight to last line
IMAGES = 72  # the timed runs: a warm-up batch of 8, then 64 images for the steady rate
COMPARE_IMAGES = 16  # the fp32 reference run
MEMORY_BATCHES = (2, 8, 16)
T4_MEMORY_BYTES = 15 * 10**9  # what a T4 leaves a notebook (16 GB less the context)
T4_FP16_TFLOPS = (8.0, 16.0, 32.0, 65.0)  # effective rates for convnets; 65 is the T4's fp16 tensor-core peak
T4_CORES = 4
T4_BANDWIDTH_GBS = 320.0
BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2000.0, "L4": 300.0, "T4": 320.0}
BUDGET_S = 3300.0
NO_GPU = (
    "gpu-check: no CUDA device here (torch.cuda.is_available() is False), so nothing was measured. "
    "Run `python3 -m benchmarks --gpu-check` from the repository root on a machine with an NVIDIA GPU "
    "(carry .gpu-wheels/, gathered with `python -m benchmarks.gpu_preflight --gather`)."
)


class Log:
    """JSON lines appended and flushed as they come, each echoed as one short line on stdout."""

    def __init__(self, path: Path, started: float) -> None:
        self.path = path
        self.started = started
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")  # a fresh file per check: the lines are this run's

    def write(self, step: str, **data: Any) -> dict[str, Any]:
        record = {"step": step, "at_s": round(time.perf_counter() - self.started, 2), **data}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        short = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
        print(f"gpu-check {json.dumps(short, default=str)}", flush=True)
        return record


@dataclass(frozen=True)
class CheckConfig:
    """What the check measures at which size; the defaults are the GPU check's."""

    device: str = "cuda"
    height: int = 256
    width: int = 1600
    images: int = IMAGES
    compare_images: int = COMPARE_IMAGES
    batch_size: int = 8
    memory_batches: tuple[int, ...] = MEMORY_BATCHES
    deadline_s: float = DEADLINE_S
    tests: bool = True
    models: tuple[list[ModelSpec], list[ModelSpec]] | None = None


@dataclass
class Check:
    """One check's state: its log, the figures later steps use, the steps that failed."""

    config: CheckConfig
    log: Log
    root: Path
    started: float
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)  # model -> FLOPs per image (all its views)
    last_run_s: float = 60.0  # wall seconds of the last full run: the estimate of the next

    def left_s(self) -> float:
        return self.config.deadline_s - (time.perf_counter() - self.started)

    def step(self, name: str, estimate_s: float, body: Callable[[], None]) -> None:
        """Run `body` unless it would end past the deadline; an exception fails this step only."""
        if estimate_s > self.left_s():
            self.skipped.append(name)
            self.log.write(name, skipped=f"about {estimate_s:.0f} s needed, {self.left_s():.0f} s left of the 8 min")
            return
        try:
            body()
        except Exception as e:
            self.failed.append(name)
            self.log.write(name, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])


def _torch() -> Any:
    import torch

    return torch


def _memory(device: str) -> dict[str, Any] | None:
    """Peak allocated / reserved and used (`mem_get_info`) bytes on GPU 0; None off CUDA."""
    torch = _torch()
    if device != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(0)
    return {
        "max_allocated": int(torch.cuda.max_memory_allocated(0)),
        "max_reserved": int(torch.cuda.max_memory_reserved(0)),
        "used_now": int(total - free),
        "total": int(total),
        "fits_t4": bool(max(torch.cuda.max_memory_reserved(0), total - free) <= T4_MEMORY_BYTES),
    }


def _reset_memory(device: str) -> None:
    torch = _torch()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)


def _environment(check: Check) -> None:
    torch = _torch()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_cores": os.cpu_count(),
        "load_average": _load(),
        "python": sys.version.split()[0],
    }
    if check.config.device == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory": torch.cuda.get_device_properties(i).total_memory,
            }
            for i in range(torch.cuda.device_count())
        ]
    check.log.write("environment", **info)


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _setup(check: Check) -> tuple[SyntheticSet, Path, list[ModelSpec], list[ModelSpec]]:
    """The images and the random-weight ensemble saved as a bundle."""
    from safetensors.torch import save_file

    from kernel_src.models import build_model

    from .bench_cuda import first_place_models
    from .workload import make_images

    torch = _torch()
    begin = time.perf_counter()
    cfg = check.config
    images = make_images(check.root / "data", cfg.images, height=cfg.height, width=cfg.width, seed=9)
    classifiers, segmenters = cfg.models or first_place_models()
    bundle = check.root / "bundle"
    bundle.mkdir(exist_ok=True)
    for i, m in enumerate([*classifiers, *segmenters]):
        torch.manual_seed(i)
        state = build_model(m, 4).state_dict()
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(bundle / m.file))
    check.log.write(
        "setup",
        seconds=round(time.perf_counter() - begin, 1),
        images=cfg.images,
        size=[cfg.height, cfg.width],
        classifiers=[m.name for m in classifiers],
        segmenters=[m.name for m in segmenters],
    )
    return images, bundle, classifiers, segmenters


def true_fp32(enabled: bool) -> None:
    """TF32 off for matmuls and cuDNN convolutions (True), or back to torch's defaults (False):
    matmuls never TF32, cuDNN convolutions TF32 on Ampere and newer."""
    torch = _torch()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not enabled


def _inputs(images: SyntheticSet, spec: ModelSpec, n: int) -> torch.Tensor:
    import cv2
    import numpy as np
    import torch

    from .workload import model_input

    batch = []
    for image_id in images.image_ids[:n]:
        bgr = cv2.imread(str(images.images_dir / image_id), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"gpu-check image {images.images_dir / image_id} cannot be read")
        batch.append(model_input(np.asarray(bgr, dtype=np.uint8), spec))
    return torch.cat(batch)


def _models_step(check: Check, images: SyntheticSet, bundle: Path, models: Sequence[ModelSpec]) -> None:
    """Per model: fp16 (channels_last autocast) against true fp32, NaN/Inf counts, FLOPs per view."""
    from torch.utils.flop_counter import FlopCounterMode

    from kernel_src.models import load_model

    torch = _torch()
    device = torch.device(check.config.device, 0) if check.config.device == "cuda" else torch.device("cpu")
    worst = 0.0
    for spec in models:
        begin = time.perf_counter()
        model = load_model(spec, bundle, 4, device)
        x = _inputs(images, spec, 4).to(device)
        with torch.inference_mode():
            true_fp32(True)
            try:
                with FlopCounterMode(display=False) as counter:
                    model(x[:1])
                flops_view = float(counter.get_total_flops())
                ref = model(x).float()
            finally:
                true_fp32(False)
            model_cl = model.to(memory_format=torch.channels_last)
            with torch.autocast(
                device_type=device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16
            ):
                half = model_cl(x.contiguous(memory_format=torch.channels_last)).float()
        diff = (torch.sigmoid(ref) - torch.sigmoid(half)).abs()
        finite = torch.isfinite(diff)
        record = {
            "model": spec.name,
            "views": len(spec.tta),
            "flops_per_view_image": flops_view,
            "max_prob_diff": float(diff[finite].max()) if finite.any() else None,
            "mean_prob_diff": float(diff[finite].mean()) if finite.any() else None,
            "nan_fp16": int(torch.isnan(half).sum()),
            "inf_fp16": int(torch.isinf(half).sum()),
            "nan_fp32": int(torch.isnan(ref).sum()),
            "inf_fp32": int(torch.isinf(ref).sum()),
            "half": "fp16" if device.type == "cuda" else "bf16 (CPU stand-in)",
            "seconds": round(time.perf_counter() - begin, 2),
        }
        check.flops[spec.name] = flops_view * len(spec.tta)
        if isinstance(record["max_prob_diff"], float):
            worst = max(worst, record["max_prob_diff"])
        check.log.write("models", **record)
        del model, model_cl, x, ref, half
        _reset_memory(check.config.device)
    check.log.write(
        "models_summary",
        worst_max_prob_diff=worst,
        flops_per_image=sum(check.flops.values()),
        note="random weights; fp16 = autocast in channels_last as shipped, fp32 = TF32 off",
    )


def _spec(check: Check, classifiers: list[ModelSpec], segmenters: list[ModelSpec], precision: str) -> InferenceSpec:
    from dataclasses import replace

    from .bench_cuda import ensemble_spec

    cfg = check.config
    spec = ensemble_spec(
        classifiers, segmenters, height=cfg.height, width=cfg.width, device=cfg.device, precision=precision
    )
    return replace(spec, batch_size=cfg.batch_size)


def subset_sample(sample: Path, image_ids: Sequence[str], dest: Path) -> Path:
    """A wide-layout sample submission holding only the rows of `image_ids`."""
    keep = set(image_ids)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with sample.open(newline="", encoding="utf-8") as src, dest.open("w", newline="", encoding="utf-8") as out:
        rows = csv.reader(src)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(next(rows))
        for row in rows:
            if row and row[0].rsplit("_", 1)[0] in keep:
                writer.writerow(row)
    return dest


def dice(a: Path, b: Path, shape: tuple[int, int]) -> float:
    """Dice over every mask of the rows two wide-layout submissions share (1.0 when all empty)."""
    import pandas as pd

    from kernel_src.rle import decode

    ra = dict(pd.read_csv(a, dtype=str, keep_default_na=False).itertuples(index=False, name=None))
    rb = dict(pd.read_csv(b, dtype=str, keep_default_na=False).itertuples(index=False, name=None))
    inter = total = 0
    for key in set(ra) & set(rb):
        ma, mb = decode(ra[key], shape, "F").astype(bool), decode(rb[key], shape, "F").astype(bool)
        inter += int((ma & mb).sum())
        total += int(ma.sum()) + int(mb.sum())
    return 1.0 if total == 0 else 2 * inter / total


def _run(
    check: Check,
    label: str,
    spec: InferenceSpec,
    bundle: Path,
    images: SyntheticSet,
    *,
    sample: Path | None = None,
    devices: DeviceSet | None = None,
    sync_stages: bool = False,
    cudnn_benchmark: bool = False,
    fp32: bool = False,
    compare_to: str | None = None,
) -> None:
    """One `run()`; its figures logged as the step `run <label>` and kept in `check.runs`."""
    from kernel_src.devices import resolve_devices
    from kernel_src.paths import SUBMISSION_FILE
    from kernel_src.run import run

    torch = _torch()
    cfg = check.config
    out = check.root / f"out-{label.replace(' ', '-')}"
    if devices is None:  # one GPU, whatever the machine has: the replica runs are the comparisons
        devices = resolve_devices(cfg.device, memory_format=spec.memory_format, precision=spec.precision, replicas=1)
    _reset_memory(cfg.device)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    true_fp32(fp32)
    begin = time.perf_counter()
    try:
        result = run(
            spec,
            bundle_dir=bundle,
            test_dir=images.images_dir,
            sample_submission=sample or images.sample_submission,
            out_dir=out,
            progress=False,
            devices=devices,
            sync_stages=sync_stages,
        )
    finally:
        torch.backends.cudnn.benchmark = False
        true_fp32(False)
    wall = time.perf_counter() - begin
    check.last_run_s = wall
    profile = result.profile
    n = max(int(profile["images_predicted"]), 1)
    steady = profile.get("steady_per_image_s")
    record: dict[str, Any] = {
        "label": label,
        "wall_s": round(wall, 2),
        "images": profile["images"],
        "fixed_s": profile["fixed_s"],
        "per_image_s": profile["per_image_s"],
        "steady_per_image_s": steady,
        "steady_images_per_s": round(1 / steady, 3) if steady else None,
        "stage_ms_per_image": {k: round(1000 * v["seconds"] / n, 3) for k, v in profile["stages"].items()},
        "stage_syncs": sync_stages,
        "cudnn_benchmark": cudnn_benchmark,
        "precision": profile["devices"].get("precision"),
        "replicas": profile["devices"].get("replicas"),
        "call_sizes": {k: v.get("chosen") for k, v in profile.get("call_sizes", {}).items()},
        "nonfinite": profile["counts"].get("nonfinite", 0),
        "nonfinite_outputs": profile.get("nonfinite_outputs"),
        "model_failures": profile["problems"]["model_failures"],
        "memory": _memory(cfg.device),
        "submission": str(out / SUBMISSION_FILE),
    }
    if compare_to is not None and compare_to in check.runs:
        other = Path(check.runs[compare_to]["submission"])
        record[f"dice_vs_{compare_to.replace(' ', '_')}"] = round(
            dice(out / SUBMISSION_FILE, other, (cfg.height, cfg.width)), 5
        )
    check.runs[label] = record
    check.log.write(f"run {label}", **record)


def _memory_step(check: Check, spec: InferenceSpec, bundle: Path, images: SyntheticSet) -> None:
    """The ensemble loaded once; one batch of each size with every view in one call; peak memory."""
    import cv2
    import numpy as np

    from kernel_src.devices import resolve_devices
    from kernel_src.models import load_models
    from kernel_src.predict import Predictor
    from kernel_src.profiler import Profiler

    cfg = check.config
    devices = resolve_devices(cfg.device, replicas=1)
    profiler = Profiler(time.time())
    classifiers, segmenters = load_models(spec, bundle, devices, profiler)
    for lm in (*classifiers, *segmenters):
        lm.images_per_call = 0  # no limit: the whole stacked batch in one call
    predictor = Predictor(spec, classifiers, segmenters, devices, profiler)
    rgb = []
    for image_id in images.image_ids[: max(cfg.memory_batches)]:
        bgr = cv2.imread(str(images.images_dir / image_id), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"gpu-check image {images.images_dir / image_id} cannot be read")
        rgb.append(np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8))
    stack = np.stack(rgb)
    for n in cfg.memory_batches:
        _reset_memory(cfg.device)
        begin = time.perf_counter()
        try:
            predictor.predict(stack[:n])
            error = None
        except Exception as e:  # out of memory at this size is a result, not a failed step
            error = f"{type(e).__name__}: {str(e)[:300]}"
        check.log.write(
            "memory",
            images_per_call=n,
            view_images_per_segmenter_call=n * 3,
            seconds=round(time.perf_counter() - begin, 2),
            memory=_memory(cfg.device),
            t4_limit_bytes=T4_MEMORY_BYTES,
            error=error,
        )
    del predictor, classifiers, segmenters
    _reset_memory(cfg.device)


def _bandwidth(names: Sequence[str]) -> float | None:
    for key, gbs in BANDWIDTH_GBS.items():
        if any(key in name for name in names):
            return gbs
    return None


def projection(check: Check, gpu_names: Sequence[str]) -> dict[str, Any]:
    """The T4 x2 projection from what was measured (see the module docstring); labelled figures."""
    base = check.runs.get("fp16")
    if base is None or not check.flops:
        raise RuntimeError("the projection needs the models step and the fp16 run")
    stages = base["stage_ms_per_image"]
    forwards_ms = sum(v for k, v in stages.items() if k.startswith(("segmenter:", "classifier:")))
    device_other_ms = stages.get("preprocess", 0.0) + stages.get("tta_merge", 0.0)
    cpu_main_ms = sum(stages.get(k, 0.0) for k in ("postprocess", "rle", "write"))
    workers = 4
    decode_ms = stages.get("decode", 0.0) / min(workers, T4_CORES)  # thread-seconds over the threads 4 cores run
    flops = sum(check.flops.values())
    two = check.runs.get("two replicas")
    efficiency = 1.0
    efficiency_note = "not measured (no two-replica run): 1.0 assumed"
    if two is not None and two.get("steady_per_image_s") and base.get("steady_per_image_s"):
        efficiency = min(1.0, base["steady_per_image_s"] / two["steady_per_image_s"])
        efficiency_note = "two replicas on one GPU against one: the split's own cost (1.0 = none)"
        if two.get("gpus", 1) > 1:
            efficiency_note = "two GPUs against one, per GPU"
    bandwidth = _bandwidth(gpu_names)
    other_scale = bandwidth / T4_BANDWIDTH_GBS if bandwidth else 1.0
    load_s = float(base["fixed_s"])
    rows = []
    for rate in T4_FP16_TFLOPS:
        gpu_ms = 1000 * flops / (rate * 1e12) / (2 * efficiency) + device_other_ms * other_scale / 2
        serial = load_s + HIDDEN_IMAGES * (gpu_ms + cpu_main_ms) / 1000
        overlapped = load_s + HIDDEN_IMAGES * max(gpu_ms, cpu_main_ms, decode_ms) / 1000
        rows.append(
            {
                "t4_fp16_tflops": rate,
                "gpu_ms_per_image": round(gpu_ms, 2),
                "serial_s": round(serial, 1),
                "overlapped_s": round(overlapped, 1),
                "serial_fits": serial <= BUDGET_S,
                "overlapped_fits": overlapped <= BUDGET_S,
            }
        )
    measured_tflops = flops / (forwards_ms / 1000) / 1e12 if forwards_ms > 0 else None
    return {
        "label": "T4 x2 PROJECTION from this machine's measurements, not a T4 measurement",
        "flops_per_image": flops,
        "measured_forward_tflops_here": None if measured_tflops is None else round(measured_tflops, 2),
        "split_efficiency": round(efficiency, 3),
        "split_efficiency_note": efficiency_note,
        "device_other_ms_here": round(device_other_ms, 2),
        "device_other_scale": round(other_scale, 2),
        "device_other_note": "preprocess + merge (memory-bound) scaled by this GPU's bandwidth over a T4's 320 GB/s"
        if bandwidth
        else "preprocess + merge as measured here (this GPU's bandwidth unknown)",
        "cpu_main_ms_per_image": round(cpu_main_ms, 2),
        "decode_ms_per_image_on_4_cores": round(decode_ms, 2),
        "cpu_note": "post-processing, RLE and writing run on one thread as measured here; decoding's "
        "thread-seconds over min(4 workers, 4 cores); this machine's per-core speed assumed",
        "load_s_here": load_s,
        "images": HIDDEN_IMAGES,
        "budget_s": BUDGET_S,
        "rates": rows,
    }


def run_tests(paths: Sequence[str], *, marker: str | None, timeout_s: float, cwd: Path = ROOT) -> PytestRun:
    """A child `python -m pytest` over `paths` (only tests marked `marker` when given); its output
    goes straight to this process's stdout/stderr."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
        command += [f"--junitxml={junit}", *(["-m", marker] if marker else []), *paths]
        try:
            done = subprocess.run(command, cwd=cwd, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return PytestRun(returncode=1, problem=f"the tests ran past {timeout_s:.0f} s and were stopped")
        if not junit.is_file():
            return PytestRun(returncode=done.returncode, problem=f"pytest exited {done.returncode} without a report")
        result = read_junit(junit)
        result.returncode = done.returncode
        return result


@dataclass
class PytestRun:
    """What a child pytest reported: its exit status, counts and recorded properties."""

    returncode: int
    tests: int = 0
    failed: int = 0
    skipped: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # why there are no counts (a timeout, no JUnit XML), "" when there are

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.problem


def read_junit(path: Path) -> PytestRun:
    """Counts and `record_property` properties from a pytest JUnit XML file (xunit1)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    run = PytestRun(returncode=0)
    for suite in suites:
        run.tests += int(suite.get("tests", 0))
        run.failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        run.skipped += int(suite.get("skipped", 0))
        for prop in suite.iter("property"):
            run.properties[str(prop.get("name"))] = str(prop.get("value"))
    return run


def measure(check: Check) -> None:
    """Every measuring step, most important first (a timed-out run keeps the first ones)."""
    from kernel_src.devices import DeviceSet

    torch = _torch()
    cfg = check.config
    _environment(check)
    images, bundle, classifiers, segmenters = _setup(check)
    gpus = torch.cuda.device_count() if cfg.device == "cuda" else 0
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    check.step("models", 20.0, lambda: _models_step(check, images, bundle, [*classifiers, *segmenters]))
    fp16 = _spec(check, classifiers, segmenters, "fp16" if cfg.device == "cuda" else "fp32")
    check.step("run fp16", 30.0, lambda: _run(check, "fp16", fp16, bundle, images))
    compare = subset_sample(images.sample_submission, images.image_ids[: cfg.compare_images], check.root / "cmp.csv")
    fp32 = _spec(check, classifiers, segmenters, "fp32")
    check.step(
        "run fp32",
        check.last_run_s,
        lambda: _run(check, "fp32", fp32, bundle, images, sample=compare, fp32=True, compare_to="fp16"),
    )
    check.step("memory", check.last_run_s * 0.6, lambda: _memory_step(check, fp16, bundle, images))
    kind = torch.device(cfg.device, 0) if cfg.device == "cuda" else torch.device("cpu")
    auto = DeviceSet((kind,), channels_last=cfg.device == "cuda", autocast_dtype=None, pin_memory=cfg.device == "cuda")
    if cfg.device == "cuda":
        auto = DeviceSet((kind,), channels_last=True, autocast_dtype=torch.float16, pin_memory=True)
    two = DeviceSet(
        (kind, kind), channels_last=auto.channels_last, autocast_dtype=auto.autocast_dtype, pin_memory=auto.pin_memory
    )
    check.step(
        "run two replicas",
        check.last_run_s * 1.5,
        lambda: _run(check, "two replicas", fp16, bundle, images, devices=two, compare_to="fp16"),
    )
    if gpus >= 2:
        both = DeviceSet(
            (torch.device("cuda", 0), torch.device("cuda", 1)),
            channels_last=True,
            autocast_dtype=torch.float16,
            pin_memory=True,
        )
        check.step(
            "run two gpus",
            check.last_run_s * 1.5,
            lambda: _run(check, "two gpus", fp16, bundle, images, devices=both, compare_to="fp16"),
        )
        if "two gpus" in check.runs:
            check.runs["two replicas"] = {**check.runs["two gpus"], "gpus": 2}
    check.step(
        "run syncs on",
        check.last_run_s,
        lambda: _run(check, "syncs on", fp16, bundle, images, sync_stages=True, compare_to="fp16"),
    )
    check.step(
        "run cudnn.benchmark",
        check.last_run_s * 1.2,
        lambda: _run(check, "cudnn.benchmark", fp16, bundle, images, cudnn_benchmark=True, compare_to="fp16"),
    )
    check.step("t4x2_projection", 1.0, lambda: _log_projection(check, names))


def _log_projection(check: Check, names: Sequence[str]) -> None:
    check.log.write("t4x2_projection", **projection(check, names))


def _tests_step(check: Check) -> None:
    left = check.left_s() - 5
    tests = run_tests(GPU_TESTS, marker="gpu", timeout_s=left)
    check.log.write(
        "gpu_tests",
        passed=tests.passed,
        failed=tests.failed,
        skipped=tests.skipped,
        problem=tests.problem,
        properties=tests.properties,
    )
    if not tests.ok:
        check.failed.append("gpu_tests")


def run_check(config: CheckConfig, log: Log) -> int:
    """The measuring part of the check (after the preflight and the GPU test): 0 passed, 1 failed."""
    started = log.started
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = Check(config, log, Path(tmp), started)
        try:
            measure(check)
        except Exception as e:  # the setup failed: nothing else can run
            check.failed.append("setup")
            log.write("setup", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        if config.tests:
            check.step("gpu_tests", 60.0, lambda: _tests_step(check))
    passed = not check.failed
    log.write(
        "summary",
        passed=passed,
        failed=check.failed,
        skipped=check.skipped,
        seconds=round(time.perf_counter() - started, 1),
        load_average=_load(),
    )
    print(f"gpu_check_jsonl={log.path}")
    print(f"gpu_check={'passed' if passed else 'failed'}", flush=True)
    return 0 if passed else 1


def main(out: Path | None = None, wheels: Path | None = None) -> int:
    """The whole check (see the module docstring): 0 passed, 1 failed, 2 no GPU, 3 preflight failed."""
    folder = out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "gpu-check-out")
    pre = preflight(wheels or DEFAULT_WHEELS)
    started = time.perf_counter()
    log = Log(folder / JSONL, started)
    log.write("preflight", ok=pre.ok, **pre.to_dict())
    if not pre.ok:
        for problem in pre.problems:
            print(f"gpu-check preflight: {problem}", file=sys.stderr, flush=True)
        print("gpu_check=preflight_failed", flush=True)
        return 3
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        log.write("no_gpu", torch=torch.__version__)
        print(NO_GPU, file=sys.stderr, flush=True)
        print("gpu_check=no_gpu", flush=True)
        return 2
    return run_check(CheckConfig(), log)
