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

Nothing here prints; progress is reported through a callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from nrc_cli._version import __version__
from nrc_cli.errors import CheckpointError, ConfigError, DataError, NrcError
from nrc_cli.io.checkpoint import SUFFIXES, is_model_folder_listing
from nrc_cli.io.files import special_kind
from nrc_cli.io.spec import read_spec
from nrc_cli.options import AnalysisOptions
from nrc_cli.pipeline import resolve_device, run
from nrc_cli.report.writers import atomic_write, csv_text, json_text, parquet_bytes
from nrc_cli.results import (
    TASKS,
    Results,
    cell,
    frame_from_rows,
    plain,
    summary_fields,
    tidy_columns,
)

if TYPE_CHECKING:
    from nrc_cli.distributed import Group

__all__ = [
    "ERROR_COLUMNS",
    "IDENTITY_COLUMNS",
    "META_PREFIX",
    "SHARD_COUNT_VAR",
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
_PART_FORMAT = "nrc-audit-part/1"
_INT64_MAX = 2**63 - 1
_INT_RE = re.compile(r"[+-]?\d+")

# progress(done, total, checkpoint, status): once before the first checkpoint (0, total, "",
# "start"), then after each checkpoint this run analyzes, with status "ok" or "failed";
# ``total`` counts only the checkpoints to analyze (not the skipped).
AuditProgress = Callable[[int, int, str, str], None]


# ------------------------------------------------------------------------------------------------
# Finding checkpoints, sharding
# ------------------------------------------------------------------------------------------------


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_model_folder(folder: Path) -> bool:
    """A Hugging Face style model folder, which ``open_checkpoint`` opens as one checkpoint:
    it holds ``model.safetensors``, ``pytorch_model.bin`` or a ``*.index.json`` of shards."""
    try:
        names = {entry.name for entry in os.scandir(folder) if entry.is_file()}
    except OSError:
        return False
    return is_model_folder_listing(names)


def _walk(folder: Path, skipped: list[str] | None = None) -> list[Path]:
    """Checkpoints under ``folder``, recursively: checkpoint files, and model folders taken
    whole (their shards are one checkpoint). Hidden files and folders are skipped (``.git``,
    ``.ipynb_checkpoints``, temporary files of interrupted writes), and so are special files
    (a FIFO would block the audit forever), each with a line in ``skipped``."""
    found = []
    for root, dirs, files in os.walk(folder):
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if _is_model_folder(Path(root) / d):
                found.append(Path(root) / d)
            else:
                keep.append(d)
        dirs[:] = keep
        for name in files:
            if not name.startswith(".") and name.endswith(SUFFIXES):
                path = Path(root) / name
                kind = special_kind(path)
                if kind is None:
                    found.append(path)
                elif skipped is not None:
                    skipped.append(f"{path.as_posix()}: {kind}, not a checkpoint file")
    return found


def discover(paths: Sequence[str], *, skipped: list[str] | None = None) -> list[str]:
    """Expand files, folders and globs into a sorted list of checkpoint paths.

    Parameters
    ----------
    paths : sequence of str
        Each a checkpoint file (taken whatever its suffix: a wrong one becomes an error row),
        a model folder (Hugging Face style: one checkpoint), a folder (searched recursively for
        ``.safetensors``, ``.pt``, ``.pth`` and ``.bin`` files and model folders) or a glob
        (``**`` allowed; matched folders are treated as folders).
    skipped : list of str, optional
        Receives one line per file found in a folder but left out: a named pipe (FIFO), a
        device or a socket with a checkpoint suffix.

    Returns
    -------
    list of str
        Paths as given (joined with what was found below a folder, ``/``-separated), sorted,
        each file once even when reached twice (through two arguments or a symlink).

    Raises
    ------
    ConfigError
        When an argument names nothing: a missing path, a glob without matches, or a folder
        holding no checkpoint file.
    """
    if not paths:
        raise ConfigError("expected at least one checkpoint, folder or glob, found none")
    found: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if p.exists():
            targets = [p]
        elif _is_glob(arg):
            targets = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            if not targets:
                raise ConfigError(
                    f"'{arg}': the glob matches no file or folder",
                    hint="quote globs for nrc to expand them ('zoo/**/*.safetensors'), "
                    "and check the pattern",
                )
        else:
            raise ConfigError(
                f"'{arg}': expected a checkpoint file, a folder or a glob, found nothing there",
                hint="check the path",
            )
        for target in targets:
            if target.is_dir() and _is_model_folder(target):
                found.append(target)
            elif target.is_dir():
                inside = _walk(target, skipped)
                if not inside and not _is_glob(arg):
                    raise ConfigError(
                        f"'{arg}': the folder holds no checkpoint file "
                        f"({', '.join(SUFFIXES)}), searched recursively",
                        hint="point at the folder that holds the checkpoints",
                    )
                found.extend(inside)
            elif target.exists():
                found.append(target)
    if not found:
        raise ConfigError(
            f"no checkpoint file found in {', '.join(repr(a) for a in paths)}",
            hint=f"checkpoints are files ending in {', '.join(SUFFIXES)}",
        )
    labels = sorted({p.as_posix() for p in found})
    seen: set[str] = set()
    out = []
    for label in labels:
        real = os.path.realpath(label)
        if real not in seen:
            seen.add(real)
            out.append(label)
    return out


def parse_shard(
    text: str | None, environ: Mapping[str, str] | None = None
) -> tuple[int, int] | None:
    """Parse ``--shard I/N`` (1 <= I <= N) into ``(I, N)``; None stays None.

    ``auto`` and ``auto/N`` take the shard from the array job this process runs in (see
    :func:`array_shard`, which reads ``environ``, by default the process environment).
    """
    if text is None:
        return None
    auto = re.fullmatch(r"\s*auto\s*(?:/\s*(\d+)\s*)?", text)
    if auto is not None:
        count = int(auto.group(1)) if auto.group(1) is not None else None
        return array_shard(os.environ if environ is None else environ, count=count)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ConfigError(
            f"--shard: expected I/N with integers 1 <= I <= N (e.g. 2/8), auto or auto/N, "
            f"found '{text}'",
        )
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"--shard: expected I/N with 1 <= I <= N, found I={index}, N={count}",
            hint="shards are numbered from 1: --shard 1/4 ... --shard 4/4",
        )
    return index, count


