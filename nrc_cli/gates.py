"""CI gates: requirements on a report, drift against a baseline report, and report comparison.

Pure functions over :class:`~nrc_cli.results.Results`: nothing here prints, runs a model or knows
about the command line. ``nrc check`` and ``nrc compare`` wire these to options and outputs.

A requirement is ``COLUMN[LAYERS] OP NUMBER`` on a per-layer column or ``FIELD OP NUMBER`` on a
summary field, with ``OP`` one of ``<= >= < > == !=``. ``LAYERS`` picks layers by their 1-based
``index`` (``[3]``, ``[-1]`` the last, ``[5:]``, ``[:3]``, ``[2:4]`` inclusive), by name
(``[net.6]``, or quoted ``['4']`` for a name made of digits) or by glob (``[layer4.*]``); without
it, every layer. Every selected layer must satisfy the requirement; a null value never does.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import numbers
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from nrc_cli._version import __version__
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.files import require_regular
from nrc_cli.results import (
    TASKS,
    Results,
    layer_columns,
    metric_columns,
    plain,
    summary_fields,
)

# Per-layer columns a requirement may test: every numeric or boolean column of the schema, of
# either task (regression's first); a report is checked against its own task's columns.
GATE_LAYER_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(
        name
        for task in TASKS
        for name, kind in layer_columns(task)
        if kind in ("int", "float", "bool")
    )
)
# Summary fields a requirement may test. The summary's ``rank`` is ``requested_rank`` here, as in
# tidy tables, because the per-layer ``rank`` owns the plain name.
_SUMMARY_ALIASES = {"rank": "requested_rank"}
GATE_SUMMARY_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        _SUMMARY_ALIASES.get(name, name)
        for task in TASKS
        for name, kind in summary_fields(task)
        if kind in ("int", "float")
    )
)
# What a requirement, tolerance or comparison may name: every column of either task.
METRIC_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for t in TASKS for c in metric_columns(t)))
_SUMMARY_KEYS = {alias: name for name, alias in _SUMMARY_ALIASES.items()}

OPERATORS = ("<=", ">=", "==", "!=", "<", ">")
_COMPARE = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
DEFAULT_TOLERANCE = 0.02
GRAMMAR = "COLUMN[LAYERS] OP NUMBER or FIELD OP NUMBER, e.g. 'nrc1_noise[-1] <= 0.05'"
# Width of the "hint: " prefix the command line puts before a hint, so a caret on the hint's
# second line sits under the offending character of the expression on its first line.
_HINT_PREFIX = len("hint: ")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+")
# Characters of an unquoted layer name or glob: module paths are dotted identifiers and digits.
_NAME_CHAR = re.compile(r"[\w.*?\[\]!/-]")


# --------------------------------------------------------------------------- requirements


@dataclass(frozen=True)
class Selector:
    """Which layers a requirement applies to.

    Attributes
    ----------
    text : str
        The selector as written, without brackets; ``""`` for every layer.
    kind : str
        ``all``, ``index``, ``slice``, ``name`` or ``glob``.
    start, stop : int or None
        For ``index`` (``start`` only) and ``slice``: 1-based indices, negative ones counting from
        the last layer (``-1`` is the last); a missing bound is open.
    pattern : str or None
        For ``name`` and ``glob``: the layer name or the glob.
    position : int
        0-based position of the selector's first character in the expression (for messages).
    """

    text: str = ""
    kind: str = "all"
    start: int | None = None
    stop: int | None = None
    pattern: str | None = None
    position: int = 0

    def select(self, layers: list[dict]) -> list[dict]:
        """The layers (rows of a report, in order) this selector picks; possibly none."""
        n = len(layers)
        if self.kind == "all":
            return list(layers)
        if self.kind in ("name", "glob"):
            match = (
                (lambda name: name == self.pattern)
                if self.kind == "name"
                else (lambda name: fnmatch.fnmatchcase(name, self.pattern))
            )
            return [row for row in layers if match(str(row.get("layer")))]
        start, stop = self.start, self.stop
        if self.kind == "index":
            assert start is not None  # an index selector always has its index
            if start < 0:
                return [layers[n + start]] if -start <= n else []
            return [row for row in layers if row.get("index") == start]
        picked = []
        for pos, row in enumerate(layers):
            # A positive bound compares with the layer's own ``index`` (which may have gaps after
            # --layers); a negative one counts positions from the end of the report.
            index = row["index"]  # every row of a report has its index
            if start is not None and not (index >= start if start > 0 else pos >= n + start):
                continue
            if stop is not None and not (index <= stop if stop > 0 else pos <= n + stop):
                continue
            picked.append(row)
        return picked

    def describe(self) -> str:
        """Words for messages: ``index -1``, ``indices 5:``, ``name 'net.6'``, ``glob 'x.*'``."""
        return {
            "all": "every layer",
            "index": f"index {self.start}",
            "slice": f"index range [{self.text}]",
            "name": f"name '{self.pattern}'",
            "glob": f"glob '{self.pattern}'",
        }[self.kind]


@dataclass(frozen=True)
class Requirement:
    """One parsed requirement.

    Attributes
    ----------
    expr : str
        The expression as written (stripped).
    source : str
        Where it came from, for messages: ``--require`` or ``gates.toml: require[2]``.
    column : str
        A per-layer column (``scope == "layer"``) or a summary field (``scope == "summary"``).
    scope : str
        ``layer`` or ``summary``.
    selector : Selector
        The layers a per-layer requirement applies to (every layer when not written).
    op : str
        One of :data:`OPERATORS`.
    bound : float
        The number on the right-hand side.
    """

    expr: str
    source: str
    column: str
    scope: str
    selector: Selector
    op: str
    bound: float

    @property
    def bound_text(self) -> str:
        """``<= 0.05``."""
        return f"{self.op} {_num(self.bound)}"


class _Parser:
    """A one-pass scanner over one expression; every error points at a character."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0

    def fail(self, what: str, pos: int | None = None, *, fix: str | None = None) -> NoReturn:
        pos = self.pos if pos is None else pos
        raise expression_error(self.text, self.source, what, pos, fix=fix)

    def unexpected(self, expected: str) -> str:
        """``unexpected '<' at position 12: expected …`` (or ``… found the end``)."""
        if self.at_end():
            return f"{expected}, found the end of the expression (position {self.pos + 1})"
        return f"unexpected {self.text[self.pos]!r} at position {self.pos + 1}: {expected}"

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def ident(self) -> tuple[str, int]:
        m = _IDENT.match(self.text, self.pos)
        if m is None:
            self.fail(self.unexpected("expected a column or summary field name"))
        self.pos = m.end()
        return m.group(), m.start()

    def selector(self) -> Selector:
        open_pos = self.pos
        depth, close = 0, None
        for i in range(open_pos, len(self.text)):
            # Brackets nest so that a glob character class ([layer[12].*]) stays inside.
            if self.text[i] == "[":
                depth += 1
            elif self.text[i] == "]":
                depth -= 1
                if depth == 0:
                    close = i
                    break
        if close is None:
            self.fail(
                f"the '[' at position {open_pos + 1} is never closed",
                open_pos,
                fix="close the layer selector with ']', e.g. nrc1_noise[-1] <= 0.05",
            )
        self.pos = close + 1
        raw = self.text[open_pos + 1 : close]
        lead = len(raw) - len(raw.lstrip())
        body, start = raw.strip(), open_pos + 1 + lead
        if not body:
            self.fail(
                "empty layer selector '[]'",
                open_pos,
                fix="drop the brackets to select every layer, or write [-1], [5:], [net.6], ...",
            )
        if body[0] in "'\"":
            if len(body) < 3 or body[-1] != body[0]:
                self.fail(
                    f"unterminated quoted layer name {body!r}", start, fix="quote as ['name']"
                )
            return Selector(body, "name", pattern=body[1:-1], position=start)
        if _INT.fullmatch(body):
            value = int(body)
            if value == 0:
                self.fail(
                    f"layer index 0 at position {start + 1}: indices are 1-based (1 is the "
                    "first layer, -1 the last)",
                    start,
                )
            return Selector(body, "index", start=value, position=start)
        if ":" in body:
            return self._slice(body, start)
        for offset, ch in enumerate(body):
            if not _NAME_CHAR.fullmatch(ch):
                self.fail(
                    f"unexpected {ch!r} in the layer selector at position {start + offset + 1}",
                    start + offset,
                    fix="a selector is an index ([3], [-1]), a range ([2:4]), a name ([net.6]) "
                    "or a glob ([layer4.*])",
                )
        kind = "glob" if any(c in body for c in "*?[") else "name"
        return Selector(body, kind, pattern=body, position=start)

    def _slice(self, body: str, start: int) -> Selector:
        parts, offset = body.split(":"), 0
        bounds: list[int | None] = []
        if len(parts) != 2:
            second = body.index(":", body.index(":") + 1)
            self.fail(
                f"unexpected ':' at position {start + second + 1}: a range has one ':'",
                start + second,
                fix="write [START:STOP], e.g. [2:4]",
            )
        for part in parts:
            lead = len(part) - len(part.lstrip())
            text = part.strip()
            if not text:
                bounds.append(None)
            elif _INT.fullmatch(text):
                value = int(text)
                if value == 0:
                    self.fail(
                        "layer index 0 in a range: indices are 1-based (-1 is the last)",
                        start + offset + lead,
                    )
                bounds.append(value)
            else:
                self.fail(
                    f"range bound {text!r} at position {start + offset + lead + 1} is not an "
                    "integer",
                    start + offset + lead,
                    fix="write [START:STOP] with integer indices, e.g. [2:4], [5:], [:3], [-2:]",
                )
            offset += len(part) + 1
        lo, hi = bounds
        if lo is not None and hi is not None and (lo > 0) == (hi > 0) and lo > hi:
            self.fail(
                f"empty index range [{body}]: {lo} comes after {hi}",
                start,
                fix=f"write [{hi}:{lo}]",
            )
        return Selector(body, "slice", start=lo, stop=hi, position=start)

    def operator(self) -> str:
        for op in OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return op
        self.fail(self.unexpected(f"expected an operator, one of {' '.join(OPERATORS)}"))

    def number(self) -> float:
        m = _NUMBER.match(self.text, self.pos)
        if m is None:
            self.fail(self.unexpected("expected a number"))
        value = float(m.group())
        if not math.isfinite(value):
            self.fail(f"the number {m.group()!r} is not finite")
        self.pos = m.end()
        return value


