"""``nrc audit``: a command group. ``nrc audit run PATH...``: many checkpoints, one table;
``nrc audit merge OUT IN...``: the tables of shards, combined. ``run`` is the default command:
``nrc audit PATH...`` is ``nrc audit run PATH...``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from nrc_cli.cli import _options as o
from nrc_cli.cli._console import (
    progress_enabled,
    stdout_to_stderr,
)
from nrc_cli.cli._errors import ClickException
from nrc_cli.cli._output import emit
from nrc_cli.cli._progress import SafeProgress
from nrc_cli.cli.analyze import print_precision_hint
from nrc_cli.errors import CheckFailed, ConfigError, printable
from nrc_cli.options import AnalysisOptions
from nrc_cli.report.writers import check_not_input, check_output_path, resolve_format
from nrc_cli.results import plain
from nrc_cli.results.tables import (
    META_PREFIX,
    TABLE_FORMATS,
    checkpoint_summary,
    merge_tables,
    table_format,
    write_table,
)

if TYPE_CHECKING:
    from nrc_cli.distributed import Group

_RUN, _MERGE = "run", "merge"
_HELP = f"""Analyze many checkpoints into one table ({_RUN}), or combine the tables of shards
({_MERGE}).

'nrc audit PATH... [OPTIONS]' means 'nrc audit {_RUN} PATH... [OPTIONS]': {_RUN} is the default
command. A checkpoint or folder named {_RUN} or {_MERGE} is taken for the command; name the
command first, or the path with ./ (nrc audit {_RUN} ./{_MERGE}).
"""


class _AuditGroup(TyperGroup):
    """A group with a default command: arguments that do not start with the name of a
    command (or with --help) are those of ``run``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        explicit = bool(args) and (args[0] in self.commands or args[0] in ctx.help_option_names)
        # Completing 'nrc audit <TAB>' offers the commands; running 'nrc audit' alone is a run
        # without paths, refused as one.
        if not explicit and (args or not ctx.resilient_parsing):
            args = [_RUN, *args]
        return super().parse_args(ctx, args)


class _MergeCommand(TyperCommand):
    """``merge``, which names an option of ``run`` given to it as such."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return ["[OPTIONS]", "OUT", "IN..."]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given_args = list(args)  # the parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except ClickException:
            given = _run_only_options(ctx, given_args, own={p.name for p in self.params})
            if given:
                raise ConfigError(
                    f"nrc audit merge: option(s) {', '.join(given)} apply to an audit, not to "
                    "a merge",
                    hint="nrc audit merge OUT.parquet SHARD1.parquet SHARD2.parquet ...",
                ) from None
            raise


def _run_only_options(ctx: Any, args: list[str], own: set[str | None]) -> list[str]:
    """The options of ``run`` that ``merge`` lacks among ``args``, as --long names, in the
    order of run's signature."""
    run = ctx.parent.command.get_command(ctx.parent, _RUN) if ctx.parent is not None else None
    if run is None:
        return []
    tokens = args[: args.index("--")] if "--" in args else args
    flags = {t.split("=", 1)[0] for t in tokens if t.startswith("--")}
    flags |= {t[:2] for t in tokens if t.startswith("-") and not t.startswith("--")}
    return [
        f"--{param.name.replace('_', '-')}"
        for param in run.params
        if param.name not in own
        and flags & {*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())}
    ]


# Options of this command only (the shared ones live in _options.py).
Paths = Annotated[
    list[str],
    typer.Argument(
        help="Checkpoints, folders (searched recursively) or quoted globs.",
        metavar="PATH",
        show_default=False,
    ),
]
# The formats of an audit: a table file (csv, parquet), or the summary table on stdout.
AUDIT_FORMATS = ("table", *TABLE_FORMATS)
AuditFormat = Annotated[
    str | None, o.format_option(AUDIT_FORMATS, default="from --output, else table")
]
Errors = Annotated[
    str | None,
    typer.Option("--errors", help="Write failed checkpoints (path, error type, message) here."),
]
Jobs = Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="I/N: audit only the I-th of N deterministic slices. auto: the slice of this task "
        "of a Slurm array or Kubernetes Indexed Job (count from --shard auto/N or "
        "NRC_SHARD_COUNT there).",
    ),
]
FailOnError = Annotated[
    bool,
    typer.Option("--fail-on-error", help="Exit with code 1 when any checkpoint failed."),
]
Fresh = Annotated[
    bool,
    typer.Option("--fresh", help="Ignore earlier progress in OUTPUT.parts/ and start over."),
]

