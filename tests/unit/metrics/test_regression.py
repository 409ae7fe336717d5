"""Tests for :mod:`nrc_cli.metrics`: per-layer columns, summary fields and the collapse rule.

Two kinds of evidence: constructed truths (features built so that a metric's value is known
exactly: rank-k, isotropic, targets as features, aligned weights, affine targets, constant
features) and agreement with the dense float64 reference of ``helpers`` (1e-9 relative) on
random features and weights, conv weights included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    assert_close,
    dense_input_basis,
    dense_last_layer,
    dense_layer,
    dense_probe_mse,
    dense_target_fields,
)
from torch import nn

from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram
from nrc_cli.errors import ConfigError
from nrc_cli.metrics.layer import (
    Spectrum,
    layer_metrics,
    principal_alignment,
    probe_mse_exact,
    weight_input_basis,
)
from nrc_cli.metrics.summary import (
    DEFAULT_COLLAPSE_RULE,
    CollapseRule,
    first_collapsed,
    last_layer_fields,
    target_fields,
)

COLUMNS = (
    "in_dim",
    "rank",
    "nrc1_noise",
    "nrc2_cka",
    "nrc2_cka_signal",
    "nrc3_alignment",
    "nrc4_probe_mse",
    "nrc4_ratio",
    "stable_rank_h",
    "stable_rank_w",
)


def _moments(z: np.ndarray, y: np.ndarray):
    acc = CrossMoments()
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    acc.update(torch.from_numpy(np.asarray(z, dtype=np.float64)), torch.from_numpy(y))
    m = acc.compute()
    return m, Spectrum.exact(m.cov_z)


def _linear(weight: np.ndarray) -> nn.Linear:
    q, p = weight.shape
    lin = nn.Linear(p, q, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(weight))
    return lin


def _metrics(z, y, module=None, rank=None, model_mse=None) -> dict:
    m, spectrum = _moments(z, y)
    if module is None:
        module = _linear(np.random.default_rng(0).standard_normal((3, m.cov_z.shape[0])))
    rank = rank if rank is not None else m.cov_y.shape[0]
    return layer_metrics(m, spectrum, module, rank, model_mse)


def _orthonormal(p: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, k)))
    return q


def _spectral_features(n: int, scales: np.ndarray, seed: int, offset: float = 3.0):
    """Features with covariance ≈ Q diag(scales²) Qᵀ for a random rotation Q; returns (z, Q)."""
    rng = np.random.default_rng(seed)
    p = len(scales)
    q = _orthonormal(p, p, seed + 1)
    z = (rng.standard_normal((n, p)) * scales) @ q.T + offset
    return z, q


def _targets(z: np.ndarray, t: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.tanh(z @ rng.standard_normal((z.shape[1], t)) / 4) + noise * rng.standard_normal(
        (len(z), t)
    )


# ------------------------------------------------------------------------------------------------
# Constructed truths
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rank_k_features_have_zero_noise(k):
    rng = np.random.default_rng(k)
    z = rng.standard_normal((500, k)) @ rng.standard_normal((k, 10)) * 4 + 7
    y = rng.standard_normal((500, k))
    out = _metrics(z, y)
    assert out["rank"] == k
    assert 0 <= out["nrc1_noise"] <= 1e-12


def test_rank_k_noise_is_positive_when_one_more_direction_carries_variance():
    """Negative control for the test above: a (k+1)-th direction gives the expected share."""
    rng = np.random.default_rng(11)
    z = np.zeros((1000, 6))
    z[:, :3] = rng.standard_normal((1000, 3)) * [3.0, 2.0, 1.0]
    out = _metrics(z, rng.standard_normal((1000, 2)))
    lam = np.sort(np.linalg.eigvalsh(np.cov(z.T, bias=True)))[::-1]
    assert out["nrc1_noise"] == pytest.approx(lam[2] / lam.sum(), rel=1e-9)
    assert out["nrc1_noise"] > 0.05


def test_whitened_isotropic_features_give_exactly_one_minus_k_over_p():
    p, k = 50, 2
    g = np.random.default_rng(12).standard_normal((2000, p))
    g -= g.mean(axis=0)
    evals, evecs = np.linalg.eigh(g.T @ g / len(g))
    z = g @ evecs @ np.diag(evals**-0.5) @ evecs.T  # covariance exactly I (to round-off)
    out = _metrics(z, np.random.default_rng(13).standard_normal((2000, k)))
    assert out["nrc1_noise"] == pytest.approx(1 - k / p, rel=1e-9)
    assert out["stable_rank_h"] == pytest.approx(p, rel=1e-9)


def test_isotropic_gaussian_features_give_about_one_minus_k_over_p():
    p, k, n = 50, 2, 40_000
    z = np.random.default_rng(14).standard_normal((n, p))
    out = _metrics(z, np.random.default_rng(15).standard_normal((n, k)))
    # Marchenko–Pastur: the top sample eigenvalues exceed 1 by about 2·sqrt(p/n) ≈ 7%.
    assert out["nrc1_noise"] == pytest.approx(1 - k / p, abs=0.01)
    assert 0.8 * p <= out["stable_rank_h"] <= p


@pytest.mark.parametrize("transform", ["identity", "affine", "rotation"])
def test_cka_of_targets_with_themselves_is_one(transform):
    rng = np.random.default_rng(16)
    y = rng.standard_normal((800, 3)) @ rng.standard_normal((3, 3))
    z = {
        "identity": y,
        "affine": 5 * y - 2,
        "rotation": y @ _orthonormal(3, 3, 17).T,
    }[transform]
    out = _metrics(z, y)
    assert out["nrc2_cka"] == pytest.approx(1.0, abs=1e-12)
    assert out["nrc2_cka_signal"] == pytest.approx(1.0, abs=1e-12)


def test_cka_of_independent_features_is_small():
    rng = np.random.default_rng(18)
    out = _metrics(rng.standard_normal((5000, 8)), rng.standard_normal((5000, 2)))
    assert out["nrc2_cka"] < 0.01


@pytest.mark.parametrize("rows", [2, 5])
def test_weight_whose_rows_span_the_top_subspace_has_alignment_one(rows):
    """Top-2 feature directions U; W = R Uᵀ (+ weaker rows orthogonal to U) => PA = 1."""
    p, k = 8, 2
    scales = np.array([5.0, 4.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    z, q = _spectral_features(3000, scales, seed=19)
    m, spectrum = _moments(z, np.random.default_rng(20).standard_normal((3000, k)))
    top = spectrum.vectors[:, :k].numpy()  # the sample top-2 subspace
    rng = np.random.default_rng(21)
    w = rng.standard_normal((k, k)) @ top.T * 10
    if rows > k:
        rest = np.linalg.qr(np.hstack([top, rng.standard_normal((p, p))]))[0][:, k:]
        w = np.vstack([w, 0.01 * rng.standard_normal((rows - k, p - k)) @ rest.T])
    out = layer_metrics(m, spectrum, _linear(w), k, None)
    assert out["nrc3_alignment"] == pytest.approx(1.0, abs=1e-12)
    del q


def test_weight_orthogonal_to_the_top_subspace_has_alignment_zero():
    scales = np.array([5.0, 4.0, 1.0, 0.9, 0.8, 0.7])
    z, _ = _spectral_features(3000, scales, seed=22)
    m, spectrum = _moments(z, np.random.default_rng(23).standard_normal((3000, 2)))
    rest = spectrum.vectors[:, 2:].numpy()
    w = np.random.default_rng(24).standard_normal((3, 4)) @ rest.T
    out = layer_metrics(m, spectrum, _linear(w), 2, None)
    assert out["nrc3_alignment"] == pytest.approx(0.0, abs=1e-12)


def test_affine_targets_have_zero_probe_error():
    rng = np.random.default_rng(25)
    z = rng.standard_normal((600, 7)) * rng.uniform(0.5, 3, 7) + 4
    y = z @ rng.standard_normal((7, 3)) + [1.0, -2.0, 3.0]
    out = _metrics(z, y, model_mse=0.25)
    assert out["nrc4_probe_mse"] <= 1e-12 * float(np.var(y, axis=0).mean())
    assert out["nrc4_ratio"] == pytest.approx(out["nrc4_probe_mse"] / 0.25, abs=1e-15)


def test_probe_ignores_directions_below_the_cutoff():
    """A target carried only by a direction with λ < 1e-6 λ_1 is not explained; one above is."""
    rng = np.random.default_rng(26)
    base = rng.standard_normal((2000, 2))
    base = np.linalg.qr(base - base.mean(axis=0))[0] * np.sqrt(2000)  # centred, uncorrelated
    for small, explained in ((1e-4, True), (1e-8, False)):  # λ_2 / λ_1 = small
        z = base * [1.0, math.sqrt(small)]
        y = base[:, 1:2] * 2.0
        out = _metrics(z, y, rank=1)
        assert out["nrc4_probe_mse"] == pytest.approx(dense_probe_mse(z, y), rel=1e-9, abs=1e-12)
        if explained:
            assert out["nrc4_probe_mse"] <= 1e-10
        else:
            assert out["nrc4_probe_mse"] == pytest.approx(float(np.var(y)), rel=1e-9)


def test_constant_features_give_nulls_not_zeros():
    y = np.random.default_rng(27).standard_normal((300, 2)) * [1.0, 3.0]
    z = np.full((300, 5), 2.5)
    out = _metrics(z, y, model_mse=0.5)
    for col in ("nrc1_noise", "nrc2_cka", "nrc2_cka_signal", "nrc3_alignment", "stable_rank_h"):
        assert out[col] is None, col
    # The best affine probe of constant features is the target mean.
    assert out["nrc4_probe_mse"] == pytest.approx(float(np.var(y, axis=0).mean()), rel=1e-12)
    assert out["stable_rank_w"] is not None


def test_constant_targets_give_null_cka():
    z = np.random.default_rng(28).standard_normal((200, 4))
    out = _metrics(z, np.ones((200, 1)), model_mse=0.0)
    assert out["nrc2_cka"] is None and out["nrc2_cka_signal"] is None
    assert out["nrc4_probe_mse"] == 0.0
    assert out["nrc4_ratio"] is None  # 0/0


def test_rank_is_clipped_to_the_feature_dimension():
    rng = np.random.default_rng(29)
    out = _metrics(rng.standard_normal((100, 3)), rng.standard_normal((100, 2)), rank=10)
    assert out["rank"] == 3 and out["in_dim"] == 3
    assert out["nrc1_noise"] == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------------------------------------
# Agreement with the dense reference
# ------------------------------------------------------------------------------------------------


def _conv(kind: type[nn.Module], c_in: int, c_out: int, kernel, groups: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return kind(c_in, c_out, kernel, groups=groups).to(torch.float64)


WEIGHTS = {
    "linear_narrow": lambda p: _linear(np.random.default_rng(30).standard_normal((3, p))),
    "linear_wide": lambda p: _linear(np.random.default_rng(31).standard_normal((20, p))),
    "conv1d": lambda p: _conv(nn.Conv1d, p, 5, 3),
    "conv2d": lambda p: _conv(nn.Conv2d, p, 4, (3, 2)),
    "conv2d_1x1_few_out": lambda p: _conv(nn.Conv2d, p, 2, 1),
    "conv3d": lambda p: _conv(nn.Conv3d, p, 3, 2),
}


@pytest.mark.parametrize("rank", [1, 3, 12])
@pytest.mark.parametrize("weight", sorted(WEIGHTS))
def test_layer_metrics_match_the_dense_reference(weight, rank):
    scales = np.geomspace(4.0, 0.05, 10)
    z, _ = _spectral_features(2500, scales, seed=32)
    y = _targets(z, 3, seed=33)
    module = WEIGHTS[weight](10)
    got = _metrics(z, y, module=module, rank=rank, model_mse=0.07)
    want = dense_layer(z, y, module.weight.detach().numpy(), rank, 0.07)
    for col in COLUMNS:
        assert_close(got[col], want[col], rel=1e-9, abs_=1e-12, what=col)
    assert got["note"] is None


def test_grouped_conv_has_null_weight_metrics_and_a_note():
    scales = np.geomspace(3.0, 0.1, 8)
    z, _ = _spectral_features(1000, scales, seed=34)
    y = _targets(z, 2, seed=35)
    module = _conv(nn.Conv2d, 8, 4, 3, groups=2)
    got = _metrics(z, y, module=module, model_mse=0.1)
    want = dense_layer(z, y, None, 2, 0.1)
    for col in COLUMNS:
        assert_close(got[col], want[col], rel=1e-9, abs_=1e-12, what=col)
    assert got["nrc3_alignment"] is None and got["stable_rank_w"] is None
    assert "grouped" in got["note"] and "groups=2" in got["note"]
    assert weight_input_basis(module) is None


@pytest.mark.parametrize("weight", sorted(WEIGHTS))
def test_weight_input_basis_spans_the_reference_subspace(weight):
    module = WEIGHTS[weight](6)
    found = weight_input_basis(module)
    ref_b, ref_s = dense_input_basis(module.weight.detach().numpy())
    assert found.top == pytest.approx(ref_s[0], rel=1e-12)
    assert found.fro2 == pytest.approx(float((ref_s**2).sum()), rel=1e-12)
    b = found.basis.numpy()
    np.testing.assert_allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-12)
    # Compare subspaces through projectors (singular vectors are defined up to sign).
    np.testing.assert_allclose(b @ b.T, ref_b @ ref_b.T, atol=1e-10)
    assert b.shape == ref_b.shape


def test_principal_alignment_of_known_subspaces():
    q = torch.from_numpy(_orthonormal(7, 3, 36))
    rot = torch.from_numpy(_orthonormal(3, 3, 37))
    assert principal_alignment(q, q) == pytest.approx(1.0, abs=1e-12)
    assert principal_alignment(q, q @ rot) == pytest.approx(1.0, abs=1e-12)
    e = torch.eye(4, dtype=torch.float64)
    assert principal_alignment(e[:, :2], e[:, 2:]) == pytest.approx(0.0, abs=1e-15)
    # Principal angles 0 and 60 degrees -> mean cosine (1 + 0.5) / 2.
    other = torch.stack([e[:, 0], 0.5 * e[:, 1] + math.sqrt(0.75) * e[:, 2]], dim=1)
    assert principal_alignment(e[:, :2], other) == pytest.approx(0.75, abs=1e-12)


def test_exact_spectrum_is_descending_and_complete():
    z, _ = _spectral_features(400, np.array([3.0, 2.0, 1.0, 0.0]), seed=38)
    m, spectrum = _moments(z, z[:, :1])
    vals = spectrum.values.numpy()
    assert np.all(np.diff(vals) <= 0) and np.all(vals >= 0)
    assert spectrum.complete
    ref = np.sort(np.linalg.eigvalsh(np.cov(z.T, bias=True)))[::-1]
    np.testing.assert_allclose(vals, np.clip(ref, 0, None), atol=1e-12)
    assert spectrum.trace == pytest.approx(ref.sum(), rel=1e-12)
    assert spectrum.tail_sum(3) == pytest.approx(0.0, abs=1e-12)
    assert probe_mse_exact(m, spectrum) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Summary fields
# ------------------------------------------------------------------------------------------------


def _cov(y: np.ndarray) -> torch.Tensor:
    y = y.reshape(len(y), -1)
    yc = y - y.mean(axis=0)
    return torch.from_numpy(yc.T @ yc / len(y))


def test_target_fields_match_the_dense_reference():
    y = _targets(np.random.default_rng(39).standard_normal((700, 5)), 4, seed=40)
    got = target_fields(_cov(y))
    want = dense_target_fields(y)
    assert got["stable_rank_y"] == pytest.approx(want["stable_rank_y"], rel=1e-9)
    assert got["target_effective_rank"] == want["target_effective_rank"]


@pytest.mark.parametrize(
    ("variances", "expected"),
    [((1.0, 1.0, 1e-4), 2), ((1.0, 0.01), 2), ((1.0, 1e-4), 1), ((2.0,), 1), ((1.0, 1.0), 2)],
)
def test_target_effective_rank_of_known_spectra(variances, expected):
    cov = torch.diag(torch.tensor(variances, dtype=torch.float64))
    out = target_fields(cov)
    assert out["target_effective_rank"] == expected
    v = np.array(variances)
    assert out["stable_rank_y"] == pytest.approx((v**2).sum() / v.max() ** 2, rel=1e-12)


def test_target_fields_of_constant_targets_are_null():
    out = target_fields(torch.zeros(2, 2, dtype=torch.float64))
    assert out == {"stable_rank_y": None, "target_effective_rank": None}


def test_overflowing_target_moments_give_nulls_not_a_crash():
    cov = torch.full((2, 2), float("inf"), dtype=torch.float64)
    assert target_fields(cov) == {"stable_rank_y": None, "target_effective_rank": None}


def _last(z: np.ndarray, y: np.ndarray, w: np.ndarray, rank: int) -> dict:
    m, spectrum = _moments(z, y)
    gram = NormalizedGram()
    gram.update(torch.from_numpy(z))
    return last_layer_fields(torch.from_numpy(w), spectrum, gram.compute(), m.cov_y, rank)


@pytest.mark.parametrize(("t", "rank"), [(1, 1), (2, 2), (3, 3), (3, 1)])
def test_last_layer_fields_match_the_dense_reference(t, rank):
    z, _ = _spectral_features(1500, np.geomspace(3, 0.2, 6), seed=41, offset=0.5)
    z[::50] = 0.0  # zero rows stay zero after normalising
    y = _targets(z, t, seed=42)
    w = np.random.default_rng(43).standard_normal((t, 6))
    got = _last(z, y, w, rank)
    want = dense_last_layer(z, y, w, rank)
    assert got["nrc1_last"] == pytest.approx(want["nrc1_last"], rel=1e-9, abs=1e-12)
    assert got["nrc2_last"] == pytest.approx(want["nrc2_last"], rel=1e-9, abs=1e-12)
    assert got["nrc3_last"] == pytest.approx(want["nrc3_last"], abs=1e-7)
    assert 0 <= got["nrc3_gamma"] <= float(np.linalg.eigvalsh(_cov(y).numpy()).min()) + 1e-15


def test_features_in_the_row_space_of_w_give_zero_nrc2_last():
    rng = np.random.default_rng(44)
    w = rng.standard_normal((2, 6))
    z = rng.standard_normal((800, 2)) @ w + 0.0  # every feature vector is a row combination
    y = z @ rng.standard_normal((6, 2))
    got = _last(z, y, w, 2)
    assert got["nrc2_last"] == pytest.approx(0.0, abs=1e-12)
    assert got["nrc1_last"] == pytest.approx(0.0, abs=1e-12)  # z spans 2 dims through 0
    # Negative control: a feature direction outside the row space is measured.
    z2 = z + 0.5 * rng.standard_normal((800, 6))
    assert _last(z2, y, w, 2)["nrc2_last"] > 0.01


def test_one_dimensional_targets_give_zero_nrc3_last():
    rng = np.random.default_rng(45)
    z = rng.standard_normal((300, 4))
    got = _last(z, rng.standard_normal((300, 1)), rng.standard_normal((1, 4)), 1)
    assert got["nrc3_last"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("gamma0", [0.0, 0.3])
def test_nrc3_last_is_zero_when_wwt_matches_the_shifted_target_root(gamma0):
    """WWᵀ ∝ Σ_Y^½ − √γ₀ I with γ₀ in [0, μ_t] is perfect NRC3; the minimiser is γ₀."""
    rng = np.random.default_rng(46)
    y = rng.standard_normal((4000, 3)) @ rng.standard_normal((3, 3))
    mu, q = np.linalg.eigh(_cov(y).numpy())
    gamma0 = gamma0 * mu.min()
    target = q @ np.diag(np.sqrt(mu) - math.sqrt(gamma0)) @ q.T  # PSD since γ₀ ≤ μ_t
    evals, evecs = np.linalg.eigh(target)
    half = evecs @ np.diag(np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    w = 2.0 * half @ _orthonormal(5, 3, 47).T  # t×p, WWᵀ = 4·target
    got = _last(rng.standard_normal((4000, 5)), y, w, 3)
    assert got["nrc3_last"] == pytest.approx(0.0, abs=1e-9)
    assert got["nrc3_gamma"] == pytest.approx(gamma0, abs=1e-3 * mu.min())


# ------------------------------------------------------------------------------------------------
# The collapse rule
# ------------------------------------------------------------------------------------------------


def test_default_rule_parses_and_prints_back():
    rule = CollapseRule.parse(DEFAULT_COLLAPSE_RULE)
    assert rule.terms == (("nrc1_noise", "<=", 0.2),)
    assert rule.text == "nrc1_noise<=0.2"


def test_rule_with_several_terms_and_spaces():
    rule = CollapseRule.parse(" nrc1_noise <= 0.5 , nrc3_alignment>=0.9,stable_rank_h<=3")
    assert rule.terms == (
        ("nrc1_noise", "<=", 0.5),
        ("nrc3_alignment", ">=", 0.9),
        ("stable_rank_h", "<=", 3.0),
    )
    assert rule.text == "nrc1_noise<=0.5,nrc3_alignment>=0.9,stable_rank_h<=3"
    assert CollapseRule.parse(rule.text) == rule


def test_rule_holds_only_when_every_term_holds():
    rule = CollapseRule.parse("nrc1_noise<=0.2,nrc3_alignment>=0.9")
    assert rule.holds({"nrc1_noise": 0.2, "nrc3_alignment": 0.9})  # bounds are inclusive
    assert rule.holds({"nrc1_noise": 0.0, "nrc3_alignment": 1.0})
    assert not rule.holds({"nrc1_noise": 0.21, "nrc3_alignment": 0.95})
    assert not rule.holds({"nrc1_noise": 0.1, "nrc3_alignment": 0.89})
    # A null value never satisfies a term.
    assert not rule.holds({"nrc1_noise": None, "nrc3_alignment": 0.95})
    assert not rule.holds({"nrc1_noise": float("nan"), "nrc3_alignment": 0.95})
    assert not rule.holds({"nrc3_alignment": 0.95})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty rule"),
        ("   ", "empty rule"),
        ("nrc1_noise<0.2", "cannot parse term 'nrc1_noise<0.2'"),
        ("nrc1_noise=0.2", "cannot parse term"),
        ("nrc1_noise<=", "cannot parse term"),
        ("nrc1_noise<=0.2,", "cannot parse term ''"),
        ("nrc1_noise<=0.2,,nrc2_cka>=0.5", "cannot parse term ''"),
        ("bogus<=0.2", "unknown column 'bogus'"),
        ("layer<=3", "unknown column 'layer'"),
        ("nrc1_noise<=abc", "'abc' in term 'nrc1_noise<=abc' is not a finite number"),
        ("nrc1_noise<=nan", "is not a finite number"),
        ("nrc1_noise<=inf", "is not a finite number"),
    ],
)
def test_malformed_rules_are_refused(text, match):
    with pytest.raises(ConfigError, match=match):
        CollapseRule.parse(text)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([False, True, False, True, True], 4),
        ([True, True, False], None),
        ([True, True, True, True], 1),
        ([False, False, False], None),
        ([False, False, True], 3),
        ([True], 1),
        ([False], None),
        ([], None),
    ],
)
def test_first_collapsed(flags, expected):
    assert first_collapsed(flags) == expected
