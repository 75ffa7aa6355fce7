"""Components a ``wsi_tiling`` config can replace: the slide reader, the tissue masker, the patch grid and the output
writer, as ``_target_`` entries (``reader_def``, ``masker_def``, ``grid_def``, ``writer_def``).

The defaults do what :class:`~wsi.workflows.TilingWorkflow` did before these entries existed, from the same flat
flags::

    "reader_def": {"_target_": "wsi.reader.Slide", "_mode_": "callable"},
    "masker_def": {"_target_": "wsi.components.TissueMasker", "_mode_": "callable"},
    "grid_def": {"_target_": "wsi.components.PatchGridder", "_mode_": "callable"},
    "writer_def": {"_target_": "wsi.components.TilingWriter", "_mode_": "callable"}

As for the networks of :mod:`monai_distill.components`, ``"_mode_": "callable"`` makes MONAI's ``ConfigParser`` hand
the workflow a factory (the class, or a ``functools.partial`` with the definition's arguments). The flat flags fill in
the arguments a factory names and its definition leaves unset (:data:`COMPONENT_ARGUMENTS`); a value the definition
sets itself is never replaced. So ``--stride 128`` and ``--grid_def#stride 128`` tile alike, and
``--masker_def#_target_ mymodule.MyMasker`` swaps in a masker of the user's own, which gets ``mask_options`` or
``mask_downsample`` only if it names them. A dotted path (``"mymodule.MyMasker"``) is a definition without arguments.

What each component must do:

* **reader** (``reader_def``, filled: ``path``, ``backend``): called once per slide with its file as ``path``; returns
  an open slide with ``info`` (a :class:`~wsi.reader.SlideInfo`), ``read_region(x, y, width, height, level)`` and
  ``read_level(level)`` giving ``(H, W, 3)`` uint8 RGB, and optionally ``close()`` and ``thumbnail_size()`` /
  ``associated_thumbnail()`` (the scanner's stored thumbnail), like :class:`~wsi.reader.Slide`. Patches are read
  later (datasets, bags) with the MONAI backend the grid records (``info.backend``).
* **masker** (``masker_def``, filled: ``mask_options``, ``mask_downsample``): built once; ``masker(image)`` gets the
  whole slide as an ``(H, W, 3)`` uint8 RGB image at the mask resolution and returns an ``(H, W)`` boolean tissue
  mask. An attribute ``mask_downsample`` (the coarsest level-0 downsample of that image) replaces
  ``--mask_downsample``. A function with a parameter ``image`` (``mymodule.my_mask(image, threshold=0.1)``) is not
  built: it is the masker, called with the definition's arguments.
* **grid** (``grid_def``, filled: ``patch_size``, ``level``, ``mpp``, ``stride``, ``mpp_rtol``,
  ``tissue_threshold``): built once; ``grid.spec(info)`` returns the :class:`~wsi.grid.PatchSpec` (level and size
  read, level-0 footprint and stride) and ``grid.positions(info, spec)`` the ``(N, 2)`` level-0 top-left corners
  ``(x, y)`` of the candidate patches; those whose tissue fraction reaches ``grid.tissue_threshold`` (if it has one,
  else ``--tissue_threshold``) are kept.
* **writer** (``writer_def``, filled: ``output_dir``, ``thumbnail_size``): built once; ``write(tiling)`` stores a
  tiled slide (:class:`~wsi.tiling.SlideTiling`), ``remove(slide_id)`` deletes what an earlier run stored for a slide
  that is no longer done, and ``is_written(slide_id)`` says whether its stored grid is whole (resume). Subclass
  :class:`TilingWriter` and call ``super().write(tiling)`` to keep the ``coords/`` layout that
  :class:`~wsi.datasets.SlidePatchDataset` and ``wsi_synthetic_bags`` read.

The defaults are recognised by their class (a subclass is a component of the user's own): their settings are folded
into the :class:`~wsi.tiling.TilingConfig`, so that outputs, ``tiling_config.json`` and the resume fingerprint are
exactly those of the flat flags. Any other definition is recorded in ``tiling_config.json`` and in the fingerprint
(``config.components``), so a rerun with another component tiles again. A component that breaks its interface ends
the run with one line naming the entry (:class:`ComponentError`); an error its own code raises on one slide is that
slide's failure, as a damaged file's would be.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_distill.checks import OptionError, option_choice, option_float, option_int
from monai_distill.components import as_factory, component_spec, component_target
from monai_distill.runs import error_message

from .grid import PatchGrid, PatchSpec, grid_positions, resolve_patch_spec
from .reader import BACKENDS, Slide, SlideInfo
from .thumbnail import save_thumbnail
from .tiling import SlideTiling, TilingConfig
from .tissue import TissueMaskConfig, tissue_mask

__all__ = [
    "COMPONENT_ARGUMENTS",
    "ComponentError",
    "PatchGridder",
    "TilingComponents",
    "TilingWriter",
    "TissueMasker",
    "coords_path",
    "grid_options",
    "thumbnail_path",
    "tiling_components",
]

# Config entry -> the arguments its factory gets from the flat flags (when it names them and its definition does not).
COMPONENT_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "reader_def": ("path", "backend"),
    "masker_def": ("mask_options", "mask_downsample"),
    "grid_def": ("patch_size", "level", "mpp", "stride", "mpp_rtol", "tissue_threshold"),
    "writer_def": ("output_dir", "thumbnail_size"),
}


class ComponentError(OptionError):
    """A config-defined component broke its interface while the run used it: a configuration error, so the run
    stops (it is not recorded as one slide's failure)."""


def coords_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the patch grid of ``slide_id`` is written."""
    return Path(output_dir) / "coords" / f"{slide_id}.json"


def thumbnail_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the thumbnail PNG of ``slide_id`` is written."""
    return Path(output_dir) / "thumbnails" / f"{slide_id}.png"


def grid_options(patch_size: Any = 256, level: Any = None, mpp: Any = None, stride: Any = None,
                 mpp_rtol: Any = 0.1, tissue_threshold: Any = 0.5) -> dict[str, Any]:
    """The patch-grid options, each checked (type, range, ``level`` and ``mpp`` exclusive).

    Raises:
        OptionError: the message names the option, what it expects and what it got.
    """
    level_ = option_int(level, "level", minimum=0, allow_none=True)
    mpp_ = option_float(mpp, "mpp", minimum=0, min_inclusive=False, allow_none=True)
    if level_ is not None and mpp_ is not None:
        raise OptionError(f"--level and --mpp: give one of them (a pyramid level or microns per pixel), found "
                          f"level {level_} and mpp {mpp_:g}.")
    return {
        "patch_size": option_int(patch_size, "patch_size", minimum=1),
        "level": level_,
        "mpp": mpp_,
        "stride": option_int(stride, "stride", minimum=1, allow_none=True),
        "mpp_rtol": option_float(mpp_rtol, "mpp_rtol", minimum=0.0),
        "tissue_threshold": option_float(tissue_threshold, "tissue_threshold", 0.0, 1.0),
    }


# ---------------------------------------------------------------------------------------------------------------------
# the defaults
# ---------------------------------------------------------------------------------------------------------------------
class TissueMasker:
    """The default of ``masker_def``: :func:`~wsi.tissue.tissue_mask` (HSV saturation, Otsu, pen marks, morphology).

    Args:
        mask_options: :class:`~wsi.tissue.TissueMaskConfig` or a dict of its fields (the flat ``--mask_options``).
        mask_downsample: coarsest level-0 downsample of the image the mask is computed on (``--mask_downsample``).
        **fields: further :class:`~wsi.tissue.TissueMaskConfig` fields over ``mask_options``
            (``--masker_def#min_saturation 0.1``).

    Raises:
        OptionError: an unknown field or a value of the wrong type.
    """

    def __init__(self, mask_options: TissueMaskConfig | Mapping[str, Any] | None = None,
                 mask_downsample: float = 32.0, **fields: Any) -> None:
        try:
            config = TissueMaskConfig.from_any(dict(mask_options) if isinstance(mask_options, Mapping)
                                               else mask_options)
            if fields:
                config = TissueMaskConfig.from_any({**config.to_dict(), **fields})
        except (KeyError, TypeError, ValueError) as e:  # the flat --mask_options were checked before: a field here
            raise OptionError(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from None
        self.config = config
        self.mask_downsample: float = option_float(mask_downsample, "mask_downsample", minimum=1.0)  # type: ignore

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The ``(H, W)`` boolean tissue mask of an ``(H, W, 3)`` uint8 RGB image."""
        return tissue_mask(image, self.config)

    def __repr__(self) -> str:
        return f"TissueMasker(mask_downsample={self.mask_downsample:g})"


class PatchGridder:
    """The default of ``grid_def``: patches of ``patch_size`` pixels at a pyramid ``level`` or at ``mpp``, on a
    regular grid of step ``stride``, kept when their tissue fraction reaches ``tissue_threshold``.

    Args:
        patch_size: patch side in pixels at the requested resolution.
        level: pyramid level (exclusive with ``mpp``; neither means level 0).
        mpp: microns per pixel of the patches.
        stride: grid step at the patch resolution (defaults to ``patch_size``).
        mpp_rtol: relative tolerance for matching a stored level to ``mpp``.
        tissue_threshold: minimum tissue fraction of a kept patch.

    Raises:
        OptionError: a value of the wrong type or out of range, or both ``level`` and ``mpp``.
    """

    def __init__(self, patch_size: int = 256, level: int | None = None, mpp: float | None = None,
                 stride: int | None = None, mpp_rtol: float = 0.1, tissue_threshold: float = 0.5) -> None:
        options = grid_options(patch_size, level, mpp, stride, mpp_rtol, tissue_threshold)
        self.patch_size: int = options["patch_size"]
        self.level: int | None = options["level"]
        self.mpp: float | None = options["mpp"]
        self.stride: int | None = options["stride"]
        self.mpp_rtol: float = options["mpp_rtol"]
        self.tissue_threshold: float = options["tissue_threshold"]

    def spec(self, info: SlideInfo) -> PatchSpec:
        """Which level and size to read on this slide (:func:`~wsi.grid.resolve_patch_spec`)."""
        return resolve_patch_spec(info, self.patch_size, self.level, self.mpp, self.stride, self.mpp_rtol)

    def positions(self, info: SlideInfo, spec: PatchSpec) -> np.ndarray:
        """``(N, 2)`` level-0 top-left corners of every patch that fits in level 0 (row-major)."""
        return grid_positions(info.dimensions[0][0], info.dimensions[0][1], spec.footprint, spec.stride)

    def __repr__(self) -> str:
        return (f"PatchGridder(patch_size={self.patch_size}, level={self.level}, mpp={self.mpp}, "
                f"stride={self.stride}, tissue_threshold={self.tissue_threshold})")


class TilingWriter:
    """The default of ``writer_def``: ``OUT/coords/<slide_id>.json`` (the patch grid) and
    ``OUT/thumbnails/<slide_id>.png`` (the slide with its mask and kept patches), each written atomically.

    Args:
        output_dir: the run's output directory.
        thumbnail_size: longest side of the thumbnails.
    """

    def __init__(self, output_dir: str | os.PathLike, thumbnail_size: int = 1024) -> None:
        self.output_dir = Path(output_dir)
        self.thumbnail_size: int = option_int(thumbnail_size, "thumbnail_size", minimum=16)  # type: ignore

    def write(self, tiling: SlideTiling) -> None:
        """Store the grid, then the thumbnail, of one tiled slide."""
        slide_id = tiling.grid.slide_id
        tiling.grid.save(coords_path(self.output_dir, slide_id))
        save_thumbnail(tiling.thumbnail(self.thumbnail_size), thumbnail_path(self.output_dir, slide_id))

    def remove(self, slide_id: str) -> None:
        """Delete the grid and thumbnail an earlier run stored (they would be stale)."""
        coords_path(self.output_dir, slide_id).unlink(missing_ok=True)
        thumbnail_path(self.output_dir, slide_id).unlink(missing_ok=True)

    def is_written(self, slide_id: str) -> bool:
        """Whether the stored grid can be read (a killed copy or a full disk leaves a damaged one)."""
        try:
            PatchGrid.load(coords_path(self.output_dir, slide_id))
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def __repr__(self) -> str:
        return f"TilingWriter('{self.output_dir}', thumbnail_size={self.thumbnail_size})"


# ---------------------------------------------------------------------------------------------------------------------
# building and checking
# ---------------------------------------------------------------------------------------------------------------------
def _flag(entry: str, factory: Callable[..., Any]) -> str:
    return f"--{entry} {component_target(factory)}"


def _free_parameters(factory: Callable[..., Any]) -> set[str] | None:
    """Names ``factory`` accepts by keyword and its definition has not set; ``None`` when it has no signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in sig.parameters.items() if p.kind in kinds and n not in bound}


def _check_keywords(factory: Callable[..., Any] | None, entry: str) -> None:
    """A definition's own arguments must be ones its target takes (``--grid_def#strid 64`` fails now, by name).

    Raises:
        OptionError: an argument the target does not take.
    """
    if not isinstance(factory, functools.partial):
        return
    try:
        params = inspect.signature(factory.func).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(factory.keywords) - set(params))
    if unknown:
        raise OptionError(f"{_flag(entry, factory)} takes no argument {', '.join(map(repr, unknown))}; its "
                          f"arguments: {', '.join(params) or 'none'}.")


