"""Streaming, mergeable per-class moments (the state every classification metric comes from).

Deep Neural Collapse in a classifier (docs/classification.md) needs, per weight layer, the class
means μ_c, the global mean μ_G and the within-class covariance Σ_W. All three follow from one
pass over the data with

* the count n_c and the sum Σ_{i in c} (z_i − c_c) of every class, about a per-class shift c_c,
* one p×p Gram S = Σ_i (z_i − c_{c_i})(z_i − c_{c_i})ᵀ of the class-shifted features,

in O(p² + L·p) memory, L being the largest label seen plus one. Each class's shift is its mean
in the first batch that holds it, so that Σ_W = (S − Σ_c n_c d_c d_cᵀ)/N with d_c = μ_c − c_c
subtracts corrections of the order of a standard error, never the between-class scatter: with
collapsed features (z_i ≈ μ_{c_i}) every shifted row is about zero and Σ_W keeps its full
relative accuracy, where "total minus between" would be left with the round-off of the large
between-class part. The total covariance follows without cancellation as
Σ_T = Σ_W + Σ_c (n_c/N)(μ_c − μ_G)(μ_c − μ_G)ᵀ, a sum of two PSD matrices.

The nearest-class-mean columns need the class means before they can be evaluated: a second
pass feeds :class:`NearestClassMean` with the means the first one gave.

Every accumulator here declares its state with :mod:`nrc_cli.accumulate.base` (``add_state``), from
which ``reset``, ``to(device)`` and the state dicts follow; ``update(batch)`` only changes
state, ``compute()`` is pure, ``merge(other)`` folds in a partial state computed on other
samples (re-shifting the per-class sums where needed), and ``align_`` readies a data-parallel
sum: the processes agree on the label values and on one shift per class, the class's global
mean, after which counts, sums and second-order sums add up to the merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator, Collective, checksum, same_everywhere
from nrc_cli.accumulate.labels import show_values
from nrc_cli.accumulate.moments import Workspace, add_gram_, symmetric

_F64 = torch.float64
_I64 = torch.int64
# Rows compared again explicitly per chunk in NearestClassMean.assign: chunk·C·p float64 entries.
_TIE_CHUNK_ENTRIES = 1 << 22


def _floating(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, as float32 or float64 (other dtypes become float64)."""
    dtype = x.dtype if x.dtype in (torch.float32, _F64) else _F64
    return x.to(device=device, dtype=dtype)


