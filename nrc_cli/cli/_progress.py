"""Progress bars on stderr that can never break a run.

A progress bar is decoration: whatever goes wrong while it renders (a column that cannot
format a value, a terminal that goes away, a Rich version that behaves otherwise), the
analysis it decorates must end as it would have without it. So every column here is guarded,
and a bar whose update or rendering fails switches itself off and says nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nrc_cli.cli._console import stderr_console

__all__ = ["CountColumn", "SafeProgress", "count_text"]


def count_text(completed: float, total: float | None, unit: str) -> str:
    """``1,024/4,000 samples``; ``1,024 samples`` while the total is unknown (None or 0)."""
    done = f"{int(completed):,}"
    if not total:
        return f"{done} {unit}"
    return f"{done}/{int(total):,} {unit}"


class CountColumn(ProgressColumn):
    """Items done out of the total, or items done alone while the total is unknown."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(count_text(task.completed, task.total, self.unit))


class _Guarded(ProgressColumn):
    """A column whose failure renders as nothing instead of raising into the run."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def __call__(self, task: Task) -> Any:
        try:
            return self.inner(task)
        except Exception:
            return Text("")

    def render(self, task: Task) -> Any:  # pragma: no cover - __call__ is what Rich calls
        return self(task)


class SafeProgress:
    """A transient bar on stderr: ``with SafeProgress("data pass", "samples") as bar:``.

    ``bar.update(completed=..., total=...)`` moves it (a total of 0 or None means unknown: the
    bar pulses and the count shows items done). Any exception raised by Rich while the bar
    starts, updates, renders or stops turns the bar off; exceptions of the body pass through.
    """

    def __init__(self, label: str, unit: str, *, extra: tuple[ProgressColumn, ...] = ()) -> None:
        self.label = label
        self.unit = unit
        self.extra = extra
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> SafeProgress:
        columns = (
            TextColumn(self.label),
            BarColumn(),
            CountColumn(self.unit),
            TimeRemainingColumn(),
            *self.extra,
        )
        try:
            bar = Progress(
                *(_Guarded(c) for c in columns), console=stderr_console(), transient=True
            )
            self._task = bar.add_task("", total=None)
            self._bar = bar
            bar.start()
        except Exception:
            self._off()
        except BaseException:  # Ctrl-C as the bar starts: no bar may outlive this block
            self._off()
            raise
        return self

    def update(self, *, completed: int, total: int | None = None, **fields: Any) -> None:
        if self._bar is None:
            return
        try:
            self._bar.update(self._task, completed=completed, total=total or None, **fields)
        except Exception:
            self._off()

    def _off(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            with contextlib.suppress(Exception):
                bar.stop()

    def __exit__(self, *exc: object) -> None:
        self._off()


@contextlib.contextmanager
def maybe_progress(
    enabled: bool, label: str, unit: str, **kw: Any
) -> Iterator[SafeProgress | None]:
    """A :class:`SafeProgress` when ``enabled``, else None."""
    if not enabled:
        yield None
        return
    with SafeProgress(label, unit, **kw) as bar:
        yield bar
