"""Tests of ``nrc_cli.linalg`` on symmetric PSD matrices with a known spectrum."""

from __future__ import annotations

import math

import pytest
import torch

from nrc_cli.linalg import (
    DEFAULT_OVERSAMPLE,
    DEFAULT_POWER_ITERS,
    exact_eigh,
    gaussian_test_matrix,
    nystrom_eigh,
    principal_alignment,
    projector_distance,
    randomized_eigh,
    resolve_svd_method,
)

P = 1000
K = 4


def orthogonal_basis(p: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=generator, dtype=torch.float64))
    return Q


def psd_with_spectrum(V: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    A = (V * eigenvalues) @ V.mT
    # Rounding leaves A asymmetric in the last bit; the solvers symmetrise, but the reference
    # exact solver should see the same matrix.
    return 0.5 * (A + A.mT)


def assert_orthonormal(Q: torch.Tensor) -> None:
    eye = torch.eye(Q.shape[1], dtype=torch.float64)
    torch.testing.assert_close(Q.mT @ Q, eye, atol=1e-12, rtol=0)


def max_rel_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float(((estimate - truth).abs() / truth.abs()).max())


@pytest.fixture(scope="module")
def basis() -> torch.Tensor:
    # One 1000 x 1000 QR shared by the whole module keeps the file fast.
    return orthogonal_basis(P, seed=123)


@pytest.fixture(scope="module")
def index() -> torch.Tensor:
    return torch.arange(1, P + 1, dtype=torch.float64)


@pytest.fixture(scope="module")
def fast_spectrum(index: torch.Tensor) -> torch.Tensor:
    return 0.5**index


@pytest.fixture(scope="module")
def slow_spectrum(index: torch.Tensor) -> torch.Tensor:
    # lambda_4 / lambda_5 = 1.118 and lambda_14 / lambda_4 = 0.53: a small gap and a long heavy
    # tail, the regime where power iterations matter.
    return index**-0.5


@pytest.fixture(scope="module")
def fast_matrix(basis: torch.Tensor, fast_spectrum: torch.Tensor) -> torch.Tensor:
    return psd_with_spectrum(basis, fast_spectrum)


@pytest.fixture(scope="module")
def slow_matrix(basis: torch.Tensor, slow_spectrum: torch.Tensor) -> torch.Tensor:
    return psd_with_spectrum(basis, slow_spectrum)


# --- exact_eigh -------------------------------------------------------------------------------


def test_exact_eigh_is_descending_and_reconstructs() -> None:
    p = 60
    V = orthogonal_basis(p, seed=1)
    lam = torch.linspace(0.1, 5.0, p, dtype=torch.float64)[torch.randperm(p)]
    A = psd_with_spectrum(V, lam)

    evals, evecs = exact_eigh(A)

    assert evals.dtype == torch.float64 and evecs.dtype == torch.float64
    assert evals.shape == (p,) and evecs.shape == (p, p)
    assert torch.all(evals[:-1] >= evals[1:])
    torch.testing.assert_close(evals, lam.sort(descending=True).values, rtol=1e-12, atol=1e-12)
    assert_orthonormal(evecs)
    torch.testing.assert_close((evecs * evals) @ evecs.mT, A, atol=1e-12, rtol=0)
    torch.testing.assert_close(A @ evecs, evecs * evals, atol=1e-12, rtol=0)


def test_exact_eigh_computes_in_float64_from_float32_input() -> None:
    A = torch.diag(torch.tensor([1.0, 3.0, 2.0], dtype=torch.float32))
    evals, evecs = exact_eigh(A)
    assert evals.dtype == torch.float64
    torch.testing.assert_close(evals, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    # The sign convention makes each vector's largest entry positive.
    torch.testing.assert_close(evecs, torch.eye(3, dtype=torch.float64)[:, [1, 2, 0]])


def test_exact_eigh_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        exact_eigh(torch.zeros(3, 4))


# --- randomized_eigh --------------------------------------------------------------------------


def test_randomized_eigh_recovers_fast_decaying_spectrum(
    basis: torch.Tensor, fast_spectrum: torch.Tensor, fast_matrix: torch.Tensor
) -> None:
    evals, evecs = randomized_eigh(fast_matrix, K, seed=0)

    assert evals.shape == (K,) and evecs.shape == (P, K)
    assert max_rel_error(evals, fast_spectrum[:K]) < 1e-8
    assert projector_distance(evecs, basis[:, :K]) < 1e-6
    assert_orthonormal(evecs)


def test_power_iterations_matter_on_slowly_decaying_spectrum(
    basis: torch.Tensor, slow_spectrum: torch.Tensor, slow_matrix: torch.Tensor
) -> None:
    # Negative control: without power iterations the same sketch (same seed, hence the same
    # test matrix) gives clearly worse eigenpairs. Several seeds so that one lucky draw cannot
    # carry the comparison.
    truth = basis[:, :K]
    for seed in (0, 1, 2):
        w0, v0 = randomized_eigh(slow_matrix, K, power_iters=0, seed=seed)
        w4, v4 = randomized_eigh(slow_matrix, K, power_iters=4, seed=seed)

        err0 = max_rel_error(w0, slow_spectrum[:K])
        err4 = max_rel_error(w4, slow_spectrum[:K])
        dist0 = projector_distance(v0, truth)
        dist4 = projector_distance(v4, truth)

        # Measured: err0 ~ 0.45, err4 ~ 1e-3; dist0 ~ 0.95, dist4 ~ 0.05.
        assert err0 > 0.2
        assert err0 > 50 * err4
        assert dist0 > 5 * dist4
        # Rayleigh-Ritz values never exceed the true eigenvalues.
        assert torch.all(w0 <= slow_spectrum[:K] * (1 + 1e-12))
        assert torch.all(w4 <= slow_spectrum[:K] * (1 + 1e-12))


def test_randomized_eigh_uses_the_documented_test_matrix(slow_matrix: torch.Tensor) -> None:
    # With power_iters=0 the result is one Rayleigh-Ritz step on range(A @ Omega), where Omega
    # comes from gaussian_test_matrix with the same seed: the same Omega a Nystrom sketch uses.
    seed, cols = 7, K + DEFAULT_OVERSAMPLE
    omega = gaussian_test_matrix(P, cols, seed=seed)
    Q, _ = torch.linalg.qr(slow_matrix @ omega)
    w_ref = torch.linalg.eigvalsh(Q.mT @ slow_matrix @ Q).flip(0)[:K]

    w, _ = randomized_eigh(slow_matrix, K, power_iters=0, seed=seed)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=0)


def test_randomized_eigh_same_seed_is_bitwise_identical(slow_matrix: torch.Tensor) -> None:
    w1, v1 = randomized_eigh(slow_matrix, K, seed=11)
    w2, v2 = randomized_eigh(slow_matrix, K, seed=11)
    assert torch.equal(w1, w2)
    assert torch.equal(v1, v2)

    w3, v3 = randomized_eigh(slow_matrix, K, seed=12)
    assert not torch.equal(w1, w3)
    assert not torch.equal(v1, v3)
    # Different, but estimates of the same thing.
    torch.testing.assert_close(w1, w3, rtol=1e-2, atol=0)


def test_gaussian_test_matrix_is_seeded_and_float64() -> None:
    a = gaussian_test_matrix(50, 7, seed=3)
    b = gaussian_test_matrix(50, 7, seed=3, device="cpu")
    c = gaussian_test_matrix(50, 7, seed=4)
    assert a.shape == (50, 7) and a.dtype == torch.float64 and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The explicit generator leaves the global RNG alone.
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    gaussian_test_matrix(10, 2, seed=99)
    assert torch.equal(torch.rand(1), before)


@pytest.mark.parametrize(("rank", "oversample"), [(4, 10), (6, 8), (14, 0)])
def test_randomized_eigh_falls_back_to_exact_when_sketch_is_full(
    rank: int, oversample: int
) -> None:
    p = 14
    V = orthogonal_basis(p, seed=5)
    A = psd_with_spectrum(V, torch.arange(p, 0, -1, dtype=torch.float64))
    exact_w, exact_v = exact_eigh(A)

    w, v = randomized_eigh(A, rank, oversample=oversample, seed=0)

    assert torch.equal(w, exact_w[:rank])
    assert torch.equal(v, exact_v[:, :rank])


def test_randomized_eigh_validates_arguments(fast_matrix: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="rank"):
        randomized_eigh(fast_matrix, 0)
    with pytest.raises(ValueError, match="rank"):
        randomized_eigh(fast_matrix, P + 1)
    with pytest.raises(ValueError, match="oversample"):
        randomized_eigh(fast_matrix, K, oversample=-1)
    with pytest.raises(ValueError, match="power_iters"):
        randomized_eigh(fast_matrix, K, power_iters=-1)


def test_defaults() -> None:
    assert DEFAULT_OVERSAMPLE == 10
    assert DEFAULT_POWER_ITERS == 4


# --- nystrom_eigh -----------------------------------------------------------------------------


def test_nystrom_recovers_fast_decaying_spectrum(basis: torch.Tensor, index: torch.Tensor) -> None:
    # Without power iterations the Nystrom error of the top k pairs scales like
    # lambda_{~s-2} / lambda_k; with s = k + 10 a ratio of 0.2 per index gives ~1e-7, while 0.5
    # per index would only give ~1e-3.
    lam = 0.2 ** (index - 1)
    A = psd_with_spectrum(basis, lam)
    s = K + DEFAULT_OVERSAMPLE
    for seed in (0, 1):
        omega = gaussian_test_matrix(P, s, seed=seed)
        evals, evecs = nystrom_eigh(A @ omega, omega, K)

        assert evals.shape == (K,) and evecs.shape == (P, K)
        assert torch.all(evals[:-1] >= evals[1:])
        assert max_rel_error(evals, lam[:K]) < 1e-6
        assert projector_distance(evecs, basis[:, :K]) < 1e-5


def test_nystrom_is_exact_on_rank_k_matrix(basis: torch.Tensor) -> None:
    # Omega.T A Omega is singular here (rank k < s), so this exercises the stabilising shift.
    lam = torch.zeros(P, dtype=torch.float64)
    lam[:K] = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    A = psd_with_spectrum(basis, lam)
    omega = gaussian_test_matrix(P, K + DEFAULT_OVERSAMPLE, seed=0)

    evals, evecs = nystrom_eigh(A @ omega, omega, K)

    assert max_rel_error(evals, lam[:K]) < 1e-9
    assert projector_distance(evecs, basis[:, :K]) < 1e-9

    # Beyond the rank the recovered eigenvalues are (clipped) zeros.
    tail, _ = nystrom_eigh(A @ omega, omega, K + 5)
    assert torch.all(tail[K:] >= 0)
    assert float(tail[K:].max()) < 1e-12


def test_nystrom_retries_with_larger_shift_on_slightly_indefinite_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p, s = 200, 8
    V = orthogonal_basis(p, seed=2)
    lam = torch.zeros(p, dtype=torch.float64)
    lam[:3] = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    # A rounding-sized negative eigenvalue, as a covariance accumulated in float32 can have.
    lam[3] = -1e-9
    A = psd_with_spectrum(V, lam)
    omega = gaussian_test_matrix(p, s, seed=0)
    cholesky_ex = torch.linalg.cholesky_ex
    infos: list[int] = []

    def spy(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L, info = cholesky_ex(M)
        infos.append(int(info))
        return L, info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)

    evals, evecs = nystrom_eigh(A @ omega, omega, 3)

    # The paper's shift alone is too small here (measured: 3 failures, then success).
    assert infos[0] != 0 and infos[-1] == 0
    assert max_rel_error(evals, lam[:3]) < 1e-6
    assert projector_distance(evecs, V[:, :3]) < 1e-6


def test_nystrom_rejects_clearly_indefinite_input() -> None:
    A = torch.diag(torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64))
    omega = gaussian_test_matrix(6, 3, seed=0)
    with pytest.raises(torch.linalg.LinAlgError, match="positive semidefinite"):
        nystrom_eigh(A @ omega, omega, 2)


