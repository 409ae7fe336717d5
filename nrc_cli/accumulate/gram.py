"""The float64 Gram of one batch, ``target += aᵀa``, one triangle only, on the CPU and on a GPU.

The exact accumulators add each batch's Gram of shifted features into a p×p float64 state of
which only the upper triangle is read (:func:`nrc_cli.accumulate.moments.symmetric`). A full
product computes both triangles: half its multiply-adds are thrown away. On the CPU the batch
goes through BLAS ``dsyrk`` (a symmetric rank-k update: one triangle, half the multiply-adds)
on the tensors' own memory, through scipy; where scipy's BLAS is missing, and on a GPU (where
one full product is faster than anything triangular), through torch: column blocks on and above
the diagonal on the CPU, one full product on a GPU. ``benchmarks/bench_gram.py`` measures the
three (docs/performance.md).
"""

from __future__ import annotations

import functools
import itertools

import torch

from nrc_cli._threads import blas_threads

__all__ = [
    "GRAM_BLOCK",
    "SYRK_MIN_WIDTH",
    "add_cross_",
    "add_gram_",
    "syrk_upper_",
    "upper_blocks",
]

_F64 = torch.float64

# Width of the blocks of a symmetric product taken with torch on the CPU (see upper_blocks).
GRAM_BLOCK = 256
# Narrowest batch that goes through ``dsyrk`` on the CPU. Below it one full product through
# torch is as fast or faster (benchmarks/bench_gram.py, one thread: syrk/full 1.04-1.8 at
# p = 64-160, 0.83-0.92 at 192, 0.51-0.8 from 256 to 4096).
SYRK_MIN_WIDTH = 192


# The thread count scipy's BLAS was last set to (see _follow_torch_threads).
_blas_threads: list[int] = []


def _follow_torch_threads() -> None:
    """Give scipy's BLAS torch's current thread count, so that ``--threads`` and
    :func:`nrc_cli._threads.single_threaded` hold for ``dsyrk`` too (one call per change)."""
    threads = torch.get_num_threads()
    if _blas_threads != [threads]:
        blas_threads(threads)
        _blas_threads[:] = [threads]


@functools.cache
def _blas(name: str):
    """scipy's BLAS routine ``name`` (``dsyrk``), or None where scipy is not installed."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return getattr(blas, name)


def upper_blocks(p: int, device: torch.device) -> list[tuple[slice, slice]]:
    """The column blocks (rows, columns) of a p×p product on and above its diagonal.

    On the CPU a wide product is taken block by block (blocks of ``GRAM_BLOCK`` columns), only
    for the blocks on and above the diagonal: at p = 1024 that is 10 of 16 blocks. On a GPU the
    one full product is faster than ten small ones.
    """
    if device.type != "cpu" or p <= GRAM_BLOCK:
        return [(slice(0, p), slice(0, p))]
    edges = [*range(0, p, GRAM_BLOCK), p]
    blocks = [slice(lo, hi) for lo, hi in itertools.pairwise(edges)]
    return [(left, right) for i, left in enumerate(blocks) for right in blocks[i:]]


def syrk_upper_(target: torch.Tensor, a: torch.Tensor) -> bool:
    """target += aᵀa on and above the diagonal through BLAS ``dsyrk``, in place.

    ``target``: a C-contiguous p×p float64 CPU tensor; ``a``: (b, p) on the CPU, any float
    dtype (float32 is widened to float64 first, exactly; a batch that is neither C- nor
    Fortran-contiguous is copied once). No p×p temporary: a C-order p×p array is the Fortran
    array of its transpose, so the upper triangle of ``target`` is the lower one BLAS fills,
    and a C-order (b, p) batch is the Fortran p×b matrix whose ``A Aᵀ`` is aᵀa. Returns False
    (and changes nothing) where scipy's ``dsyrk`` is missing.
    """
    dsyrk = _blas("dsyrk")
    if dsyrk is None:
        return False
    if target.dtype != _F64 or not target.is_contiguous() or target.device.type != "cpu":
        raise ValueError("syrk_upper_: expected a C-contiguous float64 CPU target")
    if a.shape[0] == 0:
        return True
    a = a.detach()
    if a.dtype != _F64:
        a = a.to(_F64)
    if a.is_contiguous():
        mat, trans = a.numpy().T, 0  # Fortran p×b: A Aᵀ = aᵀa
    elif a.T.is_contiguous():
        mat, trans = a.numpy(), 1  # Fortran b×p: Aᵀ A = aᵀa
    else:
        mat, trans = a.contiguous().numpy().T, 0
    c = target.detach().numpy().T  # Fortran view of the state, no copy
    _follow_torch_threads()
    out = dsyrk(1.0, mat, beta=1.0, c=c, trans=trans, lower=1, overwrite_c=1)
    if out.ctypes.data != c.ctypes.data:  # pragma: no cover - f2py copies only on a mismatch
        c[...] = out
    return True


def add_gram_(target: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """target += aᵀa on and above the diagonal, in place; read it back with ``symmetric``.

    On the CPU, float64 state, p ≥ ``SYRK_MIN_WIDTH``: BLAS ``dsyrk`` (:func:`syrk_upper_`);
    otherwise the product
    goes straight into the state through torch, block by block on the CPU (see
    :func:`upper_blocks`), with no p×p temporary. The entries below the diagonal are left as
    they were (``dsyrk`` and the blocks alike).
    """
    if (
        a.device.type == "cpu"
        and a.shape[1] >= SYRK_MIN_WIDTH
        and target.dtype == _F64
        and target.is_contiguous()
        and syrk_upper_(target, a)
    ):
        return target
    for rows, cols in upper_blocks(a.shape[1], a.device):
        target[rows, cols].addmm_(a[:, rows].T, a[:, cols])
    return target


def add_cross_(target: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """target += uᵀv in place: a (b, p) batch's cross-product with a narrow (b, t) one.

    On the CPU, for p ≥ ``SYRK_MIN_WIDTH`` and 2 ≤ t ≤ p, taken as (vᵀu)ᵀ: the BLAS kernel
    for a t×p result from t rows streams the batch once, where the p×t one does not. Measured
    on 2 cores (b = 1024, float64): p = 512, t = 4 took 0.26 ms against 1.7 ms on one thread
    (0.15 against 0.84 on two), p = 1024, t = 16 1.8 against 4.8 ms; for t = 1 or t > p the
    two are alike or the direct product is faster, and for narrow layers the time is small
    either way (so their sums keep the order, and the bits, they had).
    """
    t, p = v.shape[1], u.shape[1]
    if u.device.type == "cpu" and p >= SYRK_MIN_WIDTH and 2 <= t <= p:
        return target.add_(torch.mm(v.T, u).T)
    return target.addmm_(u.T, v)