# The environment variable that gives the number of shards of a Kubernetes Indexed Job (which
# tells each pod its index, JOB_COMPLETION_INDEX, but not the job's completions).
SHARD_COUNT_VAR = "NRC_SHARD_COUNT"
_ARRAY_HINT = (
    "run inside a Slurm array job (sbatch --array=0-7) or a Kubernetes Indexed Job "
    f"(JOB_COMPLETION_INDEX, with {SHARD_COUNT_VAR} or --shard auto/N), or give --shard I/N"
)


def array_shard(environ: Mapping[str, str], *, count: int | None = None) -> tuple[int, int]:
    """The ``(I, N)`` shard of this task of a cluster array job, from its environment.

    * Slurm array (``sbatch --array=A-B[:S]``): I = (SLURM_ARRAY_TASK_ID −
      SLURM_ARRAY_TASK_MIN) / S + 1 (S = SLURM_ARRAY_TASK_STEP, default 1) and
      N = SLURM_ARRAY_TASK_COUNT, so ``--array=1-8`` and ``--array=0-7`` both give 1/8 … 8/8.
    * Kubernetes Indexed Job: I = JOB_COMPLETION_INDEX + 1, N from ``count`` (``--shard
      auto/N``) or else the environment variable ``NRC_SHARD_COUNT``.

    ``count``, when given, must agree with what the environment says.

    Raises
    ------
    ConfigError
        Neither kind of array job is found, or its variables do not describe a shard.
    """

    def number(name: str) -> int:
        text = environ.get(name, "")
        if not re.fullmatch(r"\s*\d+\s*", text):
            raise ConfigError(
                f"--shard auto: expected a whole number >= 0 in {name}, found '{text}'",
                hint=_ARRAY_HINT,
            )
        return int(text)

    if environ.get("SLURM_ARRAY_TASK_ID"):
        task, low, total = (
            number("SLURM_ARRAY_TASK_ID"),
            number("SLURM_ARRAY_TASK_MIN"),
            number("SLURM_ARRAY_TASK_COUNT"),
        )
        step = number("SLURM_ARRAY_TASK_STEP") if environ.get("SLURM_ARRAY_TASK_STEP") else 1
        index, rest = divmod(task - low, max(step, 1))
        if rest or not 0 <= index < total:
            raise ConfigError(
                f"--shard auto: Slurm array task {task} is not one of {total} evenly spaced "
                f"tasks from {low} (step {step})",
                hint="use a plain range such as --array=0-7 (a limit like %4 is fine), "
                "or give --shard I/N yourself",
            )
        source = "Slurm array"
    elif environ.get("JOB_COMPLETION_INDEX"):
        index = number("JOB_COMPLETION_INDEX")
        if count is None:
            if not environ.get(SHARD_COUNT_VAR):
                raise ConfigError(
                    "--shard auto: a Kubernetes Indexed Job gives this pod's index "
                    f"(JOB_COMPLETION_INDEX={index}) but not the number of shards",
                    hint=f"pass --shard auto/N or set {SHARD_COUNT_VAR} to the job's completions",
                )
            total = number(SHARD_COUNT_VAR)
        else:
            total = count
        if not 0 <= index < total:
            raise ConfigError(
                f"--shard auto: JOB_COMPLETION_INDEX={index} is not below the number of "
                f"shards, {total}",
                hint=f"set {SHARD_COUNT_VAR} (or N of --shard auto/N) to the job's completions",
            )
        source = "Kubernetes Indexed Job"
    else:
        raise ConfigError(
            "--shard auto: this process is not a task of an array job (neither "
            "SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set)",
            hint=_ARRAY_HINT,
        )
    if count is not None and count != total:
        raise ConfigError(
            f"--shard auto/{count}: the {source} has {total} task(s), not {count}",
            hint="pass --shard auto and let the array job give the count",
        )
    if total < 1:
        raise ConfigError(f"--shard auto: the {source} has {total} tasks", hint=_ARRAY_HINT)
    return index + 1, total