def test_nystrom_of_zero_matrix_is_zero() -> None:
    omega = gaussian_test_matrix(30, 5, seed=0)
    evals, evecs = nystrom_eigh(torch.zeros(30, 5, dtype=torch.float64), omega, 3)
    assert torch.equal(evals, torch.zeros(3, dtype=torch.float64))
    assert_orthonormal(evecs)


def test_nystrom_validates_arguments() -> None:
    omega = gaussian_test_matrix(30, 5, seed=0)
    with pytest.raises(ValueError, match="same shape"):
        nystrom_eigh(omega[:, :4], omega, 2)
    with pytest.raises(ValueError, match="rank"):
        nystrom_eigh(omega, omega, 6)


# --- subspace comparisons ---------------------------------------------------------------------


def test_principal_alignment_identical_and_orthogonal() -> None:
    Q = orthogonal_basis(20, seed=3)
    assert principal_alignment(Q[:, :5], Q[:, :5]) == pytest.approx(1.0, abs=1e-12)
    # Same subspace, different basis.
    R = orthogonal_basis(5, seed=4)
    assert principal_alignment(Q[:, :5], Q[:, :5] @ R) == pytest.approx(1.0, abs=1e-12)
    assert principal_alignment(Q[:, :5], Q[:, 5:10]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("theta", [1e-6, 0.3, math.pi / 4, 1.2, math.pi / 2])
@pytest.mark.parametrize("m", [1, 3])
def test_principal_alignment_and_projector_distance_of_a_rotation(theta: float, m: int) -> None:
    p = 10
    eye = torch.eye(p, dtype=torch.float64)
    Q1 = eye[:, :m]
    Q2 = Q1.clone()
    Q2[:, m - 1] = math.cos(theta) * eye[:, m - 1] + math.sin(theta) * eye[:, m]
    # Embed in a random orthogonal frame so nothing relies on coordinate axes.
    frame = orthogonal_basis(p, seed=6)

    alignment = principal_alignment(frame @ Q1, frame @ Q2)
    distance = projector_distance(frame @ Q1, frame @ Q2)

    assert alignment == pytest.approx((m - 1 + math.cos(theta)) / m, abs=1e-12)
    assert distance == pytest.approx(math.sin(theta), rel=1e-9, abs=1e-15)


def test_projector_distance_matches_dense_definition() -> None:
    p = 30
    generator = torch.Generator().manual_seed(8)
    for m1, m2 in [(4, 4), (3, 5)]:
        Q1, _ = torch.linalg.qr(torch.randn(p, m1, generator=generator, dtype=torch.float64))
        Q2, _ = torch.linalg.qr(torch.randn(p, m2, generator=generator, dtype=torch.float64))
        dense = torch.linalg.matrix_norm(Q1 @ Q1.mT - Q2 @ Q2.mT, ord=2)
        assert projector_distance(Q1, Q2) == pytest.approx(float(dense), abs=1e-12)
    assert projector_distance(Q1, Q1) == pytest.approx(0.0, abs=1e-14)


def test_subspace_comparisons_validate_shapes() -> None:
    eye = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="equal dimension"):
        principal_alignment(eye[:, :2], eye[:, :3])
    with pytest.raises(ValueError, match="rows"):
        projector_distance(eye[:, :2], eye[:5, :2])


