"""The dry-run's verdict: FAIL for anything that would cost the submission on Kaggle, WARN for the rest.

`judge(facts)` turns what the run left behind (the execution, the submission check, profile.json,
the projection, the resources beside the machine's limits) into a `Verdict`:

FAIL (exit 1; the first reason is the one the CLI prints), in this order:
- the notebook did not run to the end (a cell failed, the kernel died, a timeout); the setup
  cell's offline install of the vendored wheels is named as such;
- the submission is missing or incomplete, or could not be scored;
- a model failed during the run (it was dropped, the rest of the run went on without it);
- a model gave NaN output for an image (dropped for that image, or empty masks when every
  segmenter did);
- no image was predicted at all, or most images the sample submission lists are missing from the
  test folder (a projection from the few left would be a guess);
- a resource limit of the target machine was exceeded (RAM, GPU memory per device, the working
  folder): "Notebook Exceeded Allowed Compute" scores zero, like a timeout;
- the projection to the hidden test set is over the budget, where it may decide (calibrated, or
  measured on the kernel's kind of device; else a WARN with its basis and the way to calibrate);
- images were left empty by the budget guard or after every segmenter failed.

WARN (exit 0): converted images (grey, RGBA, 16-bit, another size), unreadable files, listed images
missing from the folder (fewer than half), guard step-downs that left no image empty, and an
image-level task's rows written with its fallback value (profile.json `task.fallback_rows`; their
cause, NaN or the guard, fails above).

`problem_summary(profile)` is what the CLI's closing table and summary.json list: each problem kind
the notebook reported, with its count and a few examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bundler.config import MachineConfig
from bundler.dryrun.projection import Projection
from kernel_src.profiler import format_bytes

GB = 1e9


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # the first failure, or the pass line
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Facts:
    """What the verdict is made from. `execution_failure` is '' when the notebook ran to the end."""

    execution_failure: str
    incomplete: str  # '' when the submission has every row in the sample's layout
    profile: Mapping[str, Any] | None
    projection: Projection | None
    listed: int  # images the sample submission lists
    resources: Mapping[str, Any] = field(default_factory=dict)  # `resources_against_limits(...)`
    other_failures: Sequence[str] = ()  # e.g. the submission could not be scored
    other_warnings: Sequence[str] = ()
    estimate: str = ""  # the target's estimate from the models' FLOPs (bundler.dryrun.estimate), if made


def problem_summary(profile: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`{kind: {"count": n, "examples": [...]}}` for every problem kind the notebook reported (non-zero only)."""
    if not profile:
        return {}
    problems = profile.get("problems") or {}
    examples = profile.get("problem_examples") or {}
    out: dict[str, dict[str, Any]] = {}
    for problem, items in problems.items():
        if not isinstance(items, list) or not items:
            continue
        if problem == "model_failures":
            shown = [f"{f.get('model')} after {f.get('after_images')} images: {f.get('error')}" for f in items[:3]]
        elif problem == "batch_failures":
            shown = [
                f"{len(f.get('images') or [])} images after {f.get('after_images')}: {f.get('error')}"
                for f in items[:3]
            ]
        else:
            shown = [str(x) for x in (examples.get(problem) or items)[:3]]
        out[str(problem)] = {"count": len(items), "examples": shown}
    return out


def gpu_use(resources: Mapping[str, Any]) -> tuple[dict[str, int] | None, str]:
    """({device: bytes}, source) of a run's GPU memory, the most telling figure first: the peak
    reserved by torch's caching allocator (what the GPU really gave, "reserved"), else the peak
    allocated ("allocated", older profiles), else the estimate made at load where no GPU ran
    ("estimated", `kernel_src.memory`); (None, "") when none is known."""
    detail = resources.get("gpu_memory")
    if isinstance(detail, Mapping) and detail:
        reserved = {d: v.get("peak_reserved_bytes") for d, v in detail.items() if isinstance(v, Mapping)}
        known = {d: b for d, b in reserved.items() if isinstance(b, int)}
        if known and len(known) == len(reserved):
            return known, "reserved"
    allocated = resources.get("gpu_peak_bytes")
    if isinstance(allocated, Mapping) and allocated:
        return {d: int(b) for d, b in allocated.items() if isinstance(b, int)}, "allocated"
    estimate = resources.get("gpu_estimate")
    if isinstance(estimate, Mapping):
        peaks = estimate.get("per_device_peak_bytes")
        if isinstance(peaks, Mapping) and peaks:
            return {d: int(b) for d, b in peaks.items() if isinstance(b, int)}, "estimated"
    return None, ""


