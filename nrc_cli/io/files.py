"""What kind of file a path names, checked before it is opened; the TOML reader.

Opening a named pipe (FIFO) for reading blocks until some other process writes to it, and a
device such as ``/dev/zero`` never ends: ``nrc`` reads only regular files and says so.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from nrc_cli.errors import ConfigError, NrcError

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder; else None.

    Symbolic links are followed.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing or unreadable: the caller reports that its own way
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def require_regular(
    path: str | os.PathLike, where: str, error: type[NrcError], *, expected: str = "a file"
) -> None:
    """Raise ``error`` when ``path`` is a special file (FIFO, device, socket), before reading it.

    Parameters
    ----------
    path : path
        The file about to be opened.
    where : str
        How the message names it.
    error : type of NrcError
        The error to raise (CheckpointError, DataError...).
    expected : str
        What the file should have been, for the message.
    """
    kind = special_kind(path)
    if kind is not None:
        raise error(
            f"{where}: expected {expected}, found {kind}; nrc reads regular files only",
            hint="copy the data into a regular file first",
        )


def toml_module(where: str) -> Any:
    """The TOML reader: ``tomllib`` (Python 3.11+), else the ``tomli`` package it came from.

    ``where`` names the file to be read, for the message when neither is there.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]  # the same API under another name
        except ModuleNotFoundError:
            raise ConfigError(
                f"{where}: reading TOML needs Python 3.11 or later, or the tomli package",
                hint="pip install tomli",
            ) from None
    return tomllib
