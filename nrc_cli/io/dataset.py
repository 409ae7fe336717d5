"""The data set: inputs and targets joined from their sources, checked, streamed in batches.

A :class:`SpecDataset` opens the sources a :class:`~nrc_cli.io.spec.DataSpec` names, checks
the structure from headers and schemas alone (arrays and columns exist and are numeric, inputs
and targets have the same N, the range fits), and streams :class:`Batch` objects.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.npy import ArrayInfo, check_dtype, check_finite
from nrc_cli.io.sources import ArraySource, Source, TableSource, open_source
from nrc_cli.io.spec import DataSpec, FieldSpec

__all__ = ["Batch", "Dataset", "SpecDataset", "check_part", "positive_int"]

# Rows per chunk of the statistics pass: about this many bytes of one row of every field.
_STATS_CHUNK_BYTES = 1 << 23


@dataclass(frozen=True, eq=False)
class Batch:
    """One consecutive slice of the data set.

    Parameters
    ----------
    start : int
        Index of the first sample of this batch in the file(s): 0 for the first batch, except
        for a spec data set whose ``[range]`` starts later, where it is that row.
    x : numpy.ndarray, shape (b, *x_sample_shape), or dict of str to numpy.ndarray
        Inputs in their stored dtype (native byte order), a fresh writable array. For a data
        set with named inputs (``input_names`` not empty), a dict ``{name: array}`` of arrays
        with ``b`` rows each, in ``input_names`` order: the model's keyword arguments.
    y : numpy.ndarray, shape (b, t), float64
        Targets, always 2-D: 1-D targets become ``(b, 1)``.
    """

    start: int
    x: np.ndarray | dict[str, np.ndarray]
    y: np.ndarray


class Dataset(Protocol):
    """What the pipeline needs from a data set: :class:`NpzDataset` and ``SpecDataset``.

    Attributes
    ----------
    path : Path
        The data file or spec file.
    n_samples : int
        Samples one pass of :meth:`batches` yields.
    x_info, y_info : ArrayInfo
        Headers of the (first) input and of the targets, shape ``(N, ...)``.
    x_sample_shape : tuple of int
        Shape of one sample of the (first) input.
    n_features : int
        ``x_sample_shape[0]``.
    target_dim : int
        Target columns t (1 for 1-D targets).
    input_names : tuple of str
        Names of the model's keyword inputs; empty when ``x`` is one positional array.
    """

    path: Path
    n_samples: int
    x_info: ArrayInfo
    y_info: ArrayInfo
    x_sample_shape: tuple[int, ...]
    n_features: int
    target_dim: int
    input_names: tuple[str, ...]

    def batches(self, batch_size: int, *, part: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Consecutive batches over the samples (or over ``part``); a fresh pass per call."""
        ...

    def close(self) -> None:
        """Release files and maps; idempotent."""
        ...

    def __enter__(self) -> Dataset: ...

    def __exit__(self, *exc: object) -> None: ...


def check_part(part: tuple[int, int] | None, n_samples: int) -> tuple[int, int]:
    """``part`` of :meth:`Dataset.batches` checked against ``n_samples``: ``(start, stop)``
    with ``0 <= start <= stop <= n_samples`` (None: all samples)."""
    if part is None:
        return 0, n_samples
    start, stop = (operator.index(v) for v in part)
    if not 0 <= start <= stop <= n_samples:
        raise ValueError(f"part {part} is not within the {n_samples} samples")
    return start, stop


def positive_int(value: Any, flag: str, name: str) -> int:
    """Return ``value`` as an int >= 1, or raise :class:`ConfigError`."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} ({flag}) must be a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise ConfigError(
            f"{name} ({flag}) must be >= 1, got {number}", hint=f"pass {flag} 1 or more"
        )
    return number


@dataclass
class _Field:
    """One resolved input (or the targets): where its values are and what they become."""

    name: str  # input name ("" for the positional input), or "targets"
    role: str  # "x" or "y"
    source: Source
    names: tuple[str, ...]  # columns, or the one array key
    dtype: np.dtype  # output dtype (targets: float64 in batches whatever this says)
    info: ArrayInfo
    stats: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def tabular(self) -> bool:
        return self.source.tabular

    @property
    def n_rows(self) -> int:
        return self.info.shape[0]

    def assemble(self, got: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """This field's rows from what its source read: fresh, C-ordered, native byte order."""
        if self.tabular:
            out = np.empty((rows, len(self.names)), dtype=self.dtype)
            for j, column in enumerate(self.names):
                out[:, j] = got[column]
            return out
        array = got[self.names[0]]
        return array if array.dtype == self.dtype else array.astype(self.dtype)

    def check_finite(self, array: np.ndarray, start: int) -> None:
        if array.dtype.kind != "f":
            return
        if not self.tabular:
            check_finite(array, self.names[0], start, self.source.where)
            return
        finite = np.isfinite(array)
        if finite.all():
            return
        row, col = (int(i[0]) for i in np.nonzero(~finite))
        bad = array[row, col]
        name = "nan" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
        raise DataError(
            f"{self.source.where}: column {self.names[col]!r} has a non-finite value ({name}) "
            f"at row {start + row}",
            hint="remove or repair that sample (nrc needs finite inputs and targets)",
        )


