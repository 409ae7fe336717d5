"""Pictures of results: the layer profile of one report, and a metric across an audit.

Each plotting function draws with matplotlib's Agg canvas (no pyplot, no global backend
switch), writes PNG or SVG atomically, and **returns the series it plotted**, so what a figure
shows can be checked against the numbers it came from. Computes nothing beyond grouping and
means. matplotlib is an optional extra (``pip install matplotlib``), imported only here,
inside the functions.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.report.writers import atomic_write
from nrc_cli.results import Results, plain

__all__ = [
    "CLASSIFICATION_PANELS",
    "IMAGE_FORMATS",
    "PROFILE_PANELS",
    "MetricPlot",
    "ProfilePlot",
    "image_format",
    "metric_series",
    "plot_metric",
    "plot_profile",
    "profile_series",
    "results_from_table",
]

IMAGE_FORMATS = ("png", "svg")
# The four Deep NRC panels of the layer profile (as in Rangamani & Unal, Figure 2).
PROFILE_PANELS = ("nrc1_noise", "nrc2_cka", "nrc3_alignment", "nrc4_probe_mse")
_PANEL_TITLES = {
    "nrc1_noise": "NRC1: variance outside top-k",
    "nrc2_cka": "NRC2: CKA(features, targets)",
    "nrc3_alignment": "NRC3: feature/weight alignment",
    "nrc4_probe_mse": "NRC4: linear probe MSE",
}
# The classifier's profile (Rangamani et al. 2023, Figure 1): NC1, NC2, NC3 and NCC by layer.
CLASSIFICATION_PANELS = ("nc1", "nc2_etf", "nc3_alignment", "ncc_accuracy")
_PANEL_TITLES.update(
    {
        "nc1": "NC1: tr(Σ_W Σ_B†)/C",
        "nc2_etf": "NC2: distance from a simplex ETF",
        "nc3_alignment": "NC3: class means/weight alignment",
        "ncc_accuracy": "NCC accuracy",
    }
)
# Panels drawn on a log axis (when they hold a positive value); the rest are shares in [0, 1].
_LOG_PANELS = ("nrc4_probe_mse", "nc1")
_COLLAPSED_COLOR = "#2ca02c"
_PLOT_HINT = 'install matplotlib: pip install matplotlib (in a clone of nrc: pip install ".[plot]")'


def _matplotlib():
    """Import what drawing needs; a clear error when the optional extra is absent."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(
            "plotting needs matplotlib, which is not installed", hint=_PLOT_HINT
        ) from exc
    return matplotlib, Figure, FigureCanvasAgg


def image_format(output: str | os.PathLike, fmt: str | None = None) -> str:
    """``png`` or ``svg``: ``fmt`` if given, else from the suffix of ``output``."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in IMAGE_FORMATS:
            raise ConfigError(f"--format: expected png or svg for a figure, found '{fmt}'")
        return fmt
    suffix = Path(output).suffix.lower()
    if suffix.lstrip(".") not in IMAGE_FORMATS:
        raise ConfigError(
            f"--output '{output}': cannot tell the image format from the suffix '{suffix}'",
            hint="name the figure *.png or *.svg, or pass --format png|svg",
        )
    return suffix.lstrip(".")


def _save(fig, output: str | os.PathLike, fmt: str) -> None:
    """Render to memory, then write atomically; no timestamps or versions in the file, so the
    same figure gives the same bytes."""
    matplotlib, _, canvas_cls = _matplotlib()
    canvas_cls(fig)
    buf = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with matplotlib.rc_context({"svg.hashsalt": "nrc", "svg.fonttype": "path"}):
        fig.savefig(buf, format=fmt, dpi=150, metadata=metadata, bbox_inches="tight")
    atomic_write(output, buf.getvalue())


def _num(value) -> float:
    """A plotted value: None, NA and non-numbers become NaN (a gap in the line)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


# ------------------------------------------------------------------------------------------------
# Layer profile of one report
# ------------------------------------------------------------------------------------------------


