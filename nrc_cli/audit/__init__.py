"""Audit a zoo of checkpoints: one tidy table for all of them, resumable, parallel, sharded.

``run_audit`` analyzes every checkpoint of a list with the same options and returns one tidy
table: a row per (checkpoint, layer) with the per-layer columns, the summary fields, the
checkpoint's identity (``checkpoint``, ``checkpoint_size``, ``checkpoint_mtime``) and each key of
the checkpoint's metadata as a ``meta.<key>`` column (numeric strings parsed to numbers). A
checkpoint that cannot be analyzed becomes a row of a separate errors table; the audit goes on.

Crash safety and resuming. With an output path, every analyzed checkpoint is committed as one
small JSON *part* in a sidecar folder ``<output>.parts/``, written atomically; the output table
is rebuilt from the parts (atomically) from time to time and at the end. A job killed at any
moment therefore leaves only complete parts, and the next run with the same output analyzes
only the checkpoints without a part whose key matches: the key is the checkpoint path as
given, its size, its modification time and a fingerprint of the analysis options and data file.
The table is a function of the set of parts alone, sorted by checkpoint path and layer index,
so a resumed run, ``jobs=2`` and merged shards give exactly the table of one uninterrupted run.

The modules: ``discover`` (checkpoints from files, folders and globs; shards), ``store`` (the
committed parts and their lock), ``runner`` (the run itself: in this process, in worker
processes or on the ranks of a distributed run). The tables themselves (columns, dtypes,
reading, writing, merging) belong to the results layer, :mod:`nrc_cli.results.tables`; they
are re-exported here. Nothing here prints; progress is reported through a callback.
"""

from __future__ import annotations

from nrc_cli.audit.discover import (
    SHARD_COUNT_VAR,
    array_shard,
    discover,
    parse_shard,
    select_shard,
)
from nrc_cli.audit.runner import AuditProgress, AuditResult, run_audit
from nrc_cli.audit.store import parts_dir
from nrc_cli.results.tables import (
    ERROR_COLUMNS,
    IDENTITY_COLUMNS,
    META_PREFIX,
    TABLE_FORMATS,
    audit_columns,
    audit_frame,
    checkpoint_summary,
    errors_frame,
    merge_tables,
    read_table,
    resolve_column,
    table_format,
    write_table,
)

__all__ = [
    "ERROR_COLUMNS",
    "IDENTITY_COLUMNS",
    "META_PREFIX",
    "SHARD_COUNT_VAR",
    "TABLE_FORMATS",
    "AuditProgress",
    "AuditResult",
    "array_shard",
    "audit_columns",
    "audit_frame",
    "checkpoint_summary",
    "discover",
    "errors_frame",
    "merge_tables",
    "parse_shard",
    "parts_dir",
    "read_table",
    "resolve_column",
    "run_audit",
    "select_shard",
    "table_format",
    "write_table",
]
