"""``nrc compare A.json B.json``: two reports side by side, per layer and metric. Informational:
exit 0 whatever the differences, 2 when an input is bad."""

from __future__ import annotations

from typing import Annotated

import typer

from nrc_cli.cli import _options as o
from nrc_cli.cli._output import emit, output_format
from nrc_cli.cli.check import Tolerance
from nrc_cli.gates import COMPARE_COLUMNS, compare_reports, load_report, parse_tolerances
from nrc_cli.report.gates import render_compare
from nrc_cli.results import frame_from_rows

COMPARE_FORMATS = ("table", "json", "csv")

ReportA = Annotated[str, typer.Argument(metavar="A", help="Report A (nrc analyze --format json).")]
ReportB = Annotated[str, typer.Argument(metavar="B", help="Report B; differences are B − A.")]
CompareFormat = Annotated[
    str | None, o.format_option(COMPARE_FORMATS, default="from --output, else table")
]


def compare(
    a: ReportA,
    b: ReportB,
    tolerance: Tolerance = None,
    format: CompareFormat = None,
    output: o.Output = None,
) -> None:
    """Show reports A and B side by side: every metric of every layer (matched by name), A, B and
    B − A, differences beyond --tolerance marked. Exit 0 unless an input is bad."""
    fmt = output_format(
        format, output, allowed=COMPARE_FORMATS, inputs={"report A": a, "report B": b}
    )
    tolerances, _ = parse_tolerances(tolerance)
    report_a = load_report(a, option="A")
    report_b = load_report(b, option="B")
    cmp = compare_reports(report_a, report_b, tolerances, a_path=a, b_path=b)
    emit(
        fmt,
        output,
        doc=cmp.to_dict,
        frame=lambda: frame_from_rows([r.to_dict() for r in cmp.rows], list(COMPARE_COLUMNS)),
        render=lambda: render_compare(cmp),
    )


def register(app: typer.Typer) -> None:
    """Add ``nrc compare`` to the app."""
    app.command("compare")(compare)