@dataclass
class ProfilePlot:
    """What the layer profile shows.

    Attributes
    ----------
    series : dict
        ``{panel: (indices, values)}`` for each panel, in order: :data:`PROFILE_PANELS` for a
        regression report, :data:`CLASSIFICATION_PANELS` for a classification one; indices are
        the 1-based layer indices, values floats (NaN where the report has null).
    model_mse : float
        The reference line of the NRC4 panel (NaN when unknown or for a classifier).
    marker : int or None
        ``first_collapsed_index`` of the report, where the collapsed region starts.
    layers : list of str
        Layer names, in index order.
    figure : matplotlib.figure.Figure or None
        The drawn figure (set by :func:`plot_profile`), for inspection.
    """

    series: dict[str, tuple[list[int], list[float]]]
    model_mse: float
    marker: int | None
    layers: list[str] = field(default_factory=list)
    figure: object = field(default=None, repr=False)


def profile_panels(results: Results) -> tuple[str, ...]:
    """The four panels of a report's profile: Deep NRC, or Deep NC for a classifier."""
    if results.summary.get("task") == "classification":
        return CLASSIFICATION_PANELS
    return PROFILE_PANELS


def profile_series(results: Results) -> ProfilePlot:
    """The per-layer series of the four panels of one report (:func:`profile_panels`)."""
    rows = sorted(results.layers, key=lambda r: int(r["index"]))
    if not rows:
        raise DataError(f"'{results.checkpoint}': the report has no layers to plot")
    indices = [int(r["index"]) for r in rows]
    panels = profile_panels(results)
    series = {p: (list(indices), [_num(r.get(p)) for r in rows]) for p in panels}
    first = results.summary.get("first_collapsed_index")
    marker = None if first is None or _missing(first) else int(first)
    return ProfilePlot(
        series=series,
        model_mse=_num(results.summary.get("model_mse")),
        marker=marker,
        layers=[str(r["layer"]) for r in rows],
    )


def _missing(value) -> bool:
    """None, NaN or pandas' NA (what a table cell holds when the report said null)."""
    return plain(value, keep_inf=True) is None


def plot_profile(
    results: Results,
    output: str | os.PathLike,
    *,
    fmt: str | None = None,
    title: str | None = None,
) -> ProfilePlot:
    """Draw the layer profile of one report: NRC1-4 (or NC1-3 and NCC) against layer index,
    collapse marked.

    Four panels side by side: for regression, ``nrc1_noise``, ``nrc2_cka`` and
    ``nrc3_alignment`` on linear axes, ``nrc4_probe_mse`` with ``model_mse`` as a dashed line on
    a log axis; for a classifier, ``nc1`` on a log axis, then ``nc2_etf``, ``nc3_alignment`` and
    ``ncc_accuracy``. The first collapsed layer gets a vertical line and the collapsed region
    (from it to the last layer) is shaded, in every panel.

    Parameters
    ----------
    results : Results
        One analysis (``nrc analyze --format json``, or rows of a tidy table).
    output : path
        A ``.png`` or ``.svg`` file, written atomically.
    fmt : {"png", "svg"}, optional
        Overrides the suffix.
    title : str, optional
        Figure title (default: the checkpoint path).

    Returns
    -------
    ProfilePlot
        The plotted series and marker.
    """
    fmt = image_format(output, fmt)
    plot = profile_series(results)
    _, figure_cls, _ = _matplotlib()
    panels = tuple(plot.series)
    fig = figure_cls(figsize=(14, 3.4))
    axes = fig.subplots(1, len(panels))
    last = max(plot.series[panels[0]][0])
    for ax, panel in zip(axes, panels, strict=True):
        xs, ys = plot.series[panel]
        ax.plot(xs, ys, marker="o", color="#1f77b4", label=panel)
        if panel in _LOG_PANELS:
            if panel == "nrc4_probe_mse" and math.isfinite(plot.model_mse):
                ax.axhline(plot.model_mse, color="#d62728", ls="--", lw=1.2, label="model_mse")
            if any(math.isfinite(y) and y > 0 for y in ys):
                ax.set_yscale("log")
            if panel == "nrc4_probe_mse":
                ax.legend(fontsize=8, loc="best")
        elif panel not in ("nrc2_cka", "nc2_etf") or all(
            not math.isfinite(y) or 0 <= y <= 1 for y in ys
        ):
            ax.set_ylim(-0.03, 1.03)
        if plot.marker is not None:
            ax.axvspan(plot.marker - 0.5, last + 0.5, color=_COLLAPSED_COLOR, alpha=0.12, lw=0)
            ax.axvline(plot.marker, color=_COLLAPSED_COLOR, ls="--", lw=1.5)
        ax.set_title(_PANEL_TITLES[panel], fontsize=10)
        ax.set_xlabel("layer index")
        ax.set_xticks(xs)
        ax.set_xlim(min(xs) - 0.5, last + 0.5)
        ax.grid(alpha=0.3)
    names = dict(zip(plot.series[panels[0]][0], plot.layers, strict=True))
    if plot.marker is None:
        where = "no collapse"
    else:
        where = f"collapsed from layer {plot.marker} ({names.get(plot.marker, '?')})"
    rule = results.summary.get("collapse_rule")
    fig.suptitle(
        f"{title or results.checkpoint} — {where}" + (f" under {rule}" if rule else ""),
        fontsize=11,
    )
    fig.tight_layout()
    _save(fig, output, fmt)
    plot.figure = fig
    return plot