def _brief(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"<{type(value).__name__}>"


def _build(factory: Callable[..., Any], entry: str, values: Mapping[str, Any]) -> Any:
    """``factory(**filled)``: the flat values whose names it accepts and has not set itself.

    Raises:
        OptionError: building failed; the message names the entry, its target and the values filled in.
    """
    free = _free_parameters(factory) or set()
    filled = {k: v for k, v in values.items() if k in free}
    try:
        return factory(**filled)
    except Exception as e:
        given = ", ".join(f"{k}={_brief(v)}" for k, v in filled.items()) or "none"
        raise OptionError(f"{_flag(entry, factory)}: cannot be built (arguments filled in from the flat options: "
                          f"{given}): {error_message(e)}") from None


def _default_parts(factory: Callable[..., Any] | None, default: type) -> dict[str, Any] | None:
    """The keyword arguments of ``factory`` when it is the class ``default`` itself or a partial of it (``{}``
    for ``None``, the bundle's default); ``None`` for any other definition (a subclass included)."""
    if factory is None or factory is default:
        return {}
    if isinstance(factory, functools.partial) and factory.func is default and not factory.args:
        return dict(factory.keywords)
    return None


def _is_image_function(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` is a function (or a partial of one) with a required ``image`` parameter left unset."""
    func = factory.func if isinstance(factory, functools.partial) else factory
    if not inspect.isroutine(func):
        return False
    try:
        param = inspect.signature(factory).parameters.get("image")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def _missing_methods(obj: Any, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not callable(getattr(obj, n, None))]


class _CheckedReader:
    """A user's reader: opens each slide with ``path`` (and ``backend``) and checks what it returns."""

    def __init__(self, factory: Callable[..., Any], backend: str) -> None:
        free = _free_parameters(factory)
        if free is not None and "path" not in free:
            raise OptionError(f"{_flag('reader_def', factory)}: a reader is called with the slide file as its 'path' "
                              "argument and returns an open slide; it takes no 'path' (or its definition sets it).")
        self.factory = factory
        self.values = {"backend": backend} if free is not None and "backend" in free else {}
        self.positional = free is None  # no signature to read: the path goes first

    def __call__(self, path: str) -> Any:
        slide = self.factory(path, **self.values) if self.positional else self.factory(path=path, **self.values)
        has_info = isinstance(getattr(slide, "info", None), SlideInfo)
        missing = [*([] if has_info else ["info (a wsi.reader.SlideInfo)"]),
                   *(f"{m}()" for m in _missing_methods(slide, ("read_region", "read_level")))]
        if missing:
            close = getattr(slide, "close", None)
            if callable(close):
                close()
            raise ComponentError(f"{_flag('reader_def', self.factory)}: opened '{path}' as a {type(slide).__name__} "
                                 f"without {', '.join(missing)}; a reader returns an open slide like wsi.reader.Slide "
                                 "(info, read_region(x, y, width, height, level), read_level(level)).")
        return slide


class _CheckedMasker:
    """A user's masker: called on the low-resolution image; its mask must be an (H, W) array of that image."""

    def __init__(self, masker: Callable[[np.ndarray], Any], factory: Callable[..., Any]) -> None:
        self.masker, self.name = masker, _flag("masker_def", factory)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self.masker(image)
        mask = np.asarray(out) if isinstance(out, (np.ndarray, list, tuple)) or hasattr(out, "__array__") else None
        h, w = image.shape[:2]
        if mask is None or mask.shape != (h, w) or mask.dtype.kind not in "biuf":
            found = (f"a {type(out).__name__}" if mask is None else f"shape {mask.shape}, dtype {mask.dtype}")
            raise ComponentError(f"{self.name}: returned {found} for a {h} x {w} image; a masker returns the "
                                 f"({h}, {w}) boolean tissue mask of the (H, W, 3) uint8 image it gets.")
        return mask.astype(bool, copy=False)


class _CheckedGrid:
    """A user's grid: ``spec(info)`` must give a PatchSpec and ``positions(info, spec)`` (N, 2) integer corners."""

    def __init__(self, grid: Any, factory: Callable[..., Any]) -> None:
        self.grid, self.name = grid, _flag("grid_def", factory)

    def spec(self, info: SlideInfo) -> PatchSpec:
        spec = self.grid.spec(info)
        if not isinstance(spec, PatchSpec):
            raise ComponentError(f"{self.name}: spec(info) returned a {type(spec).__name__}, not a wsi.grid.PatchSpec "
                                 "(build it with wsi.grid.resolve_patch_spec or PatchSpec(...)).")
        return spec

    def positions(self, info: SlideInfo, spec: PatchSpec) -> np.ndarray:
        out = self.grid.positions(info, spec)
        pos = np.asarray(out)
        integral = pos.dtype.kind in "iu" or (pos.dtype.kind == "f" and bool(np.all(np.isfinite(pos)))
                                              and bool(np.all(pos == np.round(pos))))
        if pos.ndim != 2 or pos.shape[1] != 2 or not (integral or pos.size == 0):
            raise ComponentError(f"{self.name}: positions(info, spec) returned shape {pos.shape}, dtype {pos.dtype}; "
                                 "a grid returns the (N, 2) integer level-0 top-left corners (x, y) of its patches.")
        return pos.astype(np.int64, copy=False)


@dataclass
class TilingComponents:
    """What :func:`tiling_components` built: ``None`` where the default runs unchanged inside
    :func:`~wsi.tiling.tile_slide`.

    Attributes:
        reader: opens a slide, ``reader(path)``, or ``None`` (:class:`~wsi.reader.Slide` with ``config.backend``).
        masker: ``masker(image)``, or ``None`` (:func:`~wsi.tissue.tissue_mask` with ``config.mask``).
        grid: ``spec(info)``/``positions(info, spec)``, or ``None`` (the grid of ``config``).
        writer: ``write(tiling)``, ``remove(slide_id)``, ``is_written(slide_id)`` (a :class:`TilingWriter` by default).
        specs: entry -> JSON definition of every component that is not a default (also in ``config.components``).
    """

    reader: Callable[[str], Any] | None
    masker: Callable[[np.ndarray], np.ndarray] | None
    grid: Any
    writer: Any
    specs: dict[str, Any] = field(default_factory=dict)


def tiling_components(config: TilingConfig, output_dir: str | os.PathLike, reader_def: Any = None,
                      masker_def: Any = None, grid_def: Any = None, writer_def: Any = None
                      ) -> tuple[TilingConfig, TilingComponents]:
    """Build the four components of a tiling run from their config entries and the flat options in ``config``.

    ``None`` for an entry means its default. A default (possibly with arguments of its own, such as
    ``--grid_def#stride 128``) is folded into the returned config, so it tiles as the flat flags do; any other
    definition is built, wrapped in a check of its interface, and recorded in ``config.components``.

    Args:
        config: the tiling options of the flat flags (already checked).
        output_dir: the run's output directory (for the writer).
        reader_def: the reader definition (config entry ``reader_def``).
        masker_def: the tissue masker definition (``masker_def``).
        grid_def: the patch grid definition (``grid_def``).
        writer_def: the output writer definition (``writer_def``).

    Returns:
        ``(config, components)``: the config the run uses, and the components.

    Raises:
        OptionError: a definition that cannot be imported or built, or whose product lacks its interface.
    """
    specs: dict[str, Any] = {}
    changes: dict[str, Any] = {}

    reader_factory = as_factory(reader_def, "reader_def")
    _check_keywords(reader_factory, "reader_def")
    reader: Callable[[str], Any] | None = None
    parts = _default_parts(reader_factory, Slide)
    if parts is not None and set(parts) <= {"backend"}:  # --reader_def#backend tifffile on the default
        if "backend" in parts:
            changes["backend"] = option_choice(parts["backend"], "reader_def#backend", BACKENDS)
    else:
        assert reader_factory is not None
        reader = _CheckedReader(reader_factory, config.backend)
        specs["reader_def"] = component_spec(reader_factory)

    masker_factory = as_factory(masker_def, "masker_def") or TissueMasker
    _check_keywords(masker_factory, "masker_def")
    if _is_image_function(masker_factory):  # a function masker(image, ...) is the masker itself
        built = masker_factory
    else:
        built = _build(masker_factory, "masker_def",
                       {"mask_options": config.mask, "mask_downsample": config.mask_downsample})
    masker: Callable[[np.ndarray], np.ndarray] | None = None
    if type(built) is TissueMasker:
        changes.update(mask=built.config, mask_downsample=built.mask_downsample)
    else:
        if not callable(built):
            raise OptionError(f"{_flag('masker_def', masker_factory)}: built a {type(built).__name__}, which cannot be "
                              "called; a masker is called as masker(image) and returns the boolean tissue mask.")
        downsample = getattr(built, "mask_downsample", config.mask_downsample)
        changes["mask_downsample"] = option_float(downsample, "masker_def's mask_downsample", minimum=1.0)
        masker = _CheckedMasker(built, masker_factory)
        specs["masker_def"] = component_spec(masker_factory)

    grid_factory = as_factory(grid_def, "grid_def") or PatchGridder
    _check_keywords(grid_factory, "grid_def")
    built = _build(grid_factory, "grid_def", {k: getattr(config, k) for k in COMPONENT_ARGUMENTS["grid_def"]})
    grid: Any = None
    if type(built) is PatchGridder:
        changes.update({k: getattr(built, k) for k in COMPONENT_ARGUMENTS["grid_def"]})
    else:
        missing = _missing_methods(built, ("spec", "positions"))
        if missing:
            raise OptionError(f"{_flag('grid_def', grid_factory)}: built a {type(built).__name__} without "
                              f"{', '.join(m + '()' for m in missing)}; a grid has spec(info) -> wsi.grid.PatchSpec "
                              "and positions(info, spec) -> (N, 2) level-0 corners (see wsi.components.PatchGridder).")
        threshold = getattr(built, "tissue_threshold", config.tissue_threshold)
        changes["tissue_threshold"] = option_float(threshold, "grid_def's tissue_threshold", 0.0, 1.0)
        grid = _CheckedGrid(built, grid_factory)
        specs["grid_def"] = component_spec(grid_factory)

    writer_factory = as_factory(writer_def, "writer_def") or TilingWriter
    _check_keywords(writer_factory, "writer_def")
    writer = _build(writer_factory, "writer_def", {"output_dir": Path(output_dir),
                                                   "thumbnail_size": config.thumbnail_size})
    missing = _missing_methods(writer, ("write", "remove", "is_written"))
    if missing:
        raise OptionError(f"{_flag('writer_def', writer_factory)}: built a {type(writer).__name__} without "
                          f"{', '.join(m + '()' for m in missing)}; a writer has write(tiling), remove(slide_id) and "
                          "is_written(slide_id) (subclass wsi.components.TilingWriter).")
    if type(writer) is not TilingWriter:
        specs["writer_def"] = component_spec(writer_factory)

    if specs:
        changes["components"] = specs
    config = dataclasses.replace(config, **changes) if changes else config
    return config, TilingComponents(reader=reader, masker=masker, grid=grid, writer=writer, specs=specs)
