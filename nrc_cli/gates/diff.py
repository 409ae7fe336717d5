"""Two reports compared: one engine, :func:`diff_reports`, matches their layers by name and
their metric columns, and gives every value of both with its difference; the baseline check of
``nrc check --baseline`` (:func:`compare_baseline`) and the side-by-side table of ``nrc compare``
(:func:`compare_reports`) are two views of it."""

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


# -- the engine -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueDiff:
    """One metric of one layer in reports A and B; ``diff`` = B − A.

    Attributes
    ----------
    layer : str
    index_a, index_b : int or None
        The layer's ``index`` in each report (None on the side that lacks the layer).
    metric : str
    a, b : float or None
        The values (null when missing, null or not finite; a boolean counts as 0 or 1).
    diff : float or None
        B − A, null unless both values are numbers.
    tolerance : float
        The column's tolerance.
    beyond : bool
        For a layer of both reports: |B − A| exceeds the tolerance, or the value is null on one
        side only. Always false for a layer of one report.
    status : str
        ``both``, ``only_a`` or ``only_b``.
    """

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


@dataclass(frozen=True)
class ReportDiff:
    """Reports A and B matched layer by layer and column by column.

    Attributes
    ----------
    task : str
        The task of both reports.
    tolerances : Tolerances
    columns : tuple of str
        The metric columns of the task, in schema order.
    matched : list of str
        Layer names present in both.
    only_in_a, only_in_b : list of str
        Layers of one report only, each in its report's order.
    values : list of ValueDiff
        The matched layers' values (status ``both``, in the order of ``matched``), then those of
        the layers only in A, then only in B; within a layer, one per column of ``columns``.
    """

    task: str
    tolerances: Tolerances
    columns: tuple[str, ...]
    matched: list[str]
    only_in_a: list[str]
    only_in_b: list[str]
    values: list[ValueDiff]

    def column(self, metric: str) -> list[ValueDiff]:
        """The matched layers' values of one column, in the order of ``matched``."""
        return [v for v in self.values if v.status == "both" and v.metric == metric]


def diff_reports(
    a: Results,
    b: Results,
    tolerances: Tolerances | None = None,
    *,
    names: tuple[str, str] = ("A", "B"),
    cells: tuple[str, str] | None = None,
    order: str = "a",
) -> ReportDiff:
    """Match two reports' layers by name and give every metric value of both, B − A.

    Parameters
    ----------
    a, b : Results
        Reports of the same task.
    tolerances : Tolerances, optional
        Per column; a matched value is beyond tolerance when |B − A| exceeds it, or when it is
        null on one side only (null on both sides is equal).
    names : (str, str)
        How messages name each report (its file, ``report``).
    cells : (str, str), optional
        How messages about one value begin, before ``layer 'x', column 'y'``; by default
        ``"{name}: "`` for each report.
    order : str
        ``a`` or ``b``: the report whose layer order ``matched`` follows.

    Returns
    -------
    ReportDiff

    Raises
    ------
    DataError
        When the tasks differ, a report names a layer twice, or a value is not a number or null.
    """
    if order not in ("a", "b"):
        raise ValueError(f"order: expected 'a' or 'b', found {order!r}")
    if a.task != b.task:
        raise DataError(
            f"{names[0]} is a {a.task} report and {names[1]} a {b.task} report; their columns "
            "differ",
            hint="compare reports of the same task",
        )
    tolerances = tolerances or Tolerances()
    cell_a, cell_b = cells or (f"{names[0]}: ", f"{names[1]}: ")
    rows_a, rows_b = by_name(a, names[0]), by_name(b, names[1])
    columns = metric_columns(a.task)
    leading, other = (rows_a, rows_b) if order == "a" else (rows_b, rows_a)
    matched = [name for name in leading if name in other]
    only_a = [name for name in rows_a if name not in rows_b]
    only_b = [name for name in rows_b if name not in rows_a]

    def value(row: dict | None, cell: str, name: str, metric: str) -> float | None:
        if row is None:
            return None
        return number(row.get(metric), f"{cell}layer '{name}', column '{metric}'")

    values = []
    for status, layers in (("both", matched), ("only_a", only_a), ("only_b", only_b)):
        for name in layers:
            ra, rb = rows_a.get(name), rows_b.get(name)
            for metric in columns:
                va = value(ra, cell_a, name, metric)
                vb = value(rb, cell_b, name, metric)
                diff = None if va is None or vb is None else vb - va
                tol = tolerances.for_column(metric)
                beyond = status == "both" and (
                    (va is None) != (vb is None) or (diff is not None and abs(diff) > tol)
                )
                values.append(
                    ValueDiff(
                        name,
                        None if ra is None else ra.get("index"),
                        None if rb is None else rb.get("index"),
                        metric,
                        va,
                        vb,
                        diff,
                        tol,
                        beyond,
                        status,
                    )
                )
    return ReportDiff(a.task, tolerances, columns, matched, only_a, only_b, values)


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


# -- the baseline check (nrc check --baseline) --------------------------------------------------


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
    diff = diff_reports(
        baseline,
        current,
        tolerances,
        names=(f"baseline '{path}'", "report"),
        cells=("baseline ", ""),
        order="b",
    )
    return BaselineResult(
        path=path,
        tolerances=tolerances,
        matched=diff.matched,
        only_in_baseline=diff.only_in_a,
        only_in_current=diff.only_in_b,
        columns=[_column_check(c, tolerances, diff.column(c)) for c in diff.columns],
    )


def _column_check(column: str, tolerances: Tolerances, values: list[ValueDiff]) -> ColumnCheck:
    """One column of the matched layers, the baseline as A and the current report as B."""
    moved = [Drift(v.layer, v.a, v.b, v.diff) for v in values if v.beyond]
    changes = [(abs(v.diff), v.layer) for v in values if v.diff is not None]
    largest, worst = max(changes, key=lambda c: c[0], default=(None, None))
    null_change = next((v.layer for v in values if (v.a is None) != (v.b is None)), None)
    return ColumnCheck(column, tolerances.for_column(column), largest, worst or null_change, moved)


# -- the side-by-side comparison (nrc compare) ------------------------------------------------

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
    rows : list of ValueDiff
        Matched layers (status ``both``, in A's order) then unmatched ones (``only_a``,
        ``only_b``), one row per metric of the task.
    only_in_a, only_in_b : list of str
    """

    a_path: str
    b_path: str
    a: Results
    b: Results
    tolerances: Tolerances
    rows: list[ValueDiff]
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
    diff = diff_reports(a, b, tolerances, names=(a_path, b_path))
    return Comparison(
        a_path=a_path,
        b_path=b_path,
        a=a,
        b=b,
        tolerances=diff.tolerances,
        rows=diff.values,
        only_in_a=diff.only_in_a,
        only_in_b=diff.only_in_b,
    )
