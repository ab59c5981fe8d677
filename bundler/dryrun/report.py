"""`report.html` of a dry-run: one self-contained file that opens offline.

Every picture is a PNG drawn with matplotlib (Agg) and embedded as a `data:` URI; the page
links to nothing outside itself. Sections: the verdict with every FAIL reason and WARN line, the
key figures, the failed cell's traceback, the stage timings (chart), the projection against the
budget (chart), the guard's step-downs, the resources against the target machine's limits, the
problems the notebook reported (count and examples per kind), the score per class, and predicted
masks overlaid on a sample of test images beside the truth when labels were given. Images that
are not in the test folder are skipped without a word from OpenCV.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bundler.scoring import loss_section, row_score_section
from kernel_src import rle
from kernel_src.images import image_paths
from kernel_src.layout import SubmissionSpec
from kernel_src.profiler import format_bytes
from kernel_src.submission import read_masks

CLASS_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180))
Mask = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class MaskSample:
    image_id: str
    image: npt.NDArray[np.uint8]  # H x W x 3, RGB
    predicted: Mask  # C x H x W, 0/1
    truth: Mask | None  # C x H x W, or None without labels


# --- reading masks ------------------------------------------------------------------------


def _masks(rles: Sequence[str], shape: tuple[int, int], order: str) -> Mask:
    return np.stack([rle.decode(r, shape, order) for r in rles])


def load_mask_samples(
    submission: Path,
    test_dir: Path,
    labels: Path | None,
    *,
    num_classes: int,
    shape: tuple[int, int] | Mapping[str, tuple[int, int]],
    order: str,
    limit: int = 6,
    submission_spec: SubmissionSpec | None = None,
    image_of: Callable[[str], npt.NDArray[np.uint8] | None] | None = None,
) -> list[MaskSample]:
    """Up to `limit` images, those with a predicted or true defect first, in name order. `shape` is
    the masks' size, or one per image id (`bundler.scoring.metric.mask_shapes`); both files are read
    in the `submission_spec` layout (issue 16). `image_of(id)`: the RGB image where the images are not
    files in `test_dir` (a file reader of `[input]`; None: not there)."""
    predicted = read_masks(submission, num_classes, submission=submission_spec)
    truth = read_masks(labels, num_classes, labels=True, submission=submission_spec) if labels is not None else None
    paths = image_paths(test_dir, list(predicted), (submission_spec or SubmissionSpec()).image_id)
    empty = [""] * num_classes

    def has_defect(image_id: str) -> bool:
        rows = [*predicted.get(image_id, empty), *(truth or {}).get(image_id, empty)]
        return any(r.strip() for r in rows)

    ids = sorted(predicted, key=lambda i: (not has_defect(i), i))
    samples: list[MaskSample] = []
    for image_id in ids:
        if len(samples) >= limit:
            break
        path = paths[image_id]
        size = shape.get(image_id) if isinstance(shape, Mapping) else shape
        if size is None:
            continue
        image: npt.NDArray[Any] | None = None
        if image_of is not None:
            image = image_of(image_id)
        elif path.is_file():  # listed but missing: the verdict counts these (imread warns per file)
            image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)  # silent on bad data
            image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if image is None:
            continue
        if image.shape[:2] != size:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        rgb = np.asarray(image, dtype=np.uint8)
        true_masks = None if truth is None else _masks(truth.get(image_id, empty), size, order)
        samples.append(MaskSample(image_id, rgb, _masks(predicted.get(image_id, empty), size, order), true_masks))
    return samples


# --- pictures -----------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot, no global state, no display needed."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay(image: npt.NDArray[np.uint8], masks: Mask, alpha: float = 0.45) -> npt.NDArray[np.uint8]:
    """`image` (H x W x 3 RGB) with each class's mask tinted in its colour and outlined."""
    out = image.astype(np.float32)
    for c in range(masks.shape[0]):
        m = masks[c].astype(bool)
        if not m.any():
            continue
        colour = np.array(CLASS_COLOURS[c % len(CLASS_COLOURS)], dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * colour
    result = out.clip(0, 255).astype(np.uint8)
    for c in range(masks.shape[0]):
        contours, _ = cv2.findContours(masks[c].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            cv2.drawContours(result, contours, -1, CLASS_COLOURS[c % len(CLASS_COLOURS)], 1)
    return result


def stage_chart(stages: Mapping[str, Any]) -> str | None:
    items = [(str(k), float(v.get("seconds", 0.0))) for k, v in stages.items() if isinstance(v, Mapping)]
    if not items:
        return None
    items.sort(key=lambda kv: kv[1])
    fig = _figure(8, 0.35 * len(items) + 1.0)
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds (this machine)")
    ax.set_title("Stage timings")
    return _png(fig)


def projection_chart(summary: Mapping[str, Any]) -> str | None:
    projected = summary.get("projected_seconds")
    budget = summary.get("budget_seconds")
    if projected is None or budget is None:
        return None
    fixed = float(summary.get("projected_fixed_s") or 0.0)
    images = float(projected) - fixed
    fig = _figure(8, 1.8)
    ax = fig.subplots()
    over = float(projected) > float(budget)
    ax.barh(["projected"], [fixed], color="#8172b2", label="fixed (setup, install, loading)")
    ax.barh(["projected"], [images], left=[fixed], color="#c44e52" if over else "#55a868", label="images")
    ax.axvline(float(budget), color="black", linestyle="--", label=f"budget {float(budget):.0f} s")
    ax.set_xlim(0, max(float(projected), float(budget)) * 1.1)
    ax.set_xlabel("seconds on the target")
    ax.set_title(f"Projection for {summary.get('hidden_test_images')} hidden test images")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def mask_figure(sample: MaskSample) -> str:
    rows = 2 if sample.truth is not None else 1
    h, w = sample.image.shape[:2]
    fig = _figure(10, rows * 10 * h / w + 0.6 * rows)
    axes = fig.subplots(rows, 1, squeeze=False)
    panels = [("predicted", sample.predicted)] + ([("truth", sample.truth)] if sample.truth is not None else [])
    for ax, (title, masks) in zip(axes[:, 0], panels, strict=True):
        ax.imshow(overlay(sample.image, masks))
        present = [str(c + 1) for c in range(masks.shape[0]) if masks[c].any()]
        ax.set_title(f"{sample.image_id}: {title} (classes: {', '.join(present) or 'none'})", fontsize=9)
        ax.axis("off")
    return _png(fig)


# --- the page -----------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{margin-bottom:0}.ok{color:#1a7f37}.bad{color:#c62828}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}img{max-width:100%}
.legend span{display:inline-block;padding:0 6px;margin-right:6px;color:#000}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}{unit}"
    return f"{value}{unit}"


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _img(uri: str | None, alt: str) -> str:
    return f'<p><img alt="{_e(alt)}" src="{uri}"></p>' if uri else f"<p>({_e(alt)}: no data)</p>"


def _score_section(summary: Mapping[str, Any]) -> str:
    per_class = summary.get("per_class_score")
    if summary.get("score") is None or not per_class:
        return "<h2>Score</h2><p>No labels given: pass <code>--labels</code> to score the run.</p>"
    rows = [(f"class {i + 1}", f"{float(v):.4f}") for i, v in enumerate(per_class)]
    rows.append(("mean Dice (the competition metric)", f"{float(summary['score']):.4f}"))
    return "<h2>Score</h2>" + _table(rows)


def _guard_section(steps: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> str:
    summary = summary or {}
    if not steps:
        if summary.get("failed_cell"):
            return "<h2>Budget guard</h2><p class='bad'>The notebook stopped before the end; no guard record.</p>"
        failed = (summary.get("problems") or {}).get("model_failures")
        if failed:
            return (
                "<h2>Budget guard</h2><p class='bad'>The guard did not step down, but "
                f"{_e(failed['count'])} model(s) failed and were dropped: not every model ran on every image.</p>"
            )
        return "<h2>Budget guard</h2><p>No step-downs: every model and TTA view ran on every image.</p>"
    head = "<tr><th>after images</th><th>elapsed s</th><th>projected s</th><th>action</th><th>detail</th></tr>"
    body = "".join(
        f"<tr><td>{_e(s.get('after_images'))}</td><td>{_num(s.get('elapsed_s'))}</td>"
        f"<td>{_num(s.get('projected_s'))}</td><td>{_e(s.get('action'))}</td><td>{_e(s.get('detail', ''))}</td></tr>"
        for s in steps
    )
    note = f"<p class='bad'>The guard stepped down {len(steps)} time(s):</p>"
    return f"<h2>Budget guard</h2>{note}<table>{head}{body}</table>"


def _reasons_section(summary: Mapping[str, Any]) -> str:
    failures = list(summary.get("failures") or [])
    warnings = list(summary.get("warnings") or [])
    if not failures and not warnings:
        return ""
    items = "".join(f"<li class='bad'>FAIL: {_e(f)}</li>" for f in failures)
    items += "".join(f"<li>WARN: {_e(w)}</li>" for w in warnings)
    return f"<h2>Reasons</h2><ul>{items}</ul>"


def _resources_section(resources: Mapping[str, Any] | None) -> str:
    if not resources:
        return ""
    ram, gpu, disk = (resources.get(k) or {} for k in ("ram", "gpu", "working_disk"))
    peaks = gpu.get("peak_bytes")
    gpu_used = ", ".join(f"{d} {format_bytes(b)}" for d, b in peaks.items()) if peaks else "not used (CPU run)"
    if peaks and gpu.get("source") == "estimated":
        gpu_used += " (estimated at load: no GPU ran)"
    b = format_bytes
    rows = [
        ("peak RAM of the notebook's process", b(ram.get("peak_bytes")), b(ram.get("limit_bytes")), ram),
        ("peak GPU memory", gpu_used, f"{b(gpu.get('limit_bytes_per_device'))} per GPU", gpu),
        ("written under the working folder", b(disk.get("bytes")), b(disk.get("limit_bytes")), disk),
    ]
    head = "<tr><th>resource</th><th>used here</th><th>target's limit ([machine])</th></tr>"
    body = "".join(
        f"<tr{' class=bad' if entry.get('exceeded') else ''}>"
        f"<td>{_e(name)}</td><td>{_e(used)}</td><td>{_e(limit)}</td></tr>"
        for name, used, limit, entry in rows
    )
    return f"<h2>Resources</h2><table>{head}{body}</table>"


def _problems_section(problems: Mapping[str, Any] | None) -> str:
    if not problems:
        return ""
    head = "<tr><th>kind</th><th>count</th><th>examples</th></tr>"
    body = "".join(
        f"<tr><td>{_e(kind)}</td><td>{_e(entry.get('count'))}</td>"
        f"<td>{_e('; '.join(entry.get('examples') or []))}</td></tr>"
        for kind, entry in problems.items()
    )
    return f"<h2>Problems the notebook reported</h2><table>{head}{body}</table>"


def _failure_section(failed: Mapping[str, Any] | None) -> str:
    if not failed:
        return ""
    index = failed.get("index")
    where = f"cell {index}" if index is not None else "the notebook"
    title = f"{failed.get('ename', '')}: {failed.get('evalue', '')}".strip(": ")
    tb = failed.get("traceback") or "(no traceback)"
    return f"<h2 class='bad'>Failure in {_e(where)}</h2><p>{_e(title)}</p><pre>{_e(tb)}</pre>"


def _masks_section(samples: Sequence[MaskSample], num_classes: int) -> str:
    if not samples:
        return "<h2>Masks</h2><p>No submission to draw (the notebook wrote none).</p>"
    legend = "".join(
        f"<span style='background:rgb{CLASS_COLOURS[c % len(CLASS_COLOURS)]}'>class {c + 1}</span>"
        for c in range(num_classes)
    )
    figures = "".join(_img(mask_figure(s), f"masks of {s.image_id}") for s in samples)
    return f"<h2>Masks on {len(samples)} sample images</h2><p class='legend'>{legend}</p>{figures}"


def render_report(summary: Mapping[str, Any], profile: Mapping[str, Any] | None, samples: Sequence[MaskSample]) -> str:
    ok = bool(summary.get("ok"))
    verdict = "PASS" if ok else "FAIL"
    key_rows: list[tuple[str, Any]] = [
        ("verdict", f"{verdict}: {summary.get('reason', '')}"),
        ("images run here", _num(summary.get("images"))),
        ("images predicted (not missing or unreadable)", _num(summary.get("images_predicted"))),
        ("notebook wall time here", _num(summary.get("seconds"), " s")),
        ("projected on the target", _num(summary.get("projected_seconds"), " s")),
        ("budget", _num(summary.get("budget_seconds"), " s")),
        ("within budget", summary.get("within_budget")),
        ("projection basis", summary.get("projection_basis")),
        ("estimate for the target", summary.get("target_estimate_basis")),
        ("hidden test images", _num(summary.get("hidden_test_images"))),
        ("calibration", summary.get("calibration")),
        ("network during the run", summary.get("network")),
        ("score (mean Dice)", _num(summary.get("score"))),
    ]
    if summary.get("network_note"):
        key_rows.append(("network note", summary["network_note"]))
    stages = (profile or {}).get("stages", {})
    parts = [
        f"<h1>bundler dry-run: <span class='{'ok' if ok else 'bad'}'>{verdict}</span></h1>",
        f"<p>{_e(summary.get('bundle', ''))} · {_e(summary.get('notebook', ''))}</p>",
        _table(key_rows),
        _reasons_section(summary),
        _failure_section(summary.get("failed_cell")),
        "<h2>Stage timings</h2>",
        _img(stage_chart(stages) if isinstance(stages, Mapping) else None, "stage timings"),
        "<h2>Projection against the budget</h2>",
        _img(projection_chart(summary), "projection against the budget"),
        _guard_section(summary.get("guard_steps") or [], summary),
        _resources_section(summary.get("resources")),
        _problems_section(summary.get("problems")),
        row_score_section(summary.get("row_score")) or _score_section(summary),
        loss_section(summary.get("loss_breakdown")),
        _masks_section(samples, int(summary.get("num_classes") or 4)),
    ]
    data = html.escape(json.dumps(summary, indent=2, default=str))
    parts.append(f"<details><summary>summary.json</summary><pre>{data}</pre></details>")
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bundler dry-run: {verdict}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(
    path: Path, summary: Mapping[str, Any], profile: Mapping[str, Any] | None, samples: Sequence[MaskSample]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(summary, profile, samples), encoding="utf-8")
    return path