def results_from_table(frame, checkpoint: str | None = None) -> Results:
    """Rebuild one report from the rows of a tidy table (``nrc analyze --format csv``/parquet,
    or one checkpoint of an audit).

    Raises
    ------
    DataError
        When the table holds no rows, or several checkpoints and ``checkpoint`` picks none.
    """
    if "index" not in frame.columns or "checkpoint" not in frame.columns:
        raise DataError(
            "expected a tidy table with 'checkpoint' and 'index' columns, found columns "
            f"{', '.join(map(str, list(frame.columns)[:8]))}",
            hint="plot a report written by nrc analyze or nrc audit",
        )
    names = list(dict.fromkeys(str(c) for c in frame["checkpoint"].dropna()))
    if checkpoint is not None:
        if checkpoint not in names:
            raise DataError(
                f"--checkpoint '{checkpoint}': not in the table, which holds "
                f"{len(names)} checkpoint(s): {', '.join(names[:5])}"
                + (", ..." if len(names) > 5 else ""),
            )
        frame = frame[frame["checkpoint"] == checkpoint]
    elif len(names) != 1:
        raise DataError(
            f"the table holds {len(names)} checkpoints; a layer profile shows one",
            hint="pick one with --checkpoint PATH, or plot a metric across them with --x COLUMN",
        )
    records = frame.sort_values("index").to_dict("records")
    if not records:
        raise DataError("the table has no rows to plot")
    return Results.from_tidy(records)


# ------------------------------------------------------------------------------------------------
# A metric across an audit
# ------------------------------------------------------------------------------------------------


@dataclass
class MetricPlot:
    """What a metric-against-column plot shows.

    Attributes
    ----------
    series : dict
        ``{label: (x_values, mean_y)}``, one entry per line, x sorted; the mean is over every
        row with that x (seeds, other settings), ignoring nulls.
    points : dict
        ``{label: (x_values, y_values)}``: every row behind the line, drawn as dots.
    x, metric : str
        The columns plotted.
    hue : str or None
        The column that splits lines (None: one line per layer).
    figure : matplotlib.figure.Figure or None
        The drawn figure (set by :func:`plot_metric`), for inspection.
    """

    series: dict[str, tuple[list, list[float]]]
    points: dict[str, tuple[list, list[float]]]
    x: str
    metric: str
    hue: str | None = None
    figure: object = field(default=None, repr=False)


def _require(frame, column: str, flag: str) -> None:
    if column not in frame.columns:
        meta = [c for c in frame.columns if str(c).startswith("meta.")]
        raise DataError(
            f"{flag} '{column}': no such column in the table",
            hint=(
                f"metadata columns: {', '.join(meta[:12])}"
                if meta
                else "the table has no metadata (meta.*) columns"
            ),
        )


