"""Deep Neural Collapse columns of a classifier (docs/classification.md) from per-class moments.

Pure functions: :class:`~nrc_cli.accumulate.classes.ClassStats` (and, for the nearest-class-mean
columns, the counts of a second pass) in, plain Python numbers out. A quantity whose denominator
is zero (rank 0, constant features) is ``None``, never a crash and never a silent 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nrc_cli.accumulate.classes import ClassStats, NearestMeanCounts
from nrc_cli.linalg import principal_alignment
from nrc_cli.metrics.layer import Spectrum, WeightBasis, ratio, weight_input_basis

# β_j ≤ RANK_CUTOFF·β_1 does not count towards the rank of Σ_B (docs/classification.md).
RANK_CUTOFF = 1e-12


@dataclass(frozen=True)
class BetweenSpectrum:
    """The leading eigenpairs of the between-class covariance Σ_B = M Mᵀ / C.

    Attributes
    ----------
    values : Tensor, shape (r,)
        β_1 ≥ … ≥ β_r > RANK_CUTOFF·β_1, the eigenvalues that count towards the rank.
    vectors : Tensor, shape (p, r)
        U_r, orthonormal.
    trace : float
        tr Σ_B = ‖M‖_F² / C.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    trace: float

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])

    def whitening(self) -> torch.Tensor:
        """P = U_r diag(β)^{−1/2}, shape (p, r): ‖Pᵀx‖² = xᵀ Σ_B^† x."""
        return self.vectors / self.values.sqrt()


def between_spectrum(stats: ClassStats) -> BetweenSpectrum:
    """Eigen-decomposition of Σ_B from the thin SVD of M/√C (p×C), O(p·C·min(p, C)).

    The singular values of M/√C are √β_j and its left singular vectors the u_j, so the
    eigenvectors come without squaring the condition number of M. At most min(C − 1, p)
    directions count (the centred means sum to zero with weights n_c, so M has rank ≤ C − 1).
    """
    m = stats.centred_means
    p, c = m.shape
    trace = float((m * m).sum()) / c
    u, s, _ = torch.linalg.svd(m / math.sqrt(c), full_matrices=False)
    beta = s * s
    limit = min(c - 1, p)
    if beta.numel() == 0 or float(beta[0]) <= 0 or limit == 0:
        return BetweenSpectrum(beta[:0], u[:, :0], trace)
    r = int((beta[:limit] > RANK_CUTOFF * beta[0]).sum())
    return BetweenSpectrum(beta[:r].clone(), u[:, :r].clone(), trace)


def nc1(stats: ClassStats, between: BetweenSpectrum) -> float | None:
    """Papyan's NC1, tr(Σ_W Σ_B^†) / C = Σ_{j≤r} u_jᵀ Σ_W u_j / (β_j C); None when r = 0 or
    when Σ_W was not formed (a sketched layer: see :func:`nc1_from_whitened`)."""
    if between.rank == 0 or stats.cov_within is None:
        return None
    u = between.vectors
    quad = (u * (stats.cov_within @ u)).sum(dim=0)
    return float((quad / between.values).sum()) / stats.n_classes


def nc1_from_whitened(counts: NearestMeanCounts, n_classes: int) -> float | None:
    """NC1 from a second pass that summed ‖Pᵀ(z_i − μ_{c_i})‖² with P = U_r β^{−1/2}."""
    if counts.whitened_within is None:
        return None
    return counts.whitened_within / (counts.n * n_classes)


def equinorm(stats: ClassStats) -> float | None:
    """std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖ (population std); None when all norms are 0."""
    norms = torch.linalg.vector_norm(stats.centred_means, dim=0)
    return ratio(float(norms.std(correction=0)), float(norms.mean()))


def etf_distance(stats: ClassStats) -> float | None:
    """‖ MᵀM/‖MᵀM‖_F − E/‖E‖_F ‖_F with E = I − 11ᵀ/C; None when M = 0.

    With C ≤ p + 1 classes the C×C Gram costs no more than M itself and the difference is
    formed as it is. With more classes it is never formed: ‖MᵀM‖_F = ‖MMᵀ‖_F (p×p) and
    ⟨MᵀM, E⟩ = ‖M‖_F² − ‖M1‖²/C give the distance through ‖A − B‖² = 2 − 2⟨A, B⟩ for the two
    unit-norm matrices, in O(C·p + p²) memory. That form cancels only near 0, which it cannot
    reach here: MᵀM has rank ≤ p < C − 1, so ⟨A, B⟩ ≤ √(p/(C − 1)) < 1.
    """
    m = stats.centred_means
    p, c = m.shape
    if c <= p + 1:
        gram = m.T @ m
        fro = float(torch.linalg.matrix_norm(gram))
        if fro == 0 or not math.isfinite(fro):
            return None
        etf = torch.eye(c, dtype=gram.dtype, device=gram.device) - 1.0 / c
        etf /= math.sqrt(c - 1)  # ‖E‖_F² = C − 1
        return float(torch.linalg.matrix_norm(gram / fro - etf))
    fro = float(torch.linalg.matrix_norm(m @ m.T))
    if fro == 0 or not math.isfinite(fro):
        return None
    inner = (float((m * m).sum()) - float((m.sum(dim=1) ** 2).sum()) / c) / fro
    return math.sqrt(max(2.0 - 2.0 * inner / math.sqrt(c - 1), 0.0))


