"""The comparison grammar: ``COLUMN[LAYERS] OP NUMBER`` and ``FIELD OP NUMBER``, parsed with
messages that point at the offending character.

Two readers share one scanner: :func:`parse_requirement` reads a gate's requirement (``nrc check
--require``, a gates file), :func:`parse_term` one term of a collapse rule (``COLUMN OP NUMBER``
over a given set of per-layer columns and operators, without a selector). Only the report's
schema (:mod:`nrc_cli.results`) is needed to know the columns, so the options can use it too.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from nrc_cli._glob import glob_match
from nrc_cli.errors import ConfigError
from nrc_cli.results import (
    TASKS,
    layer_columns,
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
SUMMARY_ALIASES = {"rank": "requested_rank"}
GATE_SUMMARY_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        SUMMARY_ALIASES.get(name, name)
        for task in TASKS
        for name, kind in summary_fields(task)
        if kind in ("int", "float")
    )
)
SUMMARY_KEYS = {alias: name for name, alias in SUMMARY_ALIASES.items()}

OPERATORS = ("<=", ">=", "==", "!=", "<", ">")
COMPARE = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
GRAMMAR = "COLUMN[LAYERS] OP NUMBER or FIELD OP NUMBER, e.g. 'nrc1_noise[-1] <= 0.05'"
# Width of the "hint: " prefix the command line puts before a hint, so a caret on the hint's
# second line sits under the offending character of the expression on its first line.
HINT_PREFIX = len("hint: ")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+")
# What stands where a number should: up to the next space or comma (empty at the end).
_TOKEN = re.compile(r"[^\s,]*")
# Characters of an unquoted layer name or glob: module paths are dotted identifiers and digits.
_NAME_CHAR = re.compile(r"[\w.*?\[\]!/-]")


class ExpressionError(ConfigError):
    """A malformed or unknown expression, with what is wrong and where.

    The message and hint are what the user sees; the attributes let a caller that embeds the
    grammar (the collapse rule) say it in its own words.

    Attributes
    ----------
    expression : str
        The expression as parsed (stripped).
    what : str
        What is wrong, naming the 1-based position.
    position : int
        0-based position of the offending character (``len(expression)`` for "the end").
    kind : str
        ``syntax``; ``column`` for a name that is not a column the expression may test;
        ``number`` where a number was expected and is missing, malformed or not finite.
    token : str
        For ``column``, the name; for ``number``, the text found where the number should be
        (``""`` at the end of the expression).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        expression: str = "",
        what: str = "",
        position: int = 0,
        kind: str = "syntax",
        token: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.expression = expression
        self.what = what or message
        self.position = position
        self.kind = kind
        self.token = token


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
                else (lambda name: glob_match(name, self.pattern or ""))
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
        return f"{self.op} {num(self.bound)}"


class _Parser:
    """A one-pass scanner over one expression; every error points at a character.

    ``operators`` are the ones the caller accepts (a subset of :data:`OPERATORS`); ``noun`` names
    the expression in messages (``requirement``, ``term``).
    """

    def __init__(
        self,
        text: str,
        source: str,
        *,
        operators: tuple[str, ...] = OPERATORS,
        noun: str = "requirement",
    ) -> None:
        self.text = text
        self.source = source
        self.operators = operators
        self.noun = noun
        self.pos = 0

    def fail(
        self,
        what: str,
        pos: int | None = None,
        *,
        fix: str | None = None,
        kind: str = "syntax",
        token: str = "",
    ) -> NoReturn:
        pos = self.pos if pos is None else pos
        raise expression_error(self.text, self.source, what, pos, fix=fix, kind=kind, token=token)

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

    def ident(self, expected: str = "a column or summary field name") -> tuple[str, int]:
        m = _IDENT.match(self.text, self.pos)
        if m is None:
            self.fail(self.unexpected(f"expected {expected}"))
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
        allowed = " ".join(self.operators)
        for op in OPERATORS:  # longest first: '<=' before '<'
            if self.text.startswith(op, self.pos):
                if op not in self.operators:
                    self.fail(
                        f"the operator '{op}' at position {self.pos + 1} is not allowed in a "
                        f"{self.noun}: expected one of {allowed}"
                    )
                self.pos += len(op)
                return op
        self.fail(self.unexpected(f"expected an operator, one of {allowed}"))

    def number(self) -> float:
        m = _NUMBER.match(self.text, self.pos)
        if m is None:
            found = _TOKEN.match(self.text, self.pos)
            token = found.group() if found else ""
            self.fail(self.unexpected("expected a number"), kind="number", token=token)
        value = float(m.group())
        if not math.isfinite(value):
            self.fail(f"the number {m.group()!r} is not finite", kind="number", token=m.group())
        self.pos = m.end()
        return value

    def end(self, fix: str | None = None) -> None:
        """Nothing but whitespace may follow the number."""
        self.skip_ws()
        if not self.at_end():
            self.fail(
                self.unexpected(f"expected the end of the {self.noun} after the number"), fix=fix
            )