MergePaths = Annotated[
    list[str] | None,
    typer.Argument(
        help="The merged table to write, then the tables to merge (.parquet or .csv).",
        metavar="OUT IN...",
        show_default=False,
    ),
]
MergeFormat = Annotated[
    str | None, o.format_option(TABLE_FORMATS, default="from the suffix of OUT")
]
# Accepted only to say that OUT is the first argument.
MergeOutput = Annotated[str | None, typer.Option("--output", "-o", hidden=True)]

_MAX_LISTED = 20
_MAX_META = 3  # metadata columns shown in the terminal table


@o.analysis_options
def run(
    paths: Paths,
    data: o.OptionalData = None,
    output: o.Output = None,
    format: AuditFormat = None,
    errors: Errors = None,
    jobs: Jobs = 1,
    shard: Shard = None,
    fail_on_error: FailOnError = False,
    fresh: Fresh = False,
    options: AnalysisOptions = o.GENERATED,
    threads: o.Threads = None,
    quiet: o.Quiet = False,
) -> None:
    """Analyze many checkpoints on DATA into one tidy table: a row per (checkpoint, layer),
    with every metadata key as a meta.* column.

    Resumable: rerunning the same command analyzes only what is not in OUTPUT yet (progress is
    kept in OUTPUT.parts/). Failed checkpoints go to --errors and the audit goes on.
    'nrc audit merge OUT IN...' combines the outputs of --shard runs. 'nrc audit PATH...' is
    the same command.
    """
    from nrc_cli import distributed

    given = _AuditArgs(
        paths=paths,
        data=data,
        output=output,
        format=format,
        errors=errors,
        jobs=jobs,
        shard=shard,
        fail_on_error=fail_on_error,
        fresh=fresh,
        options=options,
        threads=threads,
        quiet=quiet,
    )
    launch = distributed.launch_from_env()
    if launch is None:
        _audit(given, None)
        return
    # Under torchrun: every rank joins first, so that whatever fails on one rank (an option,
    # a file) ends all of them with one error line, from rank 0.
    with distributed.process_group(launch, "cpu") as group:
        try:
            _audit(given, group)
        except Exception as exc:
            group.check(exc)
            raise


@dataclass(frozen=True)
class _AuditArgs:
    """What ``nrc audit run`` was given, as :func:`run` parsed it."""

    paths: list[str]
    data: str | None
    output: str | None
    format: str | None
    errors: str | None
    jobs: int
    shard: str | None
    fail_on_error: bool
    fresh: bool
    options: AnalysisOptions
    threads: int | None
    quiet: bool


