"""The regression family: Deep Neural Regression Collapse (docs/metrics.md).

:class:`RegressionFamily` is also the base every family extends (:mod:`nrc_cli.families`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nrc_cli.accumulate.base import Accumulator
from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram, SquaredError, Workspace
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.capture import WeightLayer, is_linear, out_dim
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families.outputs import describe_output, pick_output
from nrc_cli.linalg import gaussian_test_matrix, resolve_svd_method
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
from nrc_cli.options import AnalysisOptions, CollapseRule
from nrc_cli.planning import LayerNeed, layer_need


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
    options : AnalysisOptions
        The analysis options, whole: the family reads the analysis rank ``rank``, the spectrum
        method ``svd``, the randomized solvers' and the sketches' ``oversample``,
        ``power_iters`` and ``seed``, ``output_key`` (which part of the model's output is the
        prediction), ``precision``, and the collapse rule of its task (parsed once, here).
    """

    task = "regression"
    kinds: tuple[str, ...] = ("moments", "gram", "sketch")
    # Whether the family has a second data pass (the nearest-class-mean columns of a classifier).
    second_pass = False

    def __init__(self, options: AnalysisOptions) -> None:
        self.options = options
        self.rule: CollapseRule = options.rule(self.task)
        # What the family reads of the options, taken here once.
        self.rank, self.svd, self.output_key = options.rank, options.svd, options.output_key
        self.oversample, self.power_iters = options.oversample, options.power_iters
        self.seed, self.precision = options.seed, options.precision

    @classmethod
    def from_options(cls, options: AnalysisOptions) -> RegressionFamily:
        """The family of ``options``' analysis (the same as ``cls(options)``)."""
        return cls(options)

    @property
    def randomized(self) -> dict[str, int]:
        """The knobs of every randomized solver, as keyword arguments."""
        return {"oversample": self.oversample, "power_iters": self.power_iters, "seed": self.seed}

    # -- per-layer state --------------------------------------------------------------------

    @staticmethod
    def possible_head(layer: WeightLayer, t: int) -> bool:
        """Whether ``layer`` could be the regression head: a Linear with t outputs.

        The head is known only after the first forward pass, so the normalised Gram of the
        last-layer NRC is kept for every such Linear (in practice only the head has that width).
        """
        return is_linear(layer.module) and out_dim(layer.module) == t

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
        """Fresh accumulators for one layer, keyed by kind (one of :attr:`kinds`): a sketch of
        ``sketch_size`` columns with its seeded test matrix (:meth:`sketch_accumulator`), or
        the family's exact ones (:meth:`exact_accumulators`)."""
        if sketch_size:
            omega = self.test_matrix(layer.in_dim, sketch_size, device)
            return {"sketch": self.sketch_accumulator(omega, device, workspace)}
        return self.exact_accumulators(layer, t, device, workspace)

    def empty_accumulator(
        self, kind: str, device: torch.device, omega: torch.Tensor | None = None
    ) -> Accumulator:
        """An empty accumulator of ``kind``, for loading a state dict into."""
        if kind == "sketch" and omega is not None:
            return self.sketch_accumulator(omega.to(device), device, None)
        if kind != "sketch" and kind in self.kinds:
            return self.exact_accumulator(kind, device)
        raise ValueError(f"unknown accumulator kind {kind!r} (or a sketch without its Ω)")

    # What each family declares: its exact accumulators, and its sketch.

    def exact_accumulators(
        self, layer: WeightLayer, t: int, device: torch.device, workspace: Workspace | None
    ) -> dict[str, Accumulator]:
        """A layer's exact accumulators: its :class:`CrossMoments` and, for a Linear that could
        be the head, its :class:`NormalizedGram` (the per-batch temporaries in ``workspace``)."""
        prec = self.precision
        accs: dict[str, Accumulator] = {"moments": CrossMoments(device, workspace, precision=prec)}
        if self.possible_head(layer, t):
            accs["gram"] = NormalizedGram(device, workspace, precision=prec)
        return accs

    def exact_accumulator(self, kind: str, device: torch.device) -> Accumulator:
        """An empty exact accumulator of ``kind`` (one of :attr:`kinds`, not ``sketch``)."""
        made = NormalizedGram if kind == "gram" else CrossMoments
        return made(device, precision=self.precision)

    def sketch_accumulator(
        self, omega: torch.Tensor, device: torch.device, workspace: Workspace | None
    ) -> Accumulator:
        """The sketch of a layer whose exact state does not fit, with the test matrix ``omega``
        (p×s, on ``device``)."""
        return CovarianceSketch(omega)

    @staticmethod
    def check_batch(layers: Mapping[str, Mapping[str, Accumulator]], y: torch.Tensor) -> None:
        """Refuse a batch of targets ``y`` that no layer could take, before any layer takes
        it (DataError); regression has nothing to check here."""

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
            out = pick_output(out, key)
        elif not isinstance(out, torch.Tensor):
            raise DataError(
                f"the model returned {describe_output(out)}, not a tensor of predictions",
                hint="pick the prediction with --output-key, or pass --no-prediction "
                "to measure the features against the targets without one",
            )
        if not isinstance(out, torch.Tensor):
            raise DataError(f"--output-key {key!r} selects {describe_output(out)}, not a tensor")
        b, t = y.shape
        if out.ndim == 0 or out.shape[0] != b or math.prod(out.shape[1:]) != t:
            hint = (
                "pick the target array with --y-key, the prediction with --output-key, "
                "or pass --no-prediction"
            )
            if _looks_like_labels(y, out):
                hint = (
                    f"the targets are whole numbers and the model gives {out.shape[-1]} scores "
                    "per sample: a classifier? measure it with --task classification "
                    '(task="classification" in Python)'
                )
            raise DataError(
                f"the model's prediction has shape {list(out.shape)}, but the targets "
                f"need ({b}, {t}) per batch",
                hint=hint,
            )
        return out.reshape(b, t)

    # -- results ----------------------------------------------------------------------------

    # -- a second pass (families with ``second_pass``; regression has none) -----------------

    def second_accumulator(self, accs: dict[str, Accumulator]) -> Accumulator:
        """The accumulator of one layer's second pass, from its first-pass ``accs``."""
        raise NotImplementedError(f"the {self.task} family has no second pass")

    def update_second(
        self,
        acc: Accumulator,
        z: torch.Tensor,
        y: torch.Tensor,
        pred: torch.Tensor | None,
        start: int,
    ) -> None:
        """Fold one batch of the second pass into a layer's ``acc``: its features ``z`` (b, p),
        the targets ``y`` as :meth:`prepare_targets` made them, the model's prediction
        (:meth:`select_prediction`, or None); ``start`` is the batch's first sample."""
        raise NotImplementedError(f"the {self.task} family has no second pass")

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
        randomized = self.randomized
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


def _looks_like_labels(y: torch.Tensor, out: torch.Tensor) -> bool:
    """One target column of whole numbers beside an output of several scores per sample."""
    return (
        y.shape[1] == 1
        and out.ndim == 2
        and out.shape[1] >= 2
        and bool(torch.all(y == torch.round(y)))
        and bool(torch.all((y >= 0) & (y < out.shape[1])))
    )
