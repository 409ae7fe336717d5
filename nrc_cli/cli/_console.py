"""The two consoles: results on stdout, everything else on stderr."""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console


def stdout_console(width: int | None = None) -> Console:
    # Looked up at call time so test runners that swap sys.stdout are honoured. Piped output
    # is not cut to 80 columns: a file has no width.
    width = width or _env_width() or (None if sys.stdout.isatty() else 160)
    return Console(file=sys.stdout, width=width, highlight=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False, width=_env_width())


def _env_width() -> int | None:
    cols = os.environ.get("COLUMNS")
    return int(cols) if cols and cols.isdigit() and int(cols) > 0 else None


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only on an interactive stderr, not under --quiet, not under CI."""
    return not quiet and sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout meanwhile to stderr: stdout carries results only.

    User code (an ``--arch`` module, a model's forward, a library it calls) may print; inside
    this block that goes to stderr, at the Python level and at the file-descriptor level
    (C extensions, and worker processes started meanwhile, inherit it).
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    saved = None
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no usable fd 1 or 2: the Python-level redirect still holds
        if saved is not None:
            os.close(saved)
            saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
