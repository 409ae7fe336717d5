"""Check and compare results -> Rich renderables for the terminal. Computes nothing.

Every runtime string (expressions such as ``nrc1_noise[-1]``, layer names) goes into a ``Text``
so Rich never reads it as markup.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, JustifyMethod
from rich.table import Table
from rich.text import Text

from nrc_cli.gates import CheckReport, Comparison, Tolerances
from nrc_cli.report.table import fmt

PASS, FAIL = "PASS", "FAIL"


def _layers_cell(names: list[str], *, everything: bool) -> str:
    if everything:
        return f"all {len(names)}"
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)})"


def _signed(diff: float | None) -> str:
    """A difference with its sign (``+0.1128``), ``0`` when there is none, ``–`` for null."""
    return fmt(diff) if not diff else f"{diff:+.4g}"


def _difference(
    first: str, second: str, a: float | None, b: float | None, diff: float | None
) -> tuple[Text, ...]:
    """The cells of one difference: two names (column and layer, or layer and metric), the
    two values and their signed difference."""
    return (Text(first), Text(second), Text(fmt(a)), Text(fmt(b)), Text(_signed(diff)))


def _result(passed: bool) -> Text:
    return Text(PASS, style="bold green") if passed else Text(FAIL, style="bold red")


def _fit(natural: list[int], minimum: list[int], shrink_order: list[int], room: int) -> list[int]:
    """Column widths: natural ones, shrunk column by column (in ``shrink_order``) to fit."""
    widths = list(natural)
    for i in shrink_order:
        excess = sum(widths) - room
        if excess <= 0:
            break
        widths[i] = max(minimum[i], widths[i] - excess)
    return widths


def check_table(report: CheckReport, width: int = 80) -> Table:
    """One row per requirement and per baseline check: what, where, observed, bound, result.

    Parameters
    ----------
    report : CheckReport
    width : int
        Characters available; the layer columns wrap first, then the expressions, so the
        table reads whole in an 80-column CI log.
    """
    rows: list[tuple[str, str, str, str, str, bool]] = []
    for res in report.requirements:
        req = res.requirement
        if req.scope == "summary":
            layers = "summary"
        else:
            layers = _layers_cell(res.layers, everything=req.selector.kind == "all")
        rows.append(
            (req.expr, layers, fmt(res.observed), res.worst_layer or "", req.bound_text, res.passed)
        )
    base = report.baseline
    if base is not None:
        changed = len(base.only_in_baseline) + len(base.only_in_current)
        observed = f"−{len(base.only_in_baseline)} +{len(base.only_in_current)}"
        rows.append(
            (
                "baseline: layers",
                f"{len(base.matched)} matched",
                observed if changed else "same",
                "",
                "same layers",
                base.layers_passed,
            )
        )
        for col in base.columns:
            rows.append(
                (
                    col.name,
                    f"{len(base.matched)} matched",
                    fmt(col.max_abs_diff),
                    col.worst_layer or "",
                    f"|Δ| <= {fmt(col.tolerance)}",
                    col.passed,
                )
            )
    headers = ("check", "layers", "observed", "worst layer", "bound", "result")
    # The text columns as wide as their longest cell; the result column ("PASS"/"FAIL") 6.
    natural = [max([len(headers[i])] + [len(str(r[i])) for r in rows]) for i in range(5)] + [6]
    # Two characters between columns, none at the edges. The worst layer and the layer list
    # wrap first, then the expressions; bounds and results never.
    widths = _fit(natural, [16, 9, 8, 6, natural[4], 6], [3, 1, 0, 2], width - 2 * 5)
    table = _gate_table(f"nrc check: {report.checkpoint}")
    for i, name in enumerate(headers):
        table.add_column(
            name,
            justify="right" if name in ("observed", "bound") else "left",
            overflow="fold",
            width=widths[i],
        )
    n_requirements = len(report.requirements)
    for i, (*cells, passed) in enumerate(rows):
        # A rule between the requirements and the baseline block.
        table.add_row(
            *(Text(c) for c in cells), _result(passed), end_section=i + 1 == n_requirements
        )
    return table


def _gate_table(title: str) -> Table:
    """An empty table in the style the check and compare reports share."""
    return Table(
        title=Text(title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )


class _FitToConsole:
    """Builds the check table for the width of the console it is printed on."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report

    def __rich_console__(self, console, options):
        yield check_table(self.report, width=options.max_width)


def drift_table(report: CheckReport) -> Table | None:
    """The baseline values that moved beyond tolerance, one row per (metric, layer); or None."""
    base = report.baseline
    if base is None or all(col.passed for col in base.columns):
        return None
    table = _gate_table(f"moved beyond tolerance since the baseline {base.path}")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("metric", "left"),
        ("layer", "left"),
        ("baseline", "right"),
        ("current", "right"),
        ("Δ", "right"),
        ("tolerance", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    for col in base.columns:
        for d in col.moved:
            table.add_row(
                *_difference(col.column, d.layer, d.baseline, d.current, d.diff),
                Text(fmt(col.tolerance)),
                style="red",
            )
    return table


def render_check(report: CheckReport) -> Group:
    """The whole terminal report of ``nrc check``; its last line is ``N passed, M failed``."""
    parts: list = [_FitToConsole(report)]
    drift = drift_table(report)
    if drift is not None:
        parts.append(drift)
    for case in report.cases():
        # Baseline columns that moved are itemised in the drift table already.
        if not case.passed and case.failure_type != "BaselineDrift":
            parts.append(Text(f"FAIL {case.name}: {case.message}", style="red"))
    style = "bold green" if report.passed else "bold red"
    parts.append(Text(report.counts_line, style=style))
    return Group(*parts)


def _tolerance_text(tol: Tolerances) -> str:
    extra = "".join(f", {c} {fmt(v)}" for c, v in sorted(tol.per_column.items()))
    return f"tolerance {fmt(tol.default)}{extra}"


def compare_table(cmp: Comparison) -> Table:
    """Matched layers, one row per (layer, metric): A, B, B − A; rows beyond tolerance marked."""
    table = _gate_table(
        f"A = {cmp.a_path} ({cmp.a.checkpoint})\nB = {cmp.b_path} ({cmp.b.checkpoint})"
    )
    table.add_column("layer", overflow="fold")
    table.add_column("metric")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B − A", justify="right")
    table.add_column("", justify="left")
    rows = [r for r in cmp.rows if r.status == "both"]
    for i, row in enumerate(rows):
        last_of_layer = i + 1 == len(rows) or rows[i + 1].layer != row.layer
        table.add_row(
            *_difference(row.layer, row.metric, row.a, row.b, row.diff),
            Text("beyond" if row.beyond else ""),
            style="bold red" if row.beyond else None,
            end_section=last_of_layer,
        )
    return table


def render_compare(cmp: Comparison) -> Group:
    """The whole terminal report of ``nrc compare``."""
    parts: list = [compare_table(cmp)]
    if cmp.only_in_a:
        parts.append(Text(f"only in A: {', '.join(cmp.only_in_a)}", style="yellow"))
    if cmp.only_in_b:
        parts.append(Text(f"only in B: {', '.join(cmp.only_in_b)}", style="yellow"))
    parts.append(
        Text(
            f"{cmp.n_beyond} of {cmp.n_compared} differences beyond "
            f"{_tolerance_text(cmp.tolerances)}",
            style="bold",
        )
    )
    return Group(*parts)
