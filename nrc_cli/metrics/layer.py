"""Per-layer Deep NRC columns (docs/metrics.md, "Per-layer columns") from accumulated moments.

Pure functions: moments and weights in, plain Python numbers out. A quantity whose denominator
is zero is ``None`` (null in every output), never a crash and never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nrc_cli.accumulate.moments import Moments
from nrc_cli.capture import is_linear
from nrc_cli.linalg import (
    exact_eigh,
    nystrom_eigh,
    principal_alignment,
    randomized_eigh,
    randomized_svd,
)

# Directions with λ_j < PROBE_CUTOFF·λ_1 are ignored by the probe (singular values below 1e-3 of
# the largest), as in the paper's code.
PROBE_CUTOFF = 1e-6
EXACT_WEIGHT_LIMIT = 2048


@dataclass(frozen=True)
class Spectrum:
    """What the metrics need of Σ_Z's eigendecomposition.

    Attributes
    ----------
    values : Tensor, shape (r,)
        Leading eigenvalues, descending, clipped at 0 (r = p in exact mode).
    vectors : Tensor, shape (p, r)
        Matching orthonormal eigenvectors.
    trace : float
        tr Σ_Z = Σ_j λ_j over all p eigenvalues.
    fro2 : float
        ‖Σ_Z‖_F² = Σ_j λ_j² over all p eigenvalues.
    complete : bool
        Whether ``values`` holds the whole spectrum (exact mode).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    trace: float
    fro2: float
    complete: bool

    @classmethod
    def exact(cls, cov: torch.Tensor) -> Spectrum:
        """Full eigendecomposition of a symmetric PSD matrix (float64, O(p³))."""
        vals, vecs = exact_eigh(cov)
        vals = vals.clamp_min(0.0)
        return cls(vals, vecs, float(vals.sum()), float((vals * vals).sum()), True)

    @classmethod
    def randomized(cls, cov: torch.Tensor, rank: int, **options) -> Spectrum:
        """Top-``rank`` eigenpairs by randomized subspace iteration; trace and ‖Σ‖_F² exact."""
        cov = (cov + cov.T) / 2
        vals, vecs = randomized_eigh(cov, rank, **options)
        return cls(
            vals.clamp_min(0.0),
            vecs,
            float(torch.trace(cov)),
            float((cov * cov).sum()),
            False,
        )

    @classmethod
    def from_sketch(cls, sketch: torch.Tensor, omega: torch.Tensor, trace: float) -> Spectrum:
        """Eigenpairs from a Nyström sketch Σ·Ω (all s of them, for the retained subspace).

        ‖Σ‖_F² is approximated by the sum of the squared retained eigenvalues, which misses
        only the tail beyond the sketch size.
        """
        vals, vecs = nystrom_eigh(sketch, omega, omega.shape[1])
        vals = vals.clamp_min(0.0)
        return cls(vals, vecs, trace, float((vals * vals).sum()), False)

    @property
    def top(self) -> float:
        return float(self.values[0]) if self.values.numel() else 0.0

    def head_sum(self, k: int) -> float:
        return float(self.values[:k].sum())

    def tail_sum(self, k: int) -> float:
        if self.complete:
            # Summing the small eigenvalues directly avoids cancellation in trace − head.
            return float(self.values[k:].sum())
        return max(self.trace - self.head_sum(k), 0.0)


def ratio(num: float, den: float) -> float | None:
    """num/den, or None when den is zero or either is not finite."""
    if den == 0 or not (abs(num) < float("inf") and abs(den) < float("inf")):
        return None
    return num / den


@dataclass(frozen=True)
class WeightBasis:
    """A weight's input subspace: orthonormal basis (p, m), top singular value, ‖W‖_F²."""

    basis: torch.Tensor
    top: float
    fro2: float


def weight_input_basis(
    module: nn.Module, rank: int | None = None, **randomized
) -> WeightBasis | None:
    """Orthonormal basis of a weight's input subspace (docs/metrics.md, "Notation").

    Linear W (q×p): right singular vectors. Conv W (c_out×c_in×…): W̃ = W with the first two axes
    swapped and the rest flattened (c_in × c_out·kernel), left singular vectors. Returns None
    for grouped convolutions.

    Parameters
    ----------
    module : nn.Module
        A Linear or Conv layer.
    rank : int, optional
        With ``randomized`` options given (``oversample``, ``power_iters``, ``seed``), only the
        top ``rank`` vectors are computed by :func:`nrc_cli.linalg.randomized_svd`; otherwise a
        full thin SVD gives all of them.
    """
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"expected a Linear or Conv layer, found {type(module).__name__}")
    w = weight.detach().to(torch.float64)
    if is_linear(module):
        a = w  # input space = row space of W
    elif getattr(module, "groups", 1) != 1:
        return None
    else:
        a = w.transpose(0, 1).reshape(w.shape[1], -1).T  # rows of W̃ᵀ span W̃'s column space
    fro2 = float((a * a).sum())
    # The Gram of the smaller side is cheap up to this size whatever the layer's width, and
    # exact: a randomized σ_1 is biased low on the flat spectra of untrained weights.
    if randomized and rank is not None and min(a.shape) > EXACT_WEIGHT_LIMIT:
        s, b = randomized_svd(a, min(rank, *a.shape), **randomized)
    else:
        s, b = _right_singular(a)
    return WeightBasis(b, float(s[0]) if s.numel() else 0.0, fro2)


