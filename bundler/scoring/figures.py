"""The report's pictures and HTML section for a per-image score (`bundler.scoring.rows.RowScore`):
a confusion matrix (classification) or a predicted-vs-true scatter (regression), and the rows
most wrong. Drawn with matplotlib on the Agg canvas as the dry-run report draws (no pyplot, no
global state), returned as PNG bytes or a `data:` URI."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_CLASSES_DRAWN = 40  # beyond this a matrix is unreadable; the table of worst rows still says it


def _figure(width: float, height: float) -> Any:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def confusion_png(classes: Sequence[str], confusion: Sequence[Sequence[int]]) -> bytes | None:
    """The confusion matrix (rows: true, columns: predicted), each row shaded by its share, the
    counts written in the cells; None when there is none or too many classes to draw."""
    n = len(classes)
    if n == 0 or n > MAX_CLASSES_DRAWN:
        return None
    counts = np.asarray(confusion, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(3.0, 0.45 * n + 1.5)
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=list(classes), rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_title(f"confusion matrix ({int(counts.sum())} rows)")
    return _png(fig)


def scatter_png(pairs: Sequence[Sequence[float]]) -> bytes | None:
    """Predicted against true values with the diagonal of a perfect prediction; None without pairs."""
    if not pairs:
        return None
    values = np.asarray(pairs, dtype=np.float64)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(values[:, 0], values[:, 1], s=8, alpha=0.6, color="#1f77b4", edgecolors="none")
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * 0.05 or 1.0
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#d62728", linewidth=1, label="predicted = true")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"predicted vs true ({len(values)} rows)")
    return _png(fig)


def row_score_section(score: Mapping[str, Any] | None) -> str:
    """The report's HTML section for `RowScore.to_dict()` ('' when there is none)."""
    if not score:
        return ""
    e = html.escape
    better = "higher" if score["greater_is_better"] else "lower"
    parts = [
        "<h2>Score against the labels</h2>",
        f"<p>{e(str(score['metric']))} = <b>{float(score['score']):.4f}</b> ({better} is better) over "
        f"{int(score['rows'])} labelled rows"
        + (f"; {int(score['unlabelled'])} submission rows without a label left out" if score["unlabelled"] else "")
        + ".</p>",
    ]
    matrix = confusion_png(score.get("classes") or [], score.get("confusion") or [])
    if matrix is not None:
        parts.append(f'<img alt="confusion matrix" src="{data_uri(matrix)}">')
    scatter = scatter_png(score.get("pairs") or [])
    if scatter is not None:
        parts.append(f'<img alt="predicted vs true" src="{data_uri(scatter)}">')
    worst = score.get("worst") or []
    if worst:
        rows = "".join(
            f"<tr><td>{e(str(k))}</td><td>{e(str(t))}</td><td>{e(str(p))}</td><td>{float(err):.3f}</td></tr>"
            for k, t, p, err in worst
        )
        parts.append(
            "<p>The rows most wrong:</p><table><tr><th>key</th><th>true</th><th>predicted</th><th>error</th></tr>"
            f"{rows}</table>"
        )
    return "".join(parts)
