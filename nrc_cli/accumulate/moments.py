"""Streaming, mergeable float64 moments (the state every Deep NRC metric is computed from).

Each accumulator follows the torchmetrics ``Metric`` shape (:mod:`nrc_cli.accumulate.base`):
state declared once in ``__init__``, from which ``reset``, ``merge``, ``to(device)`` and the
state dicts follow; ``update(batch)`` only changes state, ``compute()`` is pure. Co-moments are summed about a fixed shift (the first batch's mean), which
avoids the cancellation of raw sums of squares and makes the result independent of batch size
and order up to round-off.

The exact accumulators take a ``precision``: ``"exact"`` (the default) forms every product in
float64; ``"mixed"`` forms each batch's Gram and cross-products in float32 on that batch's
centred features and adds them into the same float64 sums (see :func:`add_gram_mixed_` and
docs/metrics.md, "Mixed precision", for the error this costs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator, ShiftedSums, shift_correction
from nrc_cli.accumulate.gram import (
    GRAM_BLOCK,
    SYRK_MIN_WIDTH,
    add_cross_,
    add_gram_,
    upper_blocks,
)

__all__ = [
    "GRAM_BLOCK",
    "PRECISIONS",
    "CrossMoments",
    "Moments",
    "NormalizedGram",
    "SquaredError",
    "Workspace",
    "add_gram_",
    "add_gram_mixed_",
    "check_precision",
    "shift_correction",
    "symmetric",
]

_F64 = torch.float64
_F32 = torch.float32
PRECISIONS = ("exact", "mixed")


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`; ``ValueError`` otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _floating(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, as float32 or float64 (other dtypes become float64)."""
    dtype = x.dtype if x.dtype in (torch.float32, _F64) else _F64
    return x.to(device=device, dtype=dtype)


