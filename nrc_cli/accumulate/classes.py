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

import os
from dataclasses import dataclass
from typing import Any

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator, Collective
from nrc_cli.accumulate.gram import add_cross_
from nrc_cli.accumulate.labels import check_label_batch, floating
from nrc_cli.accumulate.moments import Workspace, add_gram_, symmetric

# The second pass lives in its own module; its names are part of this one's interface too.
from nrc_cli.accumulate.nearest import Agreement, NearestClassMean, NearestMeanCounts

__all__ = [
    "MAX_CLASSES",
    "Agreement",
    "ClassMoments",
    "ClassSketch",
    "ClassStats",
    "NearestClassMean",
    "NearestMeanCounts",
    "max_classes",
]

_F64 = torch.float64
_I64 = torch.int64
# The most classes (distinct label values) one run may hold unless NRC_MAX_CLASSES says
# otherwise: each costs 2·p float64 numbers per layer, and a second pass C·p more.
MAX_CLASSES = 1_000_000


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


def max_classes() -> int:
    """The most classes (distinct label values) one run may hold: ``NRC_MAX_CLASSES``, or
    :data:`MAX_CLASSES` when that is not set."""
    text = os.environ.get("NRC_MAX_CLASSES", "").strip()
    if not text:
        return MAX_CLASSES
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"NRC_MAX_CLASSES must be a whole number >= 1, found {text!r}")
    return limit


def _check_class_count(c: int) -> None:
    limit = max_classes()
    if c > limit:
        raise ValueError(
            f"the labels hold {c} distinct values, more than the limit of {limit} classes per "
            "run (set NRC_MAX_CLASSES to raise it: each class costs 2·p float64 numbers per layer)"
        )


