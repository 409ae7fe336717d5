"""Per-layer Deep NRC columns (METRICS.md, "Per-layer columns") from accumulated moments.

Pure functions: moments and weights in, plain Python numbers out. A quantity whose denominator
is zero is ``None`` (null in every output), never a crash and never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nrc_cli.accumulate.moments import Moments

# Directions with λ_j < PROBE_CUTOFF·λ_1 are ignored by the probe (singular values below 1e-3 of
# the largest), as in the paper's code.
PROBE_CUTOFF = 1e-6


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
        cov = (cov + cov.T) / 2
        vals, vecs = torch.linalg.eigh(cov)
        vals = vals.flip(0).clamp_min(0.0)
        vecs = vecs.flip(1)
        return cls(vals, vecs, float(vals.sum()), float((vals * vals).sum()), True)

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


def weight_input_basis(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Orthonormal basis of a weight's input subspace and its singular values.

    Linear W (q×p): right singular vectors. Conv W (c_out×c_in×…): W̃ = W with the first two axes
    swapped and the rest flattened (c_in × c_out·kernel), left singular vectors. Returns
    ``(B, s)`` with B of shape (p, min dims), or None for grouped convolutions.
    """
    w = module.weight.detach().to(torch.float64)
    if isinstance(module, nn.Linear):
        _, s, vh = torch.linalg.svd(w, full_matrices=False)
        return vh.T, s
    if getattr(module, "groups", 1) != 1:
        return None
    wt = w.transpose(0, 1).reshape(w.shape[1], -1)
    u, s, _ = torch.linalg.svd(wt, full_matrices=False)
    return u, s


def principal_alignment(q1: torch.Tensor, q2: torch.Tensor) -> float:
    """Mean singular value of Q1ᵀQ2: the mean cosine of the principal angles, in [0, 1]."""
    sv = torch.linalg.svdvals(q1.T @ q2)
    return float(sv.clamp(max=1.0).mean())


def layer_metrics(
    moments: Moments,
    spectrum: Spectrum,
    module: nn.Module,
    rank: int,
    model_mse: float | None,
    *,
    probe_mse: float | None = None,
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
    """
    p = moments.cov_z.shape[0]
    t = moments.cov_y.shape[0]
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
    basis = weight_input_basis(module)
    if basis is None:
        out["nrc3_alignment"] = None
        out["stable_rank_w"] = None
        note = f"grouped convolution (groups={module.groups}): weight metrics not defined"
    else:
        b, s = basis
        m = min(k, b.shape[1])
        out["nrc3_alignment"] = (
            principal_alignment(vk[:, :m], b[:, :m]) if spectrum.trace > 0 else None
        )
        out["stable_rank_w"] = ratio(float((s * s).sum()), float(s[0] ** 2)) if s.numel() else None

    if probe_mse is None:
        probe_mse = probe_mse_exact(moments, spectrum)
    out["nrc4_probe_mse"] = probe_mse
    out["nrc4_ratio"] = None if model_mse is None else ratio(probe_mse, model_mse)
    out["stable_rank_h"] = ratio(spectrum.fro2, spectrum.top**2)
    out["note"] = note
    del t
    return out


def probe_mse_exact(moments: Moments, spectrum: Spectrum) -> float:
    """Error of the best affine least-squares probe of Y from Z (METRICS.md, Deep NRC4).

    (tr Σ_Y − Σ_{λ_j ≥ 1e-6 λ_1} ‖v_jᵀΣ_ZY‖² / λ_j) / t, over the eigenpairs in ``spectrum``.
    Constant features keep no direction: the probe is the target mean.
    """
    t = moments.cov_y.shape[0]
    lam = spectrum.values
    keep = (lam >= PROBE_CUTOFF * spectrum.top) & (lam > 0)
    proj = spectrum.vectors[:, keep].T @ moments.cov_zy
    explained = float(((proj * proj).sum(dim=1) / lam[keep]).sum())
    return max(float(torch.trace(moments.cov_y)) - explained, 0.0) / t
