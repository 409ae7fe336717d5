"""The second pass of a classifier: nearest-class-mean counts, and the model's agreement.

:class:`NearestClassMean` is fed the class means of a first pass
(:class:`~nrc_cli.accumulate.classes.ClassMoments` or ``ClassSketch``) and counts, sample by
sample, whether the nearest class mean is the label's and whether it is the model's
predicted class; :class:`Agreement` counts the model's correct predictions. Both declare
their state with :mod:`nrc_cli.accumulate.base` like every accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator
from nrc_cli.accumulate.labels import check_label_batch, floating, show_values

_F64 = torch.float64
_I64 = torch.int64
# Rows compared again explicitly per chunk in NearestClassMean.assign: chunk·C·p float64 entries.
_TIE_CHUNK_ENTRIES = 1 << 22
# Distances taken at a time in NearestClassMean.assign: rows·C float64 entries.
_DIST_ENTRIES = 1 << 22


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
        """The label of the nearest class mean for each row of ``z`` (b, p): int64 (b,).

        The b×C distances are taken a block of rows at a time (at most ``_DIST_ENTRIES`` of
        them), so that many classes do not make a batch cost b·C memory.
        """
        with single_threaded(self.device):
            z = floating(z, self.device).to(_F64)
            c = self.means.shape[0]
            step = max(1, _DIST_ENTRIES // max(c, 1))
            nearest = torch.cat([self._nearest(z[lo : lo + step]) for lo in range(0, len(z), step)])
        return self.labels[nearest]

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The class position of the nearest mean of each row of ``z`` (k, p), float64."""
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
        return dist.argmin(dim=1)  # the first minimum: the smaller label on a tie

    def update(
        self, z: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor | None = None
    ) -> None:
        """Add a batch: features ``z`` (b, p), true ``labels`` (b,), optionally the model's
        predicted classes (b,). Labels must be classes of the first pass."""
        if z.ndim != 2 or z.shape[1] != self.centred.shape[1]:
            raise ValueError(
                f"expected z of shape (b, {self.centred.shape[1]}), got {tuple(z.shape)}"
            )
        check_label_batch(labels, z.shape[0])
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
        # The class of each label: its place among the labels of the first pass (a sorted
        # list, so memory does not depend on the values of the labels).
        own = torch.searchsorted(self.labels, lab).clamp_max(max(self.labels.numel() - 1, 0))
        bad = (
            self.labels[own] != lab
            if self.labels.numel()
            else torch.ones_like(lab, dtype=torch.bool)
        )
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
                r = (floating(z, self.device).to(_F64) - self.means[own]) @ self.projection
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
        for name in ("labels", "center", "centred", "means", "norms2"):
            setattr(self, name, getattr(self, name).to(device))
        if self.projection is not None:
            self.projection = self.projection.to(device)
        self.device = device
        return self

    def _consistency(self, state) -> str | None:
        n, correct = int(state["n"]), int(state["correct"])
        n_predicted, mismatch = int(state["n_predicted"]), int(state["mismatch"])
        if not (correct <= n and mismatch <= n_predicted <= n) or float(state["whitened"]) < 0:
            return (
                f"counts that no pass makes: {correct} correct, {mismatch} mismatched of "
                f"{n_predicted} predicted, of n = {n} samples"
            )
        return None

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

    def _consistency(self, state) -> str | None:
        if int(state["correct"]) > int(state["n"]):
            return f"{int(state['correct'])} correct predictions of n = {int(state['n'])}"
        return None

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        check_label_batch(labels, predicted.shape[0])
        self.correct += int((predicted.to(_I64) == labels.to(predicted.device, _I64)).sum())
        self.n += labels.shape[0]

    def compute(self) -> float:
        if self.n == 0:
            raise ValueError("no samples accumulated")
        return self.correct / self.n