def select_shard(items: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The deterministic ``I/N`` slice of the sorted list: items whose position ``% N == I - 1``.

    Striding (rather than cutting into blocks) spreads a sweep's settings evenly over shards.
    """
    if shard is None:
        return list(items)
    index, count = shard
    return [item for i, item in enumerate(sorted(items)) if i % count == index - 1]


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


def _mtime_text(mtime_ns: int) -> str:
    stamp = datetime.fromtimestamp(mtime_ns // 1_000_000_000, tz=timezone.utc)
    micro = (mtime_ns % 1_000_000_000) // 1000
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{micro:06d}Z"


def _rows_of(part: dict) -> list[dict]:
    """The audit rows of one committed part."""
    results = Results.from_dict(part["report"])
    key = part["key"]
    meta = {f"{META_PREFIX}{k}": v for k, v in sorted(part.get("metadata", {}).items())}
    rows = []
    for row in results.tidy_rows():
        row["checkpoint"] = part["checkpoint"]
        row["checkpoint_size"] = key["size"]
        row["checkpoint_mtime"] = _mtime_text(key["mtime_ns"])
        row.update(meta)
        rows.append(row)
    return rows


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
    from nrc_cli.results import TIDY_RENAMES

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


# ------------------------------------------------------------------------------------------------
# Running the audit
# ------------------------------------------------------------------------------------------------


@dataclass
class AuditResult:
    """The outcome of :func:`run_audit`.

    Attributes
    ----------
    frame : pandas.DataFrame
        The audit table (every checkpoint of the selection that has been analyzed, this run or
        an earlier one).
    errors : pandas.DataFrame
        One row per checkpoint that failed in this run (see :data:`ERROR_COLUMNS`).
    checkpoints : list of str
        The selection (after sharding), sorted.
    analyzed, skipped, failed : int
        Checkpoints analyzed now, found already done (resumed), and failed.
    """

    frame: object
    errors: object
    checkpoints: list[str]
    analyzed: int
    skipped: int
    failed: int

    @property
    def total(self) -> int:
        return len(self.checkpoints)


def parts_dir(output: str | os.PathLike) -> Path:
    """The sidecar folder that holds the committed parts of ``output``."""
    p = Path(output).expanduser()
    return p.with_name(p.name + ".parts")


def _fingerprint(data: str, options: AnalysisOptions) -> str:
    """Hash of everything besides the checkpoint that changes the numbers: the options, the
    size and modification time of the data file (for a TOML data spec: of the spec and of
    every file it reads) and the version."""
    fields = dataclasses.asdict(options)
    fields["data"] = data
    stat = os.stat(data)
    fields["data_file"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if Path(data).suffix.lower() == ".toml":
        fields["spec_files"] = {
            str(f): {"size": (st := os.stat(f)).st_size, "mtime_ns": st.st_mtime_ns}
            for f in read_spec(data).files
        }
    fields["nrc_version"] = __version__
    text = json.dumps(fields, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _part_name(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8")).hexdigest()[:24] + ".json"


def _analyze_one(job: tuple[str, str, AnalysisOptions]) -> dict:
    """Analyze one (checkpoint, data, options); any failure comes back as data instead of an
    exception."""
    try:
        results = run(*job)
    except NrcError as err:
        return {"ok": False, **_error_fields(err)}
    except Exception as exc:  # a bug or an exotic model: record it, keep auditing
        return {
            "ok": False,
            "error_type": type(exc).__name__,
            "message": f"internal error: {type(exc).__name__}: {exc}",
            "hint": "this may be a bug in nrc; run nrc analyze on this checkpoint with "
            "NRC_DEBUG=1 for the traceback",
        }
    assert results is not None  # one process (no group): always a result
    return {"ok": True, "report": results.to_dict(), "metadata": dict(results.metadata)}


def _init_worker(threads: int, parent: int) -> None:
    """Worker set-up: one torch thread each (N workers share the cores), and exit when the
    parent is gone, so a killed audit never leaves orphans computing for nobody."""
    import signal

    import torch

    # Ctrl-C reaches the whole process group: the parent stops the workers itself, and a
    # worker must not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="nrc-parent-watch", daemon=True).start()


class _Store:
    """The committed parts of one output: read at start, one atomic file per checkpoint."""

    def __init__(
        self, output: str | os.PathLike, fingerprint: str, *, fresh: bool, lock: bool = True
    ) -> None:
        self.folder = parts_dir(output)
        self.fingerprint = fingerprint
        try:
            self.folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--output '{output}': cannot create the progress folder '{self.folder}': "
                f"{exc.strerror or exc}",
                hint="write the output to a folder you can write to",
            ) from exc
        self._lock = _lock(self.folder, output) if lock else None
        if not lock:
            return  # a rank writing under another process's lock: that one cleans up
        for tmp in self.folder.glob(".*.tmp"):  # left by a job killed mid-write
            tmp.unlink(missing_ok=True)
        if fresh:
            for part in self.folder.glob("*.json"):
                part.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def load(self, label: str, key: dict) -> dict | None:
        """The committed part of ``label`` when its key matches ``key``, else None."""
        path = self.folder / _part_name(label)
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if part.get("format") != _PART_FORMAT or part.get("checkpoint") != label:
            return None
        return part if part.get("key") == key else None

    def commit(self, part: dict) -> None:
        atomic_write(self.folder / _part_name(part["checkpoint"]), json_text(part))

    def drop(self, label: str) -> None:
        (self.folder / _part_name(label)).unlink(missing_ok=True)


def _lock(folder: Path, output) -> TextIO | None:
    """Hold an exclusive lock on the store for this process's life (released even on SIGKILL)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer per output is on the user
        return None
    handle = (folder / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise ConfigError(
            f"--output '{output}': another nrc audit is writing to it now "
            f"(lock on '{folder / '.lock'}')",
            hint="wait for it to finish, or write to another --output",
        ) from exc
    return handle


def _check_once(data: str, config: AnalysisOptions) -> None:
    """Refuse, before any checkpoint runs, what would make every checkpoint fail the same way."""
    from nrc_cli.io import data as data_io
    from nrc_cli.model.build import load_factory

    resolve_device(config.device)
    if config.arch is not None:
        load_factory(config.arch)
    # Opened as the pipeline opens it: an .npz, or a .toml data spec where io/data.py reads
    # those; keyword inputs change which arrays must exist.
    opener = getattr(data_io, "open_dataset", None)
    if opener is not None:
        opener(data, x_key=config.x_key, y_key=config.y_key, inputs=config.inputs).close()
    else:
        data_io.NpzDataset(data, x_key=config.x_key, y_key=config.y_key).close()


def run_audit(
    checkpoints: Sequence[str],
    data: str,
    options: AnalysisOptions,
    *,
    output: str | os.PathLike | None = None,
    fmt: str | None = None,
    jobs: int = 1,
    threads: int | None = None,
    fresh: bool = False,
    flush_every: float = 5.0,
    progress: AuditProgress | None = None,
    group: Group | None = None,
) -> AuditResult:
    """Analyze every checkpoint on ``data`` with ``options``; failures become error rows.

    Parameters
    ----------
    checkpoints : sequence of str
        Checkpoint paths (see :func:`discover` and :func:`select_shard`).
    data : str
        The data set every checkpoint is analyzed on.
    options : AnalysisOptions
        Options for every analysis.
    output : path, optional
        The audit table (``.parquet`` or ``.csv``). Its parts folder makes the audit resumable;
        without it everything stays in memory.
    fmt : str, optional
        ``csv`` or ``parquet``; from the suffix of ``output`` by default.
    jobs : int
        Worker processes (``spawn``ed); 1 runs in this process.
    threads : int, optional
        torch threads per worker (default 1 with several workers, torch's default with one).
    fresh : bool
        Discard committed parts and start over.
    flush_every : float
        Seconds between rewrites of ``output`` while the audit runs (0: after each checkpoint);
        it is always rewritten at the end.
    progress : callable(done, total, checkpoint, status), optional
    group : nrc_cli.distributed.Group, optional
        Under torchrun: this rank audits the ``RANK+1/WORLD_SIZE`` shard of ``checkpoints``
        (one checkpoint at a time, in lockstep with the other ranks, so that an error on one
        rank ends them all), committing parts to the shared ``OUTPUT.parts/``; rank 0 then
        writes the one table of every rank's rows and returns the whole result, the other
        ranks return their own. ``jobs`` must be 1 (the ranks are the workers).

    Returns
    -------
    AuditResult
    """
    if group is not None:
        return _run_ranked(
            checkpoints,
            data,
            options,
            group,
            output=output,
            fmt=fmt,
            jobs=jobs,
            threads=threads,
            fresh=fresh,
            progress=progress,
        )
    if jobs < 1:
        raise ConfigError(f"--jobs: expected an integer >= 1, found {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: expected an integer >= 1, found {threads}")
    if output is not None:
        fmt = table_format(output, fmt)
    labels = sorted(dict.fromkeys(str(c) for c in checkpoints))
    _check_once(data, options)
    fingerprint = _fingerprint(data, options)
    store = _Store(output, fingerprint, fresh=fresh) if output is not None else None
    try:
        result, _ = _audit(
            labels, (data, options), store, output, fmt, jobs, threads, flush_every, progress
        )
        return result
    finally:
        if store is not None:
            store.close()


def _run_ranked(checkpoints, data, options, group, *, output, fmt, jobs, threads, fresh, progress):
    """One rank's part of a distributed audit (see :func:`run_audit`)."""
    from nrc_cli.distributed import rank_device

    store = None
    try:
        try:
            if jobs != 1:
                raise ConfigError(
                    f"--jobs {jobs}: under torchrun the ranks are the workers",
                    hint="drop --jobs and start more ranks: torchrun --nproc-per-node N",
                )
            if threads is not None and threads < 1:
                raise ConfigError(f"--threads: expected an integer >= 1, found {threads}")
            if output is not None:
                fmt = table_format(output, fmt)
            every = sorted(dict.fromkeys(str(c) for c in checkpoints))
            labels = select_shard(every, (group.rank + 1, group.world_size))
            _check_once(data, options)
            fingerprint = _fingerprint(data, options)
            # Rank 0 takes the output's lock (another audit writing there is an error for
            # all); the other ranks commit their parts under it, after rank 0 has it.
            if output is not None and group.rank == 0:
                store = _Store(output, fingerprint, fresh=fresh)
        except Exception as exc:
            group.check(exc)
            raise
        group.check()
        try:
            if output is not None and group.rank != 0:
                store = _Store(output, fingerprint, fresh=False, lock=False)
        except Exception as exc:
            group.check(exc)
            raise
        group.check()
        # Each rank on its own device; the parts' key (the fingerprint) keeps the option as
        # given, so that a rerun on another number of ranks resumes them.
        mine = dataclasses.replace(options, device=rank_device(options.device, group.launch))
        result, rows = _audit(
            labels, (data, mine), store, None, fmt, 1, threads, 0.0, progress, group=group
        )
    finally:
        if store is not None:
            store.close()
    everyone = group.gather(
        {
            "rows": rows,
            "errors": result.errors.to_dict("records"),
            "counts": (result.analyzed, result.skipped, result.failed),
        }
    )
    group.finish()
    if everyone is None:
        return result
    rows = [r for part in everyone for r in part["rows"]]
    errors = sorted((e for part in everyone for e in part["errors"]), key=lambda e: e["checkpoint"])
    frame = audit_frame(rows)
    if output is not None:
        write_table(frame, output, fmt)
    analyzed, skipped, failed = (sum(part["counts"][i] for part in everyone) for i in range(3))
    return AuditResult(
        frame=frame,
        errors=errors_frame(errors),
        checkpoints=every,
        analyzed=analyzed,
        skipped=skipped,
        failed=failed,
    )


def _audit(labels, settings, store, output, fmt, jobs, threads, flush_every, progress, group=None):
    done: dict[str, list[dict]] = {}
    errors: dict[str, dict] = {}
    todo: list[tuple[str, dict]] = []
    for label in labels:
        try:
            size, mtime_ns = _file_key(label)
        except OSError as exc:
            err = CheckpointError(f"{label}: cannot read: {exc}")
            errors[label] = {"checkpoint": label, **_error_fields(err)}
            continue
        key = {"size": size, "mtime_ns": mtime_ns, "settings": store.fingerprint if store else ""}
        part = store.load(label, key) if store is not None else None
        if part is not None:
            done[label] = _rows_of(part)
        else:
            todo.append((label, key))
    skipped = len(done)
    analyzed = 0
    last_flush = time.monotonic()

    def write() -> None:
        if output is not None:
            write_table(audit_frame([r for rows in done.values() for r in rows]), output, fmt)

    def finish(label: str, key: dict, outcome: dict, count: int) -> None:
        nonlocal analyzed, last_flush
        if outcome["ok"]:
            part = {
                "format": _PART_FORMAT,
                "checkpoint": label,
                "key": key,
                "report": outcome["report"],
                "metadata": outcome["metadata"],
            }
            if store is not None:
                store.commit(part)
            done[label] = _rows_of(part)
            analyzed += 1
        else:
            if store is not None:
                store.drop(label)  # an older part of a file that has changed since
            fields = ("error_type", "message", "hint")
            errors[label] = {"checkpoint": label, **{k: outcome.get(k) for k in fields}}
        if output is not None and time.monotonic() - last_flush >= flush_every:
            write()
            last_flush = time.monotonic()
        if progress is not None:
            progress(count, len(todo), label, "ok" if outcome["ok"] else "failed")

    configs = [(label, key, (label, *settings)) for label, key in todo]
    if progress is not None:
        progress(0, len(todo), "", "start")
    if group is not None:
        # Lockstep: every rank meets the others after each checkpoint (see Group.each).
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        count = iter(range(1, len(configs) + 1))
        group.each(
            configs,
            group.agree(len(configs)),
            lambda item: finish(item[0], item[1], _analyze_one(item[2]), next(count)),
        )
    elif jobs == 1 or len(configs) <= 1:
        _run_here(configs, threads, finish)
    else:
        _run_pool(configs, min(jobs, len(configs)), threads or 1, finish)
    write()
    frame = audit_frame([r for rows in done.values() for r in rows])
    result = AuditResult(
        frame=frame,
        errors=errors_frame(list(errors.values())),
        checkpoints=list(labels),
        analyzed=analyzed,
        skipped=skipped,
        failed=len(errors),
    )
    return result, [r for rows in done.values() for r in rows]


def _file_key(label: str) -> tuple[int, int]:
    """Size and modification time (ns) of a checkpoint; for a model folder, the total size and
    the latest modification time of the files in it, so that replacing a shard is noticed."""
    stat = os.stat(label)
    if not os.path.isdir(label):
        return stat.st_size, stat.st_mtime_ns
    size, mtime = 0, stat.st_mtime_ns
    for entry in os.scandir(label):
        if entry.is_file() and not entry.name.startswith("."):
            st = entry.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def _error_fields(err: NrcError) -> dict:
    return {"error_type": type(err).__name__, "message": err.message, "hint": err.hint}


def _run_here(configs, threads, finish) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    for count, (label, key, cfg) in enumerate(configs, start=1):
        finish(label, key, _analyze_one(cfg), count)


def _run_pool(configs, jobs: int, threads: int, finish) -> None:
    """Run in ``jobs`` spawned workers with at most ``jobs`` checkpoints in flight.

    Keeping the pipeline shallow bounds the damage when a worker dies (out of memory, a
    segfault in an extension): only the checkpoints in flight are recorded as failed, the pool
    is restarted and the audit goes on.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # fork after torch has started its thread pools can deadlock; spawn starts clean.
    context = multiprocessing.get_context("spawn")
    queue = list(configs)
    count = 0
    while queue:
        executor = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        )
        in_flight: dict = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < jobs:
                    label, key, cfg = queue.pop(0)
                    in_flight[executor.submit(_analyze_one, cfg)] = (label, key)
                ready, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                broken = False
                for future in sorted(ready, key=lambda f: in_flight[f][0]):
                    label, key = in_flight.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        broken = True
                        outcome = _died()
                    count += 1
                    finish(label, key, outcome, count)
                if broken:
                    for label, key in sorted(in_flight.values()):
                        count += 1
                        finish(label, key, _died(), count)
                    in_flight.clear()
                    break
        except BaseException:
            _terminate(executor)
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _died() -> dict:
    return {
        "ok": False,
        "error_type": "WorkerDied",
        "message": "the worker process analyzing this checkpoint died (out of memory, or "
        "killed); checkpoints in flight with it are recorded too",
        "hint": "rerun the same command: failed checkpoints are retried; or use fewer --jobs",
    }


def _terminate(executor) -> None:
    """Stop the workers now (on SIGTERM or Ctrl-C), not after their current checkpoint."""
    stop = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()