def _right_singular(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) and right singular vectors of ``a`` (q×p), all of them.

    Through the eigendecomposition of the smaller Gram matrix, which costs about a third of a
    full SVD at width 1024 (0.4 s against 1.0 s, the largest fixed cost of an analysis). The
    Gram squares the condition number, which only blurs directions with σ ≲ 1e-8·σ_1; when such
    a direction would be needed to complete the basis from the q×q side, the SVD is used.
    """
    q, p = a.shape
    if p <= q:
        lam, v = torch.linalg.eigh(a.T @ a)
        return lam.flip(0).clamp_min(0.0).sqrt(), v.flip(1)
    lam, u = torch.linalg.eigh(a @ a.T)
    s = lam.flip(0).clamp_min(0.0).sqrt()
    if s.numel() == 0 or float(s[-1]) <= 1e-6 * float(s[0]):
        _, s, vh = torch.linalg.svd(a, full_matrices=False)
        return s, vh.T
    return s, (a.T @ u.flip(1)) / s


def layer_metrics(
    moments: Moments,
    spectrum: Spectrum,
    module: nn.Module,
    rank: int,
    model_mse: float | None,
    *,
    probe_mse: float | None = None,
    weight: WeightBasis | str | None = "compute",
) -> dict:
    """Every numeric per-layer column for one layer.

    Parameters
    ----------
    moments : Moments
        Centred moments of this layer's features and the targets.
    spectrum : Spectrum
        Eigen-information of ``moments.cov_z``.
    module : nn.Module
        The weight layer (for NRC3 and the weight's stable rank).
    rank : int
        The requested analysis rank k; clipped here to min(k, p).
    model_mse : float or None
        For ``nrc4_ratio``.
    probe_mse : float, optional
        A probe error computed elsewhere (the wide-layer path); computed from the spectrum
        when omitted.
    weight : WeightBasis or None, optional
        The weight's input basis if already computed (None for a grouped conv); computed
        exactly from ``module`` when omitted.
    """
    if isinstance(weight, str):
        weight = weight_input_basis(module)
    p = moments.cov_zy.shape[0]
    k = min(rank, p)
    lam = spectrum.values
    cov_zy = moments.cov_zy
    fro_y = float(torch.linalg.matrix_norm(moments.cov_y))
    fro_zy2 = float((cov_zy * cov_zy).sum())

    vk = spectrum.vectors[:, :k]
    proj = vk.T @ cov_zy
    head2 = float((lam[:k] * lam[:k]).sum())

    out: dict = {"in_dim": p, "rank": k}
    out["nrc1_noise"] = ratio(spectrum.tail_sum(k), spectrum.trace)
    out["nrc2_cka"] = ratio(fro_zy2, spectrum.fro2**0.5 * fro_y)
    out["nrc2_cka_signal"] = ratio(float((proj * proj).sum()), head2**0.5 * fro_y)

    note = None
    if weight is None:
        out["nrc3_alignment"] = None
        out["stable_rank_w"] = None
        note = f"grouped convolution (groups={module.groups}): weight metrics not defined"
    else:
        m = min(k, weight.basis.shape[1])
        out["nrc3_alignment"] = (
            principal_alignment(vk[:, :m], weight.basis[:, :m]) if spectrum.trace > 0 else None
        )
        out["stable_rank_w"] = ratio(weight.fro2, weight.top**2)

    if probe_mse is None:
        probe_mse = probe_mse_exact(moments, spectrum)
    out["nrc4_probe_mse"] = probe_mse
    out["nrc4_ratio"] = None if model_mse is None else ratio(probe_mse, model_mse)
    out["stable_rank_h"] = ratio(spectrum.fro2, spectrum.top**2)
    out["note"] = note
    return out


def probe_mse_exact(moments: Moments, spectrum: Spectrum) -> float:
    """Error of the best affine least-squares probe of Y from Z (docs/metrics.md, Deep NRC4).

    (tr Σ_Y − Σ_{λ_j ≥ 1e-6 λ_1} ‖v_jᵀΣ_ZY‖² / λ_j) / t, over the eigenpairs in ``spectrum``.
    Constant features keep no direction: the probe is the target mean.
    """
    t = moments.cov_y.shape[0]
    lam = spectrum.values
    keep = (lam >= PROBE_CUTOFF * spectrum.top) & (lam > 0)
    proj = spectrum.vectors[:, keep].T @ moments.cov_zy
    explained = float(((proj * proj).sum(dim=1) / lam[keep]).sum())
    return max(float(torch.trace(moments.cov_y)) - explained, 0.0) / t


def probe_mse_regularized(moments: Moments, top: float) -> float:
    """The probe error from a ridge-regularised solve, for when only the top spectrum is known.

    (tr Σ_Y − tr(Σ_ZYᵀ (Σ_Z + δI)⁻¹ Σ_ZY)) / t with δ = 1e-6·λ_1 (the exact probe's cut-off).
    A direction with eigenvalue λ contributes the fraction λ/(λ+δ) of what the exact probe
    counts when λ ≥ δ and λ/(λ+δ) ≤ 1/2 of what it would count when λ < δ; the difference
    from :func:`probe_mse_exact` is therefore confined to directions within a few orders of
    magnitude of the cut-off, and is below 1e-3 on the decaying spectra tested. Cost: one
    Cholesky factorisation, p³/3 flops, no eigendecomposition.
    """
    if moments.cov_z is None:
        raise ValueError("probe_mse_regularized needs the feature covariance (cov_z)")
    cov = (moments.cov_z + moments.cov_z.T) / 2
    t = moments.cov_y.shape[0]
    if top <= 0:
        return float(torch.trace(moments.cov_y)) / t
    delta = PROBE_CUTOFF * top
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    chol = torch.linalg.cholesky(cov + delta * eye)
    half = torch.linalg.solve_triangular(chol, moments.cov_zy, upper=False)
    explained = float((half * half).sum())
    return max(float(torch.trace(moments.cov_y)) - explained, 0.0) / t