def _audit(given: _AuditArgs, group: Group | None) -> None:
    """The audit itself; ``group``: this rank's, under torchrun."""
    from nrc_cli import audit as lib

    data, output, errors, quiet = given.data, given.output, given.errors, given.quiet
    lead = group is None or group.rank == 0  # the process that reports
    if data is None:
        raise ConfigError(
            "nrc audit: expected --data DATA.npz (the data set every checkpoint is run on)",
            hint="nrc audit zoo/ --data data.npz --output audit.parquet",
        )
    # A table file (csv, parquet) with --output; the summary table or csv on stdout.
    allowed = AUDIT_FORMATS if output is None else TABLE_FORMATS
    fmt = resolve_format(given.format, output, allowed=allowed)
    check_output_path(output)
    check_output_path(errors)
    if errors is not None:
        table_format(errors)
    check_not_input(errors, {"--output": output, "--data": data}, flag="--errors")
    check_not_input(output, {"--data": data}, flag="--output")
    if not quiet and lead:
        print_precision_hint(given.options)
    skipped: list[str] = []
    found = lib.discover(given.paths, skipped=skipped)
    for line in skipped if lead else ():
        sys.stderr.write(f"warning: skipped {printable(line)}\n")
    for label in found:
        check_not_input(output, {f"the checkpoint '{label}'": label}, flag="--output")
        check_not_input(errors, {f"the checkpoint '{label}'": label}, flag="--errors")
    chosen = lib.parse_shard(given.shard)
    selection = lib.select_shard(found, chosen)
    shown = len(selection)
    if group is not None:
        shown = len(lib.select_shard(selection, (1, group.world_size)))
    with (
        _sigterm_exits(),
        _progress(quiet or not lead, shown) as progress,
        stdout_to_stderr(),
    ):
        result = lib.run_audit(
            selection,
            data,
            given.options,
            output=output,
            fmt=fmt if output is not None else None,
            jobs=given.jobs,
            threads=given.threads,
            fresh=given.fresh,
            progress=progress,
            group=group,
        )
    if not lead:
        return
    if errors is not None:
        write_table(result.errors, errors)
    if output is None:
        # csv: the audit table itself; table: one line per checkpoint.
        frame = result.frame
        emit(
            fmt, None, frame=lambda: frame, render=lambda: _summary_table(checkpoint_summary(frame))
        )
    shard_label = f"{chosen[0]}/{chosen[1]}" if chosen else None
    ranks = group.world_size if group is not None else None
    _report(result, output=output, errors=errors, shard=shard_label, ranks=ranks, quiet=quiet)
    if given.fail_on_error and result.failed:
        raise CheckFailed(
            f"{result.failed} of {result.total} checkpoint(s) failed",
            hint=f"see {errors}" if errors else "list them with --errors errors.csv",
        )


def merge(
    paths: MergePaths = None,
    format: MergeFormat = None,
    output: MergeOutput = None,
    quiet: o.Quiet = False,
) -> None:
    """Combine audit tables (the outputs of --shard runs) into OUT: exactly the table of one
    audit of every checkpoint. A checkpoint in two inputs, or a table given twice, is
    refused."""
    args = paths or []
    if output is not None:
        raise ConfigError(
            "nrc audit merge: the output is the first argument, found --output too",
            hint="nrc audit merge OUT.parquet IN1.parquet IN2.parquet ...",
        )
    if len(args) < 2:
        raise ConfigError(
            f"nrc audit merge: expected OUT and at least one IN table, found {len(args)} path(s)",
            hint="nrc audit merge OUT.parquet IN1.parquet IN2.parquet ...",
        )
    out, inputs = args[0], args[1:]
    fmt = table_format(out, format)
    check_output_path(out)
    check_not_input(out, {f"the input '{path}'": path for path in inputs}, flag="OUT")
    frame = merge_tables(inputs)
    write_table(frame, out, fmt)
    if not quiet:
        n = frame["checkpoint"].nunique() if len(frame) else 0
        sys.stderr.write(
            f"merged {len(inputs)} table(s): {n} checkpoint(s), {len(frame)} row(s) -> {out}\n"
        )


class _Terminated(SystemExit):
    """SIGTERM: unlike a sys.exit() in user code, never taken for an error of that code."""


@contextlib.contextmanager
def _sigterm_exits():
    """Turn SIGTERM (a batch scheduler's 'stop') into a normal exit, so that temporary files
    are removed and worker processes are stopped; committed checkpoints stay committed."""

    def stop(signum, frame):
        raise _Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _progress(quiet: bool, total: int):
    """A progress bar over checkpoints (with ETA) on an interactive stderr, else nothing."""
    if not progress_enabled(quiet) or total == 0:
        yield None
        return
    from rich.markup import escape
    from rich.progress import TextColumn

    with SafeProgress("audit", "checkpoints", extra=(TextColumn("{task.description}"),)) as bar:

        def update(done: int, todo: int, checkpoint: str, status: str) -> None:
            # Skipped checkpoints are not work: the bar (and its ETA) counts what is left to do.
            bar.update(completed=done, total=todo, description=escape(checkpoint))

        yield update


