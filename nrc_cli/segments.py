"""Rows of parts that belong to samples: atoms, edges, points, set elements.

Most weight layers see one row per sample. In a graph network the message-passing layers see
one row per node (atom), some one per edge (bond), the readout one per graph (structure); in a
set or point-cloud model, one row per element. To measure such a layer per sample, its rows
are pooled to one vector per sample, in float64, exactly as token means are
(docs/graphs.md):

* a :class:`Segments` says which sample each row belongs to (an owner index, like PyTorch
  Geometric's ``batch`` vector, or a count of rows per sample) and how its rows are reduced
  (``mean`` or ``sum``);
* :func:`declared` turns what ``update(..., segments=)`` was given (a ``Segments``, an owner
  tensor, several of them, a mapping from layer globs to them, or a PyTorch Geometric
  ``Batch``) into a :class:`Declared`;
* :meth:`Declared.resolve` decides, for one layer's row count in one batch, whether its rows
  are samples or parts, and of which kind, and says so loudly when the choice is ambiguous
  or impossible.

The rows of a layer are decided per batch from their count; the kind found is recorded per
layer (``rows`` in the report) and must stay the same from batch to batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nrc_cli._glob import glob_match
from nrc_cli.errors import ConfigError, DataError

__all__ = ["REDUCTIONS", "Declared", "Segments", "declared", "segment_pool"]

REDUCTIONS = ("mean", "sum")
_F64 = torch.float64
_SEGMENTS_HINT = (
    "if they are the samples, give update() the targets of this forward pass; if they are "
    "parts of samples, declare which sample owns each row: update(y, output, segments=owner) "
    "(an owner index per row, like PyTorch Geometric's batch.batch), segments=Segments("
    "counts=rows_per_sample), or segments=graph_batch for a PyTorch Geometric Batch "
    "(docs/graphs.md)"
)


@dataclass(frozen=True, eq=False)
class Segments:
    """Which sample each row of a layer's input belongs to, and how rows are pooled.

    Give exactly one of ``index`` and ``counts``.

    Parameters
    ----------
    index : Tensor, shape (rows,), integer
        The sample (0 ≤ index < b) that owns each row, in any order (PyTorch Geometric's
        ``batch`` vector for node rows; ``batch[edge_index[0]]`` for edge rows).
    counts : Tensor, shape (b,), integer ≥ 0
        The number of rows of each sample, the rows of sample 0 first, then sample 1's, ...
    reduce : {"mean", "sum"}
        How a sample's rows become its feature vector (float64, exact either way).
    kind : str
        A name for these rows, recorded per layer in the report (``node``, ``edge``,
        ``point``, ...); default ``part``.

    Examples
    --------
    >>> import torch
    >>> from nrc_cli.segments import Segments
    >>> s = Segments(counts=torch.tensor([2, 1]))
    >>> s.owner(2).tolist(), s.rows
    ([0, 0, 1], 3)
    """

    index: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    reduce: str = "mean"
    kind: str = "part"
    _owner: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if (self.index is None) == (self.counts is None):
            raise ConfigError("Segments: give exactly one of index= and counts=")
        if self.reduce not in REDUCTIONS:
            raise ConfigError(
                f"Segments: reduce expected one of {', '.join(REDUCTIONS)}, found {self.reduce!r}"
            )
        given = self.index if self.index is not None else self.counts
        what = "index" if self.index is not None else "counts"
        if not isinstance(given, torch.Tensor):
            raise ConfigError(
                f"Segments: {what} expected a 1-D integer tensor, found {type(given).__name__}"
            )
        if given.ndim != 1 or given.dtype.is_floating_point or given.dtype.is_complex:
            raise ConfigError(
                f"Segments: {what} expected a 1-D integer tensor, found shape "
                f"{list(given.shape)} of {str(given.dtype).removeprefix('torch.')}"
            )
        if given.dtype == torch.bool:
            raise ConfigError(f"Segments: {what} expected integers, found booleans")
        if given.numel() and int(given.min()) < 0:
            raise ConfigError(f"Segments: {what} holds a negative value ({int(given.min())})")
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError("Segments: kind expected a non-empty name")

    @property
    def rows(self) -> int:
        """The number of rows these segments describe."""
        if self.index is not None:
            return int(self.index.numel())
        assert self.counts is not None
        return int(self.counts.sum())

    def owner(self, b: int) -> torch.Tensor:
        """The owning sample of each row (int64), checked against ``b`` samples."""
        if self.index is not None:
            owner = self.index.to(torch.int64)
            if owner.numel() and int(owner.max()) >= b:
                raise DataError(
                    f"segments: a row belongs to sample {int(owner.max())}, but the batch has "
                    f"{b} samples (owners run from 0 to {b - 1})"
                )
            return owner
        assert self.counts is not None
        if self.counts.numel() != b:
            raise DataError(
                f"segments: counts has {self.counts.numel()} entries, but the batch has {b} "
                "samples (one count per sample)"
            )
        if not self._owner:
            counts = self.counts.to(torch.int64)
            self._owner.append(torch.repeat_interleave(torch.arange(b), counts.cpu()))
        return self._owner[0]


def segment_pool(
    z: torch.Tensor, owner: torch.Tensor, b: int, reduce: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the rows of ``z`` (rows, p) into ``b`` samples: float64 (b, p) and rows per sample.

    Each row is widened to float64 before it is added, so a mean of rows has float64's
    rounding only, as token means do. Samples with no row get zeros; the caller decides.
    """
    owner = owner.to(device=z.device)
    out = torch.zeros(b, z.shape[1], dtype=_F64, device=z.device)
    out.index_add_(0, owner, z.to(_F64))
    counts = torch.bincount(owner, minlength=b)
    if reduce == "mean":
        out /= counts.clamp_min(1).to(_F64).unsqueeze(1)
    return out, counts


