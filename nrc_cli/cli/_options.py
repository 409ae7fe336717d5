"""Options declared once and reused by every command, so help text and defaults never drift.

The analysis options are not written out here: :func:`analysis_options` generates them, for
every command that analyzes (``analyze``, ``check``, ``audit``), from the fields of
:class:`nrc_cli.options.AnalysisOptions`, where each option is declared once with its flag,
help text and default.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from nrc_cli.cli._errors import note_debug
from nrc_cli.options import AnalysisOptions

Checkpoint = Annotated[
    str,
    typer.Argument(
        help="Checkpoint: .safetensors, .pt/.pth, a model folder (single or sharded "
        "safetensors), or a *.index.json."
    ),
]
# --data: one option, required by analyze, optional where a command can do without data.
_DATA = typer.Option(
    "--data", "-d", help="Data set: .npz with arrays x and y, or a .toml data spec."
)
Data = Annotated[str, _DATA]
OptionalData = Annotated[str | None, _DATA]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads (default: the cores that other processes leave free, by their CPU "
        "use over the last moment, at least 1; OMP_NUM_THREADS where set).",
    ),
]


def format_option(allowed: Sequence[str], *, default: str) -> Any:
    """The ``--format``/``-f`` option of a command that writes one of ``allowed``.

    Every command's help reads the same way: the formats, then where the default comes from
    (``table, json or csv (default: from --output, else table).``). The command checks the
    value against the same ``allowed`` (with :func:`~nrc_cli.report.writers.resolve_format`,
    or its own check), so the help and the check never drift apart.
    """
    return typer.Option("--format", "-f", help=f"{choices(allowed)} (default: {default}).")


def choices(names: Sequence[str]) -> str:
    """``a, b or c``: names as the help lists them."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


Columns = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Comma-separated per-layer columns of the table or markdown output, e.g. "
        "layer,nrc1_noise,nrc3_alignment (default: all; a narrow window folds the table).",
    ),
]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no notes.")]
# --debug: an option of nrc itself (nrc --debug analyze ...), which every command accepts too
# (nrc analyze ... --debug): the root's callback declares it, _NrcGroup hands it to each
# command. Eager, so it holds before any other option is read; it only sets the flag.
Debug = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="Show tracebacks of internal errors.",
        callback=note_debug,
        is_eager=True,
        expose_value=False,
    ),
]

GENERATED = AnalysisOptions()
"""The default of a command's ``options`` parameter: :func:`analysis_options` replaces it."""

# The command-line type of each kind of option (see nrc_cli.options.CliSpec).
_CLI_TYPES = {"json": str | None, "repeat": list[str] | None, "negated": bool}


def _cli_type(name: str, kind: str) -> Any:
    if kind in _CLI_TYPES:
        return _CLI_TYPES[kind]
    hint = typing.get_type_hints(AnalysisOptions)[name]
    if hint == (int | str | None):  # --memory-budget: a size such as 4GB
        return str | None
    return hint


def analysis_parameters() -> list[inspect.Parameter]:
    """One typer option per field of :class:`AnalysisOptions`, in declaration order."""
    params = []
    for name, spec, default in AnalysisOptions.cli_specs():
        params.append(
            inspect.Parameter(
                spec.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=_single(name),
            )
        )
    return params


def _single(name: str) -> Any:
    """The typer option of one analysis option, for a command that takes only a few of them."""
    for field_name, spec, _ in AnalysisOptions.cli_specs():
        if field_name == name:
            return Annotated[_cli_type(name, spec.kind), typer.Option(spec.flag, help=spec.help)]
    raise KeyError(name)


# What `nrc inspect` shares with the analyzing commands: how the model is built.
Arch = _single("arch")
ArchKwargs = _single("arch_kwargs")
Activation = _single("activation")
Layers = _single("layers")
Exclude = _single("exclude")
StateKey = _single("state_key")


def analysis_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` every analysis option, in place of its ``options`` parameter.

    The command declares ``options: AnalysisOptions`` where the analysis options belong in its
    signature (and so in its ``--help``); typer sees one option per field of
    :class:`AnalysisOptions` there instead, and the command receives them parsed and validated
    as one frozen :class:`AnalysisOptions`.
    """
    signature = inspect.signature(command)
    generated = analysis_parameters()
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if p.name == "options":
            params.extend(generated)
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    hints = typing.get_type_hints(command, include_extras=True)
    params = [p if p.name not in hints else p.replace(annotation=hints[p.name]) for p in params]
    names = [p.name for p in generated]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        cli_values = {name: kwargs.pop(name) for name in names}
        return command(**kwargs, options=AnalysisOptions.from_cli(cli_values))

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=None
    )
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
