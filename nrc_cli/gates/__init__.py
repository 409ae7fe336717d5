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

from nrc_cli.gates.check import Case, CheckReport, run_check
from nrc_cli.gates.diff import (
    COMPARE_COLUMNS,
    DEFAULT_TOLERANCE,
    METRIC_COLUMNS,
    BaselineResult,
    ColumnCheck,
    Comparison,
    Drift,
    ReportDiff,
    Tolerances,
    ValueDiff,
    compare_baseline,
    compare_reports,
    diff_reports,
    parse_tolerances,
)
from nrc_cli.gates.evaluate import LayerValue, RequirementResult, evaluate
from nrc_cli.gates.files import GateFile, load_gate_file, load_report
from nrc_cli.grammar import (
    GATE_LAYER_COLUMNS,
    GATE_SUMMARY_FIELDS,
    GRAMMAR,
    OPERATORS,
    ExpressionError,
    Requirement,
    Selector,
    expression_error,
    parse_requirement,
)

__all__ = [
    "COMPARE_COLUMNS",
    "DEFAULT_TOLERANCE",
    "GATE_LAYER_COLUMNS",
    "GATE_SUMMARY_FIELDS",
    "GRAMMAR",
    "METRIC_COLUMNS",
    "OPERATORS",
    "BaselineResult",
    "Case",
    "CheckReport",
    "ColumnCheck",
    "Comparison",
    "Drift",
    "ExpressionError",
    "GateFile",
    "LayerValue",
    "ReportDiff",
    "Requirement",
    "RequirementResult",
    "Selector",
    "Tolerances",
    "ValueDiff",
    "compare_baseline",
    "compare_reports",
    "diff_reports",
    "evaluate",
    "expression_error",
    "load_gate_file",
    "load_report",
    "parse_requirement",
    "parse_tolerances",
    "run_check",
]
