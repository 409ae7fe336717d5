"""Run-level fields (docs/metrics.md, "Summary fields"): targets, last-layer NRC, collapse rule."""

from __future__ import annotations

import math

import torch

from nrc_cli.metrics.layer import Spectrum, ratio
from nrc_cli.options import DEFAULT_COLLAPSE_RULE, RULE_COLUMNS, CollapseRule

__all__ = [
    "DEFAULT_COLLAPSE_RULE",
    "RULE_COLUMNS",
    "CollapseRule",
    "first_collapsed",
    "last_layer_fields",
    "target_fields",
]


def vacuous_reason(row: dict) -> str | None:
    """Why a layer's collapse test would be empty, or None.

    A layer no wider than the analysis rank (``in_dim`` <= k) has all of its feature variance
    inside its top-k principal subspace by construction: ``nrc1_noise`` is 0, and the
    subspace comparisons compare the whole space with itself, whatever the network learned.
    """
    p, k = row.get("in_dim"), row.get("rank")
    if p is None or k is None or p > k:
        return None
    return (
        f"in_dim {p} <= rank {k}: every feature direction is inside the top-{k} subspace, so "
        "nrc1_noise is 0 by construction; never counted as collapsed"
    )


def layer_collapsed(rule: CollapseRule, row: dict) -> tuple[bool, str | None]:
    """The layer's ``collapsed`` flag under ``rule``, and a note when the test is vacuous.

    A layer whose collapse test is vacuous (:func:`vacuous_reason`) is never collapsed.
    """
    reason = vacuous_reason(row)
    if reason is not None:
        return False, reason
    return rule.holds(row), None


# The affine probe of a layer of width p fits p + 1 parameters per target; its in-sample error
# is biased low by the fraction (p + 1)/N (exactly so for linear least squares with noise).
# Below this many samples per parameter the bias exceeds 10 % and is warned about.
SAMPLES_PER_PARAMETER = 10


def interpolation_warning(rows: list[dict], n_samples: int) -> str | None:
    """A warning naming the layers for which N is not well above ``in_dim``, or None."""
    narrow = [r for r in rows if n_samples < SAMPLES_PER_PARAMETER * (r["in_dim"] + 1)]
    if not narrow:
        return None
    named = ", ".join(f"{r['layer']} (in_dim {r['in_dim']})" for r in narrow[:8])
    if len(narrow) > 8:
        named += f" and {len(narrow) - 8} more"
    return (
        f"N = {n_samples} samples is not well above the width of {named}: the affine probe "
        "fits in_dim + 1 parameters per target and can interpolate, so nrc4_probe_mse and "
        "nrc4_ratio read low there (0 once N <= in_dim + 1); use at least "
        f"{SAMPLES_PER_PARAMETER} x (in_dim + 1) samples"
    )


def join_notes(*notes: str | None) -> str | None:
    """Per-layer notes joined into one ``note`` cell (None when there is none)."""
    kept = [n for n in notes if n]
    return "; ".join(kept) or None


def first_collapsed(collapsed: list[bool]) -> int | None:
    """Smallest 1-based ℓ* such that every layer from ℓ* on is collapsed; None if the last is not."""
    first = None
    for i in range(len(collapsed), 0, -1):
        if not collapsed[i - 1]:
            break
        first = i
    return first


def target_fields(cov_y: torch.Tensor) -> dict:
    """``stable_rank_y`` and ``target_effective_rank`` from Σ_Y (None where undefined)."""
    if not bool(torch.isfinite(cov_y).all()):
        # Targets so large that their moments overflow float64: nothing here is defined.
        return {"stable_rank_y": None, "target_effective_rank": None}
    mu = torch.linalg.eigvalsh((cov_y + cov_y.T) / 2).flip(0).clamp_min(0.0)
    total = float(mu.sum())
    out = {"stable_rank_y": ratio(float((mu * mu).sum()), float(mu[0]) ** 2)}
    if total == 0:
        out["target_effective_rank"] = None
    else:
        cum = torch.cumsum(mu, 0)
        # Round-off must not push the last partial sum below the threshold.
        hit = (cum >= 0.999 * total * (1 - 1e-12)).nonzero()
        out["target_effective_rank"] = int(hit[0]) + 1
    return out