@dataclass
class Resolved:
    """How one layer's rows are read in one batch."""

    kind: str  # "sample", "graph", or the segments' kind
    segments: Segments | None  # None: the rows are samples
    warning: str | None = None
    # Rows as many as the samples and as some declared rows (or as two kinds of declared
    # rows): taken as the first in this batch, not recorded, so that a later batch with other
    # counts decides the layer's kind.
    tentative: bool = False


class Declared:
    """What ``update(..., segments=)`` declared for one batch (see :func:`declared`)."""

    def __init__(
        self,
        unkeyed: Sequence[Segments] = (),
        keyed: Sequence[tuple[str, Segments]] = (),
        sample_kind: str = "sample",
    ) -> None:
        self.unkeyed = list(unkeyed)
        self.keyed = list(keyed)
        self.sample_kind = sample_kind

    @property
    def empty(self) -> bool:
        return not self.unkeyed and not self.keyed

    def resolve(self, name: str, rows: int, b: int, before: str | None = None) -> Resolved:
        """Whether the ``rows`` rows of layer ``name`` are the ``b`` samples or parts of them.

        ``before`` is the kind this layer's rows had in earlier batches, if any.

        Raises
        ------
        DataError
            Rows that match no declaration, a glob's segments of another row count, or rows
            of another kind than in earlier batches.
        """
        for pattern, seg in self.keyed:
            if glob_match(name, pattern):
                if seg.rows != rows:
                    raise DataError(
                        f"layer '{name}' sees {rows} rows, but segments[{pattern!r}] "
                        f"declares {seg.rows}",
                        hint="give that glob the owner index of this layer's rows",
                    )
                return self._same(name, Resolved(seg.kind, seg), before)
        matches = [s for s in self.unkeyed if s.rows == rows]
        kinds = list(dict.fromkeys(s.kind for s in matches))
        if rows == b:
            found = Resolved(self.sample_kind, None)
            if kinds and before != self.sample_kind:
                if before in kinds:
                    return Resolved(before, next(s for s in matches if s.kind == before))
                found.tentative = before is None
                found.warning = (
                    f"layer '{name}' sees {rows} rows in a batch of {b} samples, as many as "
                    f"the {kinds[0]} rows declared: taken as samples; if they are rows of "
                    f"{kinds[0]}s, declare segments={{{name!r}: ...}} for this layer"
                )
            return self._same(name, found, before)
        if not matches:
            declared = ", ".join(f"{s.rows} {s.kind} rows" for s in self.unkeyed) or "no segments"
            raise DataError(
                f"layer '{name}' sees {rows} rows for {b} samples: rows of parts, not "
                f"samples? declare segments=... (this batch declared {declared})",
                hint=_SEGMENTS_HINT,
            )
        chosen = matches[0]
        if before is not None and before in kinds:
            chosen = next(s for s in matches if s.kind == before)
        found = Resolved(chosen.kind, chosen)
        if len(kinds) > 1 and before not in kinds:
            found.tentative = before is None
            found.warning = (
                f"layer '{name}' sees {rows} rows, as many as the {' and the '.join(kinds)} "
                f"rows of this batch: taken as {chosen.kind} rows; declare "
                f"segments={{{name!r}: ...}} to say which"
            )
        return self._same(name, found, before)

    @staticmethod
    def _same(name: str, found: Resolved, before: str | None) -> Resolved:
        if before is not None and found.kind != before:
            raise DataError(
                f"layer '{name}' saw rows of {before} in earlier batches and rows of "
                f"{found.kind} now; its features would mix two kinds of rows",
                hint=f"declare segments={{{name!r}: ...}} for this layer in every batch",
            )
        return found