def class_layer_metrics(
    stats: ClassStats,
    module: nn.Module,
    *,
    total: Spectrum | None = None,
    weight: WeightBasis | str | None = "compute",
    between: BetweenSpectrum | None = None,
    ncc: NearestMeanCounts | None = None,
) -> dict:
    """Every numeric per-layer column of docs/classification.md for one layer.

    Parameters
    ----------
    stats : ClassStats
        Per-class moments of this layer's features.
    module : nn.Module
        The weight layer (for ``nc3_alignment`` and ``stable_rank_w``).
    total : Spectrum, optional
        Eigen-information of Σ_T for ``stable_rank_h`` (the wide-layer path passes a
        randomized one); computed exactly from ``stats`` when omitted.
    weight : WeightBasis or None, optional
        The weight's input basis if already computed (None for a grouped conv); computed
        exactly from ``module`` when omitted.
    between : BetweenSpectrum, optional
        Computed from ``stats`` when omitted.
    ncc : NearestMeanCounts, optional
        The second pass's counts; without them the NCC columns are None. For a sketched layer
        (no Σ_W), ``nc1`` comes from their whitened within-class sum (the pass must have been
        given :meth:`BetweenSpectrum.whitening` as its projection), and is None without it.
    """
    if isinstance(weight, str):
        weight = weight_input_basis(module)
    if between is None:
        between = between_spectrum(stats)
    if total is None:
        if stats.cov_within is not None:
            total = Spectrum.exact(stats.cov_total())
        else:
            sketch = stats.total_sketch()  # raises unless the layer is sketched, with its Ω
            assert stats.omega is not None
            total = Spectrum.from_sketch(sketch, stats.omega, stats.total_trace())
    p = stats.means.shape[1]
    out: dict = {"in_dim": p, "rank": between.rank}
    out["nc1"] = nc1(stats, between)
    if out["nc1"] is None and between.rank and ncc is not None:
        out["nc1"] = nc1_from_whitened(ncc, stats.n_classes)
    out["nc1_trace"] = ratio(stats.within_trace, between.trace)
    out["nc2_equinorm"] = equinorm(stats)
    out["nc2_etf"] = etf_distance(stats)
    note = None
    if weight is None:
        out["nc3_alignment"] = None
        out["stable_rank_w"] = None
        note = f"grouped convolution (groups={module.groups}): weight metrics not defined"
    else:
        m = min(between.rank, weight.basis.shape[1])
        out["nc3_alignment"] = (
            principal_alignment(between.vectors[:, :m], weight.basis[:, :m]) if m > 0 else None
        )
        out["stable_rank_w"] = ratio(weight.fro2, weight.top**2)
    out["ncc_accuracy"] = None if ncc is None else ncc.accuracy
    out["nc4_ncc_mismatch"] = None if ncc is None else ncc.mismatch_share
    out["stable_rank_h"] = ratio(total.fro2, total.top**2)
    out["note"] = note
    return out


def duality_last(module: nn.Module, stats: ClassStats) -> float | None:
    """Papyan's NC3 at the head: ‖ Wᵀ/‖W‖_F − M/‖M‖_F ‖_F.

    None unless ``module`` is a Linear with one output per class and the labels are exactly
    0..C−1 (so that row c of W is the classifier of class c), or when W or M is zero.
    """
    if not isinstance(module, nn.Linear):
        return None
    c = stats.n_classes
    labels = stats.labels.cpu()
    if module.out_features != c or not torch.equal(labels, torch.arange(c)):
        return None
    w = module.weight.detach().to(device=stats.means.device, dtype=torch.float64)
    m = stats.centred_means
    w_norm = float(torch.linalg.matrix_norm(w))
    m_norm = float(torch.linalg.matrix_norm(m))
    if w_norm == 0 or m_norm == 0:
        return None
    return float(torch.linalg.matrix_norm(w.T / w_norm - m / m_norm))


def classification_summary(
    stats_last: ClassStats, head: nn.Module, *, accuracy: float | None
) -> dict:
    """The classification summary fields computed here: ``task``, ``n_samples``,
    ``n_classes``, ``model_accuracy``, ``nc3_duality_last`` (the collapse fields are shared with
    regression and filled in by the caller)."""
    return {
        "task": "classification",
        "n_samples": stats_last.n,
        "n_classes": stats_last.n_classes,
        "model_accuracy": accuracy,
        "nc3_duality_last": duality_last(head, stats_last),
    }
