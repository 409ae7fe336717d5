"""Output formats and paths: which format, whether a path may be written; and, re-exported
from where they live, the serialisation (JSON, CSV, Parquet) and the atomic write. Computes
nothing."""

from __future__ import annotations

import os
from pathlib import Path

from nrc_cli._atomic import atomic_write, writes_through
from nrc_cli.errors import ConfigError
from nrc_cli.results.formats import csv_text, json_text, parquet_bytes

__all__ = [
    "ANALYZE_FORMATS",
    "BINARY_FORMATS",
    "FORMATS",
    "atomic_write",
    "check_not_input",
    "check_output_path",
    "csv_text",
    "json_text",
    "parquet_bytes",
    "resolve_format",
]

FORMATS = ("table", "json", "csv", "parquet")
# nrc analyze also writes a Markdown table, for a pull request or a notebook.
ANALYZE_FORMATS = ("table", "markdown", "json", "csv", "parquet")
# Formats whose bytes never go to a terminal (only to --output), by the name messages give them.
BINARY_FORMATS = {"parquet": "Parquet"}
# The format an --output suffix means, when --format is not given.
_SUFFIX_FORMATS = {
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "table",
    ".md": "markdown",
}


def resolve_format(fmt: str | None, output: str | None, *, allowed=FORMATS) -> str:
    """The output format: ``--format`` if given, else the ``--output`` suffix, else ``table``."""
    if fmt is not None:
        if fmt not in allowed:
            raise ConfigError(
                f"--format: expected one of {', '.join(allowed)}, found '{fmt}'",
            )
        chosen = fmt
    elif output is not None:
        suffix = Path(output).suffix.lower()
        by_suffix = _SUFFIX_FORMATS.get(suffix)
        if by_suffix is None or by_suffix not in allowed:
            raise ConfigError(
                f"--output '{output}': cannot tell the format from the suffix '{suffix}'",
                hint=f"use a suffix among {', '.join(s for s, f in _SUFFIX_FORMATS.items() if f in allowed)} "
                "or pass --format",
            )
        chosen = by_suffix
    else:
        chosen = "table"
    if chosen in BINARY_FORMATS and output is None:
        raise ConfigError(
            f"--format {chosen} needs --output PATH: {BINARY_FORMATS[chosen]} is binary and "
            "never goes to a terminal",
        )
    return chosen


def check_output_path(output: str | None) -> None:
    """Refuse an output path whose folder does not exist, before any work is done."""
    if output is None:
        return
    parent = Path(output).expanduser().resolve().parent
    if not parent.is_dir():
        raise ConfigError(
            f"--output '{output}': the folder '{parent}' does not exist",
            hint="create it first, or write somewhere else",
        )
    if Path(output).is_dir():
        raise ConfigError(f"--output '{output}': is a folder, expected a file path")


def check_not_input(output: str | None, inputs: dict, *, flag: str = "--output") -> None:
    """Refuse an output path that names one of the run's inputs, before any work is done.

    Parameters
    ----------
    output : str or None
        The output path (nothing to check when None).
    inputs : dict of str to str or None
        What each input is (``"the checkpoint"``, ``"--data"``...) -> its path (None: absent).
    flag : str
        The option the output came from, for the message.

    Raises
    ------
    ConfigError
        ``output`` is the same file as an input (after following links, or by device and
        inode), or as a file that a TOML data spec among the inputs reads.
    """
    if output is None or writes_through(Path(output).expanduser()):
        return
    inputs = dict(inputs)  # with the files each data spec among them reads
    for what, path in list(inputs.items()):
        for read in spec_files(path):
            inputs[f"the file '{read}' read by {what}"] = read
    for what, path in inputs.items():
        if path is not None and _same_file(output, path):
            raise ConfigError(
                f"{flag} '{output}' is {what} of this run; writing it would destroy that input",
                hint=f"give {flag} another path",
            )


def spec_files(path: str | os.PathLike | None) -> tuple[Path, ...]:
    """The data files that ``path`` reads when it is a TOML data spec; none otherwise (and
    for a spec that cannot be read: the run says why, later)."""
    if path is None or Path(path).suffix.lower() != ".toml" or not Path(path).is_file():
        return ()
    from nrc_cli.errors import NrcError
    from nrc_cli.io.spec import read_spec

    try:
        return read_spec(path).files
    except (NrcError, OSError):
        return ()


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return os.path.realpath(a) == os.path.realpath(b)
