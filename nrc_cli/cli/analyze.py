"""``nrc analyze``: checkpoint + data -> per-layer Deep NRC report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.markup import escape

from nrc_cli.accumulate.precision import precision_hint
from nrc_cli.cli import _options as o
from nrc_cli.cli._console import progress_enabled, stderr_console, stdout_to_stderr
from nrc_cli.cli._output import emit
from nrc_cli.cli._progress import SafeProgress
from nrc_cli.errors import ConfigError
from nrc_cli.options import AnalysisOptions
from nrc_cli.pipeline import resolve_device, run
from nrc_cli.report.table import known_columns, markdown_table, render, table_columns
from nrc_cli.report.writers import (
    ANALYZE_FORMATS,
    check_not_input,
    check_output_path,
    resolve_format,
)
from nrc_cli.results import TASKS, Results, layer_columns

AnalyzeFormat = Annotated[
    str | None,
    o.format_option(ANALYZE_FORMATS, default="from --output's suffix, .md is markdown, else table"),
]


def run_with_progress(
    checkpoint: str,
    data: str,
    options: AnalysisOptions,
    *,
    quiet: bool,
    threads: int | None,
    group=None,
) -> Results | None:
    """Run the pipeline, with a transient progress bar on an interactive stderr.

    ``group``: this rank's, under torchrun (see :func:`nrc_cli.pipeline.run`); the ranks other
    than 0 show nothing and get None.
    """
    if group is not None and group.rank != 0:
        quiet = True
    import torch

    if threads is not None and threads < 1:
        from nrc_cli.errors import ConfigError

        raise ConfigError(f"--threads: expected an integer >= 1, found {threads}")
    if threads is None:
        from nrc_cli._threads import default_threads

        threads = default_threads()
    torch.set_num_threads(threads)

    if not quiet:
        print_precision_hint(options)

    def on_plan(plan: dict) -> None:
        if not quiet:
            for line in describe_plan(plan):
                stderr_console().print(escape(line), style="dim", soft_wrap=True)

    with stdout_to_stderr():
        results = _run(checkpoint, data, options, quiet=quiet, on_plan=on_plan, group=group)
    if results is None:
        return None
    say_messages(results, quiet=quiet)
    return results


def say_messages(results: Results, *, quiet: bool) -> None:
    """The run's warnings (always) and notes (unless --quiet), one stderr line each."""
    console = stderr_console()
    if not quiet:
        for line in results.summary.get("notes") or ():
            console.print(escape(f"note: {line}"), style="dim", soft_wrap=True)
    for line in results.summary.get("warnings") or ():
        console.print(escape(f"warning: {line}"), style="yellow", soft_wrap=True)


def print_precision_hint(options: AnalysisOptions) -> None:
    """On a GPU that multiplies float64 slowly, one stderr line suggesting --precision mixed."""
    hint = precision_hint(resolve_device(options.device), options.precision)
    if hint is not None:
        stderr_console().print(escape(hint), style="dim", soft_wrap=True)  # never wrapped


def _run(
    checkpoint: str, data: str, options: AnalysisOptions, *, quiet: bool, on_plan, group
) -> Results | None:
    if not progress_enabled(quiet):
        return run(checkpoint, data, options, on_plan=on_plan, group=group)
    with SafeProgress("data pass", "samples") as bar:

        def progress(done: int, total: int) -> None:
            bar.update(completed=done, total=total)

        return run(checkpoint, data, options, progress=progress, on_plan=on_plan, group=group)


def describe_plan(plan: dict) -> list[str]:
    """Short stderr lines about a plan; nothing for the common one-pass, all-exact case."""
    layers = plan["layers"]
    special = [row for row in layers if row["accumulator"] != "exact" or row["spectrum"] != "exact"]
    ncc = plan.get("ncc_pass")
    note = plan.get("ncc_note")
    again = [note] if note and not note.endswith("--spill-budget 0") else []
    if plan["passes"] - (ncc is not None) == 1 and not special:
        return again  # the nearest-class-mean pass of a classifier is not worth a note itself
    lines = [f"plan: {plan['passes']} data pass(es) within memory budget {plan['memory_budget']}"]
    for row in layers:
        size = f", sketch size {row['sketch_size']}" if row["sketch_size"] else ""
        lines.append(
            f"  {row['layer']}: pass {row['pass']}, {row['accumulator']} accumulator, "
            f"{row['spectrum']} spectrum{size}, {row['bytes'] / 1e6:.1f} MB"
        )
    if ncc is not None:
        source = "spilled features" if plan.get("ncc_source") == "spill" else "the model again"
        lines.append(f"  pass {ncc}: nearest class means of every layer ({source})")
    return lines + again


def emit_results(
    results: Results, fmt: str, output: str | None, columns: Sequence[str] | None = None
) -> None:
    if columns is not None:
        table_columns(results.task, columns)  # checked against the task the run found
    emit(
        fmt,
        output,
        doc=results.to_dict,
        frame=results.to_frame,
        render=lambda: render(results, columns),
        markdown=lambda: markdown_table(results, columns),
    )


def parse_columns(columns: str | None, fmt: str) -> tuple[str, ...] | None:
    """``--columns a,b,c`` checked before the run: known names, a format that shows a table."""
    if columns is None:
        return None
    if fmt not in ("table", "markdown"):
        raise ConfigError(
            f"--columns picks the columns of the table and markdown formats, not of {fmt}",
            hint="json, csv and parquet always hold every column; select them downstream",
        )
    # Checked against every task's columns: the run finds the task, then its own columns.
    valid = dict.fromkeys(n for task in TASKS for n, _ in layer_columns(task))
    return known_columns(columns.split(","), list(valid))


@o.analysis_options
def analyze(
    checkpoint: o.Checkpoint,
    data: o.Data,
    options: AnalysisOptions = o.GENERATED,
    threads: o.Threads = None,
    format: AnalyzeFormat = None,
    columns: o.Columns = None,
    output: o.Output = None,
    quiet: o.Quiet = False,
) -> None:
    """Stream DATA through CHECKPOINT once and report Deep NRC for every weight layer.

    Under torchrun (WORLD_SIZE > 1) each rank streams its share of the batches on its own
    device and rank 0 reports the result of all of them.
    """
    import dataclasses

    from nrc_cli import distributed

    launch = distributed.launch_from_env()
    if launch is None:
        fmt, picked = _checked_output(format, columns, output, checkpoint, data)
        results = run_with_progress(checkpoint, data, options, quiet=quiet, threads=threads)
        assert results is not None  # only a rank of a process group gets None
        emit_results(results, fmt, output, picked)
        return
    device = distributed.rank_device(options.device, launch)
    with distributed.process_group(launch, device) as group:
        try:
            fmt, picked = _checked_output(format, columns, output, checkpoint, data)
            options = dataclasses.replace(options, device=device)
            results = run_with_progress(
                checkpoint, data, options, quiet=quiet, threads=threads, group=group
            )
            if results is not None:
                emit_results(results, fmt, output, picked)
        except Exception as exc:
            group.check(exc)  # before the ranks' last meeting: every rank stops; else re-raised
            raise


def _checked_output(
    format: str | None, columns: str | None, output: str | None, checkpoint: str, data: str
) -> tuple[str, tuple[str, ...] | None]:
    """The format and --columns of the report, and --output checked, before any work."""
    fmt = resolve_format(format, output, allowed=ANALYZE_FORMATS)
    picked = parse_columns(columns, fmt)
    check_output_path(output)
    check_not_input(output, {"the checkpoint": checkpoint, "--data": data})
    return fmt, picked


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
