"""Collapse over training: one ``Results`` per evaluation, one tidy table of them all.

A :class:`History` collects ``(step, epoch, Results)`` and writes the table ``nrc audit``
writes, one row per (evaluation, layer), the evaluation's ``epoch`` and ``step`` as ``meta.*``
columns, so that ``nrc plot history.parquet --x epoch --metric nrc1_noise`` draws the
training curves of every layer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from nrc_cli.errors import ConfigError
from nrc_cli.results import Results
from nrc_cli.results.tables import META_PREFIX, audit_frame, table_format, write_table

__all__ = ["Entry", "History"]


@dataclass(frozen=True)
class Entry:
    """One evaluation: the global ``step``, the ``epoch`` and the report."""

    step: int
    epoch: float | int | None
    results: Results


class History:
    """Reports over training, in the order they were measured.

    Examples
    --------
    >>> history = History()
    >>> history.add(results, step=100, epoch=1)  # doctest: +SKIP
    >>> history.write("history.parquet")  # doctest: +SKIP
    """

    def __init__(self, name: str = "run") -> None:
        self.name = name
        self.entries: list[Entry] = []

    def add(self, results: Results, *, step: int, epoch: float | int | None = None) -> None:
        """Record one evaluation's report."""
        self.entries.append(Entry(int(step), epoch, results))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def scalars(self, prefix: str = "nrc/") -> list[dict[str, float]]:
        """:meth:`Results.scalars` of each evaluation, with its ``step`` and ``epoch``."""
        out = []
        for e in self.entries:
            row = {"step": float(e.step), **e.results.scalars(prefix)}
            if e.epoch is not None:
                row["epoch"] = float(e.epoch)
            out.append(row)
        return out

    def to_frame(self):
        """The tidy table: one row per (evaluation, layer), as ``nrc audit`` writes it.

        ``checkpoint`` names the evaluation (``run@step=100``), ``meta.step`` and
        ``meta.epoch`` say when it was made.
        """
        if not self.entries:
            raise ConfigError("History.to_frame(): no evaluation recorded yet")
        rows = []
        for e in self.entries:
            label = f"{self.name}@step={e.step:09d}"
            for row in e.results.tidy_rows():
                row = {**row, "checkpoint": label}
                row[f"{META_PREFIX}step"] = e.step
                if e.epoch is not None:
                    row[f"{META_PREFIX}epoch"] = e.epoch
                rows.append(row)
        return audit_frame(rows)

    def write(self, path: str | os.PathLike) -> None:
        """Write the tidy table atomically, as Parquet or CSV by the suffix."""
        table_format(path)  # a bad suffix is refused before the table is built
        write_table(self.to_frame(), path)