def expression_error(
    text: str, source: str, what: str, pos: int, *, fix: str | None = None
) -> ConfigError:
    """The error for a bad expression: one self-contained line, then the expression and a caret.

    Parameters
    ----------
    text : str
        The expression.
    source : str
        Where it came from (``--require``, ``gates.toml: require[1]``).
    what : str
        What is wrong, naming the position.
    pos : int
        0-based position of the offending character (``len(text)`` for "the end").
    fix : str, optional
        How to fix it; defaults to the grammar.

    Returns
    -------
    ConfigError
        Its hint is two lines: the expression, and a caret under the offending character.
    """
    if "position" not in what:
        what = f"{what} (position {pos + 1})"
    caret = " " * (_HINT_PREFIX + pos) + "^ " + (fix or f"expected {GRAMMAR}")
    return ConfigError(f"{source} '{text}': {what}", hint=f"{text}\n{caret}")


def parse_requirement(text: str, *, source: str = "--require") -> Requirement:
    """Parse one requirement expression.

    Parameters
    ----------
    text : str
        ``COLUMN[LAYERS] OP NUMBER`` or ``FIELD OP NUMBER``; whitespace between tokens is allowed.
    source : str
        Where it came from, for messages.

    Returns
    -------
    Requirement

    Raises
    ------
    ConfigError
        For a malformed expression (the message names the offending character and its 1-based
        position), an unknown column (the message lists the valid ones), a text column, or a
        layer selector on a summary field.
    """
    expr = text.strip()
    p = _Parser(expr, source)
    if not expr:
        p.fail("empty requirement", 0)
    p.skip_ws()
    column, col_pos = p.ident()
    p.skip_ws()
    selector = Selector()
    sel_pos = None
    if not p.at_end() and p.text[p.pos] == "[":
        sel_pos = p.pos
        selector = p.selector()
        p.skip_ws()
    op = p.operator()
    p.skip_ws()
    bound = p.number()
    p.skip_ws()
    if not p.at_end():
        p.fail(
            p.unexpected("expected the end of the requirement after the number"),
            fix="one requirement per --require; repeat the option for more",
        )
    scope = _scope(column, p, col_pos)
    if scope == "summary" and sel_pos is not None:
        p.fail(
            f"'{column}' is a summary field (one value per run); it takes no [LAYERS] selector",
            sel_pos,
            fix=f"write {column} {op} {_num(bound)}",
        )
    return Requirement(expr, source, column, scope, selector, op, bound)


