"""A dense float64 reference of docs/classification.md, written from the contract alone.

Every feature matrix is kept whole. Σ_W is formed from the class-centred features directly (not
as total minus between), Σ_B from the class means, its pseudo-inverse from ``numpy.linalg.eigh``;
the nearest class mean is found from explicit Euclidean distances to every mean. Nothing here
imports ``nrc_cli``'s metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from helpers import dense_input_basis, linear_features
from torch import nn

RANK_CUTOFF = 1e-12


def _div(num: float, den: float) -> float | None:
    return None if den == 0 else float(num / den)


def dense_predicted(out: np.ndarray) -> np.ndarray:
    """Argmax of each row; a single output means class 1 when it is > 0."""
    out = np.asarray(out).reshape(len(out), -1)
    if out.shape[1] == 1:
        return (out[:, 0] > 0).astype(np.int64)
    return out.argmax(axis=1)


def dense_class_stats(z: np.ndarray, labels: np.ndarray) -> dict:
    """Classes, counts, μ_c, μ_G, Σ_W (from class-centred features) and Σ_T of ``z`` (N×p)."""
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    mean = z.mean(axis=0)
    own = means[np.searchsorted(classes, labels)]
    zw = z - own
    zt = z - mean
    n = len(z)
    return {
        "classes": classes,
        "counts": counts,
        "means": means,
        "mean": mean,
        "cov_within": zw.T @ zw / n,
        "cov_total": zt.T @ zt / n,
    }


def dense_class_layer(
    z: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    *,
    groups: int = 1,
    ncc: bool = True,
) -> dict:
    """Every numeric per-layer column of docs/classification.md for the features ``z``."""
    s = dense_class_stats(z, labels)
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    classes, means, mean = s["classes"], s["means"], s["mean"]
    c = len(classes)
    p = z.shape[1]
    m = (means - mean).T  # p×C
    sigma_w = s["cov_within"]
    sigma_b = m @ m.T / c
    beta, u = np.linalg.eigh(sigma_b)
    beta, u = beta[::-1], u[:, ::-1]
    limit = min(c - 1, p)
    r = 0 if beta[0] <= 0 else int((beta[:limit] > RANK_CUTOFF * beta[0]).sum())
    out: dict = {"in_dim": p, "rank": r}
    if r:
        pinv = u[:, :r] @ np.diag(1.0 / beta[:r]) @ u[:, :r].T
        out["nc1"] = float(np.trace(sigma_w @ pinv) / c)
    else:
        out["nc1"] = None
    out["nc1_trace"] = _div(np.trace(sigma_w), np.trace(sigma_b))
    norms = np.linalg.norm(m, axis=0)
    out["nc2_equinorm"] = _div(norms.std(), norms.mean())
    g = m.T @ m
    e = np.eye(c) - np.ones((c, c)) / c
    gn = np.linalg.norm(g)
    out["nc2_etf"] = None if gn == 0 else float(np.linalg.norm(g / gn - e / np.linalg.norm(e)))
    if weight is None or groups != 1:
        out["nc3_alignment"] = None
        out["stable_rank_w"] = None
    else:
        basis, _ = dense_input_basis(weight)
        k = min(r, basis.shape[1])
        if k:
            cos = np.linalg.svd(u[:, :k].T @ basis[:, :k], compute_uv=False)
            out["nc3_alignment"] = float(np.mean(cos))
        else:
            out["nc3_alignment"] = None
        w = np.asarray(weight, dtype=np.float64)
        w2 = w if w.ndim == 2 else np.swapaxes(w, 0, 1).reshape(w.shape[1], -1)
        out["stable_rank_w"] = _div(np.linalg.norm(w2, "fro") ** 2, np.linalg.norm(w2, 2) ** 2)
    if ncc:
        dist = np.linalg.norm(z[:, None, :] - means[None, :, :], axis=2)
        nearest = classes[np.argmin(dist, axis=1)]  # argmin: the first, i.e. smaller label
        out["ncc_accuracy"] = float(np.mean(nearest == labels))
        out["nc4_ncc_mismatch"] = (
            None if predicted is None else float(np.mean(nearest != np.asarray(predicted)))
        )
    else:
        out["ncc_accuracy"] = out["nc4_ncc_mismatch"] = None
    st = s["cov_total"]
    out["stable_rank_h"] = _div(np.linalg.norm(st, "fro") ** 2, np.linalg.norm(st, 2) ** 2)
    return out


def dense_duality(weight: np.ndarray, z: np.ndarray, labels: np.ndarray) -> float | None:
    """‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F when W has one row per class and labels are 0..C−1, else None."""
    s = dense_class_stats(z, labels)
    c = len(s["classes"])
    if weight.shape[0] != c or not np.array_equal(s["classes"], np.arange(c)):
        return None
    m = (s["means"] - s["mean"]).T
    w = np.asarray(weight, dtype=np.float64)
    return float(np.linalg.norm(w.T / np.linalg.norm(w) - m / np.linalg.norm(m)))


def dense_class_report(model: nn.Module, x: np.ndarray, labels: np.ndarray) -> dict:
    """The reference ``{"summary", "layers"}`` of a classifier (Linear and Conv weight layers)."""
    feats, out = linear_features(model, x)
    labels = np.asarray(labels).astype(np.int64)
    predicted = dense_predicted(out)
    modules = dict(model.named_modules())
    layers = []
    for i, (name, z) in enumerate(feats, start=1):
        module = modules[name]
        w = module.weight.detach().to(torch.float64).numpy()
        row = {"layer": name, "index": i, "type": type(module).__name__}
        row.update(dense_class_layer(z, labels, w, predicted, groups=getattr(module, "groups", 1)))
        layers.append(row)
    name, z = feats[-1]
    head = modules[name]
    duality = None
    if isinstance(head, nn.Linear):
        duality = dense_duality(head.weight.detach().to(torch.float64).numpy(), z, labels)
    summary = {
        "task": "classification",
        "n_samples": len(labels),
        "n_classes": len(np.unique(labels)),
        "model_accuracy": float(np.mean(predicted == labels)),
        "nc3_duality_last": duality,
    }
    return {"summary": summary, "layers": layers}
