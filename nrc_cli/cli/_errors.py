"""The one place where errors become exit codes and one-line messages (CLI.md, "Exit codes")."""

from __future__ import annotations

import os
import sys
import traceback

from typer import Abort, Exit

from nrc_cli.errors import NrcError

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer uses click itself
    from click.exceptions import ClickException

__all__ = ["Abort", "ClickException", "Exit"]


def debug_enabled(args=None) -> bool:
    """``--debug`` among the command's arguments, or NRC_DEBUG set to anything but 0."""
    args = sys.argv if args is None else args
    return os.environ.get("NRC_DEBUG", "") not in ("", "0") or "--debug" in args


def _say(line: str) -> None:
    sys.stderr.write(line.rstrip("\n") + "\n")


def report_nrc_error(err: NrcError) -> int:
    """Print ``error: …`` (and ``hint: …``) for an NrcError; return its exit code."""
    _say(f"error: {err.message}")
    if err.hint:
        _say(f"hint: {err.hint}")
    return err.exit_code


def report_usage_error(err: ClickException) -> int:
    msg = err.format_message().replace("\n", " ")
    _say(f"error: {msg}")
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        _say(f"hint: run '{ctx.command_path} --help' for the options")
    return 2


def report_internal_error(exc: BaseException, args=None) -> int:
    """A bug: one short message; the traceback only with --debug or NRC_DEBUG=1."""
    _say(f"error: internal error: {type(exc).__name__}: {exc}")
    if debug_enabled(args):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    else:
        _say("hint: this is a bug in nrc; rerun with NRC_DEBUG=1 for the traceback and report it")
    return 3
