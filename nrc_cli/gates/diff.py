"""Two reports compared: drift against a baseline within tolerances, and the side-by-side
comparison of ``nrc compare``."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.gates.evaluate import number, plural
from nrc_cli.grammar import num
from nrc_cli.results import (
    TASKS,
    Results,
    metric_columns,
)

DEFAULT_TOLERANCE = 0.02
# What a tolerance or comparison may name: every metric column of either task.
METRIC_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for t in TASKS for c in metric_columns(t)))


@dataclass(frozen=True)
class Tolerances:
    """Absolute tolerances for baseline and compare: one default and per-column overrides."""

    default: float = DEFAULT_TOLERANCE
    per_column: dict = field(default_factory=dict)

    def for_column(self, column: str) -> float:
        return self.per_column.get(column, self.default)

    def merged(self, other: Tolerances | None, *, other_has_default: bool) -> Tolerances:
        """These tolerances overridden by ``other`` (its default only when it set one)."""
        if other is None:
            return self
        return Tolerances(
            other.default if other_has_default else self.default,
            {**self.per_column, **other.per_column},
        )


def parse_tolerances(
    values: list[str] | None, *, source: str = "--tolerance"
) -> tuple[Tolerances, bool]:
    """Parse ``--tolerance`` values: ``0.02`` (every column) and ``COLUMN=0.01`` (one column).

    Parameters
    ----------
    values : list of str or None
        The option's values, in order.
    source : str
        The option name, for messages.

    Returns
    -------
    (Tolerances, bool)
        The tolerances, and whether a default (bare number) was given.

    Raises
    ------
    ConfigError
        For a value that is not a non-negative finite number, a column that is not one of
        ``METRIC_COLUMNS``, or two bare numbers.
    """
    default, has_default, per = DEFAULT_TOLERANCE, False, {}
    for raw in values or ():
        text = raw.strip()
        if "=" in text:
            column, _, number = (s.strip() for s in text.partition("="))
            check_tolerance_column(column, f"{source} '{raw}'")
            per[column] = tolerance_value(number, f"{source} '{raw}'")
        else:
            if has_default:
                raise ConfigError(
                    f"{source} '{raw}': a default tolerance was already given "
                    f"({num(default)}); expected one bare number and COLUMN=NUMBER overrides",
                    hint="e.g. --tolerance 0.02 --tolerance nrc1_noise=0.01",
                )
            default, has_default = tolerance_value(text, f"{source} '{raw}'"), True
    return Tolerances(default, per), has_default


def check_tolerance_column(column: str, where: str) -> None:
    if column not in METRIC_COLUMNS:
        close = difflib.get_close_matches(column, METRIC_COLUMNS, n=1)
        raise ConfigError(
            f"{where}: unknown metric column '{column}'; expected one of "
            f"{', '.join(METRIC_COLUMNS)}",
            hint=f"did you mean '{close[0]}'?" if close else None,
        )


def tolerance_value(text, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(text, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{where}: expected a tolerance, a finite number >= 0, found {text!r}",
            hint="tolerances are absolute differences, e.g. 0.02",
        )
    return value


@dataclass(frozen=True)
class Drift:
    """One layer's value of one column in the baseline and now; ``diff`` = current − baseline."""

    layer: str
    baseline: float | None
    current: float | None
    diff: float | None

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "baseline": self.baseline,
            "current": self.current,
            "diff": self.diff,
        }


@dataclass(frozen=True)
class ColumnCheck:
    """One metric column of every matched layer against the baseline.

    Attributes
    ----------
    column : str
    tolerance : float
    max_abs_diff : float or None
        The largest |current − baseline| over matched layers (None when nothing compared).
    worst_layer : str or None
        The layer of ``max_abs_diff``, or the first layer whose value became or stopped being null.
    moved : list of Drift
        Layers beyond tolerance, including those whose value became or stopped being null.
    """

    column: str
    tolerance: float
    max_abs_diff: float | None
    worst_layer: str | None
    moved: list[Drift]

    @property
    def passed(self) -> bool:
        return not self.moved

    @property
    def name(self) -> str:
        return f"baseline: {self.column}"

    @property
    def message(self) -> str:
        tol = num(self.tolerance)
        if self.passed:
            if self.max_abs_diff is None:
                return f"{self.column}: nothing to compare"
            return (
                f"{self.column} within {tol} of the baseline; largest |Δ| "
                f"{num(self.max_abs_diff)} at layer '{self.worst_layer}'"
            )
        shown = ", ".join(_drift_text(d) for d in self.moved[:5])
        more = f", and {len(self.moved) - 5} more" if len(self.moved) > 5 else ""
        n = len(self.moved)
        return f"{self.column} moved beyond {tol} on {n} {plural(n, 'layer')}: {shown}{more}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "column": self.column,
            "tolerance": self.tolerance,
            "max_abs_diff": self.max_abs_diff,
            "worst_layer": self.worst_layer,
            "passed": self.passed,
            "message": self.message,
            "moved": [d.to_dict() for d in self.moved],
        }


