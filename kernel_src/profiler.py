"""Stage timings, counts and problems of one run: `profile.json` and a plain-text table.

`Profiler.stage(name)` times a block in one of three ways:
- `events` set (the engine's default: `DeviceSet.event`): a timing event is recorded on every
  device before and after the block, nothing waits; `flush()`, called once per batch after its
  results reached the host, synchronises once and charges each stage its events' elapsed time
  (CUDA events on GPU; on CPU the stand-in records `time.perf_counter`, the same code path);
- `sync` set (the engine's `sync_stages=True`, to compare): every CUDA device is synchronised
  before and after the block, so asynchronous GPU work is charged to the stage that queued it,
  at the cost of two device-wide waits per stage;
- neither: plain `time.perf_counter` around the block.
`add` and the snapshots take a lock: the post-processing worker charges its stages from its own
thread. Stage names used by the
engine: `setup`, `load_models`, `decode` (worker-thread seconds, overlapped with compute),
`wait_images` (the engine blocked on the loader), `preprocess`, `classifier:<name>`,
`segmenter:<name>`, `tta_merge`, `postprocess`, `rle`, `write`.

`to_dict()` returns the `profile.json` document described in docs/ARCHITECTURE.md. The per-image
cost counts only the images actually predicted (`images_predicted`: neither missing nor
unreadable), so a run over a folder that lacks most listed images is not mistaken for a fast one.
`resources` holds what Kaggle's limits are about: the peak resident memory of this process
(`resource.getrusage`, else `/proc/self/status` VmHWM), the peak GPU memory per CUDA device
(`torch.cuda.max_memory_allocated`; explicitly null when the run was not on CUDA), the fuller GPU
picture per device (`gpu_memory`: peak allocated, peak reserved by the caching allocator, and
`mem_get_info`'s free and total, whose difference also holds the CUDA context and other
processes), the estimate of the GPU peak made at load (`gpu_estimate`, `kernel_src.memory`) and
the bytes under the working folder when profile.json is written. This module imports only the standard
library; torch is read from `sys.modules` when the run already imported it.
"""

from __future__ import annotations

import os
import platform
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROFILE_FORMAT = 1
IMAGE_PROBLEMS = ("unreadable", "missing", "nonfinite", "converted")
NOT_PREDICTED = ("unreadable", "missing")  # image problems that leave an image without any forward
EXAMPLES_PER_KIND = 5  # profile.json "problem_examples": the first few problems of each kind, with what happened


def peak_rss_bytes() -> int | None:
    """The peak resident memory of this process in bytes (None where the platform does not say)."""
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if kib > 0:
            return int(kib) * (1 if sys.platform == "darwin" else 1024)  # macOS counts bytes, Linux KiB
    except (ImportError, OSError, ValueError):
        pass
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def children_peak_rss_bytes() -> int | None:
    """The largest peak resident memory of this process's finished children (pip), in bytes."""
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    except (ImportError, OSError, ValueError):
        return None
    return int(kib) * (1 if sys.platform == "darwin" else 1024) if kib > 0 else None


def gpu_peak_bytes(device_type: str) -> dict[str, int] | None:
    """`{"cuda:0": bytes, ...}`: torch's peak allocated memory per CUDA device; None off CUDA."""
    torch = sys.modules.get("torch")
    if device_type != "cuda" or torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return {f"cuda:{i}": int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count())}
    except Exception:  # a broken CUDA state must not cost the profile
        return None


def gpu_memory(device_type: str, cuda: Any = None) -> dict[str, dict[str, int]] | None:
    """`{"cuda:0": {"peak_allocated_bytes", "peak_reserved_bytes", "free_bytes", "total_bytes",
    "used_bytes"}, ...}`; None off CUDA. `cuda`: torch.cuda (tests pass a stand-in)."""
    if cuda is None:
        torch = sys.modules.get("torch")
        if device_type != "cuda" or torch is None:
            return None
        cuda = torch.cuda
    elif device_type != "cuda":
        return None
    try:
        if not cuda.is_available():
            return None
        out = {}
        for i in range(cuda.device_count()):
            free, total = cuda.mem_get_info(i)
            out[f"cuda:{i}"] = {
                "peak_allocated_bytes": int(cuda.max_memory_allocated(i)),
                "peak_reserved_bytes": int(cuda.max_memory_reserved(i)),
                "free_bytes": int(free),
                "total_bytes": int(total),
                "used_bytes": int(total) - int(free),  # the CUDA context and every process included
            }
        return out
    except Exception:  # a broken CUDA state must not cost the profile
        return None