def metric_series(
    frame,
    *,
    x: str,
    metric: str,
    hue: str | None = None,
    layer: str | None = None,
) -> MetricPlot:
    """Group an audit table into the lines of :func:`plot_metric` (no drawing).

    Parameters
    ----------
    frame : pandas.DataFrame
        An audit (or any tidy) table.
    x, metric : str
        Exact column names (see ``nrc_cli.results.tables.resolve_column`` for ``weight_decay`` ->
        ``meta.weight_decay``); ``metric`` must be numeric.
    hue : str, optional
        Split lines by this column's values instead of by layer.
    layer : str, optional
        Keep one layer: its name, else its 1-based index, or a negative index counted from each
        checkpoint's last layer (``-1``: the last weight layer, whose features are the last
        hidden representation).

    Returns
    -------
    MetricPlot
    """
    import pandas as pd

    for column, flag in ((x, "--x"), (metric, "--metric"), (hue, "--hue")):
        if column is not None:
            _require(frame, column, flag)
    y_all = pd.to_numeric(frame[metric], errors="coerce")
    if frame[metric].notna().any() and y_all.isna().all():
        raise DataError(f"--metric '{metric}': expected a numeric column, found text")
    frame = frame.assign(_y=y_all.astype("float64"))
    if layer is not None:
        frame = _select_layer(frame, layer)
    frame = frame[frame[x].notna()]
    numeric_x = pd.api.types.is_numeric_dtype(frame[x]) and not pd.api.types.is_bool_dtype(frame[x])
    per_checkpoint = (
        "index" not in frame.columns
        or "checkpoint" not in frame.columns
        or _is_summary_column(metric)
    )
    if per_checkpoint and "checkpoint" in frame.columns:
        frame = frame.drop_duplicates(subset=["checkpoint"])
    keys: list[str] = []
    if hue is not None:
        keys.append(hue)
    layered = not per_checkpoint and frame["index"].nunique() > 1
    if layered:
        keys.append("index")
    series: dict = {}
    points: dict = {}
    groups = frame.groupby(keys, sort=True, dropna=False) if keys else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = _label(key, hue, layered, group, metric)
        xs_all = [_xval(v, numeric_x) for v in group[x]]
        ys_all = [float(v) for v in group["_y"]]
        means = group.groupby(x, sort=True)["_y"].mean()
        xs = [_xval(v, numeric_x) for v in means.index]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        series[label] = ([xs[i] for i in order], [float(means.iloc[i]) for i in order])
        points[label] = (xs_all, ys_all)
    if not series:
        raise DataError(
            f"nothing to plot: no row has both '{x}' and '{metric}'"
            + (f" for --layer {layer}" if layer is not None else ""),
        )
    return MetricPlot(series=series, points=points, x=x, metric=metric, hue=hue)


def _is_summary_column(name: str) -> bool:
    from nrc_cli.results import TASKS, TIDY_RENAMES, summary_fields

    return name in {TIDY_RENAMES.get(n, n) for t in TASKS for n, _ in summary_fields(t)}


def _xval(value, numeric: bool):
    if numeric:
        out = float(value)
        return int(out) if out.is_integer() and not isinstance(value, float) else out
    return str(value)


def _label(key: tuple, hue: str | None, layered: bool, group, metric: str) -> str:
    parts = []
    if hue is not None:
        value = key[0]
        parts.append(f"{hue.removeprefix('meta.')}={value}")
    if layered:
        index = int(key[-1])
        names = list(dict.fromkeys(str(n) for n in group["layer"]))
        parts.append(f"layer {index} ({'/'.join(names)})" if names else f"layer {index}")
    return ", ".join(parts) or metric


def _select_layer(frame, layer: str):
    if "index" not in frame.columns:
        raise DataError("--layer: the table has no per-layer rows ('index' column)")
    text = str(layer).strip()
    try:
        number = int(text)
    except ValueError:
        number = None
    # A name wins over an index: in a bare nn.Sequential, layer "2" is a name.
    if (frame["layer"] == text).any() or number is None:
        picked = frame[frame["layer"] == text]
    elif number < 0:
        last = frame.groupby("checkpoint")["index"].transform("max")
        picked = frame[frame["index"] == last + 1 + number]
    else:
        picked = frame[frame["index"] == number]
    if picked.empty:
        names = list(dict.fromkeys(str(n) for n in frame["layer"]))
        raise DataError(
            f"--layer '{layer}': no such layer in the table",
            hint=f"give a name ({', '.join(names[:8])}), a 1-based index, or -1 for the last",
        )
    return picked