def declared(given: Any) -> Declared:
    """Read the ``segments=`` argument of one ``update`` call.

    Accepted: None; a :class:`Segments`; a 1-D integer tensor (an owner index); a sequence of
    those (rows of several kinds, told apart by their counts); a mapping from layer globs to
    those; a PyTorch Geometric ``Batch`` (node rows by ``batch.batch``, edge rows by the owner
    of each edge's source node, graph rows as samples).
    """
    if given is None:
        return Declared()
    if _is_graph_batch(given):
        return _from_graph(given)
    if isinstance(given, Mapping):
        keyed = []
        for pattern, value in given.items():
            if not isinstance(pattern, str):
                raise ConfigError(
                    f"segments: a mapping's keys are layer globs, found {type(pattern).__name__}"
                )
            keyed.append((pattern, _one(value, f"segments[{pattern!r}]")))
        return Declared(keyed=keyed)
    if isinstance(given, (Segments, torch.Tensor)):
        return Declared([_one(given, "segments")])
    if isinstance(given, (list, tuple)):
        return Declared([_one(v, f"segments[{i}]") for i, v in enumerate(given)])
    raise ConfigError(
        f"segments: expected Segments, an owner index tensor, a list or a mapping of them, or a "
        f"PyTorch Geometric Batch, found {type(given).__name__}"
    )


def _one(value: Any, where: str) -> Segments:
    if isinstance(value, Segments):
        return value
    if isinstance(value, torch.Tensor):
        try:
            return Segments(index=value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message.removeprefix('Segments: ')}") from None
    raise ConfigError(
        f"{where}: expected Segments or an owner index tensor, found {type(value).__name__}"
    )


def _is_graph_batch(value: Any) -> bool:
    """A PyTorch Geometric ``Batch`` (duck-typed: torch_geometric is never imported here)."""
    return hasattr(value, "num_graphs") and any(
        (cls.__module__ or "").startswith("torch_geometric.") for cls in type(value).__mro__
    )


def _from_graph(batch: Any) -> Declared:
    owner = getattr(batch, "batch", None)
    if not isinstance(owner, torch.Tensor):
        raise ConfigError(
            "segments: this PyTorch Geometric object has no batch vector (a single Data?)",
            hint="batch graphs with torch_geometric.loader.DataLoader or Batch.from_data_list",
        )
    found = [Segments(index=owner, kind="node")]
    edge_index = getattr(batch, "edge_index", None)
    if isinstance(edge_index, torch.Tensor) and edge_index.ndim == 2:
        found.append(Segments(index=owner[edge_index[0]], kind="edge"))
    return Declared(found, sample_kind="graph")