def format_bytes(n: Any) -> str:
    """`n` bytes for people: GB (10^9) from 1 GB up, else MB; '-' when unknown. The one formatter of
    memory and disk figures (the profile table, the dry-run's verdict, table and report)."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (links not followed); 0 when it is absent."""
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = (Path(parent) / name).lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class Profiler:
    """Collects what `profile.json` reports. Times are epoch seconds (`clock`, default `time.time`)."""

    def __init__(
        self,
        started_at: float,
        *,
        device: str = "cpu",
        gpus: int = 0,
        torch_version: str = "",
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        events: Callable[[], Any] | None = None,
    ) -> None:
        self.started_at = started_at
        self.device = device
        self.gpus = gpus
        self.torch_version = torch_version
        self.sync = sync
        self.events = events  # a factory of timing events (record(), elapsed_s(end), synchronize())
        self._pending: list[tuple[str, Any, Any]] = []  # (stage, start event, end event) not yet flushed
        self._lock = threading.Lock()
        self.clock = clock
        self.images = 0
        self.first_batch_at: float | None = None
        self.finished_at: float | None = None
        self.model_load_s: dict[str, float] = {}
        self.devices: dict[str, Any] = {}  # profile.json "devices": DeviceSet.to_dict() (+ pin_memory_fallback)
        # profile.json "call_sizes": {model: {"chosen": n, "measured_s": {"1": s, ...}, "reduced_by_oom": [n, ...]}}
        self.call_sizes: dict[str, dict[str, Any]] = {}
        self.gating_record: dict[str, Any] = {
            "mode": "off",
            "images_segmented": 0,
            "images_skipped": 0,
            "pairs_gated_out": 0,
        }
        self.guard_record: dict[str, Any] = {"budget_s": None, "steps": []}  # profile.json "guard"
        # profile.json "nonfinite_outputs": NaN model outputs dropped per image (see kernel_src/run.py)
        self.nonfinite_outputs: dict[str, Any] = {
            "models": {},
            "segmenter_dropped": 0,
            "classifier_dropped": 0,
            "ungated": 0,
        }
        # model_failures: {model, after_images, error}; batch_failures: {images (ids), after_images, error}
        self.problems: dict[str, list[Any]] = {
            kind: [] for kind in (*IMAGE_PROBLEMS, "model_failures", "batch_failures")
        }
        self.batch_split_by_oom: list[
            int
        ] = []  # the images predicted at once after each out of memory outside a forward
        self.problem_examples: dict[str, list[str]] = {kind: [] for kind in IMAGE_PROBLEMS}
        self.error: str | None = None
        self.task_record: dict[str, Any] = {}  # profile.json "task" of an image-level task (kernel_src.image_run)
        self.working_dir: Path | None = None  # the folder whose bytes profile.json reports (the run's out_dir)
        self.memory_estimate: dict[str, Any] | None = None  # kernel_src.memory.estimate_peak, made at load
        self._resources: dict[str, Any] | None = None  # taken at finish(): every later to_dict() says the same
        self._stages: dict[str, list[float]] = {}  # name -> [seconds, calls]
        self._batches: list[tuple[float, int]] = []  # (clock when a batch was done, images done by then)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block: by events when `events` is set (charged at `flush`), else wall time,
        CUDA-synchronised before and after when `sync` is set (see the module docstring)."""
        if self.events is not None and self.sync is None:
            start = self.events()
            start.record()
            try:
                yield
            finally:
                end = self.events()
                end.record()
                self._pending.append((name, start, end))
            return
        if self.sync is not None:
            self.sync()
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.add(name, time.perf_counter() - begin)

    def flush(self) -> None:
        """Charge the stages timed by events since the last flush: one wait for the devices (the
        last end event), then each pair's elapsed time. A no-op when nothing is pending."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        pending[-1][2].synchronize()
        for name, start, end in pending:
            self.add(name, start.elapsed_s(end))

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        """Charge `seconds` (measured elsewhere, e.g. in a decoding thread) to a stage."""
        with self._lock:
            entry = self._stages.setdefault(name, [0.0, 0.0])
            entry[0] += seconds
            entry[1] += calls

    def seconds(self, name: str) -> float:
        """Seconds charged to `name` so far (0 when never timed)."""
        with self._lock:
            return self._stages.get(name, [0.0, 0.0])[0]

    def stage_seconds(self) -> dict[str, float]:
        """A snapshot of every stage's seconds so far."""
        with self._lock:
            return {name: entry[0] for name, entry in self._stages.items()}

    def model_loaded(self, name: str, seconds: float) -> None:
        self.model_load_s[name] = self.model_load_s.get(name, 0.0) + seconds

    def mark_first_batch(self) -> None:
        """Call when the first batch of images starts: what came before is the fixed cost."""
        if self.first_batch_at is None:
            self.first_batch_at = self.clock()

    def _stage_items(self) -> list[tuple[str, list[float]]]:
        with self._lock:
            return [(name, list(entry)) for name, entry in self._stages.items()]

    def batch_done(self, images_done: int) -> None:
        """Call when a batch's rows are written: the times feed `steady_per_image_s`."""
        self._batches.append((self.clock(), images_done))

    def steady_per_image_s(self) -> float | None:
        """Seconds per image after the first batch (its one-off costs, cuDNN's autotuning, the first
        allocations, left out); None before two batches are done."""
        if len(self._batches) < 2:
            return None
        (t0, n0), (t1, n1) = self._batches[0], self._batches[-1]
        return max(t1 - t0, 0.0) / (n1 - n0) if n1 > n0 else None

    def problem(self, kind: str, item: Any, detail: str | None = None) -> None:
        """Record an image problem (`kind` in IMAGE_PROBLEMS, item the image id, `detail` what happened
        to it) or a model failure."""
        if kind not in self.problems:
            raise ValueError(f"unknown problem kind {kind!r}; known: {sorted(self.problems)}")
        self.problems[kind].append(item)
        examples = self.problem_examples.get(kind)
        if examples is not None and len(examples) < EXAMPLES_PER_KIND:
            examples.append(detail or str(item))

    def finish(self) -> None:
        """Mark the end of the run (the submission is written); the resources are measured now,
        before profile.json itself is written."""
        try:
            self.flush()
        except Exception:  # a broken CUDA state must not cost the profile
            self._pending = []
        self.finished_at = self.clock()
        self._resources = self.resources()

    def to_dict(self) -> dict[str, Any]:
        """The `profile.json` document."""
        end = self.finished_at if self.finished_at is not None else self.clock()
        total = max(end - self.started_at, 0.0)
        fixed = (self.first_batch_at if self.first_batch_at is not None else end) - self.started_at
        fixed = min(max(fixed, 0.0), total)
        images = self.images
        skipped = sum(len(self.problems[kind]) for kind in NOT_PREDICTED)
        predicted = max(images - skipped, 0)
        profile: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "device": self.device,
            "gpus": self.gpus,
            "torch": self.torch_version,
            "python": platform.python_version(),
            "started_at": self.started_at,
            "total_s": round(total, 4),
            "images": images,
            "images_predicted": predicted,
            "images_per_s": round(images / total, 4) if total > 0 else 0.0,
            "stages": {
                name: {"seconds": round(entry[0], 4), "calls": int(entry[1])} for name, entry in self._stage_items()
            },
            "model_load_s": {name: round(s, 4) for name, s in self.model_load_s.items()},
            "devices": dict(self.devices),
            "call_sizes": {
                name: {
                    **entry,
                    "measured_s": dict(entry["measured_s"]),
                    "reduced_by_oom": list(entry["reduced_by_oom"]),
                }
                for name, entry in self.call_sizes.items()
            },
            "batch_split_by_oom": list(self.batch_split_by_oom),
            "fixed_s": round(fixed, 4),
            "per_image_s": round((total - fixed) / predicted, 6) if predicted else 0.0,
            "steady_per_image_s": None if (steady := self.steady_per_image_s()) is None else round(steady, 6),
            "gating": dict(self.gating_record),
            "nonfinite_outputs": {**self.nonfinite_outputs, "models": dict(self.nonfinite_outputs["models"])},
            "guard": {**self.guard_record, "steps": list(self.guard_record["steps"])},
            "problems": {kind: list(items) for kind, items in self.problems.items()},
            "counts": {kind: len(self.problems[kind]) for kind in IMAGE_PROBLEMS},
            "problem_examples": {kind: list(items) for kind, items in self.problem_examples.items()},
            "resources": dict(self._resources) if self._resources is not None else self.resources(),
        }
        if self.task_record:
            profile["task"] = dict(self.task_record)
        if self.error is not None:
            profile["error"] = self.error
        return profile

    def resources(self) -> dict[str, Any]:
        """profile.json's "resources": peak memory of this process and per GPU, bytes written."""
        return {
            "peak_rss_bytes": peak_rss_bytes(),
            "children_peak_rss_bytes": children_peak_rss_bytes(),
            "gpu_peak_bytes": gpu_peak_bytes(str(self.devices.get("kind", self.device))),
            "gpu_memory": gpu_memory(str(self.devices.get("kind", self.device))),
            "gpu_estimate": self.memory_estimate,
            "working_bytes": None if self.working_dir is None else folder_bytes(self.working_dir),
        }

    def table(self) -> str:
        """A plain-text summary: the run, then stages by time spent."""
        p = self.to_dict()
        lines = [
            f"device {p['device']} (gpus {p['gpus']}), torch {p['torch']}",
            f"images {p['images']} ({p['images_predicted']} predicted)  total {p['total_s']:.1f} s  "
            f"fixed {p['fixed_s']:.1f} s  per predicted image {p['per_image_s'] * 1000:.1f} ms  "
            f"({p['images_per_s']:.2f} images/s)",
        ]
        stages = sorted(p["stages"].items(), key=lambda kv: -kv[1]["seconds"])
        width = max([len("stage"), *(len(name) for name, _ in stages)])
        lines.append(f"{'stage':<{width}}  {'seconds':>9}  {'calls':>6}  {'share':>6}")
        for name, entry in stages:
            share = entry["seconds"] / p["total_s"] if p["total_s"] > 0 else 0.0
            lines.append(f"{name:<{width}}  {entry['seconds']:>9.2f}  {entry['calls']:>6}  {share:>6.1%}")
        for name, seconds in p["model_load_s"].items():
            lines.append(f"loaded {name} in {seconds:.2f} s")
        g = p["gating"]
        lines.append(
            f"gating {g['mode']}: {g['images_segmented']} images segmented, {g['images_skipped']} skipped, "
            f"{g['pairs_gated_out']} image x class pairs gated out"
        )
        counts = ", ".join(f"{k} {v}" for k, v in p["counts"].items())
        lines.append(
            f"problems: {counts}, model failures {len(p['problems']['model_failures'])}, "
            f"batch failures {len(p['problems']['batch_failures'])}"
        )
        r = p["resources"]
        gpu = r["gpu_peak_bytes"]
        lines.append(
            f"peak memory {format_bytes(r['peak_rss_bytes'])} (this process), GPU "
            + (", ".join(f"{d} {format_bytes(b)}" for d, b in gpu.items()) if gpu else "not used")
            + f", working folder {format_bytes(r['working_bytes'])}"
        )
        for step in p["guard"]["steps"]:
            lines.append(
                f"guard after {step['after_images']} images ({step['elapsed_s']:.0f} s, projected "
                f"{step['projected_s']:.0f} s of {p['guard']['budget_s']:.0f} s): {step['action']} {step['detail']}"
            )
        return "\n".join(lines)
