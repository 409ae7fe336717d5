"""The committed parts of an audit: what makes it crash safe and resumable.

With an output path, every analyzed checkpoint is committed as one small JSON *part* in a
sidecar folder ``<output>.parts/`` (:func:`parts_dir`), written atomically. A part holds the
checkpoint's report and metadata and its *key*: the checkpoint's size and modification time
(:func:`file_key`) and a fingerprint of the analysis options and the data (:func:`fingerprint`).
A later run with the same output takes a part whose key matches instead of analyzing the
checkpoint again. One audit at a time writes a store: it holds a lock on ``.lock`` in the
folder for as long as it runs (released by the operating system even when the process is
killed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from nrc_cli._atomic import atomic_write
from nrc_cli._version import __version__
from nrc_cli.errors import ConfigError
from nrc_cli.io.spec import read_spec
from nrc_cli.options import AnalysisOptions
from nrc_cli.results import Results
from nrc_cli.results.formats import json_text
from nrc_cli.results.tables import META_PREFIX

__all__ = ["Store", "file_key", "fingerprint", "new_part", "parts_dir", "rows_of"]

_PART_FORMAT = "nrc-audit-part/1"
_LOCK_NAME = ".lock"


def parts_dir(output: str | os.PathLike) -> Path:
    """The sidecar folder that holds the committed parts of ``output``."""
    p = Path(output).expanduser()
    return p.with_name(p.name + ".parts")


def fingerprint(data: str, options: AnalysisOptions) -> str:
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


def file_key(label: str) -> tuple[int, int]:
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


def new_part(label: str, key: dict, report: dict, metadata: dict) -> dict:
    """The part of one analyzed checkpoint: its report and metadata under its key."""
    return {
        "format": _PART_FORMAT,
        "checkpoint": label,
        "key": key,
        "report": report,
        "metadata": metadata,
    }


def rows_of(part: dict) -> list[dict]:
    """The audit rows of one committed part: its tidy rows with the checkpoint's identity and
    ``meta.*`` columns."""
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


def _mtime_text(mtime_ns: int) -> str:
    stamp = datetime.fromtimestamp(mtime_ns // 1_000_000_000, tz=timezone.utc)
    micro = (mtime_ns % 1_000_000_000) // 1000
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{micro:06d}Z"


def _part_name(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8")).hexdigest()[:24] + ".json"


class Store:
    """The committed parts of one output: read at start, one atomic file per checkpoint.

    Parameters
    ----------
    output : path
        The audit table; the parts live in :func:`parts_dir` of it.
    fingerprint : str
        The settings part of every key (see :func:`fingerprint`).
    fresh : bool
        Discard the committed parts.
    lock : bool
        Take the store's lock (another audit holding it is an error). False for a rank of a
        distributed audit, which writes under the lock its rank 0 holds (and leaves the
        clean-up to it).

    Raises
    ------
    ConfigError
        The folder cannot be created, or another audit holds the lock.
    """

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
        self._lock: FileLock | None = _lock(self.folder, output) if lock else None
        if not lock:
            return  # a rank writing under another process's lock: that one cleans up
        for tmp in self.folder.glob(".*.tmp"):  # left by a job killed mid-write
            tmp.unlink(missing_ok=True)
        if fresh:
            for part in self.folder.glob("*.json"):
                part.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock (once the audit is done with the store)."""
        if self._lock is not None:
            self._lock.release()
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


def _lock(folder: Path, output: str | os.PathLike) -> FileLock:
    """Hold an exclusive lock on the store until :meth:`Store.close` (an advisory file lock:
    the operating system releases it when the process ends, even on SIGKILL)."""
    path = folder / _LOCK_NAME
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise ConfigError(
            f"--output '{output}': another nrc audit is writing to it now (lock on '{path}')",
            hint="wait for it to finish, or write to another --output",
        ) from exc
    return lock
