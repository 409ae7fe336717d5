"""Results -> Rich renderables for the terminal. Computes nothing; escapes runtime strings."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich import box
from rich.console import Console, ConsoleOptions, Group, JustifyMethod, RenderResult
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nrc_cli.errors import ConfigError
from nrc_cli.results import Results, layer_columns

DASH = "–"
# Table headers may abbreviate (docs/metrics.md); machine formats never do.
_HEADERS = {
    "index": "#",
    "nrc1_noise": "nrc1",
    "nrc2_cka": "nrc2",
    "nrc2_cka_signal": "nrc2_sig",
    "nrc3_alignment": "nrc3",
    "nrc4_probe_mse": "probe_mse",
    "nrc4_ratio": "nrc4",
    "stable_rank_h": "srank_h",
    "stable_rank_w": "srank_w",
    "collapsed": "collapsed",
    "nc2_equinorm": "nc2_norm",
    "ncc_accuracy": "ncc_acc",
    "nc4_ncc_mismatch": "nc4",
}
_CAPTIONS = {
    "regression": "nrc1 = nrc1_noise, nrc2 = nrc2_cka, nrc2_sig = nrc2_cka_signal, "
    "nrc3 = nrc3_alignment, nrc4 = nrc4_ratio (probe_mse / model_mse)",
    "classification": "nc1 = tr(Σ_W Σ_B†)/C, nc1_trace = tr Σ_W / tr Σ_B, nc2_norm = "
    "nc2_equinorm, nc2_etf = distance from a simplex ETF, nc3 = nc3_alignment, ncc_acc = "
    "ncc_accuracy, nc4 = nc4_ncc_mismatch",
}
_TITLES = {"regression": "Deep NRC", "classification": "Deep Neural Collapse"}


def _layer_cols(task: str) -> tuple[str, ...]:
    """Every per-layer column of ``task`` but the free-text note, with the index first."""
    return ("index", *(n for n, _ in layer_columns(task) if n not in ("index", "note")))


def _header(col: str, task: str) -> str:
    if task == "classification" and col == "nc3_alignment":
        return "nc3"
    return _HEADERS.get(col, col)


def fmt(value) -> str:
    """A cell: 4 significant digits for floats, ``–`` for null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def verdict(results: Results) -> str:
    """One line: where the model collapses, under which rule."""
    s = results.summary
    n = len(results.layers)
    rule = s.get("collapse_rule")
    first = s.get("first_collapsed_index")
    if first is None:
        return f"no collapse: the last layer is not collapsed under {rule}"
    return (
        f"collapsed from layer `{s.get('first_collapsed_layer')}` "
        f"(layers {first}–{n} of {n}) under {rule}"
    )


