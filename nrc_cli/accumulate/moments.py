"""Streaming, mergeable float64 moments (the state every Deep NRC metric is computed from).

Each accumulator follows the torchmetrics ``Metric`` shape (:mod:`nrc_cli.accumulate.base`):
state declared once in ``__init__``, from which ``reset``, ``merge``, ``to(device)`` and the
state dicts follow; ``update(batch)`` only changes state, ``compute()`` is pure. Co-moments are summed about a fixed shift (the first batch's mean), which
avoids the cancellation of raw sums of squares and makes the result independent of batch size
and order up to round-off.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator, ShiftedSums, shift_correction

__all__ = [
    "CrossMoments",
    "Moments",
    "NormalizedGram",
    "SquaredError",
    "Workspace",
    "add_gram_",
    "shift_correction",
    "symmetric",
]

_F64 = torch.float64


def _floating(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, as float32 or float64 (other dtypes become float64)."""
    dtype = x.dtype if x.dtype in (torch.float32, _F64) else _F64
    return x.to(device=device, dtype=dtype)


class Workspace:
    """A scratch buffer for the per-batch temporaries of accumulators updated one at a time.

    The layers of one forward pass are folded in one after another, so one float64 buffer of
    b·p_max entries can hold every layer's shifted batch in turn. Without it each update
    allocates and frees a b×p array; with the p×p states allocated among those, the allocator's
    heap fragments, and the peak memory of two identical runs was seen to differ by 200 MB (by
    about half that with the buffer: the rest is the BLAS library's own first-batch buffers).
    On a GPU the reuse is safe because the kernels run in order on one stream.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def reserve(self, numel: int, device: torch.device | str) -> None:
        """Allocate room for ``numel`` float64 entries now (before the states are)."""
        self.take((numel,), device)

    def take(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        """An uninitialised float64 tensor of ``shape``, valid until the next ``take``."""
        numel = math.prod(shape)
        device = torch.device(device)
        buf = self._buffer
        if buf is None or buf.device != device or buf.numel() < numel:
            self._buffer = buf = torch.empty(numel, dtype=_F64, device=device)
        return buf[:numel].view(shape)


def _out(workspace: Workspace | None, like: torch.Tensor) -> torch.Tensor | None:
    """Where a float64 result shaped like ``like`` goes: the workspace, or (None) a new array."""
    return None if workspace is None else workspace.take(tuple(like.shape), like.device)


# Width of the blocks of a symmetric product on the CPU (see add_gram_).
GRAM_BLOCK = 256


def add_gram_(target: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """target += aᵀa on and above the diagonal, in place; read it back with :func:`symmetric`.

    On the CPU a wide product is taken block by block (blocks of ``GRAM_BLOCK`` columns), only
    for the blocks on and above the diagonal: at p = 1024 that is 10 of 16 blocks, measured 25%
    faster than the full product on 2 threads, where one GEMM straight into the state was the
    alternative (no p×p temporary either way). The blocks below the diagonal are left as they
    were. On a GPU the one full product is faster than ten small ones.
    """
    p = a.shape[1]
    if a.device.type != "cpu" or p <= GRAM_BLOCK:
        return target.addmm_(a.T, a)
    edges = [*range(0, p, GRAM_BLOCK), p]
    blocks = list(itertools.pairwise(edges))
    for i, (lo, hi) in enumerate(blocks):
        left = a[:, lo:hi].T
        for lo2, hi2 in blocks[i:]:
            target[lo:hi, lo2:hi2].addmm_(left, a[:, lo2:hi2])
    return target


def symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is that of ``upper``."""
    full = torch.triu(upper)
    full += torch.triu(upper, diagonal=1).T
    return full


@dataclass(frozen=True)
class Moments:
    """Centred moments with 1/N normalisation.

    Attributes
    ----------
    n : int
        Number of samples.
    mean_z : Tensor, shape (p,)
    mean_y : Tensor, shape (t,)
    cov_z : Tensor, shape (p, p)
        Σ_Z = (1/N) Σ_i (z_i − z̄)(z_i − z̄)ᵀ.
    cov_zy : Tensor, shape (p, t)
    cov_y : Tensor, shape (t, t)
    """

    n: int
    mean_z: torch.Tensor
    mean_y: torch.Tensor
    cov_z: torch.Tensor
    cov_zy: torch.Tensor
    cov_y: torch.Tensor


