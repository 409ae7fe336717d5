"""Streaming, mergeable float64 moments (the state every Deep NRC metric is computed from).

Each accumulator follows the torchmetrics ``Metric`` shape: state declared in ``__init__`` and
``reset``, ``update(batch)`` only changes state, ``compute()`` is pure, ``merge(other)`` combines
two partial states. Centred co-moments are merged with the pairwise update of Chan, Golub &
LeVeque (1979): shifting by each batch's own mean before the product avoids the cancellation of
raw sums of squares, and makes the result independent of batch size and order up to round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrc_cli._threads import single_threaded

_F64 = torch.float64


def add_gram_(target: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """target += aᵀa, in place, with one GEMM straight into the accumulator.

    Computing only the upper blocks of the symmetric product saves flops on one thread but was
    measured 2.5× slower on two (small GEMMs parallelise poorly and the mirrored adds are
    strided), so the full product it is; no p×p temporary is allocated either way.
    """
    return target.addmm_(a.T, a)


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


class CrossMoments:
    """Joint first and second centred moments of features z ∈ R^p and targets y ∈ R^t.

    Memory is O(p² + p·t), independent of the number of samples; one update costs
    O(b·p·(p + t)) for a batch of b samples.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean_z: torch.Tensor | None = None
        self.mean_y: torch.Tensor | None = None
        self.czz: torch.Tensor | None = None
        self.czy: torch.Tensor | None = None
        self.cyy: torch.Tensor | None = None

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
            z = z.to(device=device, dtype=_F64)
            y = y.to(device=device, dtype=_F64)
            mz = z.mean(dim=0)
            my = y.mean(dim=0)
            zc = z - mz
            yc = y - my
            if self.n == 0:
                p, t = z.shape[1], y.shape[1]
                self.n, self.mean_z, self.mean_y = 0, torch.zeros_like(mz), torch.zeros_like(my)
                self.czz = torch.zeros(p, p, dtype=_F64, device=device)
                self.czy = torch.zeros(p, t, dtype=_F64, device=device)
                self.cyy = torch.zeros(t, t, dtype=_F64, device=device)
            elif mz.shape != self.mean_z.shape or my.shape != self.mean_y.shape:
                raise ValueError(
                    f"feature/target width changed: had ({self.mean_z.shape[0]}, "
                    f"{self.mean_y.shape[0]}), got ({mz.shape[0]}, {my.shape[0]})"
                )
            self.czy.addmm_(zc.T, yc)
            self.cyy.addmm_(yc.T, yc)
        # Fold the batch's centred co-moments straight into the state (no p×p temporary),
        # with every thread, then the Chan et al. correction for the shift between the means.
        add_gram_(self.czz, zc)
        with single_threaded(device):
            self._shift(b, mz, my)

    def _shift(self, nb: int, mz: torch.Tensor, my: torch.Tensor) -> None:
        """Account for a block of ``nb`` samples with means (mz, my), co-moments already added."""
        na = self.n
        n = na + nb
        dz = mz - self.mean_z
        dy = my - self.mean_y
        w = na * nb / n
        if na:
            self.czz.addr_(dz, dz, alpha=w)
            self.czy.addr_(dz, dy, alpha=w)
            self.cyy.addr_(dy, dy, alpha=w)
        self.mean_z.add_(dz, alpha=nb / n)
        self.mean_y.add_(dy, alpha=nb / n)
        self.n = n

    def _combine(self, nb, mz, my, czz, czy, cyy) -> None:
        if self.n == 0:
            self.n, self.mean_z, self.mean_y = nb, mz.clone(), my.clone()
            self.czz, self.czy, self.cyy = czz.clone(), czy.clone(), cyy.clone()
            return
        if mz.shape != self.mean_z.shape or my.shape != self.mean_y.shape:
            raise ValueError(
                f"feature/target width changed: had ({self.mean_z.shape[0]}, "
                f"{self.mean_y.shape[0]}), got ({mz.shape[0]}, {my.shape[0]})"
            )
        dev = self.czz.device
        self.czz.add_(czz.to(dev))
        self.czy.add_(czy.to(dev))
        self.cyy.add_(cyy.to(dev))
        self._shift(nb, mz.to(dev), my.to(dev))

    def merge(self, other: CrossMoments) -> CrossMoments:
        """Fold another partial state into this one (in place) and return self."""
        if other.n:
            self._combine(other.n, other.mean_z, other.mean_y, other.czz, other.czy, other.cyy)
        return self

    def compute(self) -> Moments:
        """The moments so far, normalised by 1/N; the state is not changed."""
        if self.n == 0:
            raise ValueError("no samples accumulated")
        n = self.n
        return Moments(
            n, self.mean_z.clone(), self.mean_y.clone(), self.czz / n, self.czy / n, self.cyy / n
        )


class NormalizedGram:
    """(1/N) Σ_i h̃_i h̃_iᵀ with h̃ = z/‖z‖ (a zero row stays 0): uncentred, for last-layer NRC."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.gram: torch.Tensor | None = None

    def update(self, z: torch.Tensor) -> None:
        device = self.device if self.device is not None else z.device
        with single_threaded(device):
            z = z.to(device=device, dtype=_F64)
            norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
            h = torch.where(norms > 0, z / torch.where(norms > 0, norms, 1.0), 0.0)
            if self.gram is None:
                self.gram = torch.zeros(h.shape[1], h.shape[1], dtype=_F64, device=h.device)
        add_gram_(self.gram, h)
        self.n += z.shape[0]

    def merge(self, other: NormalizedGram) -> NormalizedGram:
        if other.n:
            if self.gram is None:
                self.gram = other.gram.clone()
            else:
                self.gram.add_(other.gram.to(self.gram.device))
            self.n += other.n
        return self

    def compute(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no samples accumulated")
        return self.gram / self.n


class SquaredError:
    """Sum of squared prediction errors over all N·t entries."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sse = 0.0
        self.count = 0

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        d = pred.to(_F64) - y.to(device=pred.device, dtype=_F64)
        self.sse += float((d * d).sum())
        self.count += d.numel()

    def merge(self, other: SquaredError) -> SquaredError:
        self.sse += other.sse
        self.count += other.count
        return self

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError("no samples accumulated")
        return self.sse / self.count
