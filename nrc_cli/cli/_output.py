"""Hand a result to the output layer in the chosen format, to stdout or atomically to a file."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from nrc_cli.cli._console import stdout_console
from nrc_cli.report.writers import (
    atomic_write,
    check_not_input,
    check_output_path,
    csv_text,
    json_text,
    parquet_bytes,
    resolve_format,
)


def output_format(
    fmt: str | None,
    output: str | None,
    *,
    allowed: tuple[str, ...],
    inputs: Mapping[str, str | None],
) -> str:
    """The format of a command's result, checked with ``--output`` before any work is done.

    ``--format`` among ``allowed`` (else from the suffix of ``output``, else ``table``), an
    ``output`` whose folder exists and that names none of ``inputs`` (what each input is ->
    its path, as for :func:`~nrc_cli.report.writers.check_not_input`).
    """
    chosen = resolve_format(fmt, output, allowed=allowed)
    check_output_path(output)
    check_not_input(output, dict(inputs))
    return chosen


def emit(
    fmt: str,
    output: str | None,
    *,
    doc: Callable[[], dict] | None = None,
    frame: Callable[[], Any] | None = None,
    render: Callable[[], Any] | None = None,
    markdown: Callable[[], str] | None = None,
) -> None:
    """Write one result, made in the resolved format ``fmt`` from the form that format needs.

    Parameters
    ----------
    fmt : str
        The resolved format (:func:`output_format`).
    output : str or None
        Target file; stdout when None.
    doc : callable() -> dict, optional
        The JSON document (``json``).
    frame : callable() -> pandas.DataFrame, optional
        The tidy table (``csv``, ``parquet``).
    render : callable() -> rich renderable, optional
        The terminal table (``table``).
    markdown : callable() -> str, optional
        The Markdown text (``markdown``).
    """
    if fmt == "table":
        assert render is not None
        if output is None:
            stdout_console().print(render())
            return
        import io

        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=160, no_color=True, highlight=False).print(render())
        atomic_write(output, buf.getvalue())
        return
    content = _content(fmt, doc=doc, frame=frame, markdown=markdown)
    if isinstance(content, bytes):
        # resolve_format refuses the BINARY_FORMATS without --output (never to a terminal).
        assert output is not None
        atomic_write(output, content)
    elif output is None:
        sys.stdout.write(content)
        sys.stdout.flush()
    else:
        atomic_write(output, content)


def _content(
    fmt: str,
    *,
    doc: Callable[[], dict] | None,
    frame: Callable[[], Any] | None,
    markdown: Callable[[], str] | None,
) -> str | bytes:
    """The text (or bytes) of a result in ``fmt``, from the form the command gave for it."""
    if fmt == "json" and doc is not None:
        return json_text(doc())
    if fmt == "csv" and frame is not None:
        return csv_text(frame())
    if fmt == "parquet" and frame is not None:
        return parquet_bytes(frame())
    if fmt == "markdown" and markdown is not None:
        return markdown()
    raise AssertionError(f"no {fmt} form of this result (the command's formats allow it)")
