"""line_plot and the figure helpers: PNGs of the requested size, drawn, written atomically, robust to bad points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_distill.plotting import line_plot, new_figure, save_figure


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img)


def _coloured(pixels: np.ndarray) -> int:
    """Pixels that are neither white, grey nor black: drawn lines and markers (axes and text are greyscale)."""
    rgb = pixels.astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


def test_line_plot_writes_the_requested_png(tmp_path: Path) -> None:
    xs = list(range(50))
    series = {"loss": (xs, [math.exp(-x / 10) for x in xs]), "accuracy": (xs, [x / 50 for x in xs])}
    path = line_plot(series, tmp_path / "sub" / "plot.png", title="t", xlabel="iteration", ylabel="value",
                     size=(640, 400))
    assert path == tmp_path / "sub" / "plot.png" and isinstance(path, Path)
    png = _png(path)
    assert png.shape == (400, 640, 3)
    assert png.std() > 0 and _coloured(png) > 200
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]  # no temporary file left behind


def test_line_plot_skips_non_finite_and_non_positive_points(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    series = {
        "mixed": ([0, 1, 2, 3, 4, nan], [1.0, nan, -2.0, 0.0, 5.0, 3.0]),
        "all bad": ([0, 1], [nan, -inf]),
        "one point": ([2], [0.5]),
        "longer xs": ([0, 1, 2, 3], [2.0, 3.0]),
    }
    for log_y in (False, True):
        png = _png(line_plot(series, tmp_path / f"log{log_y}.png", log_y=log_y, markers=True))
        assert png.shape == (440, 720, 3) and png.std() > 0 and _coloured(png) > 0
    # Nothing drawable at all (empty, or only non-positive values on a log axis) still gives a plain plot.
    for name, s in {"empty": {}, "nothing_positive": {"a": ([1, 2], [0.0, -1.0])}}.items():
        png = _png(line_plot(s, tmp_path / f"{name}.png", log_y=True, size=(300, 200)))
        assert png.shape == (200, 300, 3) and png.std() > 0


def test_markers_draw_more(tmp_path: Path) -> None:
    series = {"a": ([0, 10, 20], [1.0, 2.0, 1.5])}
    plain = _png(line_plot(series, tmp_path / "plain.png"))
    dots = _png(line_plot(series, tmp_path / "dots.png", markers=True))
    assert _coloured(dots) > _coloured(plain)


@pytest.mark.parametrize("size", [(29, 57), (333, 101)])
def test_new_figure_has_exact_pixel_size(tmp_path: Path, size: tuple[int, int]) -> None:
    fig = new_figure(size)
    fig.text(0.5, 0.5, "x")
    assert _png(save_figure(fig, tmp_path / "f.png")).shape == (size[1], size[0], 3)


def test_save_figure_leaves_no_file_on_failure(tmp_path: Path) -> None:
    fig = new_figure((50, 50))
    fig.text(0.5, 0.5, r"$\unknowncommand$")  # mathtext fails only when the figure is rendered
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_xticklabels_name_the_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Categories (e.g. table columns) at x = 0, 1, ... are labelled by name, with half a step of margin."""
    import monai_distill.plotting as plotting

    drawn = []
    real = plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: drawn.append(fig) or real(fig, path))
    series = {"a": ([0, 1, 2], [1.0, 2.0, 3.0]), "b": ([0], [2.0])}
    path = line_plot(series, tmp_path / "cats.png", markers=True, xticklabels=["x ipc 2", "x ipc 10", "y ipc 2"])
    assert _png(path).shape == (440, 720, 3)
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x ipc 2", "x ipc 10", "y ipc 2"]
    assert ax.get_xlim() == (-0.5, 2.5)
