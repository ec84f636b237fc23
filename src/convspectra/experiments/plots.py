"""Dependency-free SVG line plots (linear or log axes), with matplotlib PNGs as an optional extra.

The experiments write their figures as SVG with this small writer so that they can always be
produced and viewed (any browser), and additionally as PNG through matplotlib when it is installed.

Example:
    >>> svg = line_plot_svg({"a": ([1, 10, 100], [1.0, 0.1, 0.01])}, title="t", log_x=True, log_y=True)
    >>> svg.startswith("<svg") and "polyline" in svg
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ..errors import ParameterError

__all__ = ["COLORS", "line_plot_svg", "save_matplotlib"]

COLORS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        steps = (1, 2, 5) if high - low <= 3 else (1,)
        return [m * 10.0**e for e in range(math.floor(low), math.ceil(high) + 1) for m in steps]
    span = high - low or 1.0
    step = 10 ** math.floor(math.log10(span / 4))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def line_plot_svg(
    series: Series,
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    log_x: bool = False,
    log_y: bool = False,
    width: int = 560,
    height: int = 380,
    colors: Mapping[str, str] | None = None,
) -> str:
    """An SVG document with one polyline (and markers) per named series ``name -> (xs, ys)``.

    Points with a non-finite coordinate (or non-positive on a log axis) are dropped. ``colors``
    fixes a series' colour by name (others cycle through :data:`COLORS`).

    Raises:
        ParameterError: if no series has a plottable point.
    """

    def tx(v: float) -> float:
        return math.log10(v) if log_x else v

    def ty(v: float) -> float:
        return math.log10(v) if log_y else v

    clean: dict[str, list[tuple[float, float]]] = {}
    for name, (xs, ys) in series.items():
        points = [
            (tx(float(x)), ty(float(y)))
            for x, y in zip(xs, ys, strict=True)
            if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x) and (y > 0 or not log_y)
        ]
        if points:
            clean[name] = points
    if not clean:
        raise ParameterError("series: expected at least one plottable point, got none")
    all_x = [p[0] for pts in clean.values() for p in pts]
    all_y = [p[1] for pts in clean.values() for p in pts]
    x0, x1 = min(all_x), max(all_x)
    y0, y1 = min(all_y), max(all_y)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad_x, pad_y = 0.03 * (x1 - x0), 0.05 * (y1 - y0)
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    left, right, top, bottom = 70, 170, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + plot_w / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>',
    ]
    for axis, low, high, log in (("x", x0, x1, log_x), ("y", y0, y1, log_y)):
        for tick in _ticks(low, high, log):
            value = math.log10(tick) if log else tick
            if not low - 1e-9 <= value <= high + 1e-9:
                continue
            label = f"{tick:g}"
            if axis == "x":
                x = px(value)
                out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#ddd"/>')
                out.append(f'<text x="{x:.1f}" y="{top + plot_h + 15}" text-anchor="middle">{label}</text>')
            else:
                y = py(value)
                out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
                out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" transform="rotate(-90 16 {top + plot_h / 2})">'
        f"{escape(y_label)}</text>"
    )
    for index, (name, points) in enumerate(clean.items()):
        color = (colors or {}).get(name, COLORS[index % len(COLORS)])
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>' for x, y in points)
        ly = top + 14 + 16 * index
        out.append(f'<line x1="{left + plot_w + 10}" y1="{ly - 4}" x2="{left + plot_w + 30}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"/>')  # fmt: skip
        out.append(f'<text x="{left + plot_w + 35}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def save_matplotlib(panels: Sequence[dict[str, Any]], path: str, *, columns: int = 2) -> bool:
    """Save panels (each: ``series``, ``title``, ``x_label``, ``y_label``, ``log_x``, ``log_y``) as one PNG.

    Returns:
        ``True`` if written, ``False`` if matplotlib is not installed (nothing is written then).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.png")
        >>> written = save_matplotlib([{"series": {"a": ([1, 2], [3, 4])}, "title": "t"}], path)
        >>> written == os.path.exists(path)
        True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for index, (name, (xs, ys)) in enumerate(panel["series"].items()):
            ax.plot(xs, ys, marker="o", markersize=3, label=name, color=COLORS[index % len(COLORS)])
        ax.set_xscale("log" if panel.get("log_x") else "linear")
        ax.set_yscale("log" if panel.get("log_y") else "linear")
        ax.set_title(panel.get("title", ""))
        ax.set_xlabel(panel.get("x_label", ""))
        ax.set_ylabel(panel.get("y_label", ""))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
