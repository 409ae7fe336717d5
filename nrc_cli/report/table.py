"""Results -> Rich renderables for the terminal. Computes nothing; escapes runtime strings."""

from __future__ import annotations

import math

from rich import box
from rich.console import Group, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


def layer_table(results: Results) -> Table:
    task = results.task
    table = Table(
        title=escape(f"{_TITLES[task]}: {results.checkpoint}"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        caption=_CAPTIONS[task],
        caption_justify="left",
    )
    cols = _layer_cols(task)
    for col in cols:
        justify: JustifyMethod = "left" if col in ("layer", "type") else "right"
        table.add_column(_header(col, task), justify=justify, no_wrap=col == "layer")
    for row in results.layers:
        style = "bold green" if row.get("collapsed") else None
        table.add_row(*(escape(fmt(row.get(c))) for c in cols), style=style)
    return table


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


def render(results: Results) -> Group:
    """The whole terminal report: layer table, summary, notes, how the model was built, verdict."""
    notes = [
        Text(f"note: {row['layer']}: {row['note']}", style="yellow")
        for row in results.layers
        if row.get("note")
    ]
    model = model_line(results)
    return Group(
        layer_table(results),
        summary_table(results),
        *notes,
        *([model] if model is not None else []),
        Text(verdict(results), style="bold"),
    )