# --- resolve_svd_method -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "width", "rank", "expected"),
    [
        ("auto", 512, 4, "exact"),
        ("auto", 2048, 4, "exact"),
        ("auto", 2049, 4, "randomized"),
        ("auto", 100_000, 4, "randomized"),
        # The randomized solver would fall back to exact anyway.
        ("auto", 3000, 2995, "exact"),
        ("exact", 100_000, 4, "exact"),
        ("randomized", 100_000, 4, "randomized"),
        ("randomized", 2049, 4, "randomized"),
        ("randomized", 29, 4, "randomized"),
        # A sketch of 4 + 10 columns is at least half of these widths: exact costs no more.
        ("randomized", 28, 4, "exact"),
        ("randomized", 16, 4, "exact"),
        ("auto", 5000, 2495, "exact"),
    ],
)
def test_resolve_svd_method(method: str, width: int, rank: int, expected: str) -> None:
    assert resolve_svd_method(method, width, rank) == expected


def test_resolve_svd_method_threshold_is_configurable() -> None:
    assert resolve_svd_method("auto", 600, 4, threshold=512) == "randomized"
    assert resolve_svd_method("auto", 600, 4, threshold=600) == "exact"


def test_resolve_svd_method_counts_the_oversampling() -> None:
    assert resolve_svd_method("randomized", 100, 4, oversample=10) == "randomized"
    assert resolve_svd_method("randomized", 100, 4, oversample=46) == "exact"


