"""Validation shared by every workflow: options (type, range, known names) and arrays (shape, finite values, labels).

Every check raises an error whose message names the culprit (``--option`` or file/key), what was expected and what
was found, so that a bundle's last line tells the user what to fix:

- options: :func:`option_int`, :func:`option_float`, :func:`option_bool`, :func:`option_str`,
  :func:`option_choice`, :func:`option_dict`, :func:`option_file`, :func:`option_dir` raise :class:`OptionError`;
- data: :func:`check_finite`, :func:`check_not_constant`, :func:`check_class_labels`, :func:`check_same_images`,
  :func:`check_num_classes` raise :class:`DataError`.

Both errors are :class:`~monai_distill.runs.RunError` and ``ValueError`` subclasses (``FileNotFoundError`` for
missing paths), so Python callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .runs import RunError

__all__ = [
    "DataError",
    "OptionError",
    "check_class_labels",
    "check_finite",
    "check_not_constant",
    "check_num_classes",
    "check_same_images",
    "option_bool",
    "option_choice",
    "option_dict",
    "option_dir",
    "option_file",
    "option_float",
    "option_int",
    "option_str",
]

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


class OptionError(RunError, ValueError):
    """An option (config key / CLI flag) with a value of the wrong type, out of range or not a known name."""


class DataError(RunError, ValueError):
    """A dataset file or array that cannot be used; the message names the file/key and what was expected."""


def _flag(name: str) -> str:
    """``ipc`` -> ``--ipc``; descriptions such as ``method option 'lr_img'`` stay as they are."""
    return name if name.startswith(("--", "$", "'")) or "[" in name or " " in name else f"--{name}"


def _range_text(minimum: float | None, maximum: float | None, min_inclusive: bool = True) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]" if min_inclusive else f" in ({minimum}, {maximum}]"
    if minimum is not None:
        return f" {'>=' if min_inclusive else '>'} {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


# ---------------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------------
def _none_like(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def option_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None,
               allow_none: bool = False) -> int | None:
    """``value`` as a whole number within ``[minimum, maximum]`` (``1.7``, ``'abc'`` and booleans are refused).

    Args:
        value: what the config/CLI gave (int, whole float such as ``2.0``, or a numeric string).
        name: the option, for the message.
        minimum: smallest allowed value.
        maximum: largest allowed value.
        allow_none: ``None``/``null`` means "not set" and is returned as ``None``.

    Raises:
        OptionError: not a whole number, or out of range.
    """
    if allow_none and _none_like(value):
        return None
    expected = f"a whole number{_range_text(minimum, maximum)}"
    number: float | int | None = None
    if isinstance(value, (bool, np.bool_)):
        number = None
    elif isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        number = int(value) if math.isfinite(value) and float(value).is_integer() else None
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                f = float(text)
                number = int(f) if math.isfinite(f) and f.is_integer() else None
            except ValueError:
                number = None
    if number is None:
        raise OptionError(f"{_flag(name)} must be {expected}, got {value!r}.")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise OptionError(f"{_flag(name)} must be{_range_text(minimum, maximum)}, got {value!r}.")
    return int(number)


def option_float(value: Any, name: str, minimum: float | None = None, maximum: float | None = None,
                 allow_none: bool = False, min_inclusive: bool = True) -> float | None:
    """``value`` as a finite number within the range (``min_inclusive=False``: strictly above ``minimum``).

    Raises:
        OptionError: not a finite number, or out of range.
    """
    if allow_none and _none_like(value):
        return None
    expected = f"a finite number{_range_text(minimum, maximum, min_inclusive)}"
    try:
        if isinstance(value, (bool, np.bool_)):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise OptionError(f"{_flag(name)} must be {expected}, got {value!r}.") from None
    low_bad = minimum is not None and (number < minimum if min_inclusive else number <= minimum)
    if not math.isfinite(number) or low_bad or (maximum is not None and number > maximum):
        raise OptionError(f"{_flag(name)} must be {expected}, got {value!r}.")
    return number


def option_bool(value: Any, name: str) -> bool:
    """``value`` as a boolean: ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``.

    Raises:
        OptionError: anything else (``'maybe'``, ``2``, ``None``).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise OptionError(f"{_flag(name)} must be a boolean (true or false), got {value!r}.")


