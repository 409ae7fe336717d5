"""The one place where errors become exit codes and one-line messages (docs/analyzing.md, "Exit codes")."""

from __future__ import annotations

import os
import sys
import traceback

from typer import Abort, Exit

from nrc_cli.errors import NrcError, os_error_hint, os_error_line, printable

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer uses click itself
    from click.exceptions import ClickException  # type: ignore[assignment]  # same class, other home

__all__ = ["Abort", "ClickException", "Exit"]


# --debug as parsed (note_debug, the option's callback); forgotten by each run of the command line.
_debug = False


def note_debug(given: bool) -> None:
    """The callback of ``--debug``: remember it when given. Every command has the option (see
    :data:`nrc_cli.cli._options.Debug`), so its callback also runs, with False, for a command
    that was not given it, which must not undo ``nrc --debug COMMAND``."""
    global _debug
    if given:
        _debug = True


def forget_debug() -> None:
    """Start a run of the command line without ``--debug`` (in-process runs follow each other)."""
    global _debug
    _debug = False


def debug_enabled() -> bool:
    """``--debug`` given (before the command or among its options), or NRC_DEBUG set to
    anything but 0."""
    return _debug or os.environ.get("NRC_DEBUG", "") not in ("", "0")


def _say(line: str) -> None:
    """Write one line to stderr: a name in it that holds a newline or another control
    character is escaped (:func:`~nrc_cli.errors.printable`), so it cannot split the line."""
    sys.stderr.write(printable(line.rstrip("\n")) + "\n")


def report_nrc_error(err: NrcError) -> int:
    """Print ``error: …`` (and ``hint: …``) for an NrcError; return its exit code.

    An error of a distributed run is printed once, by rank 0; the other ranks only exit with
    its code (``reported_elsewhere``).
    """
    if getattr(err, "reported_elsewhere", False):
        return err.exit_code
    # An option error names the flag here, the Python parameter elsewhere.
    _say(f"error: {getattr(err, 'cli_message', err.message)}")
    if err.hint:
        # A hint may span lines on purpose (an expression and a caret under it).
        for i, line in enumerate(err.hint.split("\n")):
            _say(f"hint: {line}" if i == 0 else line)
    return err.exit_code


def report_usage_error(err: ClickException) -> int:
    msg = err.format_message().replace("\n", " ")
    _say(f"error: {msg}")
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        _say(f"hint: run '{ctx.command_path} --help' for the options")
    return 2


def report_os_error(exc: OSError) -> int:
    """A file the OS would not read or write (missing, no permission, disk full): exit 2."""
    _say(os_error_line(exc))
    hint = os_error_hint(exc)
    if hint:
        _say(f"hint: {hint}")
    return 2


def report_recursion_error() -> int:
    """Input nested so deeply (JSON, TOML) that parsing it exhausted the stack: exit 2."""
    _say("error: the input is nested too deeply to read (maximum recursion depth exceeded)")
    _say("hint: check the JSON/TOML files and options given; real files nest a few levels")
    return 2


def report_interrupt() -> int:
    """Ctrl-C: one line, exit 130 (128 + SIGINT), never a traceback."""
    _say("error: interrupted")
    return 130


def report_internal_error(exc: BaseException) -> int:
    """A bug: one short message; the traceback only with --debug or NRC_DEBUG=1."""
    _say(f"error: internal error: {type(exc).__name__}: {exc}".replace("\n", " "))
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    else:
        _say("hint: this is a bug in nrc; rerun with NRC_DEBUG=1 for the traceback and report it")
    return 3
