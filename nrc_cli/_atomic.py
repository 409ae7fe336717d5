"""Atomic file writes: a crash or a full disk never leaves a partial file.

A helper of every layer that writes a file (the results tables, the audit's parts, the report
writers, figures); it knows nothing of what it writes.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from nrc_cli.errors import ConfigError, WriteError, os_error_hint, os_error_reason

__all__ = ["atomic_write", "writes_through"]


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
        if writes_through(target):
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


def writes_through(target: Path) -> bool:
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
