"""The two consoles: results on stdout, everything else on stderr."""

from __future__ import annotations

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
