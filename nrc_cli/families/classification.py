"""The classification family: Deep Neural Collapse of a classifier (docs/classification.md).

Its second pass over the same data (:class:`SecondPass`) feeds the nearest-class-mean counters
with the class means of the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from nrc_cli.accumulate.base import Accumulator
from nrc_cli.accumulate.classes import (
    Agreement,
    ClassMoments,
    ClassSketch,
    ClassStats,
    NearestClassMean,
    max_classes,
)
from nrc_cli.accumulate.labels import as_labels, predicted_classes
from nrc_cli.accumulate.moments import Workspace
from nrc_cli.capture import WeightLayer
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families.outputs import describe_output, pick_output
from nrc_cli.families.regression import LayerOutcome, RegressionFamily
from nrc_cli.linalg import resolve_svd_method
from nrc_cli.metrics.classification import (
    between_spectrum,
    class_layer_metrics,
    duality_last,
)
from nrc_cli.metrics.layer import (
    Spectrum,
    weight_input_basis,
)
from nrc_cli.metrics.summary import (
    first_collapsed,
)
from nrc_cli.options import AnalysisOptions
from nrc_cli.planning import MIN_SKETCH, LayerNeed


class ClassificationFamily(RegressionFamily):
    """Deep Neural Collapse of a classifier (docs/classification.md).

    Per layer: :class:`ClassMoments` (per-class sums and counts, class-shifted Gram), or a
    :class:`ClassSketch` for a sketched layer. Per run: the agreement of the model's predicted
    class with the label, when the updates carry the model's output. A second pass over the
    same data feeds a :class:`NearestClassMean` per layer with the class means of the first
    (the nearest-class-mean columns; and ``nc1`` of a sketched layer).

    The targets are class labels: 1-D (or one column of) integers, or integral floats, or
    one-hot rows; the options are those of :class:`RegressionFamily` (``rank`` is unused: the
    rank of a layer is that of its class means).
    """

    task = "classification"
    kinds = ("classes", "sketch")
    second_pass = True

    def __init__(self, options: AnalysisOptions) -> None:
        super().__init__(options)
        # The per-class accumulators are exact float64; a request for mixed precision is
        # recorded and answered with a warning.
        self.requested_precision, self.precision = options.precision, "exact"

    @staticmethod
    def possible_head(layer: WeightLayer, t: int) -> bool:
        return False

    def rank_for(self, t: int) -> int:
        return max(t - 1, 1)

    def spectrum_method(self, layer: WeightLayer, t: int, sketched: bool) -> str:
        """How Σ_T's top eigenvalue (for ``stable_rank_h``) is found: ``nystrom`` for a
        sketched layer, else the resolved ``svd`` choice for one eigenpair."""
        if sketched:
            return "nystrom"
        return resolve_svd_method(self.svd, layer.in_dim, 1, oversample=self.oversample)

    def layer_need(self, layer: WeightLayer, t: int, batch: int) -> LayerNeed:
        """Bytes of state and per-batch temporaries for ``t`` label values (the classes).

        Exact: the p×p Gram plus, per label, a shift and a sum (2·t·p); sketched: Σ_W·Ω and
        Ω (2·p·s) with the same per-label sums. Per batch: the features and their shifted
        copy (2·b·p), and the per-label sums of a batch that brings new classes (t·p).
        """
        p = layer.in_dim
        s = min(p, max(t + self.oversample, MIN_SKETCH))
        classes = 2 * t * p + t
        temp = 2 * batch * p + t * p
        return LayerNeed(
            name=layer.name,
            p=p,
            exact_state=8 * (p * p + classes),
            exact_temp=8 * temp,
            sketch_state=8 * (2 * p * s + p + classes),
            sketch_temp=8 * (temp + batch * s),
            sketch_size=s,
        )

    def exact_accumulators(
        self, layer: WeightLayer, t: int, device: torch.device, workspace: Workspace | None
    ) -> dict[str, Accumulator]:
        return {"classes": ClassMoments(device, workspace)}

    def exact_accumulator(self, kind: str, device: torch.device) -> Accumulator:
        return ClassMoments(device)

    def sketch_accumulator(
        self, omega: torch.Tensor, device: torch.device, workspace: Workspace | None
    ) -> Accumulator:
        return ClassSketch(omega, device, workspace)

    @staticmethod
    def check_batch(layers: Mapping[str, Mapping[str, Accumulator]], y: torch.Tensor) -> None:
        """Refuse labels that would take the run past the limit on classes
        (:func:`~nrc_cli.accumulate.classes.max_classes`), before any layer takes them."""
        mains = [a.get("classes") or a.get("sketch") for a in layers.values()]
        seen = next(
            (m.labels for m in mains if isinstance(m, (ClassMoments, ClassSketch)) and m.n), None
        )
        values = torch.unique(y[:, 0].to(torch.int64))
        if seen is not None:
            values = torch.unique(torch.cat([seen.to(values.device), values]))
        try:
            limit = max_classes()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if values.numel() > limit:
            raise DataError(
                f"the labels hold {values.numel()} distinct values so far, more than the "
                f"limit of {limit} classes per run (NRC_MAX_CLASSES)",
                hint="set NRC_MAX_CLASSES to raise the limit (each class costs 2·p float64 "
                "numbers per layer), or check the label array (--y-key)",
            )

    @staticmethod
    def update_layer(accs: dict[str, Accumulator], z: torch.Tensor, y: torch.Tensor) -> None:
        """Fold one batch of features ``z`` (b, p) with its labels ``y`` (b, 1) in."""
        main = accs.get("classes") or accs["sketch"]
        main.update(z, y[:, 0].to(torch.int64))

    # -- labels and predictions -------------------------------------------------------------

    def prepare_targets(self, y: torch.Tensor, output, start: int = 0) -> torch.Tensor:
        """The labels of a batch as a (b, 1) float64 column (exact for integers), checked.

        ``y`` holds labels (b, 1) or one-hot rows (b, K). With the model's ``output``, every
        label must be one of its classes (0..K−1, or 0 and 1 for a single output). ``start``
        is the batch's first sample, for messages.
        """
        width = None
        if output is not None:
            pred = self._pick_output(output)
            if pred.ndim >= 1 and pred.shape[0] == y.shape[0]:
                width = math.prod(pred.shape[1:]) if pred.ndim > 1 else 1
        try:
            labels = as_labels(y, n_outputs=width, offset=start)
        except ValueError as exc:
            raise DataError(str(exc), hint="check the label array (--y-key) and --task") from None
        return labels.to(torch.float64).unsqueeze(1)

    def _pick_output(self, out) -> torch.Tensor:
        key = self.output_key
        if key is not None:
            out = pick_output(out, key)
        if not isinstance(out, torch.Tensor):
            hint = "pick the logits with --output-key" if key is None else None
            raise DataError(
                f"the model returned {describe_output(out)}, not a tensor of class scores",
                hint=hint,
            )
        return out

    def select_prediction(self, out, y: torch.Tensor) -> torch.Tensor:
        """The predicted class of each sample (b,): argmax of the output, or output > 0 for a
        single output."""
        out = self._pick_output(out)
        b = y.shape[0]
        if out.ndim == 0 or out.shape[0] != b:
            raise DataError(
                f"the model's output has shape {list(out.shape)}, but the batch has {b} labels",
                hint="pick the logits with --output-key, or pass --no-prediction",
            )
        return predicted_classes(out)

    @staticmethod
    def prediction_accumulator() -> Accumulator:
        return Agreement()

    @staticmethod
    def update_prediction(acc: Accumulator, pred: torch.Tensor, y: torch.Tensor) -> None:
        acc.update(pred, y[:, 0].to(device=pred.device, dtype=torch.int64))

    # -- the second pass --------------------------------------------------------------------

    def second_accumulator(self, accs: dict[str, Accumulator]) -> NearestClassMean:
        """The nearest-class-mean counter of one layer, fed the class means of ``accs``."""
        main = accs.get("classes") or accs["sketch"]
        stats = main.compute()
        projection = None
        if stats.cov_within is None:  # a sketched layer: nc1 from the second pass
            between = between_spectrum(stats)
            if between.rank:
                projection = between.whitening()
        return NearestClassMean(
            stats.labels, stats.means, stats.mean, projection=projection, device=stats.mean.device
        )

    def update_second(
        self,
        acc: Accumulator,
        z: torch.Tensor,
        y: torch.Tensor,
        pred: torch.Tensor | None,
        start: int,
    ) -> None:
        """Count, for each sample, whether its nearest class mean is its label, and whether it
        is the model's predicted class ``pred``."""
        assert isinstance(acc, NearestClassMean)  # what second_accumulator made
        labels = y[:, 0].to(device=z.device, dtype=torch.int64)
        acc.add(acc.assign(z), labels, pred, z=z, offset=start)

    # -- results ----------------------------------------------------------------------------

    def compute(
        self,
        layers: list[tuple[WeightLayer, dict[str, Accumulator]]],
        t: int,
        agreement: Accumulator | None,
        second: dict[str, Accumulator] | None = None,
    ) -> LayerOutcome:
        """Per-layer rows and the summary of docs/classification.md.

        ``agreement`` counts the model's correct predictions (None without a prediction);
        ``second`` holds each layer's nearest-class-mean counts when a complete second pass
        was made (else the NCC columns are null).
        """
        randomized = self.randomized
        rows: list[dict] = []
        head_stats: ClassStats | None = None
        labels = None
        for i, (w, accs) in enumerate(layers, start=1):
            sketched = "sketch" in accs
            stats = (accs.get("classes") or accs["sketch"]).compute()
            if labels is None:
                labels = stats.labels
                _check_classes(labels)
            method = self.spectrum_method(w, t, sketched)
            between = between_spectrum(stats)
            total = None
            if method == "randomized":
                total = Spectrum.randomized(stats.cov_total(), 1, **randomized)
            weight = (
                weight_input_basis(w.module)
                if method == "exact"
                else weight_input_basis(w.module, max(between.rank, 1), **randomized)
            )
            counts = None
            if second is not None and w.name in second:
                counts = second[w.name].compute()
            row = {"layer": w.name, "index": i, "type": w.type}
            row.update(
                class_layer_metrics(
                    stats, w.module, total=total, weight=weight, between=between, ncc=counts
                )
            )
            if row["nc1"] is None and sketched and between.rank:
                note = "sketched layer: nc1 needs the nearest-class-mean pass (without --no-ncc)"
                row["note"] = f"{row['note']}; {note}" if row.get("note") else note
            row["collapsed"] = self.rule.holds(row)
            rows.append(row)
            head_stats = stats
        if head_stats is None:
            raise ConfigError("none of the selected weight layers ran during the forward pass")
        first = first_collapsed([r["collapsed"] for r in rows])
        summary: dict[str, Any] = {
            "task": self.task,
            "n_classes": head_stats.n_classes,
            "model_accuracy": agreement.compute() if agreement is not None else None,
            "first_collapsed_layer": rows[first - 1]["layer"] if first else None,
            "first_collapsed_index": first,
            "collapse_rule": self.rule.text,
            "nc3_duality_last": duality_last(layers[-1][0].module, head_stats),
            "warnings": [],
            "notes": [],
        }
        if second is None:
            summary["notes"].append(
                "ncc_accuracy and nc4_ncc_mismatch are null: they need a second pass over the "
                "data with the class means of the first (skipped by --no-ncc; in Python, "
                "begin_second_pass() and the data again)"
            )
        if self.requested_precision != "exact":
            summary["warnings"].append(
                f"--precision {self.requested_precision} applies to regression; the per-class "
                "moments of a classifier are accumulated in exact float64"
            )
        return LayerOutcome(rows, summary)


def _check_classes(labels: torch.Tensor) -> None:
    if labels.numel() < 2:
        found = "no class" if labels.numel() == 0 else f"one class (label {int(labels[0])})"
        raise DataError(
            f"the labels hold {found}: classification collapse needs at least two classes",
            hint="check the label array (--y-key), or use --task regression",
        )
