"""Stage timings, counts and problems of one run: `profile.json` and a plain-text table.

`Profiler.stage(name)` times a block with `time.perf_counter`; when a `sync` callable is given
(the engine passes one that synchronises every CUDA device in use) it runs before and after the
block, so asynchronous GPU work is charged to the stage that queued it. Stage names used by the
engine: `setup`, `load_models`, `decode` (worker-thread seconds, overlapped with compute),
`wait_images` (the engine blocked on the loader), `preprocess`, `classifier:<name>`,
`segmenter:<name>`, `tta_merge`, `postprocess`, `rle`, `write`.

`to_dict()` returns the `profile.json` document described in docs/ARCHITECTURE.md. This module
needs only the standard library.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PROFILE_FORMAT = 1
IMAGE_PROBLEMS = ("unreadable", "missing", "nonfinite", "converted")


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
    ) -> None:
        self.started_at = started_at
        self.device = device
        self.gpus = gpus
        self.torch_version = torch_version
        self.sync = sync
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
        self.problems: dict[str, list[Any]] = {kind: [] for kind in (*IMAGE_PROBLEMS, "model_failures")}
        self.error: str | None = None
        self._stages: dict[str, list[float]] = {}  # name -> [seconds, calls]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block (CUDA-synchronised before and after when `sync` is set)."""
        if self.sync is not None:
            self.sync()
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.add(name, time.perf_counter() - begin)

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        """Charge `seconds` (measured elsewhere, e.g. in a decoding thread) to a stage."""
        entry = self._stages.setdefault(name, [0.0, 0.0])
        entry[0] += seconds
        entry[1] += calls

    def seconds(self, name: str) -> float:
        """Seconds charged to `name` so far (0 when never timed)."""
        return self._stages.get(name, [0.0, 0.0])[0]

    def stage_seconds(self) -> dict[str, float]:
        """A snapshot of every stage's seconds so far."""
        return {name: entry[0] for name, entry in self._stages.items()}

    def model_loaded(self, name: str, seconds: float) -> None:
        self.model_load_s[name] = self.model_load_s.get(name, 0.0) + seconds

    def mark_first_batch(self) -> None:
        """Call when the first batch of images starts: what came before is the fixed cost."""
        if self.first_batch_at is None:
            self.first_batch_at = self.clock()

    def problem(self, kind: str, item: Any) -> None:
        """Record an image problem (`kind` in IMAGE_PROBLEMS, item the image id) or a model failure."""
        if kind not in self.problems:
            raise ValueError(f"unknown problem kind {kind!r}; known: {sorted(self.problems)}")
        self.problems[kind].append(item)

    def finish(self) -> None:
        """Mark the end of the run (the submission is written)."""
        self.finished_at = self.clock()

    def to_dict(self) -> dict[str, Any]:
        """The `profile.json` document."""
        end = self.finished_at if self.finished_at is not None else self.clock()
        total = max(end - self.started_at, 0.0)
        fixed = (self.first_batch_at if self.first_batch_at is not None else end) - self.started_at
        fixed = min(max(fixed, 0.0), total)
        images = self.images
        profile: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "device": self.device,
            "gpus": self.gpus,
            "torch": self.torch_version,
            "python": platform.python_version(),
            "started_at": self.started_at,
            "total_s": round(total, 4),
            "images": images,
            "images_per_s": round(images / total, 4) if total > 0 else 0.0,
            "stages": {
                name: {"seconds": round(entry[0], 4), "calls": int(entry[1])} for name, entry in self._stages.items()
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
            "fixed_s": round(fixed, 4),
            "per_image_s": round((total - fixed) / images, 6) if images else 0.0,
            "gating": dict(self.gating_record),
            "nonfinite_outputs": {**self.nonfinite_outputs, "models": dict(self.nonfinite_outputs["models"])},
            "guard": {**self.guard_record, "steps": list(self.guard_record["steps"])},
            "problems": {kind: list(items) for kind, items in self.problems.items()},
            "counts": {kind: len(self.problems[kind]) for kind in IMAGE_PROBLEMS},
        }
        if self.error is not None:
            profile["error"] = self.error
        return profile

    def table(self) -> str:
        """A plain-text summary: the run, then stages by time spent."""
        p = self.to_dict()
        lines = [
            f"device {p['device']} (gpus {p['gpus']}), torch {p['torch']}",
            f"images {p['images']}  total {p['total_s']:.1f} s  fixed {p['fixed_s']:.1f} s  "
            f"per image {p['per_image_s'] * 1000:.1f} ms  ({p['images_per_s']:.2f} images/s)",
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
        lines.append(f"problems: {counts}, model failures {len(p['problems']['model_failures'])}")
        for step in p["guard"]["steps"]:
            lines.append(
                f"guard after {step['after_images']} images ({step['elapsed_s']:.0f} s, projected "
                f"{step['projected_s']:.0f} s of {p['guard']['budget_s']:.0f} s): {step['action']} {step['detail']}"
            )
        return "\n".join(lines)