def _scope(column: str, p: _Parser, pos: int) -> str:
    if column in GATE_LAYER_COLUMNS:
        return "layer"
    if column in GATE_SUMMARY_FIELDS:
        return "summary"
    kinds = {n: k for t in TASKS for n, k in layer_columns(t)}
    kinds.update({_SUMMARY_ALIASES.get(n, n): k for t in TASKS for n, k in summary_fields(t)})
    if column in kinds:
        p.fail(
            f"'{column}' at position {pos + 1} holds text; requirements compare numbers",
            pos,
            fix=f"numeric columns: {', '.join(GATE_LAYER_COLUMNS)}",
        )
    close = difflib.get_close_matches(column, GATE_LAYER_COLUMNS + GATE_SUMMARY_FIELDS, n=1)
    p.fail(
        f"unknown column '{column}' at position {pos + 1}; per-layer columns: "
        f"{', '.join(GATE_LAYER_COLUMNS)}; "
        f"summary fields: {', '.join(GATE_SUMMARY_FIELDS)}",
        pos,
        fix=f"did you mean '{close[0]}'?" if close else f"expected {GRAMMAR}",
    )


# --------------------------------------------------------------------------- evaluation


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
        names = {_SUMMARY_ALIASES.get(n, n) for n, _ in summary_fields(task)}
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
    test = _COMPARE[r.op]
    if r.scope == "summary":
        key = _SUMMARY_KEYS.get(r.column, r.column)
        value = _number(results.summary.get(key), f"summary field '{key}'")
        if value is None:
            why = _NULL_REASONS.get(r.column, "the report holds no value for it")
            msg = f"{r.column} is null ({why}); expected {r.bound_text}"
            return RequirementResult(r, [], None, None, False, msg)
        passed = test(value, r.bound)
        msg = f"{r.column} = {_num(value, r.bound)}, expected {r.bound_text}"
        return RequirementResult(r, [], value, None, passed, msg)

    rows = r.selector.select(results.layers)
    if not rows:
        raise _no_match_error(r, results.layers)
    values = []
    for row in rows:
        name = str(row.get("layer"))
        value = _number(row.get(r.column), f"layer '{name}', column '{r.column}'")
        passed = value is not None and test(value, r.bound)
        values.append(LayerValue(name, row.get("index"), value, passed))
    worst = _worst(values, r)
    failing = [v for v in values if not v.passed]
    passed = not failing
    layers = _plural(len(values), "layer")
    if r.selector.kind != "all":
        layers = f"selected {layers}"
    if passed:
        on = (
            f"all {len(values)} {layers}" if r.selector.kind == "all" else f"{len(values)} {layers}"
        )
        msg = (
            f"{r.column} {r.bound_text} holds on {on}; worst "
            f"{_num(worst.value, r.bound)} at layer '{worst.layer}'"
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
    return f"'{v.layer}' {_num(v.value, bound)}"


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


def _number(value, where: str) -> float | None:
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


# --------------------------------------------------------------------------- baseline


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
            _check_tolerance_column(column, f"{source} '{raw}'")
            per[column] = _tolerance_value(number, f"{source} '{raw}'")
        else:
            if has_default:
                raise ConfigError(
                    f"{source} '{raw}': a default tolerance was already given "
                    f"({_num(default)}); expected one bare number and COLUMN=NUMBER overrides",
                    hint="e.g. --tolerance 0.02 --tolerance nrc1_noise=0.01",
                )
            default, has_default = _tolerance_value(text, f"{source} '{raw}'"), True
    return Tolerances(default, per), has_default


def _check_tolerance_column(column: str, where: str) -> None:
    if column not in METRIC_COLUMNS:
        close = difflib.get_close_matches(column, METRIC_COLUMNS, n=1)
        raise ConfigError(
            f"{where}: unknown metric column '{column}'; expected one of "
            f"{', '.join(METRIC_COLUMNS)}",
            hint=f"did you mean '{close[0]}'?" if close else None,
        )


def _tolerance_value(text, where: str) -> float:
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
        tol = _num(self.tolerance)
        if self.passed:
            if self.max_abs_diff is None:
                return f"{self.column}: nothing to compare"
            return (
                f"{self.column} within {tol} of the baseline; largest |Δ| "
                f"{_num(self.max_abs_diff)} at layer '{self.worst_layer}'"
            )
        shown = ", ".join(_drift_text(d) for d in self.moved[:5])
        more = f", and {len(self.moved) - 5} more" if len(self.moved) > 5 else ""
        n = len(self.moved)
        return f"{self.column} moved beyond {tol} on {n} {_plural(n, 'layer')}: {shown}{more}"

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
    b = "null" if d.baseline is None else _num(d.baseline)
    c = "null" if d.current is None else _num(d.current)
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
    cur = _by_name(current, "report")
    base = _by_name(baseline, f"baseline '{path}'")
    matched = [name for name in cur if name in base]
    columns = []
    for column in metric_columns(current.task):
        tol = tolerances.for_column(column)
        moved, worst, worst_diff, null_change = [], None, None, None
        for name in matched:
            b = _number(base[name].get(column), f"baseline layer '{name}', column '{column}'")
            c = _number(cur[name].get(column), f"layer '{name}', column '{column}'")
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


def _by_name(results: Results, what: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for row in results.layers:
        name = str(row.get("layer"))
        if name in rows:
            raise DataError(
                f"{what}: layer name '{name}' appears twice; layers are matched by name",
            )
        rows[name] = row
    return rows


# --------------------------------------------------------------------------- a whole check


@dataclass(frozen=True)
class Case:
    """One test case of a check, as CI systems show it (a JUnit ``<testcase>``)."""

    name: str
    classname: str
    passed: bool
    message: str
    failure_type: str
    details: str


@dataclass(frozen=True)
class CheckReport:
    """Every requirement and the baseline comparison of one ``nrc check`` run."""

    checkpoint: str
    data: str
    requirements: list[RequirementResult]
    baseline: BaselineResult | None = None

    def cases(self) -> list[Case]:
        """Requirements in order, then the baseline's layer check and its metric columns."""
        cases = []
        for res in self.requirements:
            details = "\n".join(
                f"{v.index} {v.layer}: {'null' if v.value is None else repr(v.value)} "
                f"{'ok' if v.passed else 'FAIL'}"
                for v in res.values
            )
            if not res.values:
                details = f"{res.requirement.column}: {_repr(res.observed)}"
            cases.append(
                Case(
                    res.requirement.expr,
                    "nrc.check",
                    res.passed,
                    res.message,
                    "RequirementFailed",
                    details,
                )
            )
        if self.baseline is not None:
            b = self.baseline
            details = "\n".join(
                [f"matched: {', '.join(b.matched)}"]
                + [f"removed: {n}" for n in b.only_in_baseline]
                + [f"added: {n}" for n in b.only_in_current]
            )
            cases.append(
                Case(
                    "baseline: layers",
                    "nrc.check.baseline",
                    b.layers_passed,
                    b.layers_message,
                    "LayersChanged",
                    details,
                )
            )
            for col in b.columns:
                details = "\n".join(
                    f"{d.layer}: baseline {_repr(d.baseline)} current {_repr(d.current)} "
                    f"diff {_repr(d.diff)}"
                    for d in col.moved
                )
                cases.append(
                    Case(
                        col.name,
                        "nrc.check.baseline",
                        col.passed,
                        col.message,
                        "BaselineDrift",
                        details,
                    )
                )
        return cases

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.cases())

    @property
    def n_failed(self) -> int:
        return sum(not c.passed for c in self.cases())

    @property
    def passed(self) -> bool:
        return self.n_failed == 0

    @property
    def counts_line(self) -> str:
        """``N passed, M failed``."""
        return f"{self.n_passed} passed, {self.n_failed} failed"

    def to_dict(self) -> dict:
        """The ``--format json`` document of ``nrc check``."""
        return {
            "nrc_version": __version__,
            "checkpoint": self.checkpoint,
            "data": self.data,
            "requirements": [r.to_dict() for r in self.requirements],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "passed": self.n_passed,
            "failed": self.n_failed,
        }


def run_check(
    results: Results,
    requirements: list[Requirement],
    *,
    baseline: Results | None = None,
    baseline_path: str = "",
    tolerances: Tolerances | None = None,
) -> CheckReport:
    """Evaluate every requirement, and the baseline when given, on one report.

    Raises
    ------
    ConfigError
        When a selector matches no layer (before any result is returned).
    """
    evaluated = [evaluate(r, results) for r in requirements]
    base = None
    if baseline is not None:
        base = compare_baseline(results, baseline, tolerances or Tolerances(), path=baseline_path)
    return CheckReport(results.checkpoint, results.data, evaluated, base)


# --------------------------------------------------------------------------- compare


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
    rows_a, rows_b = _by_name(a, a_path), _by_name(b, b_path)
    rows = []
    for name, ra in rows_a.items():
        rb = rows_b.get(name)
        for metric in metrics:
            va = _number(ra.get(metric), f"{a_path}: layer '{name}', column '{metric}'")
            tol = tolerances.for_column(metric)
            if rb is None:
                rows.append(
                    CompareRow(
                        name, ra.get("index"), None, metric, va, None, None, tol, False, "only_a"
                    )
                )
                continue
            vb = _number(rb.get(metric), f"{b_path}: layer '{name}', column '{metric}'")
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
            vb = _number(rb.get(metric), f"{b_path}: layer '{name}', column '{metric}'")
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


# --------------------------------------------------------------------------- files


def load_report(path: str, *, option: str = "--report") -> Results:
    """Read a report written by ``nrc analyze --format json``.

    Parameters
    ----------
    path : str
        The JSON file.
    option : str
        How the user named it (``--report``, ``--baseline``, ``A``), for messages.

    Returns
    -------
    Results

    Raises
    ------
    DataError
        When the file is missing, unreadable, not JSON, or not a report (no ``summary`` object
        or no ``layers`` list of objects with ``layer`` and ``index``).
    """
    where = f"{option} '{path}'"
    make = "write one with: nrc analyze CHECKPOINT --data DATA --format json --output " + str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{where}: no such file", hint=make)
    if p.is_dir():
        raise DataError(f"{where}: is a folder, expected a JSON report file")
    require_regular(p, where, DataError, expected="a JSON report file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read it: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            hint=make,
        ) from exc
    except RecursionError as exc:
        raise DataError(f"{where}: not a report: its JSON is nested too deeply", hint=make) from exc
    expected = "a JSON object with 'summary' and 'layers', as written by nrc analyze --format json"
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected {expected}, found a JSON {type(doc).__name__}")
    missing = [k for k in ("summary", "layers") if k not in doc]
    if missing:
        raise DataError(
            f"{where}: expected {expected}, found keys {sorted(doc)} (missing "
            f"{', '.join(repr(k) for k in missing)})",
            hint=make,
        )
    if not isinstance(doc["summary"], dict):
        raise DataError(f"{where}: 'summary' should be an object, found {type(doc['summary'])}")
    layers = doc["layers"]
    if not isinstance(layers, list):
        raise DataError(f"{where}: 'layers' should be a list, found {type(layers).__name__}")
    for i, row in enumerate(layers):
        if not isinstance(row, dict) or not isinstance(row.get("layer"), str):
            raise DataError(f"{where}: layers[{i}] should be an object with a 'layer' name")
        if not isinstance(row.get("index"), int) or isinstance(row.get("index"), bool):
            raise DataError(
                f"{where}: layers[{i}] ('{row['layer']}') should have an integer 'index', "
                f"found {row.get('index')!r}"
            )
    return Results.from_dict(doc)


@dataclass(frozen=True)
class GateFile:
    """The contents of a ``--require-file`` (TOML).

    Attributes
    ----------
    path : str
    requirements : list of Requirement
    baseline : str or None
        The baseline report, relative paths resolved against the TOML file's folder.
    tolerances : Tolerances or None
        ``[baseline] tolerance`` and ``[baseline.tolerances]``; None when neither is set.
    has_default_tolerance : bool
        Whether ``[baseline] tolerance`` was set.
    """

    path: str
    requirements: list[Requirement]
    baseline: str | None = None
    tolerances: Tolerances | None = None
    has_default_tolerance: bool = False


def load_gate_file(path: str) -> GateFile:
    """Read a gates file::

        require = ["nrc1_noise[-1] <= 0.05", "first_collapsed_index <= 3"]

        [baseline]
        path = "baselines/model.json"   # relative to this file
        tolerance = 0.02

        [baseline.tolerances]
        nrc1_noise = 0.01

    Returns
    -------
    GateFile

    Raises
    ------
    ConfigError
        When the file is missing or not TOML, for unknown keys, wrong types, or a malformed
        requirement (the message names the file and the entry).
    """
    where = f"--require-file '{path}'"
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{where}: no such file" if not p.exists() else f"{where}: is not a file",
        )
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]  # the same API under another name
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"{where}: reading TOML on Python 3.10 needs the tomli package",
                hint="pip install tomli",
            ) from exc
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{where}: not valid TOML: nested too deeply to read") from exc
    _only_keys(doc, {"require", "baseline"}, where)
    require = doc.get("require", [])
    if not isinstance(require, list) or not all(isinstance(r, str) for r in require):
        raise ConfigError(
            f"{where}: 'require' should be a list of strings, found {require!r}",
            hint='e.g. require = ["nrc1_noise[-1] <= 0.05"]',
        )
    reqs = [parse_requirement(r, source=f"{path}: require[{i}]") for i, r in enumerate(require)]
    section = doc.get("baseline")
    if section is None:
        return GateFile(str(path), reqs)
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: 'baseline' should be a table ([baseline]), found {section!r}")
    _only_keys(section, {"path", "tolerance", "tolerances"}, f"{where}: [baseline]")
    base = section.get("path")
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{where}: [baseline] path should be a file name, found {base!r}")
        base = str(p.parent / base) if not Path(base).expanduser().is_absolute() else base
    tolerances = None
    has_default = "tolerance" in section
    if has_default or "tolerances" in section:
        default = (
            _tolerance_value(section["tolerance"], f"{where}: [baseline] tolerance")
            if has_default
            else DEFAULT_TOLERANCE
        )
        per = section.get("tolerances", {})
        if not isinstance(per, dict):
            raise ConfigError(f"{where}: [baseline.tolerances] should be a table, found {per!r}")
        checked = {}
        for column, value in per.items():
            key = f"{where}: [baseline.tolerances] {column}"
            _check_tolerance_column(column, key)
            checked[column] = _tolerance_value(value, key)
        tolerances = Tolerances(default, checked)
    return GateFile(str(path), reqs, base, tolerances, has_default)


def _only_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected "
            f"{', '.join(sorted(allowed))}",
        )


# --------------------------------------------------------------------------- helpers


def _num(value: float | None, other: float | None = None) -> str:
    """A short number for messages, with enough digits to differ from ``other`` if it does."""
    if value is None:
        return "null"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    for digits in (4, 6, 9, 17):
        text = f"{value:.{digits}g}"
        if other is None or value == other or text != f"{other:.{digits}g}":
            return text
    return repr(value)


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}s"


def _repr(value: float | None) -> str:
    return "null" if value is None else repr(value)