def resources_against_limits(
    profile: Mapping[str, Any] | None, machine: MachineConfig, working_bytes: int | None = None
) -> dict[str, Any]:
    """Each resource the run used beside the target machine's limit, and whether it was exceeded.
    The GPU's figure is `gpu_use`'s: measured where a GPU ran, else the load-time estimate.

    `working_bytes` (measured by the dry-run after the notebook ended) is taken when larger than
    the notebook's own figure, which was measured before profile.json was written."""
    used = dict((profile or {}).get("resources") or {})
    disk = used.get("working_bytes")
    if working_bytes is not None and (disk is None or working_bytes > disk):
        disk = working_bytes
    ram = used.get("peak_rss_bytes")
    gpus, source = gpu_use(used)
    ram_limit, gpu_limit, disk_limit = (
        int(x * GB) for x in (machine.ram_gb, machine.gpu_memory_gb, machine.working_disk_gb)
    )
    gpu_over = {d: b for d, b in (gpus or {}).items() if b > gpu_limit}
    return {
        "ram": {"peak_bytes": ram, "limit_bytes": ram_limit, "exceeded": isinstance(ram, int) and ram > ram_limit},
        "gpu": {
            "peak_bytes": gpus,
            "source": source,
            "limit_bytes_per_device": gpu_limit,
            "exceeded": bool(gpu_over),
        },
        "working_disk": {
            "bytes": disk,
            "limit_bytes": disk_limit,
            "exceeded": isinstance(disk, int) and disk > disk_limit,
        },
    }