def test_resolve_svd_method_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"'bogus'.*auto, exact, randomized") as excinfo:
        resolve_svd_method("bogus", 100, 4)
    assert "auto" in str(excinfo.value)


# --- devices ----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(fast_matrix: torch.Tensor) -> None:
    omega_cpu = gaussian_test_matrix(P, 14, seed=5)
    omega_gpu = gaussian_test_matrix(P, 14, seed=5, device="cuda")
    assert omega_gpu.device.type == "cuda"
    assert torch.equal(omega_gpu.cpu(), omega_cpu)

    w_cpu, v_cpu = randomized_eigh(fast_matrix, K, seed=5)
    w_gpu, v_gpu = randomized_eigh(fast_matrix.cuda(), K, seed=5)
    assert w_gpu.device.type == "cuda" and w_gpu.dtype == torch.float64
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, rtol=1e-12, atol=0)
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=0, atol=1e-10)

    y = fast_matrix @ omega_cpu
    wn_cpu, vn_cpu = nystrom_eigh(y, omega_cpu, K)
    wn_gpu, vn_gpu = nystrom_eigh(y.cuda(), omega_gpu, K)
    torch.testing.assert_close(wn_gpu.cpu(), wn_cpu, rtol=1e-9, atol=0)
    torch.testing.assert_close(vn_gpu.cpu(), vn_cpu, rtol=0, atol=1e-8)
