"""Dense symmetric eigensolvers and subspace comparisons used by the collapse metrics.

Every routine accepts CPU or CUDA tensors, computes in ``float64`` on the device of its input and
returns ``float64`` tensors on that device. Randomness comes only from an explicit ``seed``: the
Gaussian test matrix is drawn on the CPU by a generator seeded with ``seed`` and then moved to the
input's device, so one seed gives the same test matrix on every device (the arithmetic that
follows may still differ in the last bits between devices).

Conventions
-----------
* Data and rank are positional, tuning knobs are keyword-only.
* Eigenvalues are returned in descending order, eigenvectors as the matching columns.
* Each eigenvector's sign is fixed so that its entry of largest magnitude is positive, which makes
  results comparable across runs and devices without sign juggling.

Which solver to use is decided in exactly one place, :func:`resolve_svd_method`.

References
----------
.. [1] N. Halko, P. G. Martinsson and J. A. Tropp, "Finding structure with randomness:
   Probabilistic algorithms for constructing approximate matrix decompositions", SIAM Review
   53(2), 217-288, 2011. Algorithms 4.3 (randomized range finder with power iterations) and 4.4
   (randomized subspace iteration).
.. [2] J. A. Tropp, A. Yurtsever, M. Udell and V. Cevher, "Fixed-rank approximation of a
   positive-semidefinite matrix from streaming data", NeurIPS 2017. Algorithm 3 (stable Nystrom
   approximation).
.. [3] G. H. Golub and C. F. Van Loan, "Matrix Computations", 4th ed., Johns Hopkins, 2013,
   section 2.5.3 (distance between subspaces) and section 6.4.3 (principal angles).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nrc_cli._threads import single_threaded

__all__ = [
    "DEFAULT_OVERSAMPLE",
    "DEFAULT_POWER_ITERS",
    "SVD_METHODS",
    "exact_eigh",
    "gaussian_test_matrix",
    "nystrom_eigh",
    "principal_alignment",
    "projector_distance",
    "randomized_eigh",
    "randomized_range_finder",
    "randomized_svd",
    "resolve_svd_method",
    "single_threaded",
]

DEFAULT_OVERSAMPLE = 10
"""Extra sketch columns beyond the requested rank.

Halko et al. [1]_ (section 4.2) show that ``5`` to ``10`` extra columns make the probability of a
poor range estimate negligible; ``10`` costs little next to typical ranks and widths.
"""

DEFAULT_POWER_ITERS = 4
"""Number of subspace-iteration steps in :func:`randomized_eigh`.