def _widened(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, as float64 if it is float64, else as float32 (exact for bf16/f16)."""
    return x.to(device=device, dtype=_F64 if x.dtype == _F64 else _F32)


class Workspace:
    """Scratch buffers for the per-batch temporaries of accumulators updated one at a time.

    The layers of one forward pass are folded in one after another, so one buffer of b·p_max
    entries can hold every layer's shifted batch in turn. Without it each update allocates and
    frees a b×p array; with the p×p states allocated among those, the allocator's heap
    fragments, and the peak memory of two identical runs was seen to differ by 200 MB (by about
    half that with the buffer: the rest is the BLAS library's own first-batch buffers). On a GPU
    the reuse is safe because the kernels run in order on one stream.

    Each named ``slot`` is one buffer of bytes, viewed as the dtype asked for: ``"batch"`` holds
    a shifted batch (float64, or float32 in mixed precision), ``"product"`` the float32 product
    of mixed precision before it is added into its float64 sum.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def reserve(
        self,
        numel: int,
        device: torch.device | str,
        dtype: torch.dtype = _F64,
        slot: str = "batch",
    ) -> None:
        """Allocate room for ``numel`` entries of ``dtype`` now (before the states are)."""
        self.take((numel,), device, dtype, slot)

    def reserve_batches(
        self, batch: int, width: int, device: torch.device | str, precision: str = "exact"
    ) -> None:
        """Allocate room now for one shifted batch of ``batch``×``width`` features and, in mixed
        precision, for the float32 products of :func:`add_gram_mixed_` (before the states)."""
        device = torch.device(device)
        wide_on_cpu = device.type == "cpu" and width >= SYRK_MIN_WIDTH  # see _exact_on_cpu
        if check_precision(precision) == "exact" or wide_on_cpu:
            self.reserve(batch * width, device)
            return
        self.reserve(batch * width, device, _F32)
        if device.type == "cpu":
            side = min(width, GRAM_BLOCK)
            self.reserve(max(batch // MIXED_ROWS, 1) * side * side, device, _F32, "product")
        else:
            self.reserve(width * width, device, _F32, slot="product")

    def take(
        self,
        shape: tuple[int, ...],
        device: torch.device | str,
        dtype: torch.dtype = _F64,
        slot: str = "batch",
    ) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``, valid until the slot's next take."""
        item = torch.empty((), dtype=dtype).element_size()
        nbytes = math.prod(shape) * item
        device = torch.device(device)
        buf = self._buffers.get(slot)
        if buf is None or buf.device != device or buf.numel() < nbytes:
            # Whole float64 words, so that every dtype's view of the start is aligned.
            words = -(-nbytes // 8)
            buf = torch.empty(words, dtype=_F64, device=device).view(torch.uint8)
            self._buffers[slot] = buf
        return buf[:nbytes].view(dtype).view(shape)


def _out(
    workspace: Workspace | None, like: torch.Tensor, dtype: torch.dtype = _F64
) -> torch.Tensor | None:
    """Where a result shaped like ``like`` goes: the workspace, or (None) a new array."""
    return None if workspace is None else workspace.take(tuple(like.shape), like.device, dtype)


# Rows per float32 product in mixed precision: each float32 sum runs over at most this many
# samples before it is added into float64 (see add_gram_mixed_).
MIXED_ROWS = 128
# Rows of a float32 batch widened to float64 at a time for the float64 cross-product.
CROSS_ROWS = 256


@contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """Float32 products in float32, not TF32 (10 mantissa bits), on CUDA; restored after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def add_gram_mixed_(
    target: torch.Tensor, a: torch.Tensor, workspace: Workspace | None = None
) -> torch.Tensor:
    """target += aᵀa on and above the diagonal, with float32 products added into float64.

    ``a`` (b, p) is float32 and should be centred: each product's rounding error is relative
    to Σ_rows |a_ri||a_rj|, which centring keeps to the size of the spread. Each float32 sum
    runs over at most ``MIXED_ROWS`` rows (the rounding of a float32 sum grows with its length:
    on the worst cases of docs/metrics.md, 512-row sums came up to 3.4 times closer to the
    error bound than 256-row ones, and on an AVX-512 CPU 256-row sums exceeded it by 1.94
    times where 128-row ones stay at 0.50), over the same blocks as
    :func:`add_gram_`; the partial products are then added into ``target`` (float64). TF32
    stays off.

    On the CPU the row chunks of one block go through one batched product (``torch.bmm``): a
    busy 2-core machine makes every multi-threaded call wait on a barrier, so the number of
    calls matters as much as their size; the float64 additions run on one thread. On a GPU
    each row chunk is one full p×p product. (The accumulators send a wide CPU batch the exact
    way instead: :func:`_exact_on_cpu`.)
    """
    if a.dtype != _F32:
        raise ValueError(f"add_gram_mixed_: expected a float32 batch, got {a.dtype}")
    device = a.device
    b = a.shape[0]
    chunks = b // MIXED_ROWS if device.type == "cpu" and b >= 2 * MIXED_ROWS else 0
    whole = chunks * MIXED_ROWS
    stacked = a[:whole].reshape(chunks, MIXED_ROWS, a.shape[1]) if chunks else None
    parts = [a[start : start + MIXED_ROWS] for start in range(whole, b, MIXED_ROWS)]
    with _ieee_float32(device):
        for rows, cols in upper_blocks(a.shape[1], device):
            width = (rows.stop - rows.start, cols.stop - cols.start)
            if stacked is not None:
                out = _scratch(workspace, (chunks, *width), device)
                torch.bmm(stacked[:, :, rows].transpose(1, 2), stacked[:, :, cols], out=out)
                with single_threaded(device):
                    for product in out:
                        target[rows, cols].add_(product)
            for part in parts:
                out = _scratch(workspace, width, device)
                torch.mm(part[:, rows].T, part[:, cols], out=out)
                # An elementwise pass, on one thread (see nrc_cli._threads: on two threads
                # of a busy machine this addition was seen to take 30 ms instead of 0.04 ms).
                with single_threaded(device):
                    target[rows, cols].add_(out)
    return target


def _exact_on_cpu(z: torch.Tensor, device: torch.device) -> bool:
    """Whether a mixed-precision batch is accumulated the exact way: a wide one (p ≥
    ``SYRK_MIN_WIDTH``) on the CPU. There the exact Gram goes through ``dsyrk`` at half the
    multiply-adds, and float32 products of 128-row chunks (one triangle through ``ssyrk``, or
    blocked) cost as much or more once each chunk's p×p is added into float64; the mixed
    update's per-batch shifts (a rank-2 update of the p×p state, the cross-product widened in
    row chunks) only add work. The 512-wide MLP benchmark ran 0.78-0.91x as fast in mixed as
    in exact; now mixed gives exact's numbers at exact's cost there."""
    return device.type == "cpu" and z.shape[1] >= SYRK_MIN_WIDTH


def _scratch(
    workspace: Workspace | None, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """A float32 tensor of ``shape`` for a product: the workspace's, or a new one."""
    if workspace is None:
        return torch.empty(shape, dtype=_F32, device=device)
    return workspace.take(shape, device, _F32, slot="product")


def symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is that of ``upper``."""
    full = torch.triu(upper)
    full += torch.triu(upper, diagonal=1).T
    return full


def _place(
    acc: CrossMoments | NormalizedGram,
    device: torch.device | str | None,
    workspace: Workspace | None,
    precision: str,
) -> None:
    """Where an exact accumulator keeps its state (None: the first batch's device), the
    scratch buffers of its batches, and how it forms its products (``check_precision``)."""
    acc.device = torch.device(device) if device is not None else None
    acc.workspace = workspace
    acc.precision = check_precision(precision)


@dataclass(frozen=True)
class Moments:
    """Centred moments with 1/N normalisation.

    Attributes
    ----------
    n : int
        Number of samples.
    mean_z : Tensor, shape (p,)
    mean_y : Tensor, shape (t,)
    cov_z : Tensor, shape (p, p), or None
        Σ_Z = (1/N) Σ_i (z_i − z̄)(z_i − z̄)ᵀ; None from a
        :class:`nrc_cli.accumulate.sketch.CovarianceSketch`, which never forms it.
    cov_zy : Tensor, shape (p, t)
    cov_y : Tensor, shape (t, t)
    """

    n: int
    mean_z: torch.Tensor
    mean_y: torch.Tensor
    cov_z: torch.Tensor | None  # None from the sketch, which never forms it
    cov_zy: torch.Tensor
    cov_y: torch.Tensor


class CrossMoments(ShiftedSums):
    """Joint first and second centred moments of features z ∈ R^p and targets y ∈ R^t.

    Sums are taken about a fixed shift c (the first batch's mean): Σ(z − c), Σ(z − c)(z − c)ᵀ
    and the same for y and the cross term. The centred moments follow at the end by one small
    correction, cov = S/n − d dᵀ with d = mean − c; since c is itself a mean of the data, |d|
    is of the order of a standard error and the correction loses nothing to cancellation (the
    shifted-data algorithm; Chan, Golub & LeVeque 1983). Per batch this costs one subtraction
    and three matrix products, with no per-batch rank-one corrections of the p×p state. Merging
    re-expresses one state about the other's shift, so the merge is a sum.

    Memory is O(p² + p·t), independent of the number of samples; one update costs
    O(b·p·(p + t)) for a batch of b samples. With a :class:`Workspace`, the shifted batch is
    written there instead of into a new array.

    With ``precision="mixed"`` (except for a batch at least ``SYRK_MIN_WIDTH`` wide on the
    CPU, which is accumulated as in exact: see :func:`_exact_on_cpu`) the state is the same
    float64 sums, but each batch is centred
    on its own mean m_b (rounded to float32, so u = z − m_b is float32), its Gram Σ uuᵀ is
    formed in float32 products added into float64 (:func:`add_gram_mixed_`), and the move from
    m_b to the running shift c is the exact float64 identity
    Σ(u + d)(u + d)ᵀ = Σuuᵀ + s dᵀ + d sᵀ + b d dᵀ (d = m_b − c, s = Σu): one rank-2 update of
    the p×p state per batch. Centring each batch keeps the float32 products to the size of the
    batch's spread even when the data drift away from the first batch. The cross-product
    Σ u (y − ȳ_b)ᵀ (p×t) and Σ(y − c_y)(y − c_y)ᵀ (t×t) stay float64: they are cheap, and a
    float32 cross-product was measured to move the probe MSE of a collapsed layer by 3e-4
    relative (the probe subtracts the explained variance from tr Σ_Y).
    """

    workspace: Workspace | None
    precision: str

    def __init__(
        self,
        device: torch.device | str | None = None,
        workspace: Workspace | None = None,
        *,
        precision: str = "exact",
    ) -> None:
        super().__init__()
        _place(self, device, workspace, precision)
        # Σ (z − c_z)(z − c_z)ᵀ, upper triangle only (see add_gram_); the cross and target sums.
        self.add_comoment("czz", "z", "z")
        self.add_comoment("czy", "z", "y")
        self.add_comoment("cyy", "y", "y")

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
        if self.precision == "mixed" and not _exact_on_cpu(z, device):
            self._update_mixed(z, y, device)
            return
        with single_threaded(device):
            # float32 batches are widened inside the subtraction below (exactly), not copied.
            z, y = _floating(z, device), _floating(y, device)
            self._start(z, y, None, device)
            u = torch.sub(z, self.cz, out=_out(self.workspace, z))
            v = y - self.cy
            self.sz.add_(u.sum(dim=0))
            self.sy.add_(v.sum(dim=0))
            add_cross_(self.czy, u, v)
            self.cyy.addmm_(v.T, v)
        # The p×p product goes straight into the state (no p×p temporary), with every thread.
        add_gram_(self.czz, u)
        self.n += b

    def _merge_nonempty(self, other: Accumulator) -> None:
        with single_threaded(self.czz.device):
            super()._merge_nonempty(other)

    def _start(self, z: torch.Tensor, y: torch.Tensor, shift: torch.Tensor | None, device) -> None:
        """On the first batch, the shifts (z's: ``shift``, or its mean) and zero sums; on later
        ones, check the widths."""
        if self.n == 0:
            p, t = z.shape[1], y.shape[1]
            self.cz = z.mean(dim=0, dtype=_F64) if shift is None else shift
            self.cy = y.mean(dim=0, dtype=_F64)
            self.sz = torch.zeros(p, dtype=_F64, device=device)
            self.sy = torch.zeros(t, dtype=_F64, device=device)
            self.czz = torch.zeros(p, p, dtype=_F64, device=device)
            self.czy = torch.zeros(p, t, dtype=_F64, device=device)
            self.cyy = torch.zeros(t, t, dtype=_F64, device=device)
        elif z.shape[1] != self.cz.shape[0] or y.shape[1] != self.cy.shape[0]:
            raise ValueError(
                f"feature/target width changed: had ({self.cz.shape[0]}, "
                f"{self.cy.shape[0]}), got ({z.shape[1]}, {y.shape[1]})"
            )

    def _update_mixed(self, z: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        """One batch in mixed precision (see the class docstring)."""
        b = z.shape[0]
        with single_threaded(device):
            z, y = _widened(z, device), y.to(device=device, dtype=_F64)
            mean = z.mean(dim=0, dtype=_F64)
            if z.dtype == _F32:
                # The batch's own shift, rounded to float32 so that u = z − m is formed in
                # float32 (one rounding, relative to |u|); it is then exact as a float64 shift.
                m32 = mean.to(_F32)
                shift = m32.to(_F64)
                u = torch.sub(z, m32, out=_out(self.workspace, z, _F32))
            else:
                shift = mean
                u = (z - mean).to(_F32)
            self._start(z, y, shift, device)
            # Σu from the float64 mean: it differs from the sum of the rounded u by rounding
            # noise only, and saves a pass over the batch.
            su = (mean - shift).mul_(b)
            d = shift - self.cz
            my = y.mean(dim=0)
            w = y - my
            e = my - self.cy
            v = y - self.cy
            self.sz.add_(su).add_(d, alpha=b)  # Σ(z − c_z) = Σu + b·d
            self.sy.add_(v.sum(dim=0))
            self.cyy.addmm_(v.T, v)
            # The cross-product stays float64 (u widened a few rows at a time): it costs b·p·t,
            # and the probe's error is its error magnified by tr Σ_Y / probe MSE.
            for start in range(0, b, CROSS_ROWS):
                rows = slice(start, start + CROSS_ROWS)
                add_cross_(self.czy, u[rows].to(_F64), w[rows])
            self.czy.add_(shift_correction(su, d, w.sum(dim=0), e, b))
            # s dᵀ + d sᵀ + b d dᵀ = a dᵀ + d aᵀ with a = s + (b/2) d: one rank-2 update.
            a = su + (b / 2) * d
            self.czz.addmm_(torch.stack((a, d), dim=1), torch.stack((d, a)))
        add_gram_mixed_(self.czz, u, self.workspace)
        self.n += b

    def compute(self) -> Moments:
        """The moments so far, normalised by 1/N; the state is not changed."""
        n, dz, dy = self.offsets()
        return Moments(
            n,
            self.cz + dz,
            self.cy + dy,
            symmetric(self.czz).div_(n).sub_(torch.outer(dz, dz)),
            self.czy / n - torch.outer(dz, dy),
            self.cyy / n - torch.outer(dy, dy),
        )


class NormalizedGram(Accumulator):
    """(1/N) Σ_i h̃_i h̃_iᵀ with h̃ = z/‖z‖ (a zero row stays 0): uncentred, for last-layer NRC.

    ``gram`` holds the upper triangle of the sum (see :func:`add_gram_`).
    """

    gram: torch.Tensor | None
    workspace: Workspace | None
    precision: str

    def __init__(
        self,
        device: torch.device | str | None = None,
        workspace: Workspace | None = None,
        *,
        precision: str = "exact",
    ) -> None:
        super().__init__()
        _place(self, device, workspace, precision)
        self.add_state("n", 0)
        self.add_state("gram", None, shape=("p", "p"))

    def update(self, z: torch.Tensor) -> None:
        """Add a batch ``z`` of shape (b, p); it is not modified.

        In mixed precision (but for a wide batch on the CPU: :func:`_exact_on_cpu`) h̃ is formed
        in float32 and its Gram in float32 products added into the float64 sum
        (:func:`add_gram_mixed_`); |h̃| ≤ 1, so no shift is needed.
        """
        device = self.device if self.device is not None else z.device
        mixed = self.precision == "mixed" and not _exact_on_cpu(z, device)
        with single_threaded(device):
            z = _widened(z, device) if mixed else _floating(z, device)
            norms = torch.linalg.vector_norm(z, dim=1, keepdim=True, dtype=_F64)
            # A zero row has norm 0: divided by 1 instead, it stays 0.
            safe = norms.masked_fill(norms == 0, 1.0)
            if mixed and z.dtype == _F32:
                h = torch.div(z, safe.to(_F32), out=_out(self.workspace, z, _F32))
            elif mixed:
                h = (z / safe).to(_F32)
            else:
                h = torch.div(z, safe, out=_out(self.workspace, z))
            if self.gram is None:
                self.gram = torch.zeros(h.shape[1], h.shape[1], dtype=_F64, device=h.device)
        if mixed:
            add_gram_mixed_(self.gram, h, self.workspace)
        else:
            add_gram_(self.gram, h)
        self.n += z.shape[0]

    def compute(self) -> torch.Tensor:
        if self.n == 0 or self.gram is None:
            raise ValueError("no samples accumulated")
        return symmetric(self.gram).div_(self.n)


class SquaredError(Accumulator):
    """Sum of squared prediction errors over all N·t entries."""

    sse: float
    count: int

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", 0)  # samples (rows)
        self.add_state("sse", 0.0)
        self.add_state("count", 0)  # entries

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        d = pred.to(_F64) - y.to(device=pred.device, dtype=_F64)
        self.sse += float((d * d).sum())
        self.count += d.numel()
        self.n += d.shape[0] if d.ndim else 1

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError("no samples accumulated")
        return self.sse / self.count
