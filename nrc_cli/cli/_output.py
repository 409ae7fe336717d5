"""Hand a result to the output layer in the chosen format, to stdout or atomically to a file."""

from __future__ import annotations

import sys

from nrc_cli.cli._console import stdout_console
from nrc_cli.report.writers import atomic_write


def emit(fmt: str, output: str | None, *, text=None, render=None, binary=None) -> None:
    """Write one result.

    Parameters
    ----------
    fmt : str
        The resolved format.
    output : str or None
        Target file; stdout when None.
    text : callable() -> str, optional
        The text form (JSON, CSV).
    render : callable() -> rich renderable, optional
        The table form.
    binary : callable() -> bytes, optional
        The binary form (Parquet).
    """
    if fmt == "parquet":
        # resolve_format refuses Parquet without --output (it never goes to a terminal).
        assert output is not None
        atomic_write(output, binary())
        return
    if fmt == "table":
        if output is None:
            stdout_console().print(render())
            return
        import io

        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=160, no_color=True, highlight=False).print(render())
        atomic_write(output, buf.getvalue())
        return
    content = text()
    if output is None:
        sys.stdout.write(content)
        sys.stdout.flush()
    else:
        atomic_write(output, content)