Each step is one product with the symmetric matrix ``A``, so after ``q`` steps the sketch spans
the range of ``A**(q + 1) @ Omega`` and the error from the tail of the spectrum is damped by
``(lambda_{l+1} / lambda_k) ** (q + 1)``. Feature covariances can have slowly decaying, power-law
spectra (before collapse sets in, for instance), and with ``q = 0`` the top eigenpairs are then
badly wrong. Measured on ``lambda_j = j**-0.5`` with ``p = 1000``, ``k = 4``: ``q = 0`` gives
about 45 % eigenvalue error and projector distance 0.95, ``q = 4`` about 0.1 % and 0.05 (the
negative-control test in ``tests/unit/test_linalg.py``). ``q = 4`` gives the damping exponent ``5``,
the same as ``q = 2`` in the ``A A^T`` formulation of Halko et al. [1]_ (whose section 4.5
recommends ``q = 1`` or ``2``), at five products with ``A``: still far cheaper than a full
``O(p**3)`` eigendecomposition once ``p`` is a few thousand.
"""

SVD_METHODS = ("auto", "exact", "randomized")
"""Accepted values of the ``method`` argument of :func:`resolve_svd_method`."""

_FLOAT64_EPS = torch.finfo(torch.float64).eps

# Each retry multiplies the Nystrom shift by this factor; see nystrom_eigh.
_SHIFT_GROWTH = 10.0
_MAX_SHIFT_RETRIES = 8


def resolve_svd_method(
    method: str,
    width: int,
    rank: int,
    *,
    oversample: int = DEFAULT_OVERSAMPLE,
    threshold: int = 2048,
) -> str:
    """Resolve a user-facing eigensolver choice to ``"exact"`` or ``"randomized"``.

    This is the only place where ``"auto"`` is resolved, and where a randomized request on a
    narrow matrix is turned into an exact one.

    Parameters
    ----------
    method : {"auto", "exact", "randomized"}
        The requested method.
    width : int
        Side length ``p`` of the ``p x p`` matrix that will be decomposed.
    rank : int
        Number of leading eigenpairs that will be requested.
    oversample : int, default ``DEFAULT_OVERSAMPLE`` (10)
        Extra sketch columns the randomized solver would use.
    threshold : int, default 2048
        Largest width for which ``"auto"`` picks the exact solver. A ``2048 x 2048`` ``float64``
        eigendecomposition takes 1 to 2 s on one CPU core (measured: 1.7 s, against 0.17 s for
        :func:`randomized_eigh` with ``rank = 4``); above that the ``O(p**3)`` cost grows quickly
        while the randomized solver costs ``O(p**2 * (rank + oversample) * (power_iters + 1))``.

    Returns
    -------
    str
        ``"exact"`` or ``"randomized"``. ``"exact"`` stays ``"exact"``. Both ``"auto"`` and
        ``"randomized"`` become ``"exact"`` when the sketch would be at least half as wide as
        the matrix (``2 * (rank + oversample) >= width``): subspace iteration then costs about
        as much as :func:`exact_eigh` (``(power_iters + 1)`` products of ``p x p`` by ``p x l``
        with ``l >= p / 2``) and still carries an error (1e-2 measured on a 16-wide layer at
        ``rank = 4``), so the exact spectrum is the better deal. Otherwise ``"randomized"``
        stays, and ``"auto"`` becomes ``"exact"`` up to ``threshold`` and ``"randomized"``
        above it.

    Raises
    ------
    ValueError
        If ``method`` is not one of ``auto``, ``exact``, ``randomized``.
    """
    if method not in SVD_METHODS:
        raise ValueError(f"unknown SVD method {method!r}; expected one of {', '.join(SVD_METHODS)}")
    if method == "exact" or 2 * (rank + oversample) >= width:
        return "exact"
    if method == "randomized":
        return method
    return "exact" if width <= threshold else "randomized"


def gaussian_test_matrix(
    p: int, s: int, *, seed: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Draw the standard Gaussian test matrix used by the randomized solvers.

    Parameters
    ----------
    p, s : int
        Number of rows and columns.
    seed : int
        Seed of the CPU generator. The same ``seed`` gives the same matrix on every device.
    device : torch.device or str, optional
        Device of the returned tensor (default: CPU).

    Returns
    -------
    torch.Tensor, shape (p, s), float64
        Independent standard normal entries.

    Notes
    -----
    The matrix is always drawn on the CPU and then copied, because CUDA generators produce a
    different stream from the CPU one for the same seed.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    omega = torch.randn(p, s, generator=generator, dtype=torch.float64, device="cpu")
    return omega if device is None else omega.to(device)


def randomized_range_finder(
    apply: Callable[[torch.Tensor], torch.Tensor],
    p: int,
    size: int,
    *,
    power_iters: int,
    seed: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Orthonormal basis of the dominant range of a symmetric PSD operator ``M`` (p x p).

    Randomized subspace iteration (Halko et al. [1]_, Algorithm 4.4), the one range finder under
    every randomized solver here::

        Q = qr(M @ gaussian_test_matrix(p, size, seed=seed))
        repeat power_iters times:  Q = qr(M @ Q)

    Parameters
    ----------
    apply : callable
        ``apply(X)`` returns ``M @ X`` for a (p, size) float64 ``X``: ``A @ X`` for a
        covariance (:func:`randomized_eigh`), ``W.T @ (W @ X)`` for a weight's row space
        (:func:`randomized_svd`, never forming ``W.T @ W``).
    p, size : int
        Side of ``M`` and number of basis vectors (rank + oversample).
    power_iters : int
        Re-orthonormalised products after the first; the tail is damped by
        ``(lambda_{size+1} / lambda_k) ** (power_iters + 1)``.
    seed : int
        Seed of the Gaussian test matrix (see :func:`gaussian_test_matrix`).
    device : torch.device or str, optional
        Where the test matrix goes (that of ``apply``'s operands).

    Returns
    -------
    torch.Tensor, shape (p, size), float64
        Orthonormal columns.

    Notes
    -----
    Cost ``power_iters + 1`` applications of ``M`` to ``size`` vectors and as many thin QR
    factorisations, ``O(p * size**2)`` each.
    """
    omega = gaussian_test_matrix(p, size, seed=seed, device=device)
    Q, _ = torch.linalg.qr(apply(omega))
    for _ in range(power_iters):
        Q, _ = torch.linalg.qr(apply(Q))
    return Q