def expression_error(
    text: str,
    source: str,
    what: str,
    pos: int,
    *,
    fix: str | None = None,
    kind: str = "syntax",
    token: str = "",
) -> ExpressionError:
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
    kind, token : str
        See :class:`ExpressionError`.

    Returns
    -------
    ExpressionError
        Its hint is two lines: the expression, and a caret under the offending character.
    """
    if "position" not in what:
        what = f"{what} (position {pos + 1})"
    caret = " " * (HINT_PREFIX + pos) + "^ " + (fix or f"expected {GRAMMAR}")
    return ExpressionError(
        f"{source} '{text}': {what}",
        hint=f"{text}\n{caret}",
        expression=text,
        what=what,
        position=pos,
        kind=kind,
        token=token,
    )


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
    ExpressionError
        For a malformed expression (the message names the offending character and its 1-based
        position), an unknown column (the message lists the valid ones), a text column, or a
        layer selector on a summary field.
    """
    expr = text.strip()
    p = _Parser(expr, source)
    if not expr:
        p.fail("empty requirement", 0)
    column, col_pos = p.ident()
    p.skip_ws()
    selector = Selector()
    sel_pos = None
    if not p.at_end() and p.text[p.pos] == "[":
        sel_pos = p.pos
        selector = p.selector()
        p.skip_ws()
    op, bound = _right_hand_side(p)
    p.end(fix="one requirement per --require; repeat the option for more")
    scope = _scope(column, p, col_pos)
    if scope == "summary" and sel_pos is not None:
        p.fail(
            f"'{column}' is a summary field (one value per run); it takes no [LAYERS] selector",
            sel_pos,
            fix=f"write {column} {op} {num(bound)}",
        )
    return Requirement(expr, source, column, scope, selector, op, bound)


def parse_term(
    text: str,
    *,
    columns: Sequence[str],
    operators: tuple[str, ...] = OPERATORS,
    source: str = "--collapse-rule",
) -> Requirement:
    """Parse ``COLUMN OP NUMBER``: a requirement without a selector, on one of ``columns``.

    Parameters
    ----------
    text : str
        The term; whitespace between tokens is allowed.
    columns : sequence of str
        The per-layer columns the term may test.
    operators : tuple of str
        The operators it may use, a subset of :data:`OPERATORS`.
    source : str
        Where it came from, for messages.

    Returns
    -------
    Requirement
        With scope ``layer`` and the selector of every layer.

    Raises
    ------
    ExpressionError
        For a malformed term, an operator not in ``operators`` (``kind`` ``syntax``), a number
        that is missing, malformed or not finite (``number``), or a name not in ``columns``
        (``column``).
    """
    expr = text.strip()
    p = _Parser(expr, source, operators=operators, noun="term")
    if not expr:
        p.fail("empty term", 0)
    column, col_pos = p.ident("a column name")
    p.skip_ws()
    if not p.at_end() and p.text[p.pos] == "[":
        p.fail(
            f"unexpected '[' at position {p.pos + 1}: a term takes no [LAYERS] selector; it is "
            "tested on each layer"
        )
    op, bound = _right_hand_side(p)
    p.end()
    if column not in columns:
        close = difflib.get_close_matches(column, columns, n=1)
        p.fail(
            f"unknown column '{column}' at position {col_pos + 1}; expected one of "
            f"{', '.join(columns)}",
            col_pos,
            fix=f"did you mean '{close[0]}'?" if close else None,
            kind="column",
            token=column,
        )
    return Requirement(expr, source, column, "layer", Selector(), op, bound)


def _right_hand_side(p: _Parser) -> tuple[str, float]:
    """``OP NUMBER`` (whitespace around the operator allowed)."""
    op = p.operator()
    p.skip_ws()
    return op, p.number()


def _scope(column: str, p: _Parser, pos: int) -> str:
    if column in GATE_LAYER_COLUMNS:
        return "layer"
    if column in GATE_SUMMARY_FIELDS:
        return "summary"
    kinds = {n: k for t in TASKS for n, k in layer_columns(t)}
    kinds.update({SUMMARY_ALIASES.get(n, n): k for t in TASKS for n, k in summary_fields(t)})
    if column in kinds:
        p.fail(
            f"'{column}' at position {pos + 1} holds text; requirements compare numbers",
            pos,
            fix=f"numeric columns: {', '.join(GATE_LAYER_COLUMNS)}",
            kind="column",
            token=column,
        )
    close = difflib.get_close_matches(column, GATE_LAYER_COLUMNS + GATE_SUMMARY_FIELDS, n=1)
    p.fail(
        f"unknown column '{column}' at position {pos + 1}; per-layer columns: "
        f"{', '.join(GATE_LAYER_COLUMNS)}; "
        f"summary fields: {', '.join(GATE_SUMMARY_FIELDS)}",
        pos,
        fix=f"did you mean '{close[0]}'?" if close else f"expected {GRAMMAR}",
        kind="column",
        token=column,
    )


def num(value: float | None, other: float | None = None) -> str:
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