def _drift_text(d: Drift) -> str:
    b = "null" if d.baseline is None else num(d.baseline)
    c = "null" if d.current is None else num(d.current)
    delta = "" if d.diff is None else f" (Δ {d.diff:+.4g})"
    return f"'{d.layer}' {b} → {c}{delta}"


@dataclass(frozen=True)
class BaselineResult:
    """A report against its baseline: the layer sets, then every metric column.

    Attributes
    ----------
    path : str
        The baseline as the user named it.
    tolerances : Tolerances
    matched : list of str
        Layer names present in both, in the current report's order.
    only_in_baseline, only_in_current : list of str
        Layers removed and added since the baseline.
    columns : list of ColumnCheck
        One per column of ``METRIC_COLUMNS``.
    """

    path: str
    tolerances: Tolerances
    matched: list[str]
    only_in_baseline: list[str]
    only_in_current: list[str]
    columns: list[ColumnCheck]

    @property
    def layers_passed(self) -> bool:
        return not self.only_in_baseline and not self.only_in_current

    @property
    def layers_message(self) -> str:
        if self.layers_passed:
            return f"same {len(self.matched)} layers as the baseline"
        parts = []
        if self.only_in_baseline:
            parts.append(f"removed since the baseline: {_names(self.only_in_baseline)}")
        if self.only_in_current:
            parts.append(f"added since the baseline: {_names(self.only_in_current)}")
        return f"{'; '.join(parts)} ({len(self.matched)} layers matched)"

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "tolerance": self.tolerances.default,
            "tolerances": dict(sorted(self.tolerances.per_column.items())),
            "matched": self.matched,
            "only_in_baseline": self.only_in_baseline,
            "only_in_current": self.only_in_current,
            "layers_passed": self.layers_passed,
            "layers_message": self.layers_message,
            "columns": [c.to_dict() for c in self.columns],
        }


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def compare_baseline(
    current: Results, baseline: Results, tolerances: Tolerances, *, path: str = ""
) -> BaselineResult:
    """Check every per-layer metric of every layer present in both reports.

    Parameters
    ----------
    current, baseline : Results
        Layers are matched by name.
    tolerances : Tolerances
        Absolute: a column passes when |current − baseline| <= its tolerance on every matched
        layer. A value that is null on one side only is a failure; null on both sides is equal.
    path : str
        The baseline as the user named it, for messages.

    Returns
    -------
    BaselineResult
        Layers added or removed are listed there; they fail the check.
    """
    if current.task != baseline.task:
        raise DataError(
            f"baseline '{path}' is a {baseline.task} report, this one a {current.task} report; "
            "their columns differ",
            hint="compare against a baseline of the same task",
        )
    cur = by_name(current, "report")
    base = by_name(baseline, f"baseline '{path}'")
    matched = [name for name in cur if name in base]
    columns = []
    for column in metric_columns(current.task):
        tol = tolerances.for_column(column)
        moved, worst, worst_diff, null_change = [], None, None, None
        for name in matched:
            b = number(base[name].get(column), f"baseline layer '{name}', column '{column}'")
            c = number(cur[name].get(column), f"layer '{name}', column '{column}'")
            if b is None and c is None:
                continue
            if b is None or c is None:
                moved.append(Drift(name, b, c, None))
                null_change = null_change or name
                continue
            diff = c - b
            if worst_diff is None or abs(diff) > worst_diff:
                worst, worst_diff = name, abs(diff)
            if abs(diff) > tol:
                moved.append(Drift(name, b, c, diff))
        columns.append(ColumnCheck(column, tol, worst_diff, worst or null_change, moved))
    return BaselineResult(
        path=path,
        tolerances=tolerances,
        matched=matched,
        only_in_baseline=[n for n in base if n not in cur],
        only_in_current=[n for n in cur if n not in base],
        columns=columns,
    )