def exact_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full eigendecomposition of a symmetric matrix, largest eigenvalue first.

    Parameters
    ----------
    A : torch.Tensor, shape (p, p)
        Symmetric matrix. It is symmetrised as ``(A + A.T) / 2`` first, so both triangles are used
        (``torch.linalg.eigh`` alone would read only the lower one).

    Returns
    -------
    eigenvalues : torch.Tensor, shape (p,), float64
        In descending order.
    eigenvectors : torch.Tensor, shape (p, p), float64
        Orthonormal columns; column ``j`` belongs to ``eigenvalues[j]``.

    Notes
    -----
    Cost ``O(p**3)`` time and ``O(p**2)`` memory (LAPACK ``syevd`` on CPU, cuSOLVER on CUDA).
    """
    A = _as_square_float64(A, "A")
    evals, evecs = torch.linalg.eigh(_symmetrize(A))
    evals = evals.flip(0)
    evecs = evecs.flip(1)
    return evals, _fix_signs(evecs)


def randomized_eigh(
    A: torch.Tensor,
    rank: int,
    *,
    oversample: int = DEFAULT_OVERSAMPLE,
    power_iters: int = DEFAULT_POWER_ITERS,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of a symmetric positive semidefinite matrix by subspace iteration.

    Randomized subspace iteration (Halko et al. [1]_, Algorithm 4.4, followed by the direct
    eigenvalue decomposition of their Algorithm 5.3) specialised to symmetric ``A``::

        Omega = gaussian_test_matrix(p, l, seed=seed)      # l = rank + oversample
        Q = qr(A @ Omega)
        repeat power_iters times:  Q = qr(A @ Q)
        B = Q.T @ A @ Q                                    # l x l, symmetrised
        B = U diag(w) U.T
        return w[:rank], (Q @ U)[:, :rank]

    Re-orthonormalising after every product keeps eigen-directions below
    ``eps * lambda_1`` from being lost to rounding, which plain power iteration
    (Algorithm 4.3) would suffer.

    Parameters
    ----------
    A : torch.Tensor, shape (p, p)
        Symmetric positive semidefinite matrix (e.g. a covariance).
    rank : int
        Number ``k`` of leading eigenpairs to return, ``1 <= k <= p``.
    oversample : int, default ``DEFAULT_OVERSAMPLE`` (10)
        Extra sketch columns ``s``; the sketch has ``l = k + s`` columns.
    power_iters : int, default ``DEFAULT_POWER_ITERS`` (4)
        Number ``q`` of subspace-iteration steps; the tail error is damped by
        ``(lambda_{l+1} / lambda_k) ** (q + 1)``.
    seed : int, default 0
        Seed of the Gaussian test matrix (see :func:`gaussian_test_matrix`).

    Returns
    -------
    eigenvalues : torch.Tensor, shape (rank,), float64
        Ritz values in descending order. They are not clipped at zero: tiny negative values
        reveal rounding or an input that is not positive semidefinite.
    eigenvectors : torch.Tensor, shape (p, rank), float64
        Orthonormal Ritz vectors, column ``j`` belonging to ``eigenvalues[j]``.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[1, p]`` or ``oversample`` or ``power_iters`` is negative.

    Notes
    -----
    Cost ``O(p**2 * (k + s) * (q + 1))`` for the products with ``A`` plus
    ``O(p * (k + s)**2 * (q + 1))`` for the QR factorisations; memory ``O(p * (k + s))`` beyond
    ``A``. When ``k + s >= p`` the sketch would be as large as ``A`` itself, so the result is
    computed by :func:`exact_eigh` and truncated instead (no randomness is used then).

    The estimates are accurate when the spectrum decays past index ``k``: for the relative
    eigenvalue error and the subspace angle the relevant quantity is
    ``(lambda_{l+1} / lambda_k) ** (q + 1)`` (see [1]_, section 10.4). On a geometric spectrum
    ``lambda_j = 0.5**j`` the defaults are exact to rounding (``p = 1000``, ``k = 4``); on a
    slowly decaying one they are not (see :data:`DEFAULT_POWER_ITERS`), and ``power_iters``
    should be raised or :func:`exact_eigh` used when the top subspace itself matters. Ritz values
    never exceed the true eigenvalues, so errors bias them low.
    """
    A = _as_square_float64(A, "A")
    p = A.shape[0]
    _check_rank(rank, p)
    if oversample < 0:
        raise ValueError(f"oversample must be >= 0, got {oversample}")
    if power_iters < 0:
        raise ValueError(f"power_iters must be >= 0, got {power_iters}")

    sketch_cols = min(rank + oversample, p)
    if sketch_cols >= p:
        evals, evecs = exact_eigh(A)
        return evals[:rank], evecs[:, :rank]

    A = _symmetrize(A)
    Q = randomized_range_finder(
        lambda m: A @ m, p, sketch_cols, power_iters=power_iters, seed=seed, device=A.device
    )
    B = _symmetrize(Q.mT @ (A @ Q))
    w, U = torch.linalg.eigh(B)
    w = w.flip(0)[:rank]
    vecs = Q @ U.flip(1)[:, :rank]
    return w, _fix_signs(vecs)