def _auto_xscale(xs: list) -> str:
    values = [v for v in xs if isinstance(v, (int, float)) and math.isfinite(v)]
    positive = [v for v in values if v > 0]
    if not positive or any(v < 0 for v in values):
        return "linear"
    # A sweep spanning a decade or more (weight decay 1e-4, 1e-3, ...) crowds its small values
    # into one corner of a linear axis.
    if max(positive) / min(positive) < 10:
        return "linear"
    return "log" if len(positive) == len(values) else "symlog"


def plot_metric(
    frame,
    output: str | os.PathLike,
    *,
    x: str,
    metric: str,
    hue: str | None = None,
    layer: str | None = None,
    fmt: str | None = None,
    title: str | None = None,
    xscale: str = "auto",
    yscale: str = "auto",
) -> MetricPlot:
    """Draw ``metric`` against column ``x``: one line per layer (or per ``hue`` value).

    Each line joins the means over rows sharing an x value (e.g. seeds); every row is drawn as
    a dot. Numeric x gets a line plot (``xscale="auto"``: log when the positive values span a
    factor 10 or more, symlog when they also include 0); text x gets evenly spaced categories, sorted.

    Parameters
    ----------
    frame : pandas.DataFrame
        An audit table.
    output : path
        A ``.png`` or ``.svg`` file, written atomically.
    x, metric, hue, layer
        See :func:`metric_series`.
    fmt : {"png", "svg"}, optional
    title : str, optional
    xscale : {"auto", "linear", "log", "symlog"}
    yscale : {"auto", "linear", "log"}
        ``auto``: log for MSE columns, else linear.

    Returns
    -------
    MetricPlot
        The plotted series.
    """
    fmt = image_format(output, fmt)
    if xscale not in ("auto", "linear", "log", "symlog"):
        raise ConfigError(f"--xscale: expected auto, linear, log or symlog, found '{xscale}'")
    if yscale not in ("auto", "linear", "log"):
        raise ConfigError(f"--yscale: expected auto, linear or log, found '{yscale}'")
    plot = metric_series(frame, x=x, metric=metric, hue=hue, layer=layer)
    _, figure_cls, _ = _matplotlib()
    fig = figure_cls(figsize=(7, 4.5))
    ax = fig.subplots()
    all_x = [v for xs, _ in plot.series.values() for v in xs]
    numeric = all(isinstance(v, (int, float)) for v in all_x)
    categories = sorted(set(all_x), key=str) if not numeric else []
    pos = {c: i for i, c in enumerate(categories)}
    cmap = _colors(len(plot.series))
    for color, (label, (xs, ys)) in zip(cmap, plot.series.items(), strict=True):
        px, py = plot.points[label]
        if not numeric:
            xs, px = [pos[v] for v in xs], [pos[v] for v in px]
        ax.plot(xs, ys, marker="o", color=color, label=label, lw=1.8)
        ax.scatter(px, py, color=color, alpha=0.35, s=14, lw=0)
    if not numeric:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    else:
        scale = _auto_xscale(all_x) if xscale == "auto" else xscale
        if scale == "symlog":
            positive = [v for v in all_x if v > 0]
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
        elif scale == "log":
            ax.set_xscale("log")
        values = sorted(set(all_x))
        if len(values) <= 10:
            # A sweep has few settings: label each one rather than round numbers between them.
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
    if yscale == "log" or (yscale == "auto" and "mse" in metric):
        ax.set_yscale("log")
    ax.set_xlabel(x.removeprefix("meta."))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(plot.series) > 1 or plot.hue is not None:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title or f"{metric} against {x.removeprefix('meta.')}", fontsize=11)
    fig.tight_layout()
    _save(fig, output, fmt)
    plot.figure = fig
    return plot


def _colors(n: int) -> list:
    """Distinct colours in a fixed order (tab10, then viridis beyond ten lines)."""
    matplotlib, _, _ = _matplotlib()
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]
