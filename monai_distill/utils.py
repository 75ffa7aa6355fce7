"""Small shared helpers: registries, atomic file writes, devices, seeding and memory accounting."""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "Registry",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_json",
    "check_output_dir",
    "peak_memory_mb",
    "reset_peak_memory",
    "resolve_device",
    "seed_everything",
    "to_bool",
]


class Registry(Generic[T]):
    """A name -> object table for one family (networks, methods, ...), so that config strings pick classes.

    Args:
        family: what the entries are, used in error messages ("network", "method", ...).
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` it returns a decorator."""
        key = name.lower()

        def _add(o: T) -> T:
            if key in self._entries:
                raise KeyError(f"{self.family} '{key}' is registered twice.")
            self._entries[key] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        """Return the entry for ``name``; an unknown name raises a ``KeyError`` that lists the valid ones."""
        key = str(name).lower()
        if key not in self._entries:
            raise KeyError(f"unknown {self.family} '{name}'; valid names: {', '.join(self.names())}.")
        return self._entries[key]

    @contextmanager
    def registered(self, name: str, obj: T) -> Iterator[str]:
        """``obj`` under ``name`` for the duration of the block, then the table as it was (an entry the name held
        before comes back). Used for what one run's config defines, e.g. a network given as ``network_def``.

        Yields:
            The registered key (``name`` in lower case).
        """
        key = name.lower()
        missing = object()
        previous = self._entries.get(key, missing)
        self._entries[key] = obj
        try:
            yield key
        finally:
            if previous is missing:
                self._entries.pop(key, None)
            else:
                self._entries[key] = previous  # type: ignore[assignment]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._entries


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    Readers therefore never see a partial file, and a crash leaves no ``*.tmp`` behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; outputs should get the permissions the user's umask gives any new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def inference_batch_size(sample_shape: tuple[int, ...] | torch.Size, max_batch: int = 256,
                         max_elements: int = 2**23) -> int:
    """Images per no-grad forward pass: at most ``max_batch`` and at most ``max_elements`` input values in all.

    2D sets and 28³ volumes keep batches of 256; 64³ volumes get 32. Without the cap one 256-volume batch of 64³
    through a width-16 ConvNet makes 4.3 GB activations, and with the layer after it a ~10 GB peak.

    Args:
        sample_shape: shape of one image, channels first.
        max_batch: largest batch.
        max_elements: largest number of input values (channels × voxels × images) per batch.
    """
    per_image = max(1, math.prod(int(d) for d in sample_shape))
    return max(1, min(int(max_batch), int(max_elements) // per_image))


def load_torch_file(
    path: str | os.PathLike, what: str, error: type[Exception], map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load`` (tensors only) of a file this package wrote, with errors that name the file.

    Args:
        path: the file.
        what: what the file should be, for the messages ("bag", "SyntheticSet").
        error: the exception raised for an unreadable file (a missing one raises ``FileNotFoundError``).
        map_location: as ``torch.load``'s.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file '{path}' does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise error(f"'{path}' is not a readable {what} file ({type(e).__name__}: {e}).") from e


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there, before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise PermissionError(f"output_dir '{path}' is not writable: {e.strerror or e}.") from e
    return path


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` when available and nothing was asked for, else ``cpu``; a requested CUDA device must exist."""
    if device is None or str(device).lower() in ("", "auto", "none"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' was requested but CUDA is not available; use --device cpu.")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU ``torch.Generator`` seeded with ``seed`` for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_bool(value: Any) -> bool:
    """Read a boolean from a config/CLI value (``true``/``false``/``1``/``0``/``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off", "", "none"):
        return False
    raise ValueError(f"expected a boolean (true/false), got '{value}'.")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA's max allocated on a GPU, the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def call_with_known_kwargs(fn: Callable[..., T], **kwargs: Any) -> T:
    """Call ``fn`` with the subset of ``kwargs`` its signature accepts (factories with differing options)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
