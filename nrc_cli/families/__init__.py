"""Metric families: which accumulators a monitored layer gets, and how results are computed.

A family is the seam through which a kind of analysis plugs into
:class:`nrc_cli.monitor.CollapseMonitor`: the monitor owns the hooks, the batches and the
bookkeeping (samples, forward order, merging, state dicts); the family says, per layer, which
accumulators to keep (:meth:`RegressionFamily.layer_accumulators`), how a batch of features
updates them (:meth:`RegressionFamily.update_layer`), and how the accumulated state becomes
per-layer rows and summary fields (:meth:`RegressionFamily.compute`). :data:`FAMILIES` maps a
task name to its class:

* ``regression`` (:mod:`~nrc_cli.families.regression`): Deep Neural Regression Collapse,
  docs/metrics.md; :class:`RegressionFamily` is the base of every family;
* ``classification`` (:mod:`~nrc_cli.families.classification`): Deep Neural Collapse of a
  classifier, docs/classification.md, with a second pass over the data (the
  nearest-class-mean columns).

A batch's targets and the captured features paired with them are in
:mod:`~nrc_cli.families.batch`; the prediction inside a model's output in
:mod:`~nrc_cli.families.outputs`. The state a monitor accumulates through a family (its passes,
how they merge, join, reduce across ranks and save) is the monitor's: :mod:`nrc_cli.passes`.

A family holds options only, never accumulated state, so one instance serves any number of
monitors.
"""

from __future__ import annotations

from nrc_cli.families.classification import ClassificationFamily
from nrc_cli.families.regression import LayerOutcome, RegressionFamily

__all__ = [
    "FAMILIES",
    "ClassificationFamily",
    "LayerOutcome",
    "RegressionFamily",
]

FAMILIES: dict[str, type[RegressionFamily]] = {
    "regression": RegressionFamily,
    "classification": ClassificationFamily,
}
"""Task name -> family class (``CollapseMonitor(task=...)``, ``AnalysisOptions``)."""
