"""Metric families: which accumulators a monitored layer gets, and how results are computed.

A family is the seam through which a kind of analysis plugs into
:class:`nrc_cli.monitor.CollapseMonitor`: the monitor owns the hooks, the batches and the
bookkeeping (samples, forward order, merging, state dicts); the family says, per layer, which
accumulators to keep (:meth:`RegressionFamily.layer_accumulators`), how a batch of features
updates them (:meth:`RegressionFamily.update_layer`), and how the accumulated state becomes
per-layer rows and summary fields (:meth:`RegressionFamily.compute`). ``task="regression"``
(Deep Neural Regression Collapse, docs/metrics.md) is the one family so far; :data:`FAMILIES`
maps a task name to its class.

A family holds options only, never accumulated state, so one instance serves any number of
monitors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nrc_cli.accumulate.base import Accumulator
from nrc_cli.accumulate.classes import (
    Agreement,
    ClassMoments,
    ClassSketch,
    ClassStats,
    NearestClassMean,
)
from nrc_cli.accumulate.labels import as_labels, predicted_classes
from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram, SquaredError, Workspace
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.capture import WeightLayer
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.linalg import gaussian_test_matrix, resolve_svd_method
from nrc_cli.metrics.classification import (
    between_spectrum,
    class_layer_metrics,
    duality_last,
)
from nrc_cli.metrics.layer import (
    Spectrum,
    layer_metrics,
    probe_mse_regularized,
    weight_input_basis,
)
from nrc_cli.metrics.summary import (
    first_collapsed,
    interpolation_warning,
    join_notes,
    last_layer_fields,
    layer_collapsed,
    target_fields,
)
from nrc_cli.options import CollapseRule
from nrc_cli.planning import MIN_SKETCH, LayerNeed, layer_need


@dataclass(frozen=True)
class LayerOutcome:
    """What a family computed from the accumulated state of a monitor."""

    rows: list[dict]
    summary: dict


class RegressionFamily:
    """Deep NRC of a regression network (docs/metrics.md).

    Per layer: :class:`CrossMoments` of the features and targets (or a
    :class:`CovarianceSketch` for a sketched layer), and a :class:`NormalizedGram` for every
    Linear that could be the regression head (t outputs). Per run: the squared error of the
    model's prediction, when the updates carry one.

    Parameters
    ----------
    rank : int, optional
        Analysis rank k (default: the target dimension t).
    svd : {"auto", "exact", "randomized"}
    oversample, power_iters, seed : int
        Knobs of the randomized solvers and of the sketches' test matrices.
    rule : CollapseRule
    output_key : str, optional
        Which part of the model's output is the prediction.
    """

    task = "regression"
    kinds: tuple[str, ...] = ("moments", "gram", "sketch")
    # Whether the family has a second data pass (the nearest-class-mean columns of a classifier).
    second_pass = False

    def __init__(
        self,
        *,
        rank: int | None,
        svd: str,
        oversample: int,
        power_iters: int,
        seed: int,
        rule: CollapseRule,
        output_key: str | None = None,
        precision: str = "exact",
    ) -> None:
        self.rank = rank
        self.precision = precision
        self.svd = svd
        self.oversample = oversample
        self.power_iters = power_iters
        self.seed = seed
        self.rule = rule
        self.output_key = output_key

    # -- per-layer state --------------------------------------------------------------------

    @staticmethod
    def possible_head(layer: WeightLayer, t: int) -> bool:
        """Whether ``layer`` could be the regression head: a Linear with t outputs.

        The head is known only after the first forward pass, so the normalised Gram of the
        last-layer NRC is kept for every such Linear (in practice only the head has that width).
        """
        return isinstance(layer.module, nn.Linear) and layer.module.out_features == t

    def rank_for(self, t: int) -> int:
        return self.rank or t

    def spectrum_method(self, layer: WeightLayer, t: int, sketched: bool) -> str:
        """``nystrom`` for a sketched layer, else the resolved ``svd`` choice for its width."""
        if sketched:
            return "nystrom"
        p = layer.in_dim
        return resolve_svd_method(self.svd, p, min(self.rank_for(t), p), oversample=self.oversample)

    def layer_need(self, layer: WeightLayer, t: int, batch: int) -> LayerNeed:
        """Bytes this layer's accumulators need, exact or sketched (:mod:`nrc_cli.planning`)."""
        return layer_need(
            layer.name,
            layer.in_dim,
            t,
            self.rank_for(t),
            oversample=self.oversample,
            batch=batch,
            head=self.possible_head(layer, t),
            precision=self.precision,
        )

    def test_matrix(self, p: int, size: int, device: torch.device) -> torch.Tensor:
        return gaussian_test_matrix(p, size, seed=self.seed, device=device)

    def layer_accumulators(
        self,
        layer: WeightLayer,
        t: int,
        *,
        sketch_size: int | None,
        device: torch.device,
        workspace: Workspace | None,
    ) -> dict[str, Accumulator]:
        """Fresh accumulators for one layer, keyed by kind (one of :attr:`kinds`)."""
        if sketch_size:
            return {"sketch": CovarianceSketch(self.test_matrix(layer.in_dim, sketch_size, device))}
        prec = self.precision
        accs: dict[str, Accumulator] = {"moments": CrossMoments(device, workspace, precision=prec)}
        if self.possible_head(layer, t):
            accs["gram"] = NormalizedGram(device, workspace, precision=prec)
        return accs

    def empty_accumulator(
        self, kind: str, device: torch.device, omega: torch.Tensor | None = None
    ) -> Accumulator:
        """An empty accumulator of ``kind``, for loading a state dict into."""
        if kind == "moments":
            return CrossMoments(device, precision=self.precision)
        if kind == "gram":
            return NormalizedGram(device, precision=self.precision)
        if kind == "sketch" and omega is not None:
            return CovarianceSketch(omega.to(device))
        raise ValueError(f"unknown accumulator kind {kind!r} (or a sketch without its Ω)")

    @staticmethod
    def update_layer(accs: dict[str, Accumulator], z: torch.Tensor, y: torch.Tensor) -> None:
        """Fold one batch of a layer's features ``z`` (b, p) and targets ``y`` (b, t) in."""
        main = accs.get("moments") or accs["sketch"]
        main.update(z, y)
        if "gram" in accs:
            accs["gram"].update(z)

    def prepare_targets(self, y: torch.Tensor, output, start: int = 0) -> torch.Tensor:
        """The targets of a batch as the accumulators take them: (b, t) float64, as given."""
        return y

    @staticmethod
    def prediction_accumulator() -> Accumulator:
        """What the model's predictions are summed into (the squared error, for model_mse)."""
        return SquaredError()

    @staticmethod
    def update_prediction(acc: Accumulator, pred: torch.Tensor, y: torch.Tensor) -> None:
        acc.update(pred, y)

    # -- the prediction ---------------------------------------------------------------------

    def prediction_label(self, has_prediction: bool) -> str:
        """What ``model_mse`` compares with the targets, as recorded in the summary."""
        if not has_prediction:
            return "none"
        if self.output_key is not None:
            return f"output[{self.output_key}]"
        return "output"

    def select_prediction(self, out, y: torch.Tensor) -> torch.Tensor:
        """The prediction (b, t) inside a model's output (tensor, tuple, dict, ModelOutput)."""
        key = self.output_key
        if key is not None:
            out = _pick(out, key)
        elif not isinstance(out, torch.Tensor):
            raise DataError(
                f"the model returned {_describe(out)}, not a tensor of predictions",
                hint="pick the prediction with --output-key, or pass --no-prediction "
                "to measure the features against the targets without one",
            )
        if not isinstance(out, torch.Tensor):
            raise DataError(f"--output-key {key!r} selects {_describe(out)}, not a tensor")
        b, t = y.shape
        if out.ndim == 0 or out.shape[0] != b or math.prod(out.shape[1:]) != t:
            raise DataError(
                f"the model's prediction has shape {list(out.shape)}, but the targets "
                f"need ({b}, {t}) per batch",
                hint="pick the target array with --y-key, the prediction with --output-key, "
                "or pass --no-prediction",
            )
        return out.reshape(b, t)

    # -- results ----------------------------------------------------------------------------

    # -- a second pass (families with ``second_pass``; regression has none) -----------------

    def second_accumulator(self, accs: dict[str, Accumulator]) -> Accumulator:
        """The accumulator of one layer's second pass, from its first-pass ``accs``."""
        raise NotImplementedError(f"the {self.task} family has no second pass")

    @staticmethod
    def assign_second(acc: Accumulator, z: torch.Tensor) -> torch.Tensor:
        """What the second pass predicts for the features ``z`` (b, p)."""
        raise NotImplementedError("this family has no second pass")

    def compute(
        self,
        layers: list[tuple[WeightLayer, dict[str, Accumulator]]],
        t: int,
        squared_error: Accumulator | None,
        second: dict[str, Accumulator] | None = None,
    ) -> LayerOutcome:
        """Per-layer rows (forward order) and the run-level summary fields.

        ``layers`` are the accumulated layers in forward order; ``squared_error`` the
        prediction's, or None; ``second`` is unused (regression has no second pass). Pure:
        the accumulators are only read.
        """
        k = self.rank_for(t)
        model_mse = squared_error.compute() if squared_error is not None else None
        randomized = {
            "oversample": self.oversample,
            "power_iters": self.power_iters,
            "seed": self.seed,
        }
        rows: list[dict] = []
        cov_y = None
        last = None
        for i, (w, accs) in enumerate(layers, start=1):
            p = w.in_dim
            method = self.spectrum_method(w, t, "sketch" in accs)
            probe = None
            if method == "nystrom":
                r = accs["sketch"].compute()
                m = r.moments
                spectrum = Spectrum.from_sketch(r.sketch, r.omega, r.trace)
            else:
                m = accs["moments"].compute()
                if method == "exact":
                    spectrum = Spectrum.exact(m.cov_z)
                else:
                    spectrum = Spectrum.randomized(m.cov_z, min(k, p), **randomized)
                    probe = probe_mse_regularized(m, spectrum.top)
            weight = (
                weight_input_basis(w.module)
                if method == "exact"
                else weight_input_basis(w.module, min(k, p), **randomized)
            )
            cov_y = m.cov_y
            last = (spectrum, m)  # the head's, once the loop is done
            row: dict[str, Any] = {"layer": w.name, "index": i, "type": w.type}
            row.update(
                layer_metrics(m, spectrum, w.module, k, model_mse, probe_mse=probe, weight=weight)
            )
            row["collapsed"], vacuous = layer_collapsed(self.rule, row)
            row["note"] = join_notes(row["note"], vacuous)
            rows.append(row)
        if cov_y is None or last is None:
            raise ConfigError("none of the selected weight layers ran during the forward pass")

        first = first_collapsed([r["collapsed"] for r in rows])
        summary = {
            "task": self.task,
            "target_dim": t,
            "rank": k,
            "model_mse": model_mse,
            **target_fields(cov_y),
            "first_collapsed_layer": rows[first - 1]["layer"] if first else None,
            "first_collapsed_index": first,
            "collapse_rule": self.rule.text,
            "nrc1_last": None,
            "nrc2_last": None,
            "nrc3_last": None,
            "nrc3_gamma": None,
        }
        warnings = [w for w in [interpolation_warning(rows, last[1].n)] if w]
        if model_mse is not None and not math.isfinite(model_mse):
            warnings.append(
                "model_mse is null: the model's predictions are not finite (nan or inf), "
                "so nrc4_ratio is null too; check the model's output"
            )
        summary["warnings"] = warnings
        head, head_accs = layers[-1]
        if "gram" in head_accs:
            spectrum, m = last
            summary.update(
                last_layer_fields(
                    head.module.weight,  # type: ignore[arg-type]
                    spectrum,
                    head_accs["gram"].compute(),
                    m.cov_y,
                    k,
                )
            )
        return LayerOutcome(rows, summary)


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

    def __init__(self, *, precision: str = "exact", **options) -> None:
        # The per-class accumulators are exact float64; a request for mixed precision is
        # recorded and answered with a warning.
        super().__init__(precision="exact", **options)
        self.requested_precision = precision

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

    def layer_accumulators(
        self,
        layer: WeightLayer,
        t: int,
        *,
        sketch_size: int | None,
        device: torch.device,
        workspace: Workspace | None,
    ) -> dict[str, Accumulator]:
        if sketch_size:
            omega = self.test_matrix(layer.in_dim, sketch_size, device)
            return {"sketch": ClassSketch(omega, device, workspace)}
        return {"classes": ClassMoments(device, workspace)}

    def empty_accumulator(
        self, kind: str, device: torch.device, omega: torch.Tensor | None = None
    ) -> Accumulator:
        if kind == "classes":
            return ClassMoments(device)
        if kind == "sketch" and omega is not None:
            return ClassSketch(omega.to(device), device)
        raise ValueError(f"unknown accumulator kind {kind!r} (or a sketch without its Ω)")

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
            out = _pick(out, key)
        if not isinstance(out, torch.Tensor):
            hint = "pick the logits with --output-key" if key is None else None
            raise DataError(
                f"the model returned {_describe(out)}, not a tensor of class scores", hint=hint
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

    @staticmethod
    def assign_second(acc: Accumulator, z: torch.Tensor) -> torch.Tensor:
        assert isinstance(acc, NearestClassMean)  # what second_accumulator made
        return acc.assign(z)

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
        randomized = {
            "oversample": self.oversample,
            "power_iters": self.power_iters,
            "seed": self.seed,
        }
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
        }
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


FAMILIES: dict[str, type[RegressionFamily]] = {
    "regression": RegressionFamily,
    "classification": ClassificationFamily,
}
"""Task name -> family class (``CollapseMonitor(task=...)``, ``AnalysisOptions``)."""


def _pick(out, key: str):
    if isinstance(out, (tuple, list)) and not hasattr(out, "keys"):
        try:
            return out[int(key)]
        except (ValueError, IndexError):
            raise DataError(
                f"--output-key {key!r}: the model returned a {type(out).__name__} of "
                f"{len(out)} items; use an index 0..{len(out) - 1}",
            ) from None
    if hasattr(out, "keys"):
        keys = list(out.keys())
        if key in keys:
            return out[key]
        raise DataError(
            f"--output-key {key!r}: the model's output has keys {', '.join(map(str, keys))}",
        )
    if hasattr(out, key):
        return getattr(out, key)
    raise DataError(f"--output-key {key!r}: the model returned {_describe(out)}")


def _describe(out) -> str:
    if hasattr(out, "keys"):
        return f"a {type(out).__name__} with keys {', '.join(map(str, out.keys()))}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"