class SpecDataset:
    """A data set described by a :class:`DataSpec`: same interface as ``NpzDataset``.

    Opening reads headers, schemas and (for CSV) counts rows, and checks the structure: files,
    arrays and columns exist and are numeric, inputs and targets have the same N, the range fits.
    :meth:`batches` streams the data.

    Parameters
    ----------
    spec : DataSpec
    max_samples : int, optional
        Use only the first ``max_samples`` samples of the range.
    sources : dict of Path to Source, optional
        Files already opened (the data set closes them): a plain ``.npz`` is read as an ``.npz``
        whatever its suffix. Other files are opened by their suffix.

    Attributes
    ----------
    n_samples : int
        Samples a pass yields: the range, cut to ``max_samples``.
    x_info, y_info : ArrayInfo
        The first input and the targets, shape ``(N, ...)`` over the whole file(s); for table
        columns ``key`` lists the columns and ``file`` names the file.
    x_sample_shape : tuple of int
        Shape of one sample of the first input.
    n_features : int
        ``x_sample_shape[0]``.
    target_dim : int
        Target columns t.
    input_names : tuple of str
        Named inputs (batches then give ``x`` as a dict); empty for one positional input.
    start : int
        First sample (row of the files) used.
    statistics : dict of str to (mean, std), or None
        After the first call of :meth:`batches` when standardising: per input name (``""`` for
        the positional input) and ``"targets"``, float64 arrays of one sample's shape.
    """

    def __init__(
        self,
        spec: DataSpec,
        *,
        max_samples: int | None = None,
        sources: dict[Path, Source] | None = None,
    ) -> None:
        if max_samples is not None:
            max_samples = positive_int(max_samples, "--max-samples", "max_samples")
        self.spec = spec
        self.path = spec.path
        self._where = str(spec.path)
        self._sources: dict[tuple, Source] = {
            (os.path.realpath(file), None): source for file, source in (sources or {}).items()
        }
        self.statistics: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        try:
            self._inputs = [self._resolve(name, fs, "x") for name, fs in spec.inputs]
            self._targets = self._resolve("targets", spec.targets, "y")
            n = self._common_n()
            self.start = spec.start
            stop = n if spec.stop is None else spec.stop
            if spec.start >= n or stop > n:
                raise DataError(
                    f"{self._where}: [range] start = {spec.start}"
                    + (f", stop = {spec.stop}" if spec.stop is not None else "")
                    + f" does not fit the data, which has N = {n} samples",
                    hint=f"use a range within [0, {n}]",
                )
        except BaseException:
            self.close()
            raise
        count = stop - spec.start
        self.n_samples: int = count if max_samples is None else min(count, max_samples)
        first = self._inputs[0]
        self.x_info: ArrayInfo = first.info
        self.y_info: ArrayInfo = self._targets.info
        self.x_sample_shape: tuple[int, ...] = first.info.shape[1:]
        self.n_features: int = first.info.shape[1]
        self.target_dim: int = math.prod(self.y_info.shape[1:])
        self.input_names: tuple[str, ...] = spec.input_names

    @property
    def open_files(self) -> list[str]:
        """The files this data set holds open, each once however many fields read it."""
        return [source.where for source in self._sources.values()]

    # -- opening ----------------------------------------------------------------------------

    def _source(self, fs: FieldSpec) -> Source:
        key = (os.path.realpath(fs.file), fs.delimiter)
        if key not in self._sources:
            self._sources[key] = open_source(fs.file, where=str(fs.file), delimiter=fs.delimiter)
        return self._sources[key]

    def _resolve(self, name: str, fs: FieldSpec, role: str) -> _Field:
        source = self._source(fs)
        what = "targets" if role == "y" else (f"input '{name}'" if name else "inputs")
        if isinstance(source, TableSource):
            return self._resolve_table(name, fs, role, source, what)
        assert isinstance(source, ArraySource)
        key = fs.array or source.names()[0]
        if fs.origin.startswith("--"):  # asked for on the command line
            flag = fs.origin
            hint = {
                "--x-key": "choose the arrays with --x-key NAME --y-key NAME, or give a model's "
                "keyword inputs with --input NAME (once per array)",
                "--input": "name the inputs with --input NAME, one per keyword argument of forward",
                "--y-key": "choose the target array with --y-key NAME",
            }.get(fs.origin, f"choose the array with {fs.origin} NAME")
        else:
            flag = f"array = {key!r} in {fs.origin}"
            hint = "set array = NAME to one of the arrays the file holds"
        info = source.array(key, what=what, flag=flag, hint=hint)
        info = ArrayInfo(info.key, info.shape, info.dtype, info.compressed, file=str(fs.file))
        check_dtype(info, role, source.where)
        dtype = fs.dtype if fs.dtype is not None else info.dtype.newbyteorder("=")
        self._check_shape(info, role, what, source.where, named=bool(name))
        out = ArrayInfo(info.key, info.shape, dtype, info.compressed, file=info.file)
        return _Field(name, role, source, (key,), dtype, out)

    def _resolve_table(
        self, name: str, fs: FieldSpec, role: str, source: TableSource, what: str
    ) -> _Field:
        if fs.columns is None:
            raise ConfigError(
                f"{self._where}: {fs.origin.split(' of ')[0]} names the table {fs.file} but no "
                f"columns; it has: {', '.join(repr(c) for c in source.names()[:20])}",
                hint='add columns = ["a", "b"] (or a glob such as "f*")',
            )
        columns = source.select(list(fs.columns), what=what)
        if fs.dtype is not None:
            dtype = fs.dtype
        else:
            kinds = {source.column_dtypes[c] for c in columns}
            only = next(iter(kinds)) if len(kinds) == 1 else None
            # One float dtype shared by all columns is kept; anything else becomes float64.
            dtype = only if only is not None and only.kind == "f" else np.dtype(np.float64)
        shape = (source.n_rows, len(columns))
        info = ArrayInfo(_describe_columns(columns), shape, dtype, False, file=str(fs.file))
        if role == "x" and dtype.kind == "f" and dtype.itemsize > 8:
            raise DataError(f"{fs.file}: inputs must be float16, float32 or float64, not {dtype}")
        return _Field(name, role, source, tuple(columns), dtype, info)

    def _check_shape(
        self, info: ArrayInfo, role: str, what: str, where: str, *, named: bool = False
    ) -> None:
        # A named input may be one number per sample (a count of atoms, a length): (N,).
        if role == "x" and len(info.shape) < (1 if named else 2):
            raise DataError(
                f"{where}: array '{info.key}' ({what}) must be 2-D or more, (N, features...), "
                f"but has shape {info.shape}",
                hint="reshape it to one row per sample, e.g. x[:, None] for one feature",
            )
        if role == "y" and len(info.shape) not in (1, 2):
            raise DataError(
                f"{where}: array '{info.key}' (targets) must be (N,) or (N, t), but has shape "
                f"{info.shape}",
                hint="flatten the targets of each sample, e.g. y.reshape(len(y), -1)",
            )
        if math.prod(info.shape[1:]) == 0:
            raise DataError(
                f"{where}: array '{info.key}' ({what}) has no values per sample (shape "
                f"{info.shape})"
            )

    def _common_n(self) -> int:
        fields = [*self._inputs, self._targets]
        first = fields[0]
        for f in fields[1:]:
            if f.n_rows != first.n_rows:
                raise DataError(
                    f"{self._where}: all inputs and the targets must have the same number of "
                    f"samples N, but {_label(first)} has N = {first.n_rows} and {_label(f)} has "
                    f"N = {f.n_rows} ({first.info.key!r} has shape {first.info.shape}, "
                    f"{f.info.key!r} has shape {f.info.shape})",
                    hint="the files must hold the same samples, row for row",
                )
        if first.n_rows == 0:
            raise DataError(
                f"{self._where}: the data set has zero samples ({_label(first)} has N = 0, "
                f"shape {first.info.shape})",
                hint="save at least one sample",
            )
        return first.n_rows

    # -- reading ----------------------------------------------------------------------------

    def batches(self, batch_size: int, *, part: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Yield consecutive batches covering the selected samples; a fresh pass per call.

        Parameters
        ----------
        batch_size : int
            Samples per batch (the last batch may be smaller).
        part : (start, stop), optional
            Only the selected samples ``[start, stop)`` (positions from 0 to ``n_samples``,
            not rows of the files): one process's share of a data-parallel run. The inputs
            are read from there on; statistics for ``standardize`` are still taken over every
            selected sample.

        Yields
        ------
        Batch
            ``start`` is the row of the files; ``x`` of shape ``(b, *x_sample_shape)`` (a dict
            of such arrays for named inputs), ``y`` of shape ``(b, target_dim)`` float64.

        Raises
        ------
        ConfigError
            ``batch_size`` is below 1 (raised at the call).
        DataError
            At the batch where it happens: a null, or a non-finite float value, naming the
            array or column and the first bad row.
        """
        size = positive_int(batch_size, "--batch-size", "batch_size")
        if not self._sources:
            raise ValueError(f"{type(self).__name__}({self._where!r}) is closed")
        return self._iter_batches(size, check_part(part, self.n_samples))

    def _iter_batches(self, batch_size: int, part: tuple[int, int]) -> Iterator[Batch]:
        if self.statistics is None and (
            self.spec.standardize_inputs or self.spec.standardize_targets
        ):
            self._compute_statistics()
        for start, values in self._iter_raw(batch_size, part):
            xs = {}
            for f in self._inputs:
                xs[f.name] = _apply(values[f.name], f.stats)
            y = values["\0targets"]
            y = _apply(y.reshape(len(y), -1), self._targets.stats)
            x = xs if self.input_names else xs[""]
            yield Batch(start=start, x=x, y=y)

    def _iter_raw(
        self, batch_size: int, part: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield (first row, {input name or '\\0targets': checked array}) for each batch of
        ``part`` (positions among the selected samples; default all)."""
        first, end = part if part is not None else (0, self.n_samples)
        fields = [*self._inputs, self._targets]
        wanted: dict[int, tuple[Source, dict[str, np.dtype]]] = {}
        for f in fields:
            src, names = wanted.setdefault(id(f.source), (f.source, {}))
            for n in f.names:
                names.setdefault(n, f.dtype)
        passes = []
        try:
            for src, names in wanted.values():
                passes.append(
                    (src, src.open_pass(list(names), self.start + first, batch_size, dtypes=names))
                )
            stop = self.start + end
            for start in range(self.start + first, stop, batch_size):
                rows = min(batch_size, stop - start)
                got = {id(src): p.read(rows) for src, p in passes}
                values = {}
                seen: set[int] = set()
                for f in fields:
                    array = f.assemble(got[id(f.source)], rows)
                    if f.role == "y":
                        array = array.astype(np.float64, copy=False)
                    if id(array) in seen:
                        array = array.copy()  # two fields read the same array: keep them apart
                    seen.add(id(array))
                    f.check_finite(array, start)
                    values[f.name if f.role == "x" else "\0targets"] = array
                yield start, values
        finally:
            for _, p in passes:
                p.close()

    def _compute_statistics(self) -> None:
        """The first pass: per-feature mean and std of the float inputs and/or the targets."""
        chosen = []
        if self.spec.standardize_inputs:
            chosen += [f for f in self._inputs if f.dtype.kind == "f"]
        if self.spec.standardize_targets:
            chosen.append(self._targets)
        row_bytes = sum(
            max(f.dtype.itemsize, 8) * math.prod(f.info.shape[1:])
            for f in [*self._inputs, self._targets]
        )
        chunk = max(1, _STATS_CHUNK_BYTES // max(row_bytes, 1))
        moments = {id(f): _Moments() for f in chosen}
        for _, values in self._iter_raw(chunk):
            for f in chosen:
                v = values[f.name if f.role == "x" else "\0targets"]
                moments[id(f)].update(v.reshape(len(v), *f.info.shape[1:]).astype(np.float64))
        stats = {}
        for f in chosen:
            mean, std = moments[id(f)].compute()
            f.stats = (mean, std)
            stats[f.name] = (mean, std)
        self.statistics = stats

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release every file; idempotent."""
        sources, self._sources = self._sources, {}
        for src in sources.values():
            src.close()

    def __enter__(self) -> SpecDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(f"{f.name or 'x'}={f.info.shape} {f.dtype}" for f in self._inputs)
        return (
            f"{type(self).__name__}({self._where!r}, {ins}, y={self.y_info.shape}, "
            f"n_samples={self.n_samples}, start={self.start})"
        )


class _Moments:
    """Streaming float64 mean and sum of squared deviations, merged chunk by chunk (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, v: np.ndarray) -> None:
        nb = len(v)
        mb = v.mean(axis=0)
        m2b = ((v - mb) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.mean is not None and self.m2 is not None
        std = np.sqrt(self.m2 / self.n)
        # A constant feature is only centred: dividing by 0 would make it nan.
        return self.mean, np.where(std > 0, std, 1.0)


def _apply(array: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if stats is None:
        return array
    mean, std = stats
    out = (array.astype(np.float64) - mean) / std
    return out.astype(array.dtype, copy=False)


def _describe_columns(columns: list[str]) -> str:
    if len(columns) <= 4:
        return ", ".join(columns)
    return f"{columns[0]}, {columns[1]}, ..., {columns[-1]} ({len(columns)} columns)"


def _label(f: _Field) -> str:
    what = "the targets" if f.role == "y" else (f"input '{f.name}'" if f.name else "the inputs")
    return f"{what} ({f.source.where}, {f.info.key!r})"