def _resource_failures(resources: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    ram, gpu, disk = (resources.get(k) or {} for k in ("ram", "gpu", "working_disk"))
    if ram.get("exceeded"):
        out.append(
            f"peak memory {format_bytes(ram['peak_bytes'])} is over the target's "
            f"{format_bytes(ram['limit_bytes'])} of RAM "
            "(machine.ram_gb): Kaggle stops such a run (Notebook Exceeded Allowed Compute)"
        )
    if gpu.get("exceeded"):
        limit = gpu["limit_bytes_per_device"]
        over = ", ".join(f"{d} {format_bytes(b)}" for d, b in (gpu.get("peak_bytes") or {}).items() if b > limit)
        what = "estimated peak GPU memory (no GPU ran)" if gpu.get("source") == "estimated" else "peak GPU memory"
        out.append(
            f"{what} {over} is over the target's {format_bytes(limit)} per GPU (machine.gpu_memory_gb): "
            "lower batch_size or images_per_call"
        )
    if disk.get("exceeded"):
        out.append(
            f"the run wrote {format_bytes(disk['bytes'])} under the working folder, over the "
            f"{format_bytes(disk['limit_bytes'])} "
            "Kaggle keeps (machine.working_disk_gb)"
        )
    return out


def _model_failures(profile: Mapping[str, Any]) -> list[str]:
    problems = profile.get("problems") or {}
    failures = problems.get("model_failures") or []
    batches = problems.get("batch_failures") or []
    return [
        f"model {f.get('model')!r} failed after {f.get('after_images')} images and was dropped: {f.get('error')}"
        for f in failures
    ] + [
        f"a batch of {len(f.get('images') or [])} images failed after {f.get('after_images')} images outside the "
        f"models and got empty masks: {f.get('error')}"
        for f in batches
    ]


def _nan_failures(profile: Mapping[str, Any]) -> list[str]:
    models = (profile.get("nonfinite_outputs") or {}).get("models") or {}
    empty = len((profile.get("problems") or {}).get("nonfinite") or [])
    out = [f"model {name!r} gave NaN output for {n} image(s)" for name, n in sorted(models.items())]
    if empty:
        got = "no prediction" if profile.get("task") else "empty masks"
        out.append(f"{empty} image(s) got {got} because every {_models_word(profile)} gave NaN for them")
    return out


def _models_word(profile: Mapping[str, Any]) -> str:
    """What the predicting models are called: segmenters, or the models of an image-level task."""
    return "model" if profile.get("task") else "segmenter"


def _fallback_rows(profile: Mapping[str, Any]) -> list[str]:
    """An image-level task's rows written with `[task] fallback` (profile.json `task`)."""
    task = profile.get("task") or {}
    rows = int(task.get("fallback_rows") or 0)
    if not rows:
        return []
    examples = ", ".join(str(k) for k in task.get("fallback_examples") or [])
    return [
        f"{rows} of {task.get('rows')} row(s) were written with the fallback {task.get('fallback')} ([task] "
        f"fallback): none of their images was predicted (e.g. {examples})"
    ]


def _coverage(profile: Mapping[str, Any], listed: int) -> tuple[list[str], list[str]]:
    """Failures and warnings about images not predicted: missing, none predicted at all."""
    counts = profile.get("counts") or {}
    missing, unreadable = int(counts.get("missing") or 0), int(counts.get("unreadable") or 0)
    predicted = profile.get("images_predicted")
    failures: list[str] = []
    warnings: list[str] = []
    if predicted == 0 and (missing or unreadable):
        failures.append(
            f"no image was predicted ({missing} of {listed} listed images missing, {unreadable} unreadable), "
            "so nothing can be projected: point --test-dir at the images the sample submission lists"
        )
    elif predicted == 0:  # the images were there: the run stopped before them (its own failure says why)
        failures.append("no image was predicted, so nothing can be projected")
    elif listed and missing * 2 > listed:
        failures.append(
            f"{missing} of the {listed} images the sample submission lists are missing from the test folder: "
            "the projection would rest on the few left; give the folder and sample submission of one set"
        )
    elif missing:
        warnings.append(f"{missing} of {listed} listed images are missing from the test folder (not counted)")
    if unreadable and predicted != 0:
        warnings.append(f"{unreadable} image file(s) could not be read and got empty masks")
    return failures, warnings


def _left_empty(profile: Mapping[str, Any]) -> list[str]:
    guard = profile.get("guard") or {}
    empty = int(guard.get("images_left_empty") or 0)
    if not empty:
        return []
    by_guard = any(s.get("action") == "empty_rest" for s in guard.get("steps") or [])
    models = "model" if profile.get("task") else "segmentation model"
    cause = "by the budget guard (out of time)" if by_guard else f"after every {models} failed"
    left = "without a prediction" if profile.get("task") else "with empty masks"
    return [f"{empty} image(s) were left {left} {cause}"]


def judge(facts: Facts) -> Verdict:
    """The verdict on one dry-run; see the module doc for the order of the reasons."""
    failures: list[str] = []
    warnings: list[str] = list(facts.other_warnings)
    if facts.execution_failure:
        failures.append(facts.execution_failure)
    if facts.incomplete:
        failures.append(facts.incomplete)
    failures += facts.other_failures
    profile = facts.profile
    if profile is None:
        if not failures:
            failures.append("the notebook ran but wrote no profile.json, so nothing can be projected")
        return Verdict(False, failures[0], tuple(failures), tuple(warnings))
    failures += _model_failures(profile)
    failures += _nan_failures(profile)
    coverage_failures, coverage_warnings = _coverage(profile, facts.listed)
    failures += coverage_failures
    warnings += coverage_warnings
    failures += _resource_failures(facts.resources)
    projection = facts.projection
    if projection is not None and not projection.within_budget:
        over = (
            f"over budget by {-projection.margin_s:.1f} s: projected {projection.projected_s:.0f} s for "
            f"{projection.images} images, budget {projection.budget_s:.0f} s"
        )
        if projection.decides:
            failures.append(over)
        else:
            estimate = f"; {facts.estimate}" if facts.estimate else ""
            warnings.append(f"{over}, {projection.basis()}{estimate}")
    failures += _left_empty(profile)
    warnings += _fallback_rows(profile)
    converted = int((profile.get("counts") or {}).get("converted") or 0)
    if converted:
        warnings.append(f"{converted} image(s) were converted before prediction (see problems)")
    steps = (profile.get("guard") or {}).get("steps") or []
    if steps and not _left_empty(profile):
        warnings.append(f"the budget guard stepped down {len(steps)} time(s) (fewer views or models)")
    if failures:
        return Verdict(False, failures[0], tuple(failures), tuple(warnings))
    if projection is None:
        failures.append("no projection could be made from profile.json")
        return Verdict(False, failures[0], tuple(failures), tuple(warnings))
    n, p, b = projection.images, projection.projected_s, projection.budget_s
    figures = f"projected {p:.0f} s for {n} images, budget {b:.0f} s"
    if projection.within_budget:
        reason = f"within budget: {figures} ({projection.margin_s:.0f} s spare)"
    else:
        reason = f"no failure; over budget only as measured here ({figures}), which does not decide: see the warning"
    return Verdict(True, reason, (), tuple(warnings))
