"""Tests for :mod:`nrc_cli._threads`: the default thread count and scipy's BLAS threads."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import pytest
import torch

from nrc_cli import _threads
from nrc_cli._threads import blas_threads, default_threads, threads_for_load


@pytest.mark.parametrize(
    ("cores", "load", "want"),
    [
        (2, 0.0, 2),
        (2, 0.49, 2),
        (2, 0.5, 2),  # 1.5 free cores: half up
        (2, 0.51, 1),
        (2, 0.8, 1),
        (2, 7.0, 1),
        (16, 3.2, 13),
        (1, 0.0, 1),
        (4, float("nan"), 4),
        (0, 0.0, 1),
    ],
)
def test_threads_for_load(cores, load, want):
    assert threads_for_load(cores, load) == want


def test_default_threads_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads(load=100.0) == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads(load=100.0) == 1
    assert default_threads(load=0.0) == torch.get_num_threads()


_SPIN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


def test_others_busy_sees_another_process_and_not_this_one():
    """A child spinning on a core counts (about 1); this process's own spinning does not."""
    if _threads._cpu_sample() is None:
        pytest.skip("no /proc/stat")
    child = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        time.sleep(0.3)  # let it start
        _threads.others_busy()  # start a fresh window
        time.sleep(0.5)
        assert _threads.others_busy() >= 0.6
    finally:
        child.kill()
        child.wait()
    time.sleep(0.2)
    _threads.others_busy()
    time.sleep(0.5)
    baseline = _threads.others_busy()  # whatever else the machine is doing
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # a full core of this process's own
        pass
    busy = _threads.others_busy()
    assert 0.0 <= busy < baseline + 0.6


def test_others_busy_waits_out_a_short_window_and_forgets_an_old_one(monkeypatch):
    if _threads._cpu_sample() is None:
        pytest.skip("no /proc/stat")
    _threads.others_busy()
    t0 = time.monotonic()
    assert _threads.others_busy() >= 0.0
    assert time.monotonic() - t0 >= _threads.MIN_WINDOW_S * 0.9  # waited for a window
    monkeypatch.setattr(_threads, "MAX_WINDOW_S", 0.0)  # every start is too old: read afresh
    t0 = time.monotonic()
    assert _threads.others_busy() >= 0.0
    assert time.monotonic() - t0 >= _threads.MIN_WINDOW_S * 0.9


def _openblas_counts() -> list[int]:
    counts = []
    for path in _threads._openblas_libraries():
        lib = ctypes.CDLL(path)
        getter = next(
            (
                getattr(lib, name.replace("set", "get"), None)
                for name in _threads._OPENBLAS_SETTERS
                if getattr(lib, name.replace("set", "get"), None) is not None
            ),
            None,
        )
        if getter is not None:
            counts.append(getter())
    return counts


def test_blas_threads_sets_scipys_openblas():
    if not blas_threads(1):
        pytest.skip("scipy's BLAS is not an OpenBLAS this process can see")
    try:
        assert set(_openblas_counts()) == {1}
        blas_threads(2)
        assert set(_openblas_counts()) == {2}
    finally:
        blas_threads(torch.get_num_threads())


def test_the_command_line_makes_idle_thread_pools_sleep_unless_told():
    """``nrc`` sets OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT before torch and scipy load,
    and keeps what the environment already says."""
    code = (
        "import os, nrc_cli.cli\n"
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["PASSIVE", "4"], out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["ACTIVE", "4"], out.stderr
