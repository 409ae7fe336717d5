"""The command line: the only place that imports typer. Commands raise; this maps errors to codes."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from nrc_cli.cli._errors import (
    Abort,
    ClickException,
    Exit,
    report_internal_error,
    report_nrc_error,
    report_usage_error,
)
from nrc_cli.errors import NrcError


class _NrcGroup(TyperGroup):
    """Runs a command and turns whatever it raises into one stderr line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or "nrc",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except NrcError as err:
            sys.exit(report_nrc_error(err))
        except Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(130)
        except ClickException as err:
            sys.exit(report_usage_error(err))
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            sys.exit(130)
        except (Exit, SystemExit):
            raise
        except Exception as exc:
            sys.exit(report_internal_error(exc, args))
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_NrcGroup,
    name="nrc",
    help="Measure Deep Neural Regression Collapse in a checkpoint, layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register() -> None:
    from nrc_cli.cli import analyze, audit, check, compare, inspect, plot

    for command in (analyze, inspect, check, compare, audit, plot):
        command.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
