"""A requirement evaluated on a report: per-layer values, the verdict, the worst layer."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.grammar import (
    COMPARE,
    SUMMARY_ALIASES,
    SUMMARY_KEYS,
    Requirement,
    expression_error,
    num,
)
from nrc_cli.results import (
    TASKS,
    Results,
    layer_columns,
    plain,
    summary_fields,
)


@dataclass(frozen=True)
class LayerValue:
    """One selected layer's value and whether it satisfies the requirement."""

    layer: str
    index: int | None
    value: float | None
    passed: bool


@dataclass(frozen=True)
class RequirementResult:
    """The outcome of one requirement on one report.

    Attributes
    ----------
    requirement : Requirement
    values : list of LayerValue
        One per selected layer (empty for a summary field).
    observed : float or None
        The summary value, or the worst selected layer's value (null when a value is null).
    worst_layer : str or None
        The layer whose value is ``observed`` (None for a summary field).
    passed : bool
    message : str
        One line saying what was observed against what was required.
    """

    requirement: Requirement
    values: list[LayerValue]
    observed: float | None
    worst_layer: str | None
    passed: bool
    message: str

    @property
    def layers(self) -> list[str]:
        return [v.layer for v in self.values]

    def to_dict(self) -> dict:
        r = self.requirement
        return {
            "expr": r.expr,
            "source": r.source,
            "column": r.column,
            "scope": r.scope,
            "selector": r.selector.text or None,
            "layers": self.layers,
            "observed": self.observed,
            "worst_layer": self.worst_layer,
            "op": r.op,
            "bound": r.bound,
            "passed": self.passed,
            "message": self.message,
            "values": [
                {"layer": v.layer, "index": v.index, "value": v.value, "passed": v.passed}
                for v in self.values
            ],
        }


_NULL_REASONS = {
    "first_collapsed_index": "the last layer is not collapsed",
    "nrc1_last": "the last weight layer is not a Linear with t outputs",
    "nrc2_last": "the last weight layer is not a Linear with t outputs",
    "nrc3_last": "the last weight layer is not a Linear with t outputs",
    "nrc3_gamma": "the last weight layer is not a Linear with t outputs",
    "model_accuracy": "the run had no model prediction",
    "nc3_duality_last": "the last weight layer is not a Linear with one output per class, "
    "or the labels are not 0..C-1",
}


def _check_task(requirement: Requirement, results: Results) -> None:
    """A requirement names a column of the report's own task (a regression report has no
    nc1, a classification report no nrc1_noise)."""
    r, task = requirement, results.task
    if r.scope == "summary":
        names = {SUMMARY_ALIASES.get(n, n) for n, _ in summary_fields(task)}
    else:
        names = {n for n, _ in layer_columns(task)}
    if r.column not in names:
        other = [t for t in TASKS if t != task]
        raise ConfigError(
            f"requirement '{r.expr}': '{r.column}' is not a column of a {task} report",
            hint=f"'{r.column}' belongs to {' or '.join(other)} reports; "
            f"{task} columns: {', '.join(n for n in sorted(names))}",
        )


def evaluate(requirement: Requirement, results: Results) -> RequirementResult:
    """Evaluate one requirement on a report.

    Parameters
    ----------
    requirement : Requirement
    results : Results

    Returns
    -------
    RequirementResult

    Raises
    ------
    ConfigError
        When the layer selector matches no layer of the report (the message lists its layers).
    DataError
        When the report holds a non-numeric value where a number belongs.
    """
    r = requirement
    _check_task(r, results)
    test = COMPARE[r.op]
    if r.scope == "summary":
        key = SUMMARY_KEYS.get(r.column, r.column)
        value = number(results.summary.get(key), f"summary field '{key}'")
        if value is None:
            why = _NULL_REASONS.get(r.column, "the report holds no value for it")
            msg = f"{r.column} is null ({why}); expected {r.bound_text}"
            return RequirementResult(r, [], None, None, False, msg)
        passed = test(value, r.bound)
        msg = f"{r.column} = {num(value, r.bound)}, expected {r.bound_text}"
        return RequirementResult(r, [], value, None, passed, msg)

    rows = r.selector.select(results.layers)
    if not rows:
        raise _no_match_error(r, results.layers)
    values = []
    for row in rows:
        name = str(row.get("layer"))
        value = number(row.get(r.column), f"layer '{name}', column '{r.column}'")
        passed = value is not None and test(value, r.bound)
        values.append(LayerValue(name, row.get("index"), value, passed))
    worst = _worst(values, r)
    failing = [v for v in values if not v.passed]
    passed = not failing
    layers = plural(len(values), "layer")
    if r.selector.kind != "all":
        layers = f"selected {layers}"
    if passed:
        on = (
            f"all {len(values)} {layers}" if r.selector.kind == "all" else f"{len(values)} {layers}"
        )
        msg = (
            f"{r.column} {r.bound_text} holds on {on}; worst "
            f"{num(worst.value, r.bound)} at layer '{worst.layer}'"
        )
    else:
        shown = ", ".join(_layer_value(v, r.bound) for v in failing[:5])
        more = f", and {len(failing) - 5} more" if len(failing) > 5 else ""
        verb = "fails" if len(failing) == 1 else "fail"
        msg = (
            f"{len(failing)} of {len(values)} {layers} {verb} {r.column} {r.bound_text}: "
            f"{shown}{more}"
        )
    return RequirementResult(r, values, worst.value, worst.layer, passed, msg)


def _layer_value(v: LayerValue, bound: float) -> str:
    if v.value is None:
        return f"'{v.layer}' null"
    return f"'{v.layer}' {num(v.value, bound)}"


def _worst(values: list[LayerValue], r: Requirement) -> LayerValue:
    """The layer furthest on the wrong side of the bound (a null one first)."""
    nulls = [v for v in values if v.value is None]
    if nulls:
        return nulls[0]

    def value(v: LayerValue) -> float:
        assert v.value is not None  # the null ones were handled above
        return v.value

    if r.op in ("<=", "<"):
        return max(values, key=value)
    if r.op in (">=", ">"):
        return min(values, key=value)
    if r.op == "==":
        return max(values, key=lambda v: abs(value(v) - r.bound))
    return min(values, key=lambda v: abs(value(v) - r.bound))


def _no_match_error(r: Requirement, layers: list[dict]) -> ConfigError:
    listed = ", ".join(f"{row.get('index')} '{row.get('layer')}'" for row in layers[:12])
    if len(layers) > 12:
        listed += f", … ({len(layers)} in all)"
    at = f"layer {r.selector.describe()} at position {r.selector.position + 1}"
    what = f"{at} matches no layer of the report"
    if r.selector.kind in ("index", "slice"):
        indices = [i for row in layers if (i := row.get("index")) is not None]
        span = f"{min(indices)} to {max(indices)}" if indices else "none"
        what = f"{at} matches no layer: the report has {len(layers)} layers, index {span}"
    err = expression_error(
        r.expr,
        r.source,
        f"{what}; its layers (index 'name'): {listed or 'none'}",
        r.selector.position,
        fix="select by index ([-1], [5:], [2:4]), name ([net.6]) or glob ([layer4.*])",
    )
    return err


def number(value, where: str) -> float | None:
    value = plain(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    # numbers.Real also admits numpy scalars a fresh analysis may hold.
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise DataError(f"report: {where}: expected a number or null, found {value!r}")


def plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}s"


def num_repr(value: float | None) -> str:
    return "null" if value is None else repr(value)
