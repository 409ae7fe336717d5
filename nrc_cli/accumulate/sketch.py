"""A single-pass randomized sketch of a feature covariance in O(p·s) memory.

For layers whose p×p covariance does not fit the memory budget, we keep Σ_Z·Ω for a seeded
Gaussian test matrix Ω (p×s) instead of Σ_Z, plus the exact cross-covariance with the targets
(p×t) and the diagonal of Σ_Z (for its trace). The top eigenpairs are then recovered with the
stable Nyström reconstruction (Tropp, Yurtsever, Udell & Cevher 2017, Alg. 3; see
:func:`nrc_cli.linalg.nystrom_eigh`).

Sums are taken about a shift c (the first batch's mean) rather than about zero, so that the
final centring subtracts a small correction instead of cancelling two large raw sums (the same
idea as sklearn's ``_incremental_mean_and_var``). Merging two sketches re-expresses both about
one shift; the merge is then a sum, so shards, batch sizes and order cannot change the result
beyond round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrc_cli.accumulate.base import Accumulator, ShiftedSums
from nrc_cli.accumulate.gram import add_cross_
from nrc_cli.accumulate.moments import Moments

_F64 = torch.float64


@dataclass(frozen=True)
class SketchResult:
    """What a sketch yields: exact low-order moments and the range sketch Σ_Z·Ω.

    Attributes
    ----------
    moments : Moments
        With ``cov_z`` set to None (it was never formed); the other fields exact.
    sketch : Tensor, shape (p, s)
        Σ_Z·Ω.
    omega : Tensor, shape (p, s)
    trace : float
        tr Σ_Z (exact).
    """

    moments: Moments
    sketch: torch.Tensor
    omega: torch.Tensor
    trace: float


class CovarianceSketch(ShiftedSums):
    """Streaming Σ_Z·Ω, Σ_ZY, Σ_Y, diag Σ_Z with shift-and-merge; memory O(p·(s + t)).

    The shift logic (re-expressing the sums about another shift, merging) is
    :class:`nrc_cli.accumulate.base.ShiftedSums`', shared with the exact accumulator. The test
    matrix Ω is a constant of the sketch, not state (``omega``, declared on the accumulator
    base): two sketches merge only when built with the same Ω, and the processes of a
    data-parallel run sum them only when every one sketches with the same Ω (``align_``).
    """

    def __init__(self, omega: torch.Tensor) -> None:
        super().__init__()
        self.omega = omega.to(_F64)
        self.device = self.omega.device
        self.add_comoment("s_omega", "z", "z", form="sketch")  # Σ (z − c)((z − c)ᵀΩ)
        self.add_comoment("diag", "z", "z", form="diagonal")  # Σ (z − c)²
        self.add_comoment("czy", "z", "y")
        self.add_comoment("cyy", "y", "y")

    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: ``z`` (b, p), ``y`` (b, t); neither is modified."""
        if z.shape[0] == 0:
            return
        dev = self.omega.device
        z = z.to(device=dev, dtype=_F64)
        y = y.to(device=dev, dtype=_F64)
        if self.n == 0:
            self.cz, self.cy = z.mean(0), y.mean(0)
            p, t = z.shape[1], y.shape[1]
            self.sz = torch.zeros(p, dtype=_F64, device=dev)
            self.sy = torch.zeros(t, dtype=_F64, device=dev)
            self.s_omega = torch.zeros_like(self.omega)
            self.diag = torch.zeros(p, dtype=_F64, device=dev)
            self.czy = torch.zeros(p, t, dtype=_F64, device=dev)
            self.cyy = torch.zeros(t, t, dtype=_F64, device=dev)
        u = z - self.cz
        v = y - self.cy
        self.sz += u.sum(0)
        self.sy += v.sum(0)
        add_cross_(self.s_omega, u, u @ self.omega)
        self.diag += (u * u).sum(0)
        add_cross_(self.czy, u, v)
        self.cyy += v.T @ v
        self.n += z.shape[0]

    def merge_problem(self, other: Accumulator) -> str | None:
        """As for :class:`ShiftedSums`, and a sketch holding samples built with another Ω
        (its Σ_Z·Ω would be read against this sketch's Ω, also when this one is empty)."""
        if isinstance(other, CovarianceSketch):
            problem = self.matrix_problem(other)
            if problem is not None:
                return problem
        return super().merge_problem(other)

    def compute(self) -> SketchResult:
        """Centred, 1/N-normalised moments and Σ_Z·Ω; the state is not changed."""
        n, dz, dy = self.offsets()
        sketch = self.s_omega / n - torch.outer(dz, dz @ self.omega)
        cov_zy = self.czy / n - torch.outer(dz, dy)
        cov_y = self.cyy / n - torch.outer(dy, dy)
        trace = float((self.diag / n - dz * dz).clamp_min(0).sum())
        moments = Moments(n, self.cz + dz, self.cy + dy, None, cov_zy, cov_y)
        return SketchResult(moments, sketch, self.omega.clone(), trace)