class CrossMoments(ShiftedSums):
    """Joint first and second centred moments of features z ∈ R^p and targets y ∈ R^t.

    Sums are taken about a fixed shift c (the first batch's mean): Σ(z − c), Σ(z − c)(z − c)ᵀ
    and the same for y and the cross term. The centred moments follow at the end by one small
    correction, cov = S/n − d dᵀ with d = mean − c; since c is itself a mean of the data, |d|
    is of the order of a standard error and the correction loses nothing to cancellation (the
    shifted-data algorithm; Chan, Golub & LeVeque 1983). Per batch this costs one subtraction
    and three matrix products, with no per-batch rank-one corrections of the p×p state. Merging
    re-expresses one state about the other's shift, so the merge is a sum.

    Memory is O(p² + p·t), independent of the number of samples; one update costs
    O(b·p·(p + t)) for a batch of b samples. With a :class:`Workspace`, the shifted batch is
    written there instead of into a new array.
    """

    def __init__(
        self, device: torch.device | str | None = None, workspace: Workspace | None = None
    ) -> None:
        super().__init__()
        self.device = torch.device(device) if device is not None else None
        self.workspace = workspace
        # Σ (z − c_z)(z − c_z)ᵀ, upper triangle only (see add_gram_); the cross and target sums.
        self.add_comoment("czz", "z", "z")
        self.add_comoment("czy", "z", "y")
        self.add_comoment("cyy", "y", "y")

    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: ``z`` of shape (b, p), ``y`` of shape (b, t); neither is modified."""
        if z.ndim != 2 or y.ndim != 2 or z.shape[0] != y.shape[0]:
            raise ValueError(
                f"expected z (b, p) and y (b, t), got {tuple(z.shape)}, {tuple(y.shape)}"
            )
        b = z.shape[0]
        if b == 0:
            return
        device = self.device if self.device is not None else z.device
        with single_threaded(device):
            # float32 batches are widened inside the subtraction below (exactly), not copied.
            z, y = _floating(z, device), _floating(y, device)
            if self.n == 0:
                p, t = z.shape[1], y.shape[1]
                self.cz, self.cy = z.mean(dim=0, dtype=_F64), y.mean(dim=0, dtype=_F64)
                self.sz = torch.zeros(p, dtype=_F64, device=device)
                self.sy = torch.zeros(t, dtype=_F64, device=device)
                self.czz = torch.zeros(p, p, dtype=_F64, device=device)
                self.czy = torch.zeros(p, t, dtype=_F64, device=device)
                self.cyy = torch.zeros(t, t, dtype=_F64, device=device)
            elif z.shape[1] != self.cz.shape[0] or y.shape[1] != self.cy.shape[0]:
                raise ValueError(
                    f"feature/target width changed: had ({self.cz.shape[0]}, "
                    f"{self.cy.shape[0]}), got ({z.shape[1]}, {y.shape[1]})"
                )
            u = torch.sub(z, self.cz, out=_out(self.workspace, z))
            v = y - self.cy
            self.sz.add_(u.sum(dim=0))
            self.sy.add_(v.sum(dim=0))
            self.czy.addmm_(u.T, v)
            self.cyy.addmm_(v.T, v)
        # The p×p product goes straight into the state (no p×p temporary), with every thread.
        add_gram_(self.czz, u)
        self.n += b

    def _merge_nonempty(self, other: Accumulator) -> None:
        with single_threaded(self.czz.device):
            super()._merge_nonempty(other)

    def compute(self) -> Moments:
        """The moments so far, normalised by 1/N; the state is not changed."""
        if self.n == 0:
            raise ValueError("no samples accumulated")
        n = self.n
        dz = self.sz / n  # mean_z − c_z
        dy = self.sy / n
        return Moments(
            n,
            self.cz + dz,
            self.cy + dy,
            symmetric(self.czz).div_(n).sub_(torch.outer(dz, dz)),
            self.czy / n - torch.outer(dz, dy),
            self.cyy / n - torch.outer(dy, dy),
        )


class NormalizedGram(Accumulator):
    """(1/N) Σ_i h̃_i h̃_iᵀ with h̃ = z/‖z‖ (a zero row stays 0): uncentred, for last-layer NRC.

    ``gram`` holds the upper triangle of the sum (see :func:`add_gram_`).
    """

    def __init__(
        self, device: torch.device | str | None = None, workspace: Workspace | None = None
    ) -> None:
        super().__init__()
        self.device = torch.device(device) if device is not None else None
        self.workspace = workspace
        self.add_state("n", 0)
        self.add_state("gram", None)

    def update(self, z: torch.Tensor) -> None:
        device = self.device if self.device is not None else z.device
        with single_threaded(device):
            z = _floating(z, device)
            norms = torch.linalg.vector_norm(z, dim=1, keepdim=True, dtype=_F64)
            # A zero row has norm 0: divided by 1 instead, it stays 0.
            safe = norms.masked_fill(norms == 0, 1.0)
            h = torch.div(z, safe, out=_out(self.workspace, z))
            if self.gram is None:
                self.gram = torch.zeros(h.shape[1], h.shape[1], dtype=_F64, device=h.device)
        add_gram_(self.gram, h)
        self.n += z.shape[0]

    def compute(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no samples accumulated")
        return symmetric(self.gram).div_(self.n)


class SquaredError(Accumulator):
    """Sum of squared prediction errors over all N·t entries."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", 0)  # samples (rows)
        self.add_state("sse", 0.0)
        self.add_state("count", 0)  # entries

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        d = pred.to(_F64) - y.to(device=pred.device, dtype=_F64)
        self.sse += float((d * d).sum())
        self.count += d.numel()
        self.n += d.shape[0] if d.ndim else 1

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError("no samples accumulated")
        return self.sse / self.count
