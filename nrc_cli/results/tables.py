"""Audit tables: their columns and dtypes, and reading, writing and merging them.

An audit table is a tidy table (a row per (checkpoint, layer), see :mod:`nrc_cli.results`)
with the checkpoint's identity (``checkpoint``, ``checkpoint_size``, ``checkpoint_mtime``) and
each key of the checkpoint's metadata as a ``meta.<key>`` column (numeric strings parsed to
numbers). :func:`read_table` reads any tidy or audit table back with the schema's dtypes;
:func:`merge_tables` combines the tables of shards into the table of one audit. The audit
itself (``nrc_cli.audit``) builds these tables; ``nrc plot`` and the command line read them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from nrc_cli._atomic import atomic_write
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.results import (
    TASKS,
    TIDY_RENAMES,
    cell,
    frame_from_rows,
    plain,
    summary_fields,
    tidy_columns,
)
from nrc_cli.results.formats import csv_text, parquet_bytes

__all__ = [
    "ERROR_COLUMNS",
    "IDENTITY_COLUMNS",
    "META_PREFIX",
    "TABLE_FORMATS",
    "audit_columns",
    "audit_frame",
    "checkpoint_summary",
    "errors_frame",
    "merge_tables",
    "read_table",
    "resolve_column",
    "table_format",
    "write_table",
]

META_PREFIX = "meta."
# Identity of the file a row came from; size and modification time are also the resume key.
IDENTITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("checkpoint", "str"),
    ("checkpoint_size", "int"),
    ("checkpoint_mtime", "str"),
)
ERROR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("checkpoint", "str"),
    ("error_type", "str"),
    ("message", "str"),
    ("hint", "str"),
)
TABLE_FORMATS = ("csv", "parquet")
_INT64_MAX = 2**63 - 1
_INT_RE = re.compile(r"[+-]?\d+")


# ------------------------------------------------------------------------------------------------
# Rows and tables
# ------------------------------------------------------------------------------------------------


def _parse_meta(value):
    """A metadata value as a number when it reads as one: ints as int, floats as float."""
    if not isinstance(value, str):
        return value
    if _INT_RE.fullmatch(value):
        number = int(value)
        # Beyond int64 it is an identifier (a hash, say), not a quantity.
        return number if abs(number) <= _INT64_MAX else value
    if value.strip() != value or "_" in value:
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _meta_series(values: list):
    """One ``meta.*`` column: Int64 when every value is an integer, float64 when every value is
    a number, else the text of every value (the original strings, never a re-printed number)."""
    import pandas as pd

    raw = [plain(v, keep_inf=True) for v in values]
    parsed = [_parse_meta(v) for v in raw]
    present = [v for v in parsed if v is not None]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if present and numeric and all(isinstance(v, int) for v in present):
        return pd.array(parsed, dtype="Int64")
    if present and numeric:
        return pd.array([math.nan if v is None else float(v) for v in parsed], dtype="float64")
    text = [None if v is None else (v if isinstance(v, str) else repr(v)) for v in raw]
    return pd.array(text, dtype="string")


def audit_columns(tasks=("regression",)) -> list[tuple[str, str]]:
    """The fixed columns of an audit table of reports of ``tasks``, in order (``meta.*``
    columns follow, sorted). A table mixing regression and classification reports has the
    columns of both; its ``task`` column tells the rows apart."""
    return [*IDENTITY_COLUMNS, *tidy_columns(tasks)[1:]]


def audit_frame(rows: list[dict]):
    """An audit table from row dicts: fixed columns, then ``meta.*`` columns sorted by name.

    Rows are sorted by ``checkpoint``, then ``index``. ``meta.*`` values may be the raw metadata
    strings or numbers already parsed; each column gets one dtype over all rows (see
    :func:`_meta_series`). Missing keys are null.
    """
    import pandas as pd

    tasks = {r.get("task") or "regression" for r in rows}
    columns = audit_columns(tuple(t for t in TASKS if t in tasks))
    fixed = {n for n, _ in columns}
    rows = sorted(rows, key=lambda r: (str(r.get("checkpoint")), _int_or(r.get("index"))))
    meta_names = sorted({k for r in rows for k in r if k.startswith(META_PREFIX)})
    others = {k for r in rows for k in r if k not in fixed and not k.startswith(META_PREFIX)}
    if others:
        raise DataError(
            f"unexpected column(s) in audit rows: {', '.join(sorted(others))}",
            hint="audit tables hold the tidy columns, the checkpoint identity and meta.* only",
        )
    frame = frame_from_rows([{n: r.get(n) for n in fixed} for r in rows], columns)
    meta = {name: _meta_series([r.get(name) for r in rows]) for name in meta_names}
    if meta:
        frame = pd.concat([frame, pd.DataFrame(meta, index=frame.index)], axis=1)
    return frame.reset_index(drop=True)


def _int_or(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def errors_frame(errors: list[dict]):
    """The errors table: ``checkpoint``, ``error_type``, ``message``, ``hint``, sorted by path."""
    rows = sorted(errors, key=lambda e: str(e.get("checkpoint")))
    return frame_from_rows([{n: e.get(n) for n, _ in ERROR_COLUMNS} for e in rows], ERROR_COLUMNS)


def resolve_column(frame, name: str, *, flag: str = "--x") -> str:
    """The column a user means: ``weight_decay`` is ``meta.weight_decay`` when the checkpoints
    carry that key (metadata wins over a same-named result column: ``seed`` is the training
    seed, not the SVD seed), else the column of that name.

    Raises
    ------
    DataError
        When neither exists; the hint lists the metadata keys.
    """
    columns = [str(c) for c in frame.columns]
    if name.startswith(META_PREFIX) and name in columns:
        return name
    if META_PREFIX + name in columns:
        return META_PREFIX + name
    if name in columns:
        return name
    keys = [c.removeprefix(META_PREFIX) for c in columns if c.startswith(META_PREFIX)]
    raise DataError(
        f"{flag} '{name}': no such column or metadata key in the table",
        hint=(f"metadata keys: {', '.join(keys[:15])}" if keys else "the table has no metadata")
        + "; any result column works too (nrc3_alignment, model_mse, ...)",
    )


def checkpoint_summary(frame):
    """One row per checkpoint of an audit table: identity, summary fields and ``meta.*``."""
    if len(frame) == 0:
        return frame.iloc[:0]
    keep = ["checkpoint"]
    keep += list(dict.fromkeys(TIDY_RENAMES.get(n, n) for t in TASKS for n, _ in summary_fields(t)))
    keep += [c for c in frame.columns if c.startswith(META_PREFIX)]
    keep = [c for c in keep if c in frame.columns]
    out = frame.groupby("checkpoint", sort=True, as_index=False).first()[keep]
    layers = frame.groupby("checkpoint", sort=True)["index"].count().to_numpy()
    out.insert(1, "layers", layers)
    return out


# ------------------------------------------------------------------------------------------------
# Reading, writing, merging tables
# ------------------------------------------------------------------------------------------------


def table_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``csv`` or ``parquet``: ``fmt`` if given, else from the suffix of ``path``."""
    if fmt is None:
        fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in TABLE_FORMATS:
        raise ConfigError(
            f"'{path}': expected a .parquet or .csv table, found suffix '{Path(path).suffix}'",
            hint="name the file *.parquet or *.csv",
        )
    return fmt


