"""``nrc check``: gate a report (saved, or analyzed now) on requirements and a baseline.

Exit 0 when every check passes, 1 when one fails (CheckFailed), 2 for bad usage or bad input.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from nrc_cli.cli import _options as o
from nrc_cli.cli._output import emit
from nrc_cli.cli.analyze import run_with_progress, say_messages
from nrc_cli.errors import CheckFailed, ConfigError
from nrc_cli.gates import (
    DEFAULT_TOLERANCE,
    CheckReport,
    Requirement,
    Tolerances,
    load_gate_file,
    load_report,
    parse_requirement,
    parse_tolerances,
    run_check,
)
from nrc_cli.options import AnalysisOptions
from nrc_cli.report.gates import render_check
from nrc_cli.report.junit import junit_xml
from nrc_cli.report.writers import (
    atomic_write,
    check_not_input,
    check_output_path,
    resolve_format,
)
from nrc_cli.results import Results

CHECK_FORMATS = ("table", "json")

CheckpointOpt = Annotated[
    str | None,
    typer.Argument(help="Checkpoint to analyze (.safetensors, .pt, .pth); omit with --report."),
]
Report = Annotated[
    str | None,
    typer.Option("--report", help="Gate a saved report (nrc analyze --format json) instead."),
]
Require = Annotated[
    list[str] | None,
    typer.Option(
        "--require",
        "-r",
        help="Requirement 'COLUMN[LAYERS] OP NUMBER' or 'FIELD OP NUMBER' (repeatable), "
        "e.g. 'nrc1_noise[-1] <= 0.05', 'first_collapsed_index <= 3'.",
    ),
]
RequireFile = Annotated[
    str | None,
    typer.Option(
        "--require-file",
        help="TOML file: require = [...] and an optional [baseline] table (see the README, 'Use in CI').",
    ),
]
Baseline = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        help="Report to compare with: every metric of every shared layer must stay within "
        "--tolerance; added or removed layers fail.",
    ),
]
Tolerance = Annotated[
    list[str] | None,
    typer.Option(
        "--tolerance",
        help=f"Absolute tolerance: NUMBER for every metric (default {DEFAULT_TOLERANCE}), "
        "COLUMN=NUMBER for one (repeatable).",
    ),
]
JUnit = Annotated[
    str | None,
    typer.Option("--junit", help="Also write a JUnit XML report here (atomically), for CI."),
]
CheckFormat = Annotated[
    str | None, o.format_option(CHECK_FORMATS, default="from --output, else table")
]


def _check_junit_path(junit: str | None) -> None:
    if junit is None:
        return
    target = Path(junit).expanduser()
    if target.is_dir():
        raise ConfigError(f"--junit '{junit}': is a folder, expected a file path")
    if not target.resolve().parent.is_dir():
        raise ConfigError(
            f"--junit '{junit}': the folder '{target.resolve().parent}' does not exist",
            hint="create it first (mkdir -p), or write somewhere else",
        )


def gather_gates(
    require: list[str] | None,
    require_file: str | None,
    baseline: str | None,
    tolerance: list[str] | None,
) -> tuple[list[Requirement], str | None, Tolerances]:
    """Requirements (``--require`` first, then the file's), the baseline path and tolerances.

    Command-line values win over the file's: ``--baseline`` replaces ``[baseline] path``, and
    ``--tolerance`` values replace the file's default and per-column entries they name.
    """
    requirements = [parse_requirement(r, source="--require") for r in require or ()]
    cli_tol, cli_has_default = parse_tolerances(tolerance)
    tolerances = Tolerances()
    if require_file is not None:
        gates = load_gate_file(require_file)
        requirements += gates.requirements
        baseline = baseline or gates.baseline
        tolerances = tolerances.merged(
            gates.tolerances, other_has_default=gates.has_default_tolerance
        )
    if tolerance:
        if baseline is None:
            raise ConfigError(
                "--tolerance: applies to the baseline comparison, but no --baseline was given",
                hint="add --baseline base.json, or drop --tolerance",
            )
        tolerances = tolerances.merged(cli_tol, other_has_default=cli_has_default)
    if not requirements and baseline is None:
        raise ConfigError(
            "nothing to check: expected --require, --require-file or --baseline",
            hint="e.g. nrc check --report run.json --require 'nrc1_noise[-1] <= 0.05'",
        )
    return requirements, baseline, tolerances


@o.analysis_options
def check(
    checkpoint: CheckpointOpt = None,
    data: o.OptionalData = None,
    report: Report = None,
    require: Require = None,
    require_file: RequireFile = None,
    baseline: Baseline = None,
    tolerance: Tolerance = None,
    junit: JUnit = None,
    options: AnalysisOptions = o.GENERATED,
    threads: o.Threads = None,
    format: CheckFormat = None,
    output: o.Output = None,
    quiet: o.Quiet = False,
) -> None:
    """Gate CHECKPOINT (analyzed on --data) or a saved --report on requirements and a baseline.

    Exit 0 when every check passes, 1 when any fails, 2 for bad usage or input.
    """
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    fmt = resolve_format(format, output, allowed=CHECK_FORMATS)
    check_output_path(output)
    _check_junit_path(junit)
    if checkpoint is not None and report is not None:
        raise ConfigError(
            f"expected a CHECKPOINT to analyze or --report, found both ('{checkpoint}' and "
            f"--report '{report}')",
            hint="drop one of them",
        )
    if checkpoint is None and report is None:
        raise ConfigError(
            "expected a CHECKPOINT to analyze (with --data) or --report run.json, found neither",
            hint="e.g. nrc check --report run.json --require 'nrc1_noise[-1] <= 0.05'",
        )
    if report is not None and data is not None:
        raise ConfigError(
            f"--data '{data}' is for analyzing a CHECKPOINT, but --report '{report}' already "
            "holds the results",
            hint="drop --data, or give the checkpoint instead of --report",
        )
    if checkpoint is not None and data is None:
        raise ConfigError(
            f"analyzing '{checkpoint}' needs --data, found none",
            hint="add --data data.npz, or gate a saved report with --report run.json",
        )
    requirements, baseline_path, tolerances = gather_gates(
        require, require_file, baseline, tolerance
    )
    read_from = {
        "the checkpoint": checkpoint,
        "--data": data,
        "--report": report,
        "the baseline": baseline_path,
        "--require-file": require_file,
    }
    check_not_input(output, read_from)
    check_not_input(junit, {**read_from, "--output": output}, flag="--junit")
    # Inputs are read before the (possibly long) analysis so a bad one fails fast.
    base = load_report(baseline_path, option="--baseline") if baseline_path else None
    if report is not None:
        results = load_report(report, option="--report")
        # What the analysis said on stderr is said again: the same verdict, the same caveats.
        say_messages(results, quiet=quiet)
    else:
        assert checkpoint is not None and data is not None  # both checked above
        fresh = run_with_progress(checkpoint, data, options, quiet=quiet, threads=threads)
        assert fresh is not None  # only a rank of a process group gets None
        # Through the saved-report schema, so gating a fresh analysis and gating its saved
        # report see the very same values (NaN -> null, schema columns only).
        results = Results.from_dict(fresh.to_dict())
    outcome = run_check(
        results,
        requirements,
        baseline=base,
        baseline_path=baseline_path or "",
        tolerances=tolerances,
    )
    if junit is not None:
        atomic_write(
            junit,
            junit_xml(
                outcome,
                duration=time.monotonic() - started,
                timestamp=stamp,
                hostname=socket.gethostname(),
            ),
        )
    emit(fmt, output, doc=outcome.to_dict, render=lambda: render_check(outcome))
    if not outcome.passed:
        raise CheckFailed(_failed_message(outcome))


def _failed_message(outcome: CheckReport) -> str:
    failed = [c.name for c in outcome.cases() if not c.passed]
    shown = ", ".join(failed[:5]) + (f", and {len(failed) - 5} more" if len(failed) > 5 else "")
    return f"{len(failed)} of {len(outcome.cases())} checks failed: {shown}"


def register(app: typer.Typer) -> None:
    """Add ``nrc check`` to the app."""
    app.command("check")(check)
