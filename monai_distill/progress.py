"""Progress of long steps: a tqdm bar on a terminal, log lines at a steady cadence everywhere else.

tqdm hides its bar when stderr is not a terminal (a batch job, ``nohup``, a cluster log), which left an hour-long
run with one line ("training 5 expert(s)") until the end. :func:`progress_bar` returns a tqdm object in both
cases, so callers use one API (``update``, ``set_postfix``, iteration), and off a terminal it logs
``desc: n/total (p%), elapsed, ETA, postfix`` every 10 % of the work and at least every
``$MONAI_DISTILL_LOG_EVERY`` seconds (default 60), plus once at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["LogProgress", "progress_bar", "stderr_is_terminal"]

LOG_EVERY_ENV = "MONAI_DISTILL_LOG_EVERY"
logger = logging.getLogger("monai_distill.progress")


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _emit(line: str) -> None:
    """Log ``line``; without any configured handler (plain Python API use) write it to stderr instead."""
    if logger.hasHandlers():
        logger.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


class LogProgress(tqdm):
    """A tqdm that draws nothing and logs a progress line every ``fraction`` of the total or ``every`` seconds.

    Args:
        args: as tqdm's.
        every: seconds between lines at most (default ``$MONAI_DISTILL_LOG_EVERY`` or 60).
        fraction: share of the total between lines (default 0.1); without a total only ``every`` applies.
        kwargs: as tqdm's (``desc``, ``total``, ``initial``, ``unit``, ...).
    """

    def __init__(self, *args: Any, every: float | None = None, fraction: float = 0.1, **kwargs: Any) -> None:
        self._every = float(every if every is not None else os.environ.get(LOG_EVERY_ENV, 60) or 60)
        self._fraction = float(fraction)
        self._last_t = time.monotonic()
        self._last_step: int | None = None
        self._logged_n: float | None = None
        kwargs.update(file=open(os.devnull, "w"), mininterval=0, miniters=1, leave=True)  # noqa: SIM115
        super().__init__(*args, **kwargs)

    def _line(self) -> str:
        d = self.format_dict
        n, total, elapsed = d["n"], d["total"], d["elapsed"]
        unit = f" {d['unit']}" if d.get("unit") and d["unit"] != "it" else ""
        parts = [f"{d.get('prefix') or 'progress'}: {n:g}/{total:g}{unit}" if total else f"{d.get('prefix')}: {n:g}"]
        if total:
            parts[0] += f" ({100 * n / total:.0f}%)"
        parts.append(f"{self.format_interval(elapsed)} elapsed")
        rate = n - (self.initial or 0)
        if total and rate > 0 and elapsed > 0:
            parts.append(f"ETA {self.format_interval((total - n) * elapsed / rate)}")
        if d.get("postfix"):
            parts.append(str(d["postfix"]))
        return ", ".join(parts)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.disable or self.n == self._logged_n:
            return True
        now = time.monotonic()
        step = int(self.n / (self.total * self._fraction)) if self.total and self._fraction > 0 else None
        due = step is not None and step != self._last_step
        if due or now - self._last_t >= self._every or (self.total and self.n >= self.total):
            _emit(self._line())
            self._last_t, self._last_step, self._logged_n = now, step, self.n
        return True

    def close(self) -> None:
        if not self.disable and self.n != self._logged_n and self.n:
            _emit(self._line())
            self._logged_n = self.n
        fp = self.fp
        super().close()
        fp.close()


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A progress bar for a long step: tqdm's on a terminal, :class:`LogProgress` lines off it, nothing if disabled.

    Args:
        iterable: what to iterate over (or ``None`` and call ``update``).
        enabled: ``False`` turns every output off (the bundles' ``--progress false``).
        kwargs: tqdm's arguments (``desc``, ``total``, ``initial``, ``unit``, ``leave``, ...); ``disable`` is
            ignored in favour of ``enabled``.
    """
    kwargs.pop("disable", None)
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if stderr_is_terminal():
        return tqdm(iterable, **kwargs)
    return LogProgress(iterable, **kwargs)