def option_str(value: Any, name: str, allow_none: bool = False) -> str | None:
    """``value`` as a non-empty string (numbers are accepted and converted, containers are not).

    Raises:
        OptionError: empty, or a list/dict/bool.
    """
    if allow_none and _none_like(value):
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise OptionError(f"{_flag(name)} must be a non-empty string, got {value!r}.")
    return str(value).strip()


def option_choice(value: Any, name: str, choices: Iterable[str], allow_none: bool = False) -> str | None:
    """``value`` lower-cased, which must be one of ``choices``.

    Raises:
        OptionError: an unknown name (the message lists the valid ones).
    """
    if allow_none and _none_like(value):
        return None
    valid = sorted(str(c).lower() for c in choices)
    text = str(value).strip().lower() if isinstance(value, (str, int, float)) else None
    if text not in valid:
        raise OptionError(f"{_flag(name)} must be one of {', '.join(valid)}; got {value!r}.")
    return text


def option_dict(value: Any, name: str) -> dict[str, Any]:
    """``value`` as a dict (``None`` gives ``{}``); a CLI string like ``"{'a': 1}"`` is parsed as a literal.

    Raises:
        OptionError: not a mapping.
    """
    if _none_like(value):
        return {}
    if isinstance(value, str):
        import ast

        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise OptionError(f"{_flag(name)} must be a dict such as \"{{'key': 1}}\", got {value!r}.") from None
    if not isinstance(value, Mapping):
        raise OptionError(f"{_flag(name)} must be a dict such as \"{{'key': 1}}\", got {value!r}.")
    return {str(k): v for k, v in value.items()}


def option_file(value: Any, name: str, suffixes: Sequence[str] | None = None) -> Path:
    """An existing, readable file (optionally with one of ``suffixes``).

    Raises:
        FileNotFoundError: no such file (the message names the option and the path).
        OptionError: a directory, an unreadable file or a wrong suffix.
    """
    path = Path(os.path.expanduser(str(option_str(value, name))))
    if suffixes and path.suffix.lower() not in [s.lower() for s in suffixes]:
        raise OptionError(f"{_flag(name)} must be a {' or '.join(suffixes)} file, got '{path}'.")
    if not path.exists():
        raise FileNotFoundError(f"{_flag(name)}: file '{path}' does not exist.")
    if not path.is_file():
        raise OptionError(f"{_flag(name)}: '{path}' is not a file.")
    if not os.access(path, os.R_OK):
        raise OptionError(f"{_flag(name)}: file '{path}' is not readable (permissions).")
    return path


def option_dir(value: Any, name: str) -> Path:
    """An existing, readable directory.

    Raises:
        FileNotFoundError: no such directory. OptionError: not a directory, or not readable.
    """
    path = Path(os.path.expanduser(str(option_str(value, name))))
    if not path.exists():
        raise FileNotFoundError(f"{_flag(name)}: directory '{path}' does not exist.")
    if not path.is_dir():
        raise OptionError(f"{_flag(name)}: '{path}' is not a directory.")
    if not os.access(path, os.R_OK | os.X_OK):
        raise OptionError(f"{_flag(name)}: directory '{path}' is not readable (permissions).")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------------------------------
def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def check_finite(x: np.ndarray | torch.Tensor, what: str) -> None:
    """Raise if a float array holds NaN or infinite values (integer arrays always pass).

    Raises:
        DataError: ``what: N of M values are NaN/inf``.
    """
    t = _as_tensor(x)
    if not t.is_floating_point() or t.numel() == 0:
        return
    bad = ~torch.isfinite(t)
    n_bad = int(bad.sum())
    if n_bad:
        n_nan = int(torch.isnan(t).sum())
        raise DataError(
            f"{what}: {n_bad} of {t.numel()} values are not finite ({n_nan} NaN, {n_bad - n_nan} infinite); "
            "fix or remove those images."
        )


def check_not_constant(x: np.ndarray | torch.Tensor, what: str) -> None:
    """Raise if every value of a (non-empty) image array is the same, e.g. all-zero images: nothing to learn.

    Raises:
        DataError: ``what: all N images are constant ...``.
    """
    t = _as_tensor(x)
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.reshape(-1)) if t.is_floating_point() else (t.min(), t.max())
    if float(lo) == float(hi):
        raise DataError(
            f"{what}: all {t.shape[0]} images are constant (every pixel of every image has the same value, e.g. "
            "all zero), so there is nothing to learn or test; check that the right arrays were exported."
        )


