"""``nrc plot``: a report's layer profile, or a metric across an audit, as PNG or SVG."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from nrc_cli.cli import _options as o
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.gates import load_report
from nrc_cli.report.plot import IMAGE_FORMATS
from nrc_cli.results import Results

Input = Annotated[
    str,
    typer.Argument(
        help="A report (.json from nrc analyze) or a table (.parquet/.csv from nrc audit or "
        "nrc analyze).",
        metavar="REPORT",
        show_default=False,
    ),
]
FigureOutput = Annotated[
    str | None, typer.Option("--output", "-o", help="The figure: a .png or .svg file.")
]
FigureFormat = Annotated[str | None, o.format_option(IMAGE_FORMATS, default="from --output")]
X = Annotated[
    str | None,
    typer.Option(
        "--x",
        help="Plot --metric against this column across checkpoints: a metadata key "
        "(weight_decay, or meta.weight_decay) or any column.",
    ),
]
Metric = Annotated[str, typer.Option("--metric", help="The column on the y axis of an --x plot.")]
Hue = Annotated[
    str | None,
    typer.Option("--hue", help="One line per value of this column (default: one per layer)."),
]
Layer = Annotated[
    str | None,
    typer.Option(
        "--layer", help="Keep one layer of an --x plot: name, 1-based index, or -1 for the last."
    ),
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option("--checkpoint", help="The checkpoint to profile when a table holds several."),
]
Title = Annotated[str | None, typer.Option("--title", help="Figure title.")]
XScale = Annotated[
    str, typer.Option("--xscale", help="auto, linear, log or symlog (for --x plots).")
]
YScale = Annotated[str, typer.Option("--yscale", help="auto, linear or log (for --x plots).")]


def plot(
    report: Input,
    output: FigureOutput = None,
    format: FigureFormat = None,
    x: X = None,
    metric: Metric = "nrc3_alignment",
    hue: Hue = None,
    layer: Layer = None,
    checkpoint: CheckpointOpt = None,
    title: Title = None,
    xscale: XScale = "auto",
    yscale: YScale = "auto",
    quiet: o.Quiet = False,
) -> None:
    """Draw REPORT: the layer profile (NRC1-4 by layer, first collapsed layer marked) of one
    report, or with --x, --metric against a metadata column of an audit."""
    from nrc_cli.report import plot as draw

    if output is None:
        raise ConfigError(
            "nrc plot: expected --output FIGURE.png or FIGURE.svg, found none",
            hint="figures are files: nrc plot run.json --output profile.png",
        )
    draw.image_format(output, format)
    from nrc_cli.report.writers import check_not_input, check_output_path

    check_output_path(output)
    check_not_input(output, {"REPORT": report})
    suffix = Path(report).suffix.lower()
    if suffix == ".json":
        if x is not None or hue is not None or layer is not None:
            raise ConfigError(
                f"'{report}': a single report has one checkpoint; --x, --hue and --layer "
                "plot a table of many (nrc audit ... --output audit.parquet)",
            )
        shown = draw.plot_profile(_read_report(report), output, fmt=format, title=title)
        what = f"layer profile of {len(shown.layers)} layers"
    elif suffix in (".parquet", ".csv"):
        from nrc_cli.results.tables import read_table, resolve_column

        frame = read_table(report)
        if x is None:
            if hue is not None or layer is not None:
                raise ConfigError("--hue and --layer go with --x COLUMN", hint="add --x COLUMN")
            results = draw.results_from_table(frame, checkpoint)
            shown = draw.plot_profile(results, output, fmt=format, title=title)
            what = f"layer profile of {len(shown.layers)} layers"
        else:
            x_col = resolve_column(frame, x, flag="--x")
            metric_col = resolve_column(frame, metric, flag="--metric")
            hue_col = resolve_column(frame, hue, flag="--hue") if hue else None
            lines = draw.plot_metric(
                frame,
                output,
                x=x_col,
                metric=metric_col,
                hue=hue_col,
                layer=layer,
                fmt=format,
                title=title,
                xscale=xscale,
                yscale=yscale,
            )
            what = f"{metric_col} against {x_col}, {len(lines.series)} line(s)"
    else:
        raise ConfigError(
            f"'{report}': expected a report (.json) or a table (.parquet, .csv), "
            f"found suffix '{Path(report).suffix}'",
        )
    if not quiet:
        sys.stderr.write(f"wrote {output}: {what}\n")


def _read_report(path: str) -> Results:
    """A JSON report of ``nrc analyze``, read by the one report reader (``load_report``)."""
    if not Path(path).expanduser().exists():
        raise DataError(f"REPORT '{path}': report not found", hint="check the path")
    return load_report(path, option="REPORT", expected=_EXPECTED)


# What REPORT should have been, when it is a JSON file but not a report.
_EXPECTED = "a report with 'summary' and 'layers' (nrc analyze --format json)"


def register(app: typer.Typer) -> None:
    """Add ``nrc plot`` to the app."""
    app.command("plot")(plot)
