"""Process-level run settings: how many torch threads a run uses.

A 2-core machine shared with other jobs is the common case for this package (laptops, CI runners, a node where
``torchrun`` starts one process per GPU). torch's default of one intra-op thread per core oversubscribes such a
machine, and OpenMP's spinning workers then make small networks many times slower (the README's main command took
65 min instead of 3 beside two other CPU-bound jobs). :func:`configure_threads` picks a count that leaves the
cores to the processes already running, once per process, and logs why.
"""

from __future__ import annotations

import logging
import math
import os

import torch

__all__ = ["available_cores", "choose_num_threads", "configure_threads"]

logger = logging.getLogger("monai_distill")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1, else a ``ValueError`` naming ``name``."""
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not number.is_integer() or number < 1:
        raise ValueError(f"{name} must be a whole number >= 1 (or null for automatic), got '{value}'.")
    return int(number)


def choose_num_threads(num_threads: int | str | None = None) -> tuple[int, str]:
    """The intra-op thread count for this process, and the reason, in this order of precedence:

    1. ``num_threads`` when given (the bundles' ``--num_threads``);
    2. ``$OMP_NUM_THREADS`` when set (the usual way to pin threads for a whole job);
    3. otherwise the cores of this process divided by the processes ``torchrun`` started on this node
       (``$LOCAL_WORLD_SIZE``), reduced by the cores other processes already keep busy (the one-minute load
       average), and at least 1.

    Args:
        num_threads: an explicit count; ``None``, ``0``, ``""`` or ``"auto"`` choose automatically.

    Raises:
        ValueError: ``num_threads`` or ``$OMP_NUM_THREADS`` is not a whole number >= 1.
    """
    if num_threads not in (None, 0, "", "auto", "null", "None"):
        return _positive_int(num_threads, "num_threads"), "num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        return _positive_int(env, "$OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    cores = available_cores()
    local_world = _positive_int(os.environ.get("LOCAL_WORLD_SIZE", "1") or "1", "$LOCAL_WORLD_SIZE")
    per_process = max(1, cores // local_world)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    # Other ranks of this job start with this one, so they are not in the load yet: divide what is free by them.
    free = max(1, math.floor((cores - load) / local_world + 0.5))
    threads = min(per_process, free)
    return threads, f"{cores} core(s), {local_world} process(es) on this node, load average {load:.1f}"


def configure_threads(num_threads: int | str | None = None) -> int:
    """Set torch's intra-op threads with :func:`choose_num_threads`, log the choice, and return it.

    Bundles call it in their ``initialize`` step; scripts using the Python API may call it first thing.
    CPU results can differ in the last bits between thread counts (reduction order), so a run that must be
    bit-identical to another (a resume, a comparison) should pin ``num_threads`` or ``$OMP_NUM_THREADS``.
    """
    threads, reason = choose_num_threads(num_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.info("torch threads: %d (%s)", threads, reason)
    return threads
