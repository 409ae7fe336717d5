"""Results -> JSON, CSV and Parquet bytes, and atomic file writes. Computes nothing."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from pathlib import Path

from nrc_cli.errors import ConfigError, WriteError, os_error_hint, os_error_reason

FORMATS = ("table", "json", "csv", "parquet")
_SUFFIX_FORMATS = {".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "table"}


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
    if chosen == "parquet" and output is None:
        raise ConfigError(
            "--format parquet needs --output PATH: Parquet is binary and never goes to a terminal",
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
        ``output`` is the same file as an input (after following links).
    """
    if output is None or _writes_through(Path(output).expanduser()):
        return
    for what, path in inputs.items():
        if path is not None and _same_file(output, path):
            raise ConfigError(
                f"{flag} '{output}' is {what} of this run; writing it would destroy that input",
                hint=f"give {flag} another path",
            )


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return os.path.realpath(a) == os.path.realpath(b)


def json_text(doc: dict) -> str:
    """Deterministic JSON: fixed key order, NaN/inf already nulled, trailing newline."""
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def csv_text(frame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def parquet_bytes(frame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def atomic_write(path: str | os.PathLike, content: str | bytes) -> None:
    """Write ``content`` to ``path`` so that a crash or a full disk never leaves a partial file.

    * A regular file, or a path that does not exist yet: write a temporary file in the same
      folder, fsync, then rename it over the path. A symbolic link is followed and its target
      replaced; the link itself stays a link.
    * Anything else (a character device such as ``/dev/null``, a pipe, a terminal) and every
      path under ``/dev/`` or ``/proc/`` (``/dev/stdout``, ``/dev/fd/N``): written through,
      never replaced, so ``-o /dev/null`` cannot swap the system's device for a file.

    Raises
    ------
    WriteError
        The file cannot be written (no space left, read-only file system, no permission); the
        previous file is intact and no temporary file is left.
    """
    target = Path(path).expanduser()
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        if _writes_through(target):
            with open(target, "wb") as f:
                f.write(data)
            return
        real = Path(os.path.realpath(target))
        if real.is_dir():
            raise ConfigError(f"--output '{path}': is a folder, expected a file path")
        _replace(real, data)
    except OSError as exc:
        raise WriteError(
            f"cannot write '{path}': {os_error_reason(exc)}",
            hint=os_error_hint(exc) or "write somewhere else",
        ) from exc


def _writes_through(target: Path) -> bool:
    """Whether ``target`` is written in place: a special file, or a path under /dev or /proc."""
    absolute = os.path.abspath(target)
    if absolute.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(target).st_mode  # follows symbolic links
    except FileNotFoundError:
        return False  # a new file (or a dangling link): created by the rename
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _replace(target: Path, data: bytes) -> None:
    """Temporary file in the target's folder, fsync, rename over the target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); give it the mode a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