def last_layer_fields(
    weight: torch.Tensor,
    spectrum: Spectrum,
    gram: torch.Tensor,
    cov_y: torch.Tensor,
    rank: int,
) -> dict:
    """Last-layer NRC1–3 of Andriopoulos et al. (2024) for a Linear head W ∈ R^{t×p}.

    Parameters
    ----------
    weight : Tensor, shape (t, p)
    spectrum : Spectrum
        Of the head's (centred) feature covariance Σ_Z.
    gram : Tensor, shape (p, p)
        (1/N) Σ h̃ h̃ᵀ of the normalised, uncentred features.
    cov_y : Tensor, shape (t, t)
    rank : int
        Requested k (clipped to p).
    """
    w = weight.detach().to(torch.float64)
    p = w.shape[1]
    k = min(rank, p)
    tr_g = float(torch.trace(gram))

    def residual(q: torch.Tensor) -> float:
        # (1/N) Σ ‖h̃ − QQᵀh̃‖² = tr G − tr(QᵀGQ) for orthonormal Q.
        return max(tr_g - float(torch.trace(q.T @ gram @ q)), 0.0)

    out = {"nrc1_last": residual(spectrum.vectors[:, :k])}
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    tol = float(s[0]) * max(w.shape) * torch.finfo(torch.float64).eps if s.numel() else 0.0
    r = int((s > tol).sum())
    out["nrc2_last"] = residual(vh[:r].T)
    out.update(_nrc3_last(w, cov_y))
    return out


def _nrc3_last(w: torch.Tensor, cov_y: torch.Tensor) -> dict:
    """min over γ ∈ [0, μ_t] of ‖WWᵀ/‖WWᵀ‖ − (Σ_Y^½ − √γ I)/‖Σ_Y^½ − √γ I‖‖_F².

    Σ_Y^½ − √γ I shares Σ_Y's eigenvectors Q, so with a = diag(Qᵀ Â Q) (Â the normalised WWᵀ)
    and s = √μ the objective is 2 − 2·a·(s − c)/‖s − c‖ with c = √γ: a 1-D problem, solved by a
    dense grid in γ and a golden-section refinement around the best grid point.
    """
    wwt = w @ w.T
    nrm = float(torch.linalg.matrix_norm(wwt))
    if nrm == 0:
        return {"nrc3_last": None, "nrc3_gamma": None}
    a_hat = wwt / nrm
    mu, q = torch.linalg.eigh((cov_y + cov_y.T) / 2)
    mu = mu.clamp_min(0.0)
    s = mu.sqrt()
    a = torch.diagonal(q.T @ a_hat @ q)
    a_norm2 = float((a_hat * a_hat).sum())
    mu_t = float(mu.min())

    def objective(gamma: float) -> float:
        d = s - math.sqrt(max(gamma, 0.0))
        dn = float(torch.linalg.vector_norm(d))
        if dn == 0:
            return math.inf
        return a_norm2 + 1.0 - 2.0 * float((a * d).sum()) / dn

    grid = [mu_t * i / 2000 for i in range(2001)] if mu_t > 0 else [0.0]
    vals = [objective(g) for g in grid]
    best = min(range(len(grid)), key=lambda i: vals[i])
    if not math.isfinite(vals[best]):
        return {"nrc3_last": None, "nrc3_gamma": None}
    lo = grid[max(best - 1, 0)]
    hi = grid[min(best + 1, len(grid) - 1)]
    g_best, f_best = grid[best], vals[best]
    invphi = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - invphi * (hi - lo), lo + invphi * (hi - lo)
    f1, f2 = objective(x1), objective(x2)
    for _ in range(60):
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - invphi * (hi - lo)
            f1 = objective(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + invphi * (hi - lo)
            f2 = objective(x2)
    for g, f in ((x1, f1), (x2, f2)):
        if f < f_best:
            g_best, f_best = g, f
    return {"nrc3_last": max(f_best, 0.0), "nrc3_gamma": g_best}
