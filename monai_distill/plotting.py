"""Line plots as PNG with PIL only (loss curves, accuracy over time): no plotting library is a dependency."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .utils import atomic_path

__all__ = ["line_plot"]

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_y: bool = False,
    size: tuple[int, int] = (720, 440),
    markers: bool = False,
) -> Path:
    """Draw ``{name: (xs, ys)}`` as lines with axes, ticks and a legend; non-finite points are skipped.

    Args:
        series: one entry per line.
        path: PNG to write (atomically).
        title, xlabel, ylabel: texts.
        log_y: logarithmic y axis (non-positive values are skipped).
        size: image size in pixels.
        markers: draw a dot at every point (few points, e.g. accuracy over time).
    """
    font = ImageFont.load_default()
    w, h = size
    left, right, top, bottom = 70, 20, 30, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    def ok(x: float, y: float) -> bool:
        return math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)

    pts = {k: [(float(x), float(y)) for x, y in zip(*v) if ok(float(x), float(y))] for k, v in series.items()}
    allp = [p for v in pts.values() for p in v]
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    if allp:
        x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
        y0, y1 = min(ty(p[1]) for p in allp), max(ty(p[1]) for p in allp)
    else:
        x0, x1, y0, y1 = 0.0, 1.0, 0.0, 1.0
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        return h - bottom - (ty(y) - y0) / (y1 - y0) * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _ticks(x0, x1):
        draw.line([sx(t), h - bottom, sx(t), h - bottom + 4], fill="black")
        draw.text((sx(t) - 12, h - bottom + 6), _fmt(t), fill="black", font=font)
    for t in _ticks(y0, y1):
        yy = h - bottom - (t - y0) / (y1 - y0) * (h - top - bottom)
        draw.line([left - 4, yy, left, yy], fill="black")
        draw.line([left, yy, w - right, yy], fill=(230, 230, 230))
        draw.text((4, yy - 6), _fmt(10**t if log_y else t), fill="black", font=font)
    for i, (name, p) in enumerate(pts.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        xy = [(sx(x), sy(y)) for x, y in p]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        if markers or len(xy) == 1:
            for cx, cy in xy:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        draw.rectangle([left + 10, top + 8 + 14 * i, left + 22, top + 18 + 14 * i], fill=colour)
        draw.text((left + 26, top + 7 + 14 * i), str(name), fill="black", font=font)
    draw.text((left, 8), title, fill="black", font=font)
    draw.text(((w - left) // 2, h - 18), xlabel + (" " if xlabel else ""), fill="black", font=font)
    draw.text((4, top - 14), ylabel + (" (log)" if log_y else ""), fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