def nystrom_eigh(
    Y: torch.Tensor, Omega: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of a PSD matrix from a one-pass sketch, by stable Nystrom.

    Given the sketch ``Y = A @ Omega`` of a symmetric positive semidefinite ``p x p`` matrix ``A``
    and the test matrix ``Omega``, build the Nystrom approximation
    ``A_nys = Y (Omega.T Y)^+ Y.T`` in the numerically stable form of Tropp et al. [2]_,
    Algorithm 3::

        nu = sqrt(p) * eps * ||Y||_F                # eps = float64 machine epsilon
        Y_nu = Y + nu * Omega
        M = sym(Omega.T @ Y_nu) = L L.T             # Cholesky
        Bf = Y_nu @ inv(L.T)                        # triangular solve
        Bf = U diag(sigma) V.T                      # thin SVD
        eigenvalues = max(sigma**2 - nu, 0)

    The sketch can be accumulated in one pass over data (``Y += x (x.T Omega)`` per sample), so
    ``A`` itself never needs to be formed.

    Parameters
    ----------
    Y : torch.Tensor, shape (p, s)
        The sketch ``A @ Omega``.
    Omega : torch.Tensor, shape (p, s)
        The test matrix that produced ``Y``, normally from :func:`gaussian_test_matrix`.
    rank : int
        Number ``k`` of leading eigenpairs to return, ``1 <= k <= s``.

    Returns
    -------
    eigenvalues : torch.Tensor, shape (rank,), float64
        Descending, non-negative.
    eigenvectors : torch.Tensor, shape (p, rank), float64
        Orthonormal columns ``U[:, :rank]``.

    Raises
    ------
    ValueError
        If ``Y`` and ``Omega`` differ in shape or are not two-dimensional.
    ValueError
        If ``rank`` is not in ``[1, s]``.
    torch.linalg.LinAlgError
        If the Cholesky factorisation still fails after the shift has been increased
        ``10 ** 8``-fold, which means ``A`` is far from positive semidefinite.

    Notes
    -----
    Cost ``O(p * s**2)`` time and ``O(p * s)`` memory (on top of forming ``Y``).

    The shift ``nu`` makes ``Omega.T Y_nu`` positive definite even when ``A`` has rank below
    ``s``, at a perturbation of about ``nu`` in every eigenvalue, which the final ``- nu`` undoes
    to first order. The paper uses ``sqrt(p) * eps(||Y||_2)``; the Frobenius norm is a cheap upper
    bound within a factor ``sqrt(s)``. If rounding still leaves the ``s x s`` core indefinite, the
    Cholesky factorisation is retried with the shift multiplied by 10 each time, up to 8 times;
    the eigenvalue error grows in proportion to the shift but stays around ``1e-7`` of
    ``||Y||_F`` in the worst case.

    There is no power iteration, so accuracy needs a faster-decaying spectrum than
    :func:`randomized_eigh` does: the error of the top ``k`` pairs scales roughly like
    ``lambda_{s-1} / lambda_k``. Measured with ``p = 1000``, ``k = 4``, ``s = 14``: on
    ``lambda_j = 0.2**j`` eigenvalue and subspace errors are about ``1e-7``, on ``0.5**j`` about
    ``1e-3``; on an exactly rank-``k`` matrix about ``1e-11``.
    """
    if Y.ndim != 2 or Omega.ndim != 2 or Y.shape != Omega.shape:
        raise ValueError(
            f"Y and Omega must be 2-D of the same shape (p, s), got {tuple(Y.shape)} "
            f"and {tuple(Omega.shape)}"
        )
    p, s = Y.shape
    _check_rank(rank, s)
    Y = Y.to(torch.float64)
    Omega = Omega.to(device=Y.device, dtype=torch.float64)

    y_norm = torch.linalg.matrix_norm(Y, ord="fro")
    if y_norm == 0:
        # A @ Omega == 0 means A == 0 on the sketched range; any orthonormal basis is an
        # eigenbasis, and the shift below would be zero, leaving Cholesky nothing to factor.
        Q, _ = torch.linalg.qr(Omega)
        return torch.zeros(rank, dtype=torch.float64, device=Y.device), _fix_signs(Q[:, :rank])

    nu = float(p) ** 0.5 * _FLOAT64_EPS * float(y_norm)
    core = Omega.mT @ Y
    gram = Omega.mT @ Omega
    for attempt in range(_MAX_SHIFT_RETRIES + 1):
        L, info = torch.linalg.cholesky_ex(_symmetrize(core + nu * gram))
        if int(info) == 0:
            break
        if attempt == _MAX_SHIFT_RETRIES:
            raise torch.linalg.LinAlgError(
                "nystrom_eigh: the Nystrom core Omega.T @ (A @ Omega) is not positive definite "
                f"even with shift {nu:.3e}; is A positive semidefinite?"
            )
        nu *= _SHIFT_GROWTH
    Y_nu = Y + nu * Omega
    Bf = torch.linalg.solve_triangular(L.mT, Y_nu, upper=True, left=False)
    U, sigma, _ = torch.linalg.svd(Bf, full_matrices=False)
    evals = torch.clamp(sigma[:rank] ** 2 - nu, min=0.0)
    return evals, _fix_signs(U[:, :rank])


def principal_alignment(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """Mean cosine of the principal angles between two subspaces of equal dimension.

    Parameters
    ----------
    Q1, Q2 : torch.Tensor, shape (p, m)
        Orthonormal bases (``Q.T @ Q = I``) of two ``m``-dimensional subspaces of ``R**p``.

    Returns
    -------
    float
        ``mean(svdvals(Q1.T @ Q2))`` in ``[0, 1]``: the singular values are the cosines of the
        principal angles (Golub and Van Loan [3]_, section 6.4.3). ``1`` for identical
        subspaces, ``0`` for orthogonal ones; rotating one direction by ``theta`` out of ``m``
        gives ``(m - 1 + cos(theta)) / m``.

    Raises
    ------
    ValueError
        If the shapes differ or are not two-dimensional.

    Notes
    -----
    Cost ``O(p * m**2)``. The result is clamped to ``[0, 1]`` against rounding.
    """
    Q1, Q2 = _as_basis_pair(Q1, Q2, require_equal_columns=True)
    cosines = torch.linalg.svdvals(Q1.mT @ Q2)
    return float(torch.clamp(cosines.mean(), 0.0, 1.0))


def projector_distance(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """Spectral-norm distance between the orthogonal projectors onto two subspaces.

    Parameters
    ----------
    Q1 : torch.Tensor, shape (p, m1)
        Orthonormal basis of the first subspace.
    Q2 : torch.Tensor, shape (p, m2)
        Orthonormal basis of the second subspace.

    Returns
    -------
    float
        ``||Q1 Q1.T - Q2 Q2.T||_2`` in ``[0, 1]``. For ``m1 == m2`` this is the sine of the
        largest principal angle (Golub and Van Loan [3]_, section 2.5.3); it is ``1`` when
        ``m1 != m2``.

    Raises
    ------
    ValueError
        If the bases are not two-dimensional with the same number of rows.

    Notes
    -----
    Computed without forming the ``p x p`` projectors, as
    ``max(||Q2 - Q1 (Q1.T Q2)||_2, ||Q1 - Q2 (Q2.T Q1)||_2)``, which equals the projector
    distance for orthogonal projectors. Cost ``O(p * m1 * m2 + p * max(m1, m2)**2)``. Unlike the
    textbook ``sqrt(1 - sigma_min**2)`` this keeps full relative accuracy for tiny angles, which
    is what accuracy tests of the eigensolvers need.
    """
    Q1, Q2 = _as_basis_pair(Q1, Q2, require_equal_columns=False)
    cross = Q1.mT @ Q2
    r12 = torch.linalg.matrix_norm(Q2 - Q1 @ cross, ord=2)
    r21 = torch.linalg.matrix_norm(Q1 - Q2 @ cross.mT, ord=2)
    return float(torch.clamp(torch.maximum(r12, r21), 0.0, 1.0))


def _as_square_float64(A: torch.Tensor, name: str) -> torch.Tensor:
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {tuple(A.shape)}")
    return A.to(torch.float64)


def _as_basis_pair(
    Q1: torch.Tensor, Q2: torch.Tensor, *, require_equal_columns: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if Q1.ndim != 2 or Q2.ndim != 2 or Q1.shape[0] != Q2.shape[0]:
        raise ValueError(
            f"bases must be 2-D with the same number of rows, got {tuple(Q1.shape)} "
            f"and {tuple(Q2.shape)}"
        )
    if require_equal_columns and Q1.shape[1] != Q2.shape[1]:
        raise ValueError(
            f"bases must span subspaces of equal dimension, got {Q1.shape[1]} and {Q2.shape[1]} "
            "columns"
        )
    return Q1.to(torch.float64), Q2.to(device=Q1.device, dtype=torch.float64)


def _check_rank(rank: int, limit: int) -> None:
    if not 1 <= rank <= limit:
        raise ValueError(f"rank must be between 1 and {limit}, got {rank}")


def _symmetrize(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.mT)


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    # Eigenvectors are defined up to sign and LAPACK/cuSOLVER pick signs differently; tie them to
    # the entry of largest magnitude so results compare across devices and runs.
    idx = vectors.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(torch.gather(vectors, 0, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vectors * signs


def randomized_svd(
    W: torch.Tensor,
    rank: int,
    *,
    oversample: int = DEFAULT_OVERSAMPLE,
    power_iters: int = DEFAULT_POWER_ITERS,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading singular values and right singular vectors of a (q, p) matrix.

    Randomized subspace iteration on the row space (Halko et al. [1]_, Algorithms 4.4 and 5.1)::

        Q = qr(W.T @ (W @ Omega))                     # Omega: p x l, l = rank + oversample
        repeat power_iters times:  Q = qr(W.T @ (W @ Q))
        W @ Q = U diag(s) Vb.T                        # q x l, thin SVD
        return s[:rank], (Q @ Vb)[:, :rank]

    Parameters
    ----------
    W : torch.Tensor, shape (q, p)
    rank : int
        Number ``k`` of leading singular triplets, ``1 <= k <= min(q, p)``.
    oversample, power_iters, seed
        As in :func:`randomized_eigh`.

    Returns
    -------
    singular_values : torch.Tensor, shape (rank,), float64, descending
    right_vectors : torch.Tensor, shape (p, rank), float64, orthonormal columns

    Notes
    -----
    Cost ``O(q * p * (k + s) * (2 q_iter + 3))``, never forming ``W.T @ W``. When
    ``k + s >= min(q, p)`` a full thin SVD is used instead.
    """
    W = W.detach().to(torch.float64)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D, got shape {tuple(W.shape)}")
    q, p = W.shape
    _check_rank(rank, min(q, p))
    if oversample < 0 or power_iters < 0:
        raise ValueError("oversample and power_iters must be >= 0")
    width = rank + oversample
    if width >= min(q, p):
        _, s, vh = torch.linalg.svd(W, full_matrices=False)
        return s[:rank], _fix_signs(vh[:rank].T)
    Q = randomized_range_finder(
        lambda m: W.T @ (W @ m), p, width, power_iters=power_iters, seed=seed, device=W.device
    )
    _, s, vbh = torch.linalg.svd(W @ Q, full_matrices=False)
    return s[:rank], _fix_signs(Q @ vbh[:rank].T)
