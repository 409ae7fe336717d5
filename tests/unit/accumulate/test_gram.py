"""Tests for :mod:`nrc_cli.accumulate.gram`: the BLAS ``syrk`` Gram against the dense product.

The reference is the full float64 product ``aᵀa`` of numpy (a BLAS of its own), computed from
the float64 values of the batch; ``syrk`` must fill the upper triangle of the C-order state
with it to 1e-12 relative, in place, and leave the lower triangle as it was.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nrc_cli.accumulate.gram import (
    SYRK_MIN_WIDTH,
    add_cross_,
    add_gram_,
    syrk_upper_,
)


def _batch(b: int, p: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Columns of different scales and a mean away from 0, as shifted features can have.
    return rng.standard_normal((b, p)) * rng.uniform(0.1, 10, p) + rng.uniform(-3, 3, p)


def _check_upper(got: torch.Tensor, want: np.ndarray, fill: float) -> None:
    p = want.shape[0]
    upper = np.triu(np.ones((p, p), dtype=bool))
    g = got.numpy()
    err = np.abs(g[upper] - fill - want[upper]).max() / np.abs(want).max()
    assert err < 1e-12, err
    assert np.all(g[~upper] == fill)  # the lower triangle untouched


def _layouts(x: np.ndarray):
    """The same (b, p) values as a C-order, a Fortran-order and a strided tensor."""
    b, p = x.shape
    yield "C", torch.from_numpy(np.ascontiguousarray(x))
    yield "Fortran", torch.from_numpy(np.ascontiguousarray(x.T)).T
    wide = np.zeros((b, 2 * p))
    wide[:, ::2] = x
    yield "strided", torch.from_numpy(wide)[:, ::2]


@pytest.mark.parametrize(("b", "p"), [(1, 3), (64, 5), (300, 257), (129, 600)])
def test_syrk_equals_the_dense_product_in_every_layout(b, p):
    x = _batch(b, p, seed=b + p)
    want = x.T @ x
    for layout, a in _layouts(x):
        target = torch.full((p, p), 7.0, dtype=torch.float64)
        ptr = target.data_ptr()
        assert syrk_upper_(target, a), layout
        assert target.data_ptr() == ptr  # written in place
        _check_upper(target, want, 7.0)


def test_syrk_widens_float32_exactly():
    x32 = _batch(200, 300, seed=5).astype(np.float32)
    x = x32.astype(np.float64)
    target = torch.zeros(300, 300, dtype=torch.float64)
    syrk_upper_(target, torch.from_numpy(x32))
    _check_upper(target, x.T @ x, 0.0)


def test_syrk_accumulates_over_batches():
    x = _batch(700, 256, seed=9)
    target = torch.zeros(256, 256, dtype=torch.float64)
    for start in range(0, 700, 250):
        syrk_upper_(target, torch.from_numpy(x[start : start + 250]))
    _check_upper(target, x.T @ x, 0.0)


def test_syrk_wants_a_contiguous_float64_target():
    a = torch.from_numpy(_batch(10, 4, seed=1))
    with pytest.raises(ValueError, match="C-contiguous float64"):
        syrk_upper_(torch.zeros(4, 4, dtype=torch.float64).T, a)
    with pytest.raises(ValueError, match="C-contiguous float64"):
        syrk_upper_(torch.zeros(4, 4, dtype=torch.float32), a)


@pytest.mark.parametrize("p", [SYRK_MIN_WIDTH - 1, SYRK_MIN_WIDTH, 300])
def test_add_gram_on_either_side_of_the_syrk_width(p):
    x = _batch(150, p, seed=p)
    target = torch.full((p, p), -2.0, dtype=torch.float64)
    add_gram_(target, torch.from_numpy(x))
    upper = np.triu(np.ones((p, p), dtype=bool))
    err = np.abs(target.numpy()[upper] + 2.0 - (x.T @ x)[upper]).max() / np.abs(x.T @ x).max()
    assert err < 1e-12, err


@pytest.mark.parametrize(("p", "t"), [(300, 1), (300, 4), (300, 16), (200, 300), (8, 4), (1, 1)])
def test_add_cross_is_the_float64_cross_product(p, t):
    """target += uᵀv in either orientation of the product, to 1e-12 of numpy's."""
    u, v = _batch(500, p, seed=p), _batch(500, t, seed=t + 1)
    target = torch.full((p, t), 2.0, dtype=torch.float64)
    got = add_cross_(target, torch.from_numpy(u), torch.from_numpy(v))
    assert got is target
    want = u.T @ v
    err = np.abs(target.numpy() - 2.0 - want).max() / np.abs(want).max()
    assert err < 1e-12, err
