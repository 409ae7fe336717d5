"""Results -> JSON, CSV and Parquet bytes, and atomic file writes. Computes nothing."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

from nrc_cli.errors import ConfigError

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
        chosen = _SUFFIX_FORMATS.get(suffix)
        if chosen is None or chosen not in allowed:
            raise ConfigError(
                f"--output '{output}': cannot tell the format from the suffix '{suffix}'",
                hint=f"use a suffix among {', '.join(s for s, f in _SUFFIX_FORMATS.items() if f in allowed)} "
                "or pass --format",
            )
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
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a partial file.
    """
    target = Path(path).expanduser()
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