def _summary_table(summary):
    """One line per checkpoint: the metadata that varies, where it collapses, its MSE and the
    last-layer NRC. Paths are shown below their common folder, named in the title."""
    from rich.markup import escape
    from rich.table import Table

    from nrc_cli.report.table import fmt

    labels = [str(c) for c in summary["checkpoint"]]
    common = os.path.commonpath(labels) if len(labels) > 1 else os.path.dirname(labels[0])
    if not common or not all(label.startswith(common + "/") for label in labels):
        common = ""
    shown = [label[len(common) + 1 :] if common else label for label in labels]
    # The settings of a sweep: metadata that varies but repeats (a per-run number such as
    # train_mse is left to the table files).
    varying = [
        c
        for c in summary.columns
        if str(c).startswith(META_PREFIX)
        and 1 < summary[c].nunique(dropna=False) < max(len(summary), 3)
        and summary[c].astype("string").str.len().max() <= 16
    ][:_MAX_META]
    summary = summary.assign(
        _collapse=[
            None if _missing(i) else f"{int(i)} ({name})"
            for i, name in zip(
                summary["first_collapsed_index"], summary["first_collapsed_layer"], strict=True
            )
        ]
    )
    columns = [(c, c.removeprefix(META_PREFIX)) for c in varying]
    columns += [
        ("layers", "layers"),
        ("_collapse", "collapsed from"),
        ("model_mse", "model_mse"),
        ("nrc1_last", "nrc1_last"),
        ("nrc3_last", "nrc3_last"),
    ]
    title = "Deep NRC audit" + (f" of {common}/" if common else "")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("checkpoint", no_wrap=True)
    for name, header in columns:
        left = name == "_collapse"
        table.add_column(header, justify="left" if left else "right", no_wrap=left)
    for label, record in zip(shown, summary.to_dict("records"), strict=True):
        cells = [escape(label)]
        for name, _ in columns:
            cells.append(escape(fmt(plain(record.get(name), keep_inf=True))))
        table.add_row(*cells)
    return table


def _missing(value) -> bool:
    return plain(value, keep_inf=True) is None


def _report(
    result, *, output: str | None, errors: str | None, shard, quiet: bool, ranks: int | None = None
) -> None:
    """The closing lines on stderr: each failure (unless --quiet), then the counts."""
    err = sys.stderr
    if not quiet:
        for record in result.errors.to_dict("records")[:_MAX_LISTED]:
            line = f"failed: {record['checkpoint']}: {record['error_type']}: {record['message']}"
            err.write(f"warning: {printable(line)}\n")
        if result.failed > _MAX_LISTED:
            err.write(f"warning: ... and {result.failed - _MAX_LISTED} more failed\n")
    where = f" -> {output}" if output else ""
    scope = f" (shard {shard})" if shard else ""
    if ranks:
        scope += f" ({ranks} ranks)"
    line = (
        f"audit{scope}: {result.total} checkpoint(s): {result.analyzed} analyzed, "
        f"{result.skipped} skipped (already done), {result.failed} failed; "
        f"{len(result.frame)} row(s){where}"
    )
    if errors is not None:
        line += f"; errors -> {errors}"
    err.write(line + "\n")
    err.flush()


def register(app: typer.Typer) -> None:
    """Add the ``nrc audit`` group (``run``, the default, and ``merge``) to the app."""
    group = typer.Typer(
        name="audit",
        cls=_AuditGroup,
        help=_HELP,
        subcommand_metavar=f"[{_RUN}|{_MERGE}] ARGS...",
        rich_markup_mode=None,
    )
    group.command(_RUN)(run)
    group.command(_MERGE, cls=_MergeCommand)(merge)
    app.add_typer(group, name="audit")
