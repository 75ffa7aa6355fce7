"""Thread defaults: explicit count, then $OMP_NUM_THREADS, then cores per process minus what others keep busy."""

from __future__ import annotations

import os

import pytest
import torch

from monai_distill import runtime
from monai_distill.runtime import choose_num_threads, configure_threads


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine with a settable load average and no thread variables."""
    for var in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    state = {"load": 0.0}
    monkeypatch.setattr(os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    return state


def test_explicit_count_wins(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_num_threads(2) == (2, "num_threads")
    assert choose_num_threads("2")[0] == 2


def test_omp_num_threads_is_respected(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    machine["load"] = 8.0
    assert choose_num_threads(None) == (3, "OMP_NUM_THREADS")


def test_quiet_machine_uses_every_core(machine):
    assert choose_num_threads(None)[0] == 4
    assert choose_num_threads("auto")[0] == 4


def test_busy_cores_are_left_to_their_processes(machine):
    machine["load"] = 2.0
    assert choose_num_threads(None)[0] == 2
    machine["load"] = 9.0  # oversubscribed already: one thread, never zero
    assert choose_num_threads(None)[0] == 1


def test_torchrun_divides_the_cores_by_the_local_world(machine, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_num_threads(None)[0] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert choose_num_threads(None)[0] == 1


@pytest.mark.parametrize("bad", [0.5, "1.7", "-2", "abc"])
def test_bad_counts_name_the_option(machine, bad):
    with pytest.raises(ValueError, match="num_threads"):
        choose_num_threads(bad)


def test_bad_environment_names_the_variable(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        choose_num_threads(None)


def test_configure_sets_torch_and_logs(machine, log_lines):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert "torch threads: 1 (num_threads)" in log_lines
    finally:
        torch.set_num_threads(before)