def table_columns(task: str, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The per-layer columns a table of ``task`` shows: ``names`` checked, or every column.

    Raises
    ------
    ConfigError
        For a name that is not a per-layer column of ``task``, naming the valid ones.
    """
    if names is None:
        return _layer_cols(task)
    return known_columns(names, [n for n, _ in layer_columns(task)], of=f" of a {task} report")


def known_columns(names: Sequence[str], valid: Sequence[str], *, of: str = "") -> tuple[str, ...]:
    """``names`` (stripped, blanks dropped, each once) when every one is among ``valid``.

    Raises
    ------
    ConfigError
        ``--columns: expected per-layer columns{of}, found ...`` for unknown names or none,
        naming the valid ones.
    """
    wanted = [n.strip() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in valid]
    if unknown or not wanted:
        found = ", ".join(repr(n) for n in unknown) if unknown else "no column"
        raise ConfigError(
            f"--columns: expected per-layer columns{of}, found {found}",
            hint=f"valid columns: {', '.join(valid)}",
        )
    return tuple(dict.fromkeys(wanted))


# Always shown in every part of a folded table, so each part can be read on its own.
_KEYS = ("index", "layer")
# What a column adds beyond its text: one space of padding each side and the (blank) rule
# between columns of box.SIMPLE_HEAD; the table adds one more at its outer edge.
_PAD = 3
_EDGE = 1


def _cells(results: Results, cols: Sequence[str]) -> dict[str, list[str]]:
    return {c: [fmt(row.get(c)) for row in results.layers] for c in cols}


def _width(header: str, cells: list[str]) -> int:
    return max([len(header), *(len(c) for c in cells)]) + _PAD


def fold(results: Results, cols: Sequence[str], width: int) -> list[tuple[str, ...]]:
    """Split ``cols`` into parts that each fit ``width`` characters, the key columns in each.

    Every number keeps its full width: a window too narrow for the whole table gets the
    table in several parts, one below the other, rather than cut cells.
    """
    task = results.task
    cells = _cells(results, cols)
    widths = {c: _width(_header(c, task), cells[c]) for c in cols}
    keys = tuple(c for c in cols if c in _KEYS)
    rest = [c for c in cols if c not in _KEYS]
    base = sum(widths[c] for c in keys) + _EDGE
    parts: list[list[str]] = [[]]
    used = base
    for c in rest:
        if parts[-1] and used + widths[c] > width:
            parts.append([])
            used = base
        parts[-1].append(c)
        used += widths[c]
    if not rest:
        return [keys]
    return [tuple(c for c in cols if c in keys or c in part) for part in parts]


def _caption(task: str, cols: Sequence[str]) -> str | None:
    """The abbreviations used by ``cols``, or None when there are none."""
    shown = {_header(c, task) for c in cols}
    terms = [t for t in _CAPTIONS[task].split(", ") if t.split(" = ")[0] in shown]
    return ", ".join(terms) or None


def layer_table(
    results: Results, columns: Sequence[str] | None = None, *, part: str = "", title: bool = True
) -> Table:
    task = results.task
    cols = table_columns(task, columns)
    table = Table(
        title=escape(f"{_TITLES[task]}: {results.checkpoint}{part}") if title else None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        caption=_caption(task, cols),
        caption_justify="left",
    )
    for col in cols:
        justify: JustifyMethod = "left" if col in ("layer", "type", "note") else "right"
        table.add_column(_header(col, task), justify=justify, no_wrap=col != "note")
    for row in results.layers:
        style = "bold green" if row.get("collapsed") else None
        table.add_row(*(escape(fmt(row.get(c))) for c in cols), style=style)
    return table


class LayerTables:
    """The layer table, folded into parts at render time when the console is too narrow."""

    def __init__(self, results: Results, columns: Sequence[str] | None = None) -> None:
        self.results = results
        self.columns = table_columns(results.task, columns)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        parts = fold(self.results, self.columns, options.max_width)
        results = self.results
        for i, cols in enumerate(parts, 1):
            part = f" (part {i} of {len(parts)})" if len(parts) > 1 else ""
            table = layer_table(results, cols, title=False)
            # The title on a line of its own: a narrow table would wrap a long path.
            yield Text(f"{_TITLES[results.task]}: {results.checkpoint}{part}", style="italic")
            yield table
        if len(parts) == 1:
            return
        yield Text(
            f"note: the table is folded into {len(parts)} parts to fit {options.max_width} "
            "columns; a wider window shows it whole, --columns picks columns, "
            "--format markdown|csv|json gives every column",
            style="dim",
        )


def markdown_table(results: Results, columns: Sequence[str] | None = None) -> str:
    """The layer table as a GitHub-flavoured Markdown table, full column names, then the verdict."""
    cols = table_columns(results.task, columns)
    right = {c for c in cols if c not in ("layer", "type", "note")}

    def cell(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = [
        f"**{_TITLES[results.task]}**: `{cell(str(results.checkpoint))}`",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if c in right else ":---" for c in cols) + "|",
    ]
    for row in results.layers:
        lines.append("| " + " | ".join(cell(fmt(row.get(c))) for c in cols) + " |")
    lines += ["", cell(verdict(results)), ""]
    return "\n".join(lines)


_SUMMARY_ORDER = (
    "task",
    "n_samples",
    "n_classes",
    "model_accuracy",
    "target_dim",
    "rank",
    "model_mse",
    "stable_rank_y",
    "target_effective_rank",
    "first_collapsed_layer",
    "first_collapsed_index",
    "collapse_rule",
    "nrc1_last",
    "nrc2_last",
    "nrc3_last",
    "nrc3_gamma",
    "nc3_duality_last",
    "svd",
    "device",
)


def summary_table(results: Results) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column("field", style="dim")
    table.add_column("value")
    for key in _SUMMARY_ORDER:
        if key == "task" and results.task == "regression":
            continue  # the default: said only for classifiers
        if key in results.summary:
            table.add_row(key, escape(fmt(results.summary[key])))
    return table


def model_line(results: Results) -> Text | None:
    """One line: how the model was built (route and description), when the report says it."""
    s = results.summary
    if not s.get("model"):
        return None
    return Text(f"model ({s.get('build')}): {s['model']}")


def render(results: Results, columns: Sequence[str] | None = None) -> Group:
    """The whole terminal report: layer table, summary, notes, how the model was built, verdict."""
    notes = [
        Text(f"note: {row['layer']}: {row['note']}", style="yellow")
        for row in results.layers
        if row.get("note")
    ]
    model = model_line(results)
    return Group(
        LayerTables(results, columns),
        summary_table(results),
        *notes,
        *([model] if model is not None else []),
        Text(verdict(results), style="bold"),
    )