class _ClassSums(Accumulator):
    """The first-order half shared by :class:`ClassMoments` and :class:`ClassSketch`.

    The classes are the label values seen, ascending (``labels``, C of them): a label's row is
    its place in that list, so memory depends on the number of classes, never on the values
    of the labels. Per class: the count, the shift c_c (the class's mean in the first batch
    that held it) and Σ_{i in c} (z_i − c_c). Subclasses declare second-order sums of the
    shifted rows u_i = z_i − c_{c_i} (``reduce="sum"``), fold a batch into them in
    :meth:`_add_second`, add another state's in :meth:`_take_second` and move them to new
    shifts in :meth:`_correct_second`.
    """

    # Tensor states are None until the first batch (see add_state).
    labels: Any
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
        # The per-class states grow with the classes seen and sum about per-class shifts, so
        # merging is the class's own (_merge_nonempty); across processes they add up once
        # aligned (align_: the same classes and shifts everywhere).
        self.add_state("labels", None, reduce=None, shape=("C",), dtype=_I64)  # ascending
        self.add_state("shift", None, reduce=None, shape=("C", "p"))  # c_c
        self.add_state("counts", None, shape=("C",), dtype=_I64)
        self.add_state("sums", None, shape=("C", "p"))  # Σ_{i in c} (z_i − c_c)

    @property
    def width(self) -> int | None:
        """p, once a batch has been seen."""
        return None if self.sums is None else int(self.sums.shape[1])

    def _consistency(self, state) -> str | None:
        if "labels" not in state:
            return None
        labels, counts = state["labels"], state["counts"]
        if labels.numel() and (int(labels.min()) < 0 or bool((labels[1:] <= labels[:-1]).any())):
            return "'labels' are not distinct label values >= 0 in ascending order"
        if bool((counts < 0).any()) or int(counts.sum()) != int(state["n"]):
            return f"the class counts add up to {int(counts.sum())}, not to n = {int(state['n'])}"
        return None

    def _include(self, values: torch.Tensor) -> None:
        """Make room for the label values ``values`` (sorted, distinct): new classes get
        zero rows (no samples); the limit on the number of classes is checked first."""
        have = self.labels
        at = torch.searchsorted(have, values).clamp_max(max(have.numel() - 1, 0))
        fresh = values[have[at] != values] if have.numel() else values
        if fresh.numel() == 0:
            return
        _check_class_count(have.numel() + fresh.numel())
        labels = torch.cat([have, fresh]).sort().values
        rows = torch.searchsorted(labels, have)
        c, p, dev = labels.numel(), self.sums.shape[1], self.sums.device
        counts = torch.zeros(c, dtype=_I64, device=dev)
        shift = torch.zeros(c, p, dtype=_F64, device=dev)
        sums = torch.zeros(c, p, dtype=_F64, device=dev)
        counts[rows], shift[rows], sums[rows] = self.counts, self.shift, self.sums
        self.labels, self.counts, self.shift, self.sums = labels, counts, shift, sums

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """The rows of label values ``values``, each one of :attr:`labels`."""
        return torch.searchsorted(self.labels, values)

    def _init_second(self, p: int, device: torch.device) -> None:
        raise NotImplementedError

    def _add_second(self, u: torch.Tensor) -> None:
        raise NotImplementedError

    def _take_second(self, other: _ClassSums) -> None:
        """Add the other state's second-order sums as they are."""
        raise NotImplementedError

    def _correct_second(self, sums: torch.Tensor, d: torch.Tensor, n_c: torch.Tensor) -> None:
        """Add what second-order sums of shifted rows gain when each class's shift moves by
        −d_c: Σ_c [s_c d_cᵀ + d_c s_cᵀ + n_c d_c d_cᵀ], given the classes' sums s_c (C', p)
        about their old shifts, d (C', p) and the counts n_c (C', 1) as floats."""
        raise NotImplementedError

    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``z`` of shape (b, p), integer ``labels`` ≥ 0 of shape (b,).

        Neither input is modified.
        """
        if z.ndim != 2:
            raise ValueError(f"expected z of shape (b, p), got {tuple(z.shape)}")
        b = z.shape[0]
        check_label_batch(labels, b)
        if b == 0:
            return
        device = self.device if self.device is not None else z.device
        with single_threaded(device):
            z = floating(z, device)
            lab = labels.to(device=device, dtype=_I64)
            values, inverse = torch.unique(lab, sorted=True, return_inverse=True)
            if int(values[0]) < 0:
                raise ValueError(f"labels must be >= 0, found {int(values[0])}")
            if self.sums is None:
                _check_class_count(values.numel())
                p = z.shape[1]
                self.labels = values[:0].clone()
                self.counts = torch.zeros(0, dtype=_I64, device=device)
                self.shift = torch.zeros(0, p, dtype=_F64, device=device)
                self.sums = torch.zeros(0, p, dtype=_F64, device=device)
                self._init_second(p, device)
            elif z.shape[1] != self.sums.shape[1]:
                raise ValueError(f"feature width changed: had {self.width}, got {z.shape[1]}")
            self._include(values)
            at = self.rows(values)  # the row of each label value of the batch
            batch_counts = torch.bincount(inverse, minlength=values.numel())
            new = self.counts[at] == 0
            if bool(new.any()):
                # A class seen for the first time is shifted by its mean in this batch.
                batch_sums = torch.zeros(values.numel(), z.shape[1], dtype=_F64, device=device)
                batch_sums.index_add_(0, inverse, z.to(_F64))
                self.shift[at[new]] = batch_sums[new] / batch_counts[new].unsqueeze(1)
            row = at[inverse]
            u = (
                torch.empty(b, z.shape[1], dtype=_F64, device=device)
                if self.workspace is None
                else self.workspace.take((b, z.shape[1]), device)
            )
            torch.index_select(self.shift, 0, row, out=u)
            torch.sub(z, u, out=u)
            self.sums.index_add_(0, row, u)
            self.counts.index_add_(0, at, batch_counts)
        self._add_second(u)
        self.n += b

    def merge_problem(self, other: Accumulator) -> str | None:
        """Another type, or another feature width (both states holding samples); the classes
        may differ."""
        if type(other) is not type(self):
            return super().merge_problem(other)
        assert isinstance(other, _ClassSums)
        if self.n and other.n and other.width != self.width:
            return f"feature width changed: had {self.width}, got {other.width}"
        if self.n and other.n:
            c = torch.unique(torch.cat([self.labels, other.labels.to(self.labels.device)]))
            try:
                _check_class_count(c.numel())
            except ValueError as exc:
                return str(exc)
        return None

    def _merge_nonempty(self, other: Accumulator) -> None:
        """Both states hold samples: move the other's sums to this state's shifts, add."""
        assert isinstance(other, _ClassSums)
        dev = self.sums.device
        with single_threaded(dev):
            self._include(other.labels.to(dev))
            at = self.rows(other.labels.to(dev))
            theirs = other.counts.to(dev)
            shift = other.shift.to(dev)
            sums = other.sums.to(dev)
            mine = self.counts[at]
            # Where only the other state has seen a class, its shift is taken over as it is;
            # where both have, the other's sums move to this state's shift by d = c' − c.
            adopt = (mine == 0) & (theirs > 0)
            self.shift[at[adopt]] = shift[adopt]
            both = (mine > 0) & (theirs > 0)
            d = torch.where(both.unsqueeze(1), shift - self.shift[at], 0.0)
            n_c = theirs.to(_F64).unsqueeze(1)
            self._take_second(other)
            self._correct_second(sums, d, n_c)
            self.sums.index_add_(0, at, sums + n_c * d)
            self.counts.index_add_(0, at, theirs)
        self.n += other.n

    def reshift_(self, shift: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Re-express the sums about new per-class shifts ``shift`` (C', p), one row per label
        value of ``labels`` (sorted, distinct; default: this state's classes), in place: the
        state takes on the classes of ``labels`` it lacks, and ``shift`` becomes its shifts."""
        if self.n == 0:
            return
        labels = self.labels if labels is None else labels.to(self.labels.device, _I64)
        if shift.ndim != 2 or shift.shape[1] != self.width or shift.shape[0] != labels.numel():
            raise ValueError(
                f"expected shifts of shape ({labels.numel()}, {self.width}), one per class, "
                f"got {tuple(shift.shape)}"
            )
        with single_threaded(self.sums.device):
            self._include(labels)
            if labels.numel() != self.labels.numel():
                raise ValueError("the shifts must cover every class of the state")
            shift = shift.to(device=self.sums.device, dtype=_F64)
            seen = (self.counts > 0).unsqueeze(1)
            d = torch.where(seen, self.shift - shift, 0.0)  # classes never seen do not move
            n_c = self.counts.to(_F64).unsqueeze(1)
            self._correct_second(self.sums, d, n_c)
            self.sums.add_(n_c * d)
            self.shift = shift.clone()

    def align_(self, collective: Collective) -> None:
        """Agree with the other processes on the classes (the union of their label values:
        one sum of (processes × classes) integers) and on one shift per class, its mean over
        every process's samples (one sum of C·(p + 1) numbers), and re-express the sums about
        it. A class this process never saw has no sums to move; it is added with a zero
        count. First, as every accumulator, a sketch checks that the processes share its Ω."""
        super().align_(collective)
        p = self.width
        assert p is not None  # align_ is called on a state that holds samples
        if collective.agree(p, "min") != collective.agree(p, "max"):
            raise ValueError("the feature width of a layer differs between the processes")
        k = collective.agree(self.labels.numel(), "max")
        table = torch.zeros(collective.world_size, k, dtype=_I64, device=self.labels.device)
        table[collective.rank] = -1
        table[collective.rank, : self.labels.numel()] = self.labels
        collective.sum_(table)  # row r: the classes of process r, padded with −1
        everyone = torch.unique(table[table >= 0])
        _check_class_count(everyone.numel())
        self._include(everyone)
        n_c = self.counts.to(_F64).unsqueeze(1)
        totals = torch.cat([n_c, n_c * self.shift + self.sums], dim=1)  # (C, 1 + p): n_c, Σz
        collective.sum_(totals)
        n_all = totals[:, :1]
        self.reshift_(torch.where(n_all > 0, totals[:, 1:] / n_all.clamp_min(1.0), 0.0))

    def targets_record(self) -> torch.Tensor | None:
        """The label values seen and the count of each, float64."""
        if not self.n:
            return None
        seen = self.counts > 0
        return torch.cat([self.labels[seen], self.counts[seen]]).cpu().to(_F64)

    def _first_order(self) -> tuple[torch.Tensor, ...]:
        """(the classes' labels, counts, d = μ_c − c_c, μ_c, μ_G, n_c as a float column)."""
        present = (self.counts > 0).nonzero().squeeze(1)
        counts = self.counts[present]
        n_c = counts.to(_F64).unsqueeze(1)
        d = self.sums[present] / n_c
        means = self.shift[present] + d
        mean = (means * n_c).sum(dim=0) / self.n
        return self.labels[present], counts, d, means, mean, n_c


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
        self.add_state("gram", None, shape=("p", "p"))  # upper triangle: Σ_i u_i u_iᵀ

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

    omega: torch.Tensor  # the test matrix (p, s): a constant of the sketch

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
        self.add_state("s_omega", None, shape=("p", "s"))  # Σ_i u_i (u_iᵀΩ)
        self.add_state("diag", None, shape=("p",))  # Σ_i u_i²

    def _init_second(self, p: int, device: torch.device) -> None:
        if p != self.omega.shape[0]:
            raise ValueError(f"features of width {p} for a test matrix of {self.omega.shape[0]}")
        self.s_omega = torch.zeros_like(self.omega)
        self.diag = torch.zeros(p, dtype=_F64, device=device)

    def _add_second(self, u: torch.Tensor) -> None:
        add_cross_(self.s_omega, u, u @ self.omega)
        self.diag.add_((u * u).sum(dim=0))

    def merge_problem(self, other: Accumulator) -> str | None:
        """As for :class:`ClassMoments`, and a sketch holding samples built with another Ω
        (:meth:`~nrc_cli.accumulate.base.Accumulator.matrix_problem`)."""
        if isinstance(other, ClassSketch):
            problem = self.matrix_problem(other)
            if problem is not None:
                return problem
        return super().merge_problem(other)

    def _take_second(self, other) -> None:
        problem = self.matrix_problem(other)
        if problem is not None:
            raise ValueError(problem)
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