def write_table(frame, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write a table atomically as CSV or Parquet (format from the suffix unless given)."""
    fmt = table_format(path, fmt)
    atomic_write(path, parquet_bytes(frame) if fmt == "parquet" else csv_text(frame))


def read_table(path: str | os.PathLike):
    """Read a tidy or audit table (``.parquet`` or ``.csv``) with the schema's dtypes restored.

    Known columns get their schema dtype, ``meta.*`` columns are typed as in an audit, and any
    other column keeps what pandas infers. CSV is read as text first, so that layer names such
    as ``0`` or ``01`` stay text.

    Raises
    ------
    DataError
        A missing, unreadable or unparsable file.
    """
    import pandas as pd

    p = Path(path)
    fmt = table_format(p)
    if not p.is_file():
        raise DataError(f"'{p}': table not found", hint="check the path")
    try:
        if fmt == "parquet":
            raw = pd.read_parquet(p)
        else:
            raw = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise DataError(
            f"'{p}': cannot read as {fmt}: {type(exc).__name__}: {exc}",
            hint="is it a table written by nrc audit / nrc analyze?",
        ) from exc
    kinds = dict(audit_columns(TASKS))
    known = [(c, kinds[c]) for c in raw.columns if c in kinds]
    records = raw.to_dict("records")
    try:
        rows = [{c: cell(r[c], k) for c, k in known} for r in records]
    except (ValueError, KeyError) as exc:
        raise DataError(
            f"'{p}': a cell does not fit the column's type: {exc}",
            hint="is it a table written by nrc audit / nrc analyze?",
        ) from exc
    frame = frame_from_rows(rows, known)
    if not known:  # no column of the schema: keep one row per record all the same
        frame = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    extra = {}
    for c in raw.columns:
        if c in kinds:
            continue
        if c.startswith(META_PREFIX):
            extra[c] = _meta_series(list(raw[c]))
        elif fmt == "csv":
            extra[c] = _infer(raw[c])
        else:
            extra[c] = raw[c].to_numpy()
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1)
    return frame[list(raw.columns)]


def _infer(series):
    import pandas as pd

    try:
        return pd.to_numeric(series)
    except (ValueError, TypeError):
        return series.astype("string")


def merge_tables(paths: Sequence[str | os.PathLike]):
    """Combine audit tables (shards) into one, sorted and typed exactly as a single audit.

    Raises
    ------
    DataError
        An input that is not an audit table, or a checkpoint present in two inputs.
    """
    if not paths:
        raise ConfigError("audit merge: expected at least one input table, found none")
    rows: list[dict] = []
    owner: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    required = [*(c for c, _ in IDENTITY_COLUMNS), "layer", "index"]
    for i, path in enumerate(paths):
        again = next((q for q in paths[:i] if _same_file(q, path)), None)
        if again is not None:
            raise DataError(
                f"'{path}' is given twice (as '{again}' too); merging would duplicate its rows",
                hint="give each shard once",
            )
        frame = read_table(path)
        missing = [c for c in required if c not in frame.columns]
        if missing:
            shown = ", ".join(map(str, frame.columns[:8])) or "none"
            raise DataError(
                f"'{path}': not an audit table: it lacks the column(s) "
                f"{', '.join(repr(c) for c in missing)} (it has: {shown}"
                f"{', ...' if len(frame.columns) > 8 else ''})",
                hint="merge the outputs of nrc audit",
            )
        for name in frame["checkpoint"].dropna().unique():
            if name in owner and owner[name] != str(path):
                raise DataError(
                    f"checkpoint '{name}' is in both '{owner[name]}' and '{path}'",
                    hint="shards of one audit never overlap; leave out one of the two tables",
                )
            owner[name] = str(path)
        for record in frame.to_dict("records"):
            row = {k: plain(v, keep_inf=True) for k, v in record.items()}
            key = (row.get("checkpoint"), row.get("layer"))
            if key in seen:
                twice = "twice in" if seen[key] == str(path) else f"in '{seen[key]}' and in"
                raise DataError(
                    f"checkpoint '{key[0]}', layer '{key[1]}' is {twice} '{path}'; "
                    "merging would duplicate its rows",
                    hint="give each shard once; shards of one audit never overlap",
                )
            seen[key] = str(path)
            rows.append(row)
    try:
        return audit_frame(rows)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"the tables cannot be merged into an audit table: {exc}",
            hint="merge the outputs of nrc audit",
        ) from exc


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