def check_class_labels(labels: Mapping[str, np.ndarray | torch.Tensor | Sequence[int]], source: str,
                       num_classes: int | None = None, reference: str = "train",
                       key: str = "{split} labels") -> int:
    """Check class-index labels of several splits against each other and return the number of classes K.

    Labels must be whole numbers >= 0. K is ``num_classes`` when given, else the ``reference`` split's largest label
    + 1, and then every class 0..K-1 must occur in the reference split (so that a stray 255 in uint8 labels or a
    typo cannot invent classes). Labels of the other splits must lie in [0, K-1]: a typo there names the split and
    the value instead of silently making a K+n-class problem.

    Args:
        labels: labels per split name (1D, or (N, 1)).
        source: the file, for the messages.
        num_classes: K, if known (e.g. from ``class_names``).
        reference: the split that defines the classes.
        key: how a split's labels are called in messages (``{split}`` is replaced).

    Returns:
        K.

    Raises:
        DataError: non-integer or negative labels, labels outside [0, K-1], classes missing from the reference split.
    """
    arrays: dict[str, np.ndarray] = {}
    for split, values in labels.items():
        arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        where = f"'{source}': {key.format(split=split)}"
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(f"{where} must have shape (N,) or (N, 1), got {arr.shape}.")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"{where} must be numeric class indices, got dtype {arr.dtype}.")
        if arr.size:
            f = arr.astype(np.float64)
            bad = f[~np.isfinite(f) | (f != np.round(f)) | (f < 0)]
            if bad.size:
                found = np.unique(bad)[:5].tolist()
                raise DataError(f"{where} must be whole numbers >= 0 (class indices), found {found}.")
        arrays[split] = arr.astype(np.int64)
    if num_classes is not None:
        k = int(num_classes)
        if k < 1:
            raise DataError(f"'{source}': the number of classes must be >= 1, got {k}.")
    else:
        ref = arrays.get(reference)
        if ref is None or not ref.size:
            present = [s for s, a in arrays.items() if a.size]
            if not present:
                raise DataError(f"'{source}': no labels to infer the number of classes from.")
            ref, reference = arrays[present[0]], present[0]
        k = int(ref.max()) + 1
        found = np.unique(ref)
        missing = sorted(set(range(k)) - set(found.tolist()))
        if missing:
            hint = ""
            if k - 1 == 255:
                hint = " (255 in uint8 labels often marks a missing or 'ignore' label)"
            shown = found.tolist() if found.size <= 12 else [*found[:10].tolist(), "...", int(found[-1])]
            raise DataError(
                f"'{source}': {key.format(split=reference)} must be class indices 0..K-1 with every class present, "
                f"but the values are {shown}: the largest, {k - 1}{hint}, would make {k} classes of which "
                f"{len(missing)} have no {reference} images; fix the labels."
            )
    for split, arr in arrays.items():
        outside = np.unique(arr[arr >= k])
        if outside.size:
            what = f"the {reference} split has {k} classes (0..{k - 1})" if num_classes is None else \
                f"there are {k} classes (0..{k - 1})"
            raise DataError(
                f"'{source}': {key.format(split=split)} contain {outside[:10].tolist()}, but {what}; "
                f"fix the {split} labels."
            )
    return k


def check_same_images(shape: Sequence[int], expected: Sequence[int], what: str, expected_what: str) -> None:
    """Raise unless two per-image shapes (C, *spatial) agree, naming both sides.

    Raises:
        DataError: ``what has images (C, H, W) = ..., but expected_what has ...``.
    """
    a, b = tuple(int(s) for s in shape), tuple(int(s) for s in expected)
    if a != b:
        dims = "(C, D, H, W)" if len(b) == 4 else "(C, H, W)"
        raise DataError(
            f"{what} has images of shape {a}, but {expected_what} has {b} {dims}; both must have the same channels "
            "and size."
        )


def check_num_classes(found: int, expected: int, what: str, expected_what: str) -> None:
    """Raise unless two class counts agree, naming both sides.

    Raises:
        DataError: ``what has N classes, but expected_what has M``.
    """
    if int(found) != int(expected):
        raise DataError(f"{what} has {int(found)} classes, but {expected_what} has {int(expected)}; they must agree.")
