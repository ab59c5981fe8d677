"""The tune's `report.html`: one self-contained page (the chart embedded as a PNG `data:` URI).

Sections: the cross-validated score (current vs tuned, per class, per fold), the proposed values,
where the points are lost (current and tuned settings), and the ensemble plans: score against
projected minutes with the Pareto front, the budget and its safety margin, and the
recommended plan.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bundler.scoring import loss_section

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } .up { color: #1a7f37; } .down { color: #b42318; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def plan_chart(plans: Sequence[Mapping[str, Any]], budget_s: float, margin: float) -> str | None:
    """Score against projected minutes: every plan, the Pareto front, the budget and the margin."""
    if not plans:
        return None
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = [float(p["projected_s"]) / 60 for p in plans]
    ys = [float(p["score"]) for p in plans]
    ax.scatter(xs, ys, color="#9aa5b1", s=18, label="plans")
    front = [p for p in plans if p.get("pareto")]
    front.sort(key=lambda p: float(p["projected_s"]))
    ax.plot([float(p["projected_s"]) / 60 for p in front], [float(p["score"]) for p in front], "o-", color="#4c72b0",
            label="Pareto front")  # fmt: skip
    for p in plans:
        if p.get("recommended"):
            ax.scatter([float(p["projected_s"]) / 60], [float(p["score"])], marker="*", s=220, color="#e8a200",
                       zorder=5, label="recommended")  # fmt: skip
    ax.axvline(budget_s / 60, color="#b42318", linestyle="-", label="budget")
    ax.axvline(budget_s * (1 - margin) / 60, color="#b42318", linestyle=":", label=f"budget - {margin:.0%} margin")
    ax.set_xlabel("projected minutes on the target (hidden test set)")
    ax.set_ylabel("holdout mean Dice")
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _score_section(summary: Mapping[str, Any]) -> str:
    cv = summary["cv"]
    rows = "".join(
        f"<tr><td>class {c + 1}</td><td>{cur:.4f}</td><td>{tun:.4f}</td>"
        f"<td class='{'up' if tun >= cur else 'down'}'>{tun - cur:+.4f}</td></tr>"
        for c, (cur, tun) in enumerate(zip(cv["current"], cv["tuned"], strict=True))
    )
    rows += (
        f"<tr><th>mean Dice</th><th>{cv['current_mean']:.4f}</th><th>{cv['tuned_mean']:.4f}</th>"
        f"<th>{cv['tuned_mean'] - cv['current_mean']:+.4f}</th></tr>"
    )
    folds = "".join(
        f"<tr><td>{i + 1}</td><td>{f['images']}</td><td>{f['current']:.4f}</td><td>{f['tuned']:.4f}</td>"
        f"<td>{f['tuned'] - f['current']:+.4f}</td></tr>"
        for i, f in enumerate(cv["folds"])
    )
    std, lo, hi = cv["gain_spread"]
    return (
        f"<h2>Cross-validated score ({len(cv['folds'])} folds)</h2>"
        "<p>Each fold's values were tuned on the other folds and scored on this one: the gain is not the "
        "tuning set's.</p>"
        f"<table><tr><th></th><th>current</th><th>tuned (held-out)</th><th>gain</th></tr>{rows}</table>"
        f"<p>Gain per fold: {std:.4f} standard deviation, from {lo:+.4f} to {hi:+.4f}.</p>"
        "<table><tr><th>fold</th><th>images</th><th>current</th><th>tuned</th><th>gain</th></tr>"
        f"{folds}</table>"
    )


def _values_section(summary: Mapping[str, Any]) -> str:
    cur, new = summary["current_values"], summary["tuned_values"]
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(json.dumps(cur[k]))}</td><td>{_e(json.dumps(new[k]))}</td></tr>" for k in new
    )
    return (
        "<h2>Proposed values (tuned on every image)</h2>"
        f"<table><tr><th>key</th><th>current</th><th>tuned</th></tr>{rows}</table>"
    )


def _plan_section(summary: Mapping[str, Any]) -> str:
    plans = summary.get("plans") or []
    if not plans:
        return ""
    budget, margin = float(summary["budget_s"]), float(summary["margin"])
    chart = plan_chart(plans, budget, margin)
    front = sorted((p for p in plans if p.get("pareto")), key=lambda p: float(p["projected_s"]))
    rows = "".join(
        f"<tr><td>{'&#9733; ' if p.get('recommended') else ''}{_e(p['plan'])}</td><td>{float(p['score']):.4f}</td>"
        f"<td>{float(p['projected_s']) / 60:.1f}</td><td>{'yes' if p['within'] else 'no'}</td></tr>"
        for p in front
    )
    best = next((p for p in plans if p.get("recommended")), None)
    verdict = (
        f"<p>Recommended: <b>{_e(best['plan'])}</b>, holdout {float(best['score']):.4f}, projected "
        f"{float(best['projected_s']) / 60:.1f} min of {budget / 60:.1f} min ({margin:.0%} margin kept).</p>"
        if best
        else f"<p class='down'>No plan fits {budget / 60:.1f} min with a {margin:.0%} margin.</p>"
    )
    img = f'<p><img alt="plans" src="{chart}"></p>' if chart else ""
    return (
        f"<h2>Ensemble plans</h2><p>Times: {_e(summary.get('costs_source', ''))}; "
        f"{_e(summary.get('calibration', ''))}.</p>{verdict}{img}"
        "<table><tr><th>Pareto front</th><th>holdout</th><th>projected min</th><th>fits</th></tr>"
        f"{rows}</table>"
    )


def render_tune_report(summary: Mapping[str, Any]) -> str:
    parts = [
        f"<h1>bundler tune: {_e(summary.get('bundle', ''))}</h1>",
        f"<p>{summary['images']} labelled images; cache {_e(summary['cache'])} "
        f"({summary['cache_bytes'] / 1e6:.1f} MB, probabilities at 1/255).</p>",
        _score_section(summary),
        _values_section(summary),
        "<h3>Current settings</h3>",
        loss_section(summary.get("losses_current")),
        "<h3>Tuned settings</h3>",
        loss_section(summary.get("losses_tuned")),
        _plan_section(summary),
        f"<details><summary>tune.json</summary><pre>{_e(json.dumps(summary, indent=2, default=str))}</pre></details>",
    ]
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bundler tune</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_tune_report(path: Path, summary: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_tune_report(summary), encoding="utf-8")
    return path