def _check_labels(labels: torch.Tensor, b: int) -> None:
    if labels.ndim != 1 or labels.shape[0] != b:
        raise ValueError(f"expected labels of shape ({b},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"expected integer labels, got dtype {labels.dtype}")


@dataclass(frozen=True)
class ClassStats:
    """Per-class moments of one layer's features, with 1/N normalisation.

    Attributes
    ----------
    n : int
        N, the number of samples.
    labels : Tensor, shape (C,), int64
        The label values present, ascending (the classes, in their order everywhere).
    counts : Tensor, shape (C,), int64
        n_c.
    means : Tensor, shape (C, p)
        μ_c.
    mean : Tensor, shape (p,)
        μ_G, the mean over all N samples.
    within_trace : float
        tr Σ_W.
    cov_within : Tensor, shape (p, p), or None
        Σ_W = (1/N) Σ_i (z_i − μ_{c_i})(z_i − μ_{c_i})ᵀ (None when sketched).
    within_sketch : Tensor, shape (p, s), or None
        Σ_W·Ω, for a sketched layer (None otherwise).
    omega : Tensor, shape (p, s), or None
        The sketch's test matrix Ω.
    """

    n: int
    labels: torch.Tensor
    counts: torch.Tensor
    means: torch.Tensor
    mean: torch.Tensor
    within_trace: float
    cov_within: torch.Tensor | None = None
    within_sketch: torch.Tensor | None = None
    omega: torch.Tensor | None = None

    @property
    def n_classes(self) -> int:
        return int(self.labels.shape[0])

    @property
    def centred_means(self) -> torch.Tensor:
        """M = [μ_c − μ_G]_c, shape (p, C): the centred class means as columns."""
        return (self.means - self.mean).T

    def _weighted_means(self) -> torch.Tensor:
        m = self.centred_means
        return m * (self.counts.to(m.dtype) / self.n)

    def cov_total(self) -> torch.Tensor:
        """Σ_T = Σ_W + Σ_c (n_c/N)(μ_c − μ_G)(μ_c − μ_G)ᵀ, shape (p, p) (a new array)."""
        if self.cov_within is None:
            raise ValueError("a sketched layer has no p×p covariance; use total_sketch()")
        total = self.cov_within + self._weighted_means() @ self.centred_means.T
        return (total + total.T) / 2

    def total_sketch(self) -> torch.Tensor:
        """Σ_T·Ω = Σ_W·Ω + M diag(n_c/N) (MᵀΩ), shape (p, s), for a sketched layer."""
        if self.within_sketch is None or self.omega is None:
            raise ValueError("not a sketched layer")
        return self.within_sketch + self._weighted_means() @ (self.centred_means.T @ self.omega)

    def total_trace(self) -> float:
        """tr Σ_T = tr Σ_W + Σ_c (n_c/N) ‖μ_c − μ_G‖²."""
        m = self.centred_means
        return self.within_trace + float((self._weighted_means() * m).sum())


class _ClassSums(Accumulator):
    """The first-order half shared by :class:`ClassMoments` and :class:`ClassSketch`.

    Per label value: the count, the shift c_c (the class's mean in the first batch that held
    it) and Σ_{i in c} (z_i − c_c). Subclasses declare second-order sums of the shifted rows
    u_i = z_i − c_{c_i} (``reduce="sum"``), fold a batch into them in :meth:`_add_second`, add
    another state's in :meth:`_take_second` and move them to new shifts in
    :meth:`_correct_second`.
    """

    # Tensor states are None until the first batch (see add_state).
    shift: Any
    counts: Any
    sums: Any

    def __init__(
        self, device: torch.device | str | None = None, workspace: Workspace | None = None
    ) -> None:
        super().__init__()
        self.device = torch.device(device) if device is not None else None
        self.workspace = workspace
        self.add_state("n", 0)
        # The per-class states grow with the largest label seen and sum about per-class
        # shifts, so merging is the class's own (_merge_nonempty); across processes they add
        # up once aligned (align_: the same label values and shifts everywhere).
        self.add_state("shift", None, reduce=None)  # (L, p): c_c, valid where counts > 0
        self.add_state("counts", None)  # (L,) int64
        self.add_state("sums", None)  # (L, p): Σ_{i in c} (z_i − c_c)

    @property
    def width(self) -> int | None:
        """p, once a batch has been seen."""
        return None if self.sums is None else int(self.sums.shape[1])

    def _grow(self, size: int) -> None:
        """Make room for labels 0..size−1 (new rows are zero: no samples)."""
        have = self.counts.shape[0]
        if size <= have:
            return
        extra = size - have
        p = self.sums.shape[1]
        dev = self.sums.device
        self.counts = torch.cat([self.counts, torch.zeros(extra, dtype=_I64, device=dev)])
        self.shift = torch.cat([self.shift, torch.zeros(extra, p, dtype=_F64, device=dev)])
        self.sums = torch.cat([self.sums, torch.zeros(extra, p, dtype=_F64, device=dev)])

    def _init_second(self, p: int, device: torch.device) -> None:
        raise NotImplementedError

    def _add_second(self, u: torch.Tensor) -> None:
        raise NotImplementedError

    def _take_second(self, other: _ClassSums) -> None:
        """Add the other state's second-order sums as they are."""
        raise NotImplementedError

    def _correct_second(self, sums: torch.Tensor, d: torch.Tensor, n_c: torch.Tensor) -> None:
        """Add what second-order sums of shifted rows gain when each class's shift moves by
        −d_c: Σ_c [s_c d_cᵀ + d_c s_cᵀ + n_c d_c d_cᵀ], given the classes' sums s_c (L', p)
        about their old shifts, d (L', p) and the counts n_c (L', 1) as floats."""
        raise NotImplementedError

    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``z`` of shape (b, p), integer ``labels`` ≥ 0 of shape (b,).

        Neither input is modified.
        """
        if z.ndim != 2:
            raise ValueError(f"expected z of shape (b, p), got {tuple(z.shape)}")
        b = z.shape[0]
        _check_labels(labels, b)
        if b == 0:
            return
        device = self.device if self.device is not None else z.device
        with single_threaded(device):
            z = _floating(z, device)
            lab = labels.to(device=device, dtype=_I64)
            lowest, highest = int(lab.min()), int(lab.max())
            if lowest < 0:
                raise ValueError(f"labels must be >= 0, found {lowest}")
            if self.sums is None:
                p = z.shape[1]
                self.counts = torch.zeros(highest + 1, dtype=_I64, device=device)
                self.shift = torch.zeros(highest + 1, p, dtype=_F64, device=device)
                self.sums = torch.zeros(highest + 1, p, dtype=_F64, device=device)
                self._init_second(p, device)
            elif z.shape[1] != self.sums.shape[1]:
                raise ValueError(f"feature width changed: had {self.width}, got {z.shape[1]}")
            self._grow(highest + 1)
            batch_counts = torch.bincount(lab, minlength=self.counts.shape[0])
            new = (batch_counts > 0) & (self.counts == 0)
            if bool(new.any()):
                # A class seen for the first time is shifted by its mean in this batch.
                batch_sums = torch.zeros_like(self.sums).index_add_(0, lab, z.to(_F64))
                fresh = new.nonzero().squeeze(1)
                self.shift[fresh] = batch_sums[fresh] / batch_counts[fresh].unsqueeze(1)
            u = (
                torch.empty(b, z.shape[1], dtype=_F64, device=device)
                if self.workspace is None
                else self.workspace.take((b, z.shape[1]), device)
            )
            torch.index_select(self.shift, 0, lab, out=u)
            torch.sub(z, u, out=u)
            self.sums.index_add_(0, lab, u)
            self.counts.add_(batch_counts)
        self._add_second(u)
        self.n += b

    def merge_problem(self, other: Accumulator) -> str | None:
        """Another type, or another feature width (both states holding samples); the number
        of label values may differ."""
        if type(other) is not type(self):
            return super().merge_problem(other)
        assert isinstance(other, _ClassSums)
        if self.n and other.n and other.width != self.width:
            return f"feature width changed: had {self.width}, got {other.width}"
        return None

    def _merge_nonempty(self, other: Accumulator) -> None:
        """Both states hold samples: move the other's sums to this state's shifts, add."""
        assert isinstance(other, _ClassSums)
        dev = self.sums.device
        with single_threaded(dev):
            self._grow(other.counts.shape[0])
            size = other.counts.shape[0]
            theirs = other.counts.to(dev)
            shift = other.shift.to(dev)
            sums = other.sums.to(dev)
            mine = self.counts[:size]
            # Where only the other state has seen a class, its shift is taken over as it is;
            # where both have, the other's sums move to this state's shift by d = c' − c.
            adopt = (mine == 0) & (theirs > 0)
            self.shift[:size][adopt] = shift[adopt]
            both = (mine > 0) & (theirs > 0)
            d = torch.where(both.unsqueeze(1), shift - self.shift[:size], 0.0)
            n_c = theirs.to(_F64).unsqueeze(1)
            self._take_second(other)
            self._correct_second(sums, d, n_c)
            self.sums[:size].add_(sums + n_c * d)
            self.counts[:size].add_(theirs)
        self.n += other.n

    def reshift_(self, shift: torch.Tensor) -> None:
        """Re-express the sums about new per-class shifts ``shift`` (L', p), in place: the state
        grows to L' label values if it has fewer, and ``shift`` becomes its shifts."""
        if self.n == 0:
            return
        if shift.ndim != 2 or shift.shape[1] != self.width or shift.shape[0] < len(self.counts):
            raise ValueError(
                f"expected shifts of shape (>= {len(self.counts)}, {self.width}), got "
                f"{tuple(shift.shape)}"
            )
        with single_threaded(self.sums.device):
            self._grow(shift.shape[0])
            shift = shift.to(device=self.sums.device, dtype=_F64)
            seen = (self.counts > 0).unsqueeze(1)
            d = torch.where(seen, self.shift - shift, 0.0)  # classes never seen do not move
            n_c = self.counts.to(_F64).unsqueeze(1)
            self._correct_second(self.sums, d, n_c)
            self.sums.add_(n_c * d)
            self.shift = shift.clone()

    def align_(self, collective: Collective) -> None:
        """Agree with the other processes on the label values (the largest L) and on one
        shift per class, its mean over every process's samples (one sum of L·(p + 1)
        numbers), and re-express the sums about it. A class this process never saw has no
        sums to move; a class no process saw keeps a zero shift."""
        p = self.width
        assert p is not None  # align_ is called on a state that holds samples
        if collective.agree(p, "min") != collective.agree(p, "max"):
            raise ValueError("the feature width of a layer differs between the processes")
        self._grow(collective.agree(len(self.counts), "max"))
        n_c = self.counts.to(_F64).unsqueeze(1)
        totals = torch.cat([n_c, n_c * self.shift + self.sums], dim=1)  # (L, 1 + p): n_c, Σz
        collective.sum_(totals)
        n_all = totals[:, :1]
        self.reshift_(torch.where(n_all > 0, totals[:, 1:] / n_all.clamp_min(1.0), 0.0))

    def _first_order(self) -> tuple[torch.Tensor, ...]:
        """(present labels, counts, d = μ_c − c_c, μ_c, μ_G, n_c as a float column)."""
        present = (self.counts > 0).nonzero().squeeze(1)
        counts = self.counts[present]
        n_c = counts.to(_F64).unsqueeze(1)
        d = self.sums[present] / n_c
        means = self.shift[present] + d
        mean = (means * n_c).sum(dim=0) / self.n
        return present, counts, d, means, mean, n_c


class ClassMoments(_ClassSums):
    """Per-class counts and sums plus the class-shifted Gram of features z ∈ R^p.

    Labels are non-negative integers; the state grows to the largest label seen (plus one), so
    memory is O(p² + L·p) whatever the number of samples. One update costs O(b·p²) for a batch
    of b samples, like :class:`~nrc_cli.accumulate.moments.CrossMoments`; with a
    :class:`~nrc_cli.accumulate.moments.Workspace` the shifted batch is written there.
    """

    def __init__(
        self, device: torch.device | str | None = None, workspace: Workspace | None = None
    ) -> None:
        super().__init__(device, workspace)
        self.add_state("gram", None)  # (p, p), upper triangle: Σ_i u_i u_iᵀ

    def _init_second(self, p: int, device: torch.device) -> None:
        self.gram = torch.zeros(p, p, dtype=_F64, device=device)

    def _add_second(self, u: torch.Tensor) -> None:
        # The p×p product goes straight into the state (no p×p temporary), with every thread.
        add_gram_(self.gram, u)

    def _take_second(self, other) -> None:
        self.gram.add_(other.gram.to(self.gram.device))

    def _correct_second(self, sums, d, n_c) -> None:
        cross = sums.T @ d
        self.gram.add_(cross + cross.T + (d * n_c).T @ d)

    def compute(self) -> ClassStats:
        """The per-class moments so far; the state is not changed."""
        if self.n == 0:
            raise ValueError("no samples accumulated")
        with single_threaded(self.gram.device):
            present, counts, d, means, mean, n_c = self._first_order()
            cov_within = symmetric(self.gram).sub_((d * n_c).T @ d).div_(self.n)
        trace = float(torch.diagonal(cov_within).clamp_min(0).sum())
        return ClassStats(
            self.n, present.clone(), counts.clone(), means, mean, trace, cov_within=cov_within
        )


class ClassSketch(_ClassSums):
    """Per-class counts and sums plus Σ_W·Ω and diag Σ_W, for layers whose p×p state does not
    fit: memory O(p·s + L·p) for a p×s test matrix Ω.

    Σ_T·Ω follows from the class means (:meth:`ClassStats.total_sketch`), so the total
    covariance's top spectrum comes from the same Nyström reconstruction as for regression
    (:func:`nrc_cli.linalg.nystrom_eigh`); ``nc1`` needs the second pass (see
    :class:`NearestClassMean`'s ``projection``).
    """

    def __init__(
        self,
        omega: torch.Tensor,
        device: torch.device | str | None = None,
        workspace: Workspace | None = None,
    ) -> None:
        device = torch.device(device) if device is not None else omega.device
        super().__init__(device, workspace)
        # Ω is a constant of the sketch, not state: two sketches merge only with the same Ω.
        self.omega = omega.to(device=device, dtype=_F64)
        self.add_state("s_omega", None)  # Σ_i u_i (u_iᵀΩ), (p, s)
        self.add_state("diag", None)  # Σ_i u_i², (p,)

    def to(self, device: torch.device | str) -> ClassSketch:
        super().to(device)
        self.omega = self.omega.to(device)
        return self

    def _init_second(self, p: int, device: torch.device) -> None:
        if p != self.omega.shape[0]:
            raise ValueError(f"features of width {p} for a test matrix of {self.omega.shape[0]}")
        self.s_omega = torch.zeros_like(self.omega)
        self.diag = torch.zeros(p, dtype=_F64, device=device)

    def _add_second(self, u: torch.Tensor) -> None:
        self.s_omega.addmm_(u.T, u @ self.omega)
        self.diag.add_((u * u).sum(dim=0))

    def align_(self, collective: Collective) -> None:
        """As for :class:`ClassMoments`, once the processes have checked that they sketch with
        the same test matrix Ω (a checksum of its shape and bytes)."""
        if not same_everywhere(collective, checksum(self.omega)):
            raise ValueError(
                "the processes sketch a layer with different test matrices (seed or sketch size)"
            )
        super().align_(collective)

    def merge_problem(self, other: Accumulator) -> str | None:
        """As for :class:`ClassMoments`, and a sketch holding samples built with another Ω
        (its Σ_W·Ω would be read against this sketch's Ω, also when this one is empty)."""
        if isinstance(other, ClassSketch) and other.n and not self._same_omega(other):
            return "cannot merge sketches built with different test matrices"
        return super().merge_problem(other)

    def _same_omega(self, other: ClassSketch) -> bool:
        return other.omega.shape == self.omega.shape and torch.equal(
            other.omega.to(self.omega.device), self.omega
        )

    def _take_second(self, other) -> None:
        if other.omega.shape != self.omega.shape or not torch.equal(
            other.omega.to(self.omega.device), self.omega
        ):
            raise ValueError("cannot merge sketches built with different test matrices")
        self.s_omega.add_(other.s_omega.to(self.s_omega.device))
        self.diag.add_(other.diag.to(self.diag.device))

    def _correct_second(self, sums, d, n_c) -> None:
        d_omega = d @ self.omega
        self.s_omega.add_(sums.T @ d_omega + d.T @ (sums @ self.omega) + (d * n_c).T @ d_omega)
        self.diag.add_((2 * sums * d + n_c * d * d).sum(dim=0))

    def compute(self) -> ClassStats:
        """The per-class moments with Σ_W·Ω in place of Σ_W; the state is not changed."""
        if self.n == 0:
            raise ValueError("no samples accumulated")
        present, counts, d, means, mean, n_c = self._first_order()
        weighted = d * n_c
        sketch = (self.s_omega - weighted.T @ (d @ self.omega)) / self.n
        trace = float(((self.diag - (weighted * d).sum(dim=0)) / self.n).clamp_min(0).sum())
        return ClassStats(
            self.n,
            present.clone(),
            counts.clone(),
            means,
            mean,
            trace,
            within_sketch=sketch,
            omega=self.omega.clone(),
        )


@dataclass(frozen=True)
class NearestMeanCounts:
    """What the nearest-class-mean pass counted.

    Attributes
    ----------
    n : int
        Samples seen.
    correct : int
        Samples whose nearest class mean is their own label's.
    n_predicted : int
        Samples that came with a model prediction.
    mismatch : int
        Of those, samples whose nearest class mean is not the predicted class.
    whitened_within : float or None
        Σ_i ‖Pᵀ(z_i − μ_{c_i})‖² for the projection P given, else None.
    """

    n: int
    correct: int
    n_predicted: int
    mismatch: int
    whitened_within: float | None

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def mismatch_share(self) -> float | None:
        return None if self.n_predicted == 0 else self.mismatch / self.n_predicted


class NearestClassMean(Accumulator):
    """Second-pass counts of the nearest-class-mean (NCC) classifier of one layer.

    Given the class means of a first pass, each sample is assigned to the class whose mean is
    nearest in Euclidean distance (a tie goes to the smaller label), and the accumulator counts
    agreements with the true label and with the model's predicted class.

    Distances are taken as ‖μ_c − z‖² = ‖m_c‖² − 2 m_cᵀx + ‖x‖² about the global mean
    (m_c = μ_c − μ_G, x = z − μ_G), in float64: one b×C product per batch. Rows whose two
    smallest distances differ by less than a few units of round-off are compared again with
    the differences z − μ_c formed explicitly, so that a tie is a tie and goes to the smaller
    label.

    With ``projection`` P (p×r) it also sums ‖Pᵀ(z_i − μ_{c_i})‖² exactly, which gives
    tr(Σ_W Σ_B^†) for P = U_r Λ_r^{−1/2} when Σ_W itself was not formed (a sketched layer).

    Parameters
    ----------
    labels : Tensor, shape (C,)
        The class labels, ascending (``ClassStats.labels``).
    means : Tensor, shape (C, p)
        μ_c in the same order.
    mean : Tensor, shape (p,)
        μ_G.
    projection : Tensor, shape (p, r), optional
    """

    # Relative width, in units of the largest squared distance involved, under which two
    # distances are compared again explicitly.
    TIE_TOLERANCE = 1e-10

    device: torch.device
    correct: int
    n_predicted: int
    mismatch: int
    whitened: float

    def __init__(
        self,
        labels: torch.Tensor,
        means: torch.Tensor,
        mean: torch.Tensor,
        *,
        projection: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        device = torch.device(device) if device is not None else means.device
        self.device = device
        self.labels = labels.to(device=device, dtype=_I64)
        self.center = mean.to(device=device, dtype=_F64)
        self.centred = means.to(device=device, dtype=_F64) - self.center  # (C, p)
        self.means = means.to(device=device, dtype=_F64)
        self.norms2 = (self.centred * self.centred).sum(dim=1)  # (C,)
        size = int(self.labels.max()) + 1 if self.labels.numel() else 0
        # label value -> class position (−1: not a class)
        self.position = torch.full((size,), -1, dtype=_I64, device=device)
        self.position[self.labels] = torch.arange(self.labels.numel(), device=device)
        self.projection = None if projection is None else projection.to(device=device, dtype=_F64)
        # The means, the shift and the projection are constants of the pass, not state: two
        # passes merge only when fed the same means.
        super().__init__()
        self.add_state("n", 0)
        self.add_state("correct", 0)
        self.add_state("n_predicted", 0)
        self.add_state("mismatch", 0)
        self.add_state("whitened", 0.0)  # Σ_i ‖Pᵀ(z_i − μ_{c_i})‖², with a projection

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """The label of the nearest class mean for each row of ``z`` (b, p): int64 (b,)."""
        with single_threaded(self.device):
            z = _floating(z, self.device).to(_F64)
            x = z - self.center
            dist = self.norms2 - 2 * (x @ self.centred.T)  # ‖x‖² is the same for every class
            if dist.shape[1] > 1:
                two = torch.topk(dist, 2, dim=1, largest=False).values
                scale = self.norms2.max() + (x * x).sum(dim=1)
                close = (two[:, 1] - two[:, 0]) <= self.TIE_TOLERANCE * scale
                rows = close.nonzero().squeeze(1)
                c, p = self.means.shape
                step = max(1, _TIE_CHUNK_ENTRIES // max(c * p, 1))
                for lo in range(0, rows.shape[0], step):
                    some = rows[lo : lo + step]
                    diff = z[some].unsqueeze(1) - self.means  # (k, C, p)
                    dist[some] = (diff * diff).sum(dim=2)
            nearest = dist.argmin(dim=1)  # the first minimum: the smaller label on a tie
        return self.labels[nearest]

    def update(
        self, z: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor | None = None
    ) -> None:
        """Add a batch: features ``z`` (b, p), true ``labels`` (b,), optionally the model's
        predicted classes (b,). Labels must be classes of the first pass."""
        if z.ndim != 2 or z.shape[1] != self.centred.shape[1]:
            raise ValueError(
                f"expected z of shape (b, {self.centred.shape[1]}), got {tuple(z.shape)}"
            )
        _check_labels(labels, z.shape[0])
        if z.shape[0] == 0:
            return
        self.add(self.assign(z), labels, predicted, z=z)

    def add(
        self,
        nearest: torch.Tensor,
        labels: torch.Tensor,
        predicted: torch.Tensor | None = None,
        *,
        z: torch.Tensor | None = None,
        offset: int | None = None,
    ) -> None:
        """Count a batch whose nearest classes were found by :meth:`assign`.

        This split lets a forward pass assign the features of a layer as soon as its hook
        sees them and count once the model's prediction for the batch is known. ``z`` is
        needed only with a ``projection``; ``offset`` (the batch's first sample) makes a
        message name the sample rather than the row.
        """
        lab = labels.to(device=self.device, dtype=_I64)
        b = lab.shape[0]
        if nearest.shape != (b,) or (predicted is not None and predicted.shape != (b,)):
            raise ValueError("nearest, labels and predicted must all have shape (b,)")
        if b == 0:
            return
        size = self.position.shape[0]
        own = self.position[lab.clamp(0, max(size - 1, 0))]
        bad = (lab < 0) | (lab >= size) | (own < 0)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            where = f"row {row}" if offset is None else f"sample {offset + row}"
            raise ValueError(
                f"label {int(lab[row])} at {where} is not one of the classes of the first pass "
                f"({show_values(self.labels.to(_F64))})"
            )
        self.correct += int((nearest == lab).sum())
        if predicted is not None:
            pred = predicted.to(device=self.device, dtype=_I64)
            self.mismatch += int((nearest != pred).sum())
            self.n_predicted += b
        if self.projection is not None:
            if z is None:
                raise ValueError("the features are needed to accumulate the projection")
            with single_threaded(self.device):
                r = (_floating(z, self.device).to(_F64) - self.means[own]) @ self.projection
                self.whitened += float((r * r).sum())
        self.n += b

    def merge_problem(self, other: Accumulator) -> str | None:
        """Another type, or a pass over other samples fed other class means."""
        if isinstance(other, NearestClassMean) and other.n and self.n:
            same = (
                other.centred.shape == self.centred.shape
                and torch.equal(other.labels.to(self.device), self.labels)
                and torch.equal(other.means.to(self.device), self.means)
            )
            if not same:
                return "cannot merge nearest-class-mean passes fed different means"
        return super().merge_problem(other)

    def to(self, device: torch.device | str) -> NearestClassMean:
        super().to(device)
        device = torch.device(device)
        for name in ("labels", "center", "centred", "means", "norms2", "position"):
            setattr(self, name, getattr(self, name).to(device))
        if self.projection is not None:
            self.projection = self.projection.to(device)
        self.device = device
        return self

    def compute(self) -> NearestMeanCounts:
        if self.n == 0:
            raise ValueError("no samples accumulated")
        whitened = self.whitened if self.projection is not None else None
        return NearestMeanCounts(self.n, self.correct, self.n_predicted, self.mismatch, whitened)


class Agreement(Accumulator):
    """Counts of samples whose predicted class equals the label (for ``model_accuracy``)."""

    correct: int

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", 0)
        self.add_state("correct", 0)

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        _check_labels(labels, predicted.shape[0])
        self.correct += int((predicted.to(_I64) == labels.to(predicted.device, _I64)).sum())
        self.n += labels.shape[0]

    def compute(self) -> float:
        if self.n == 0:
            raise ValueError("no samples accumulated")
        return self.correct / self.n
