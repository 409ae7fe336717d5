"""The command line: the only place that imports typer. Commands raise; this maps errors to codes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Annotated, Any


def _interrupted_at_start(signum, frame) -> None:
    # Nothing has been read or written yet, so leave at once: a KeyboardInterrupt raised inside
    # an import may be printed as a traceback, or swallowed by a library's bare except.
    os.write(2, b"error: interrupted\n")
    os._exit(130)


def _quiet_start() -> Callable[[int, FrameType | None], Any] | int | None:
    """Ctrl-C while the command line starts up (importing torch takes seconds): exit 130."""
    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler:
            return signal.signal(signal.SIGINT, _interrupted_at_start)
    except ValueError:  # not the main thread: leave signals alone
        pass
    return None


_previous_sigint = _quiet_start()

# How the two thread pools of an analysis wait, set before torch (OpenMP) and scipy (OpenBLAS)
# load, unless the environment says otherwise. The float64 Grams run in scipy's OpenBLAS and
# the forward pass in torch's OpenMP threads, one after the other, batch after batch. By
# default each pool's threads keep spinning on the cores after their work (OpenBLAS for up to
# 2^28 cycles), which on a 2-core machine took the cores the other pool needed: the 512-wide
# MLP benchmark (docs/performance.md) took 19.3 s on two threads, no faster than on one
# (18.7 s); with waiting threads that sleep, 12.5 s. The forward pass alone is as fast either way.
for _name, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_THREAD_TIMEOUT", "4")):
    os.environ.setdefault(_name, _value)

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from nrc_cli._version import __version__  # noqa: E402
from nrc_cli.cli import _options as o  # noqa: E402
from nrc_cli.cli._errors import (  # noqa: E402
    Abort,
    ClickException,
    Exit,
    forget_debug,
    report_internal_error,
    report_interrupt,
    report_nrc_error,
    report_os_error,
    report_recursion_error,
    report_usage_error,
)
from nrc_cli.errors import NrcError  # noqa: E402


class _Interrupted(Exception):
    """Ctrl-C during a command (typer would turn it into a silent exit code 130)."""


class _NrcGroup(TyperGroup):
    """Runs a command and turns whatever it raises into one stderr line and an exit code."""

    # The commands in the order of the help, whether a command or a group of commands.
    order: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The root's --debug (declared once, by _root) is an option of every command too, last
        # of its options as in its help: 'nrc analyze ... --debug' as well as 'nrc --debug ...'.
        debug = [p for p in self.params if p.name == "debug"]
        for command in _commands(self):
            command.params.extend(p for p in debug if p not in command.params)

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.order.index(n) if n in self.order else len(names))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        forget_debug()
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or "nrc",
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except NrcError as err:
            sys.exit(report_nrc_error(err))
        except Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(130)
        except ClickException as err:
            sys.exit(report_usage_error(err))
        except (_Interrupted, KeyboardInterrupt):
            sys.exit(report_interrupt())
        except (Exit, SystemExit):
            raise
        except OSError as exc:
            sys.exit(report_os_error(exc))
        except RecursionError:
            sys.exit(report_recursion_error())
        except Exception as exc:
            sys.exit(report_internal_error(exc))
        sys.exit(rv if isinstance(rv, int) else 0)


def _commands(group: Any) -> list[Any]:
    """The commands below ``group``, those of its groups included (not the groups)."""
    found = []
    for command in group.commands.values():
        found.extend(_commands(command) if hasattr(command, "commands") else [command])
    return found


app = typer.Typer(
    cls=_NrcGroup,
    name="nrc",
    help="Measure Deep Neural Regression Collapse in a checkpoint, layer by layer.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"nrc {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: o.Debug = False,
) -> None:
    """Measure Deep Neural Regression Collapse in a checkpoint, layer by layer."""


def _register() -> None:
    from nrc_cli.cli import analyze, audit, check, compare, inspect, plot

    modules = (analyze, inspect, check, compare, audit, plot)
    for command in modules:
        command.register(app)
    _NrcGroup.order = tuple(m.__name__.rpartition(".")[2] for m in modules)


_register()
if _previous_sigint is not None:
    signal.signal(signal.SIGINT, _previous_sigint)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # between start-up and the command (typer builds the command)
        sys.exit(report_interrupt())
