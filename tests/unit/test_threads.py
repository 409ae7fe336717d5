"""Tests for :mod:`nrc_cli._threads`: the default thread count and scipy's BLAS threads."""

from __future__ import annotations

import ctypes

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
    assert default_threads() == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (100.0, 0.0, 0.0))
    assert default_threads() == 1
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads() == torch.get_num_threads()


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