def by_name(results: Results, what: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for row in results.layers:
        name = str(row.get("layer"))
        if name in rows:
            raise DataError(
                f"{what}: layer name '{name}' appears twice; layers are matched by name",
            )
        rows[name] = row
    return rows


@dataclass(frozen=True)
class CompareRow:
    """One (layer, metric) of two reports; ``diff`` = B − A."""

    layer: str
    index_a: int | None
    index_b: int | None
    metric: str
    a: float | None
    b: float | None
    diff: float | None
    tolerance: float
    beyond: bool
    status: str

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "index_a": self.index_a,
            "index_b": self.index_b,
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "diff": self.diff,
            "tolerance": self.tolerance,
            "beyond_tolerance": self.beyond,
            "status": self.status,
        }


COMPARE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("layer", "str"),
    ("index_a", "int"),
    ("index_b", "int"),
    ("metric", "str"),
    ("a", "float"),
    ("b", "float"),
    ("diff", "float"),
    ("tolerance", "float"),
    ("beyond_tolerance", "bool"),
    ("status", "str"),
)


@dataclass(frozen=True)
class Comparison:
    """Two reports side by side, layers matched by name.

    Attributes
    ----------
    a_path, b_path : str
        The reports as the user named them.
    a, b : Results
    tolerances : Tolerances
    rows : list of CompareRow
        Matched layers (status ``both``, in A's order) then unmatched ones (``only_a``,
        ``only_b``), one row per metric of ``METRIC_COLUMNS``.
    only_in_a, only_in_b : list of str
    """

    a_path: str
    b_path: str
    a: Results
    b: Results
    tolerances: Tolerances
    rows: list[CompareRow]
    only_in_a: list[str]
    only_in_b: list[str]

    @property
    def n_beyond(self) -> int:
        return sum(r.beyond for r in self.rows)

    @property
    def n_compared(self) -> int:
        return sum(r.status == "both" for r in self.rows)

    def to_dict(self) -> dict:
        return {
            "a": {"path": self.a_path, "checkpoint": self.a.checkpoint, "data": self.a.data},
            "b": {"path": self.b_path, "checkpoint": self.b.checkpoint, "data": self.b.data},
            "tolerance": self.tolerances.default,
            "tolerances": dict(sorted(self.tolerances.per_column.items())),
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "compared": self.n_compared,
            "beyond_tolerance": self.n_beyond,
            "rows": [r.to_dict() for r in self.rows],
        }


def compare_reports(
    a: Results,
    b: Results,
    tolerances: Tolerances | None = None,
    *,
    a_path: str = "A",
    b_path: str = "B",
) -> Comparison:
    """Put two reports side by side: every metric of every layer, matched by layer name.

    Parameters
    ----------
    a, b : Results
    tolerances : Tolerances, optional
        A difference is beyond tolerance when |B − A| exceeds the column's tolerance, or when
        the value is null on one side only.
    a_path, b_path : str
        Labels (the file names).

    Returns
    -------
    Comparison
    """
    tolerances = tolerances or Tolerances()
    if a.task != b.task:
        raise DataError(
            f"{a_path} is a {a.task} report and {b_path} a {b.task} report; their columns differ",
            hint="compare reports of the same task",
        )
    metrics = metric_columns(a.task)
    rows_a, rows_b = by_name(a, a_path), by_name(b, b_path)
    rows = []
    for name, ra in rows_a.items():
        rb = rows_b.get(name)
        for metric in metrics:
            va = number(ra.get(metric), f"{a_path}: layer '{name}', column '{metric}'")
            tol = tolerances.for_column(metric)
            if rb is None:
                rows.append(
                    CompareRow(
                        name, ra.get("index"), None, metric, va, None, None, tol, False, "only_a"
                    )
                )
                continue
            vb = number(rb.get(metric), f"{b_path}: layer '{name}', column '{metric}'")
            diff = None if va is None or vb is None else vb - va
            beyond = (va is None) != (vb is None) or (diff is not None and abs(diff) > tol)
            rows.append(
                CompareRow(
                    name,
                    ra.get("index"),
                    rb.get("index"),
                    metric,
                    va,
                    vb,
                    diff,
                    tol,
                    beyond,
                    "both",
                )
            )
    # Matched rows first, in A's order; then what only one side has.
    rows.sort(key=lambda r: r.status != "both")
    for name, rb in rows_b.items():
        if name in rows_a:
            continue
        for metric in metrics:
            vb = number(rb.get(metric), f"{b_path}: layer '{name}', column '{metric}'")
            tol = tolerances.for_column(metric)
            rows.append(
                CompareRow(
                    name, None, rb.get("index"), metric, None, vb, None, tol, False, "only_b"
                )
            )
    return Comparison(
        a_path=a_path,
        b_path=b_path,
        a=a,
        b=b,
        tolerances=tolerances,
        rows=rows,
        only_in_a=[n for n in rows_a if n not in rows_b],
        only_in_b=[n for n in rows_b if n not in rows_a],
    )
