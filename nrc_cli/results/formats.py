"""Results and tables as bytes: deterministic JSON, CSV and Parquet. Computes nothing and
writes nothing (files are written with :func:`nrc_cli._atomic.atomic_write`)."""

from __future__ import annotations

import io
import json

__all__ = ["csv_text", "json_text", "parquet_bytes"]


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
