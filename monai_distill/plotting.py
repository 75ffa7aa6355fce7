"""PNG figures drawn with matplotlib: line plots (loss curves, accuracy over time) and shared figure helpers.

Figures are plain :class:`matplotlib.figure.Figure` objects on an Agg canvas, never pyplot figures: no global figure
registry, no GUI backend, nothing to close, and safe in worker processes. They are sized in pixels (``size``) at
:data:`DPI` and rendered to exactly that many pixels, then written as RGB PNGs through :func:`~.utils.atomic_path`.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .utils import atomic_path

__all__ = ["DPI", "figure_to_image", "line_plot", "new_figure", "save_figure", "save_image"]

DPI = 100  # pixels per inch: a 10 pt font is ~14 px high, readable at the default 720 x 440 px

# After the ten colours of the default cycle, lines repeat their colour with another dash pattern.
_LINESTYLES = ("-", "--", ":", "-.")


def new_figure(size: tuple[int, int], **kwargs: Any) -> Figure:
    """A white figure of ``size = (width, height)`` pixels on its own Agg canvas.

    Args:
        size: width and height in pixels.
        kwargs: passed to :class:`~matplotlib.figure.Figure` (e.g. ``layout="constrained"``).
    """
    w, h = (max(1, int(v)) for v in size)
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, facecolor="white", **kwargs)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering and text measuring need no pyplot
    return fig


def figure_to_image(fig: Figure) -> Image.Image:
    """Render ``fig`` (made by :func:`new_figure`) to an RGB PIL image of its pixel size."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    # The figure's face is opaque, so dropping alpha loses nothing; RGB keeps the PNGs as the PIL ones were.
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as a PNG atomically (temporary file beside ``path``, then rename) and return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` and write it as an RGB PNG atomically; returns ``path`` as a :class:`~pathlib.Path`."""
    return save_image(figure_to_image(fig), path)


def _finite_points(xs: Sequence[float], ys: Sequence[float], positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` pairs with both finite (and ``y > 0`` if ``positive``); extra items of the longer list drop."""
    n = min(len(xs), len(ys))
    x = np.asarray(list(xs)[:n], dtype=np.float64)
    y = np.asarray(list(ys)[:n], dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if positive:
        keep &= y > 0
    return x[keep], y[keep]


def _wrap(text: str, width_px: int, font_px: float = 9.0) -> str:
    """Break ``text`` into lines that fit ``width_px`` (``font_px``: a generous average character width at 10 pt)."""
    return textwrap.fill(text, width=max(20, int(width_px / font_px))) if text else ""


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_y: bool = False,
    size: tuple[int, int] = (720, 440),
    markers: bool = False,
    xticklabels: Sequence[str] | None = None,
) -> Path:
    """Draw ``{name: (xs, ys)}`` as lines with axes, ticks, grid and a legend; non-finite points are skipped.

    Lines join the points left after skipping (a NaN does not cut a line in two). A series with a single point is
    drawn as a marker. The legend sits outside the axes on the right so it never hides data.

    Args:
        series: one entry per line: ``(xs, ys)`` of equal length.
        path: PNG to write (atomically).
        title: figure title (wrapped to the width).
        xlabel: x axis label.
        ylabel: y axis label.
        log_y: logarithmic y axis; non-positive values are skipped. With no positive value at all the axis stays
            linear (an empty log axis has no limits).
        size: image size in pixels ``(width, height)``.
        markers: draw a dot at every point (few points, e.g. accuracy over time).
        xticklabels: names of the categories at x = 0, 1, 2, ... (e.g. one per table column); the x axis then shows
            these names instead of numbers.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fig = new_figure(size, layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, (xs, ys)) in enumerate(series.items()):
        x, y = _finite_points(xs, ys, positive=log_y)
        drawn += len(x)
        ax.plot(x, y, label=str(name), linewidth=1.8, linestyle=_LINESTYLES[(i // 10) % len(_LINESTYLES)],
                marker="o" if markers or len(x) == 1 else None, markersize=4)
    if log_y and drawn:
        ax.set_yscale("log")
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), [str(t) for t in xticklabels])
        ax.set_xlim(-0.5, len(xticklabels) - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", color="0.9")
    ax.set_axisbelow(True)
    if title:  # over the whole figure, not the axes: a long title then cannot run into the legend
        fig.suptitle(_wrap(title, int(size[0])), fontsize="medium")
    if series:  # beside the axes, top-aligned with them; constrained layout shrinks the axes to make room
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small", frameon=False)
    return save_figure(fig, path)
