"""Data specs: a small TOML file that says where the inputs and targets are.

``nrc analyze ckpt --data spec.toml`` reads tabular data where it lies, without converting it to
``.npz``. A spec names the files (``.npz``, ``.npy``, ``.parquet``, ``.csv``), the arrays or
columns holding the inputs and the targets, an optional range of samples and optional
standardisation. The full description, with examples, is ``docs/data-spec.md``; in short::

    file = "table.parquet"        # optional default file for every section below

    [inputs]                      # one input array, passed to the model positionally
    file = "table.parquet"        # relative paths are relative to this spec file
    columns = ["f0", "f1", "f2"]  # Parquet/CSV: column names or globs ("f*"), in this order
    # array = "x"                 # .npz: the array name (default "x"; "y" for [targets])
    # (a .npy file holds one array: name neither columns nor array)
    # dtype = "float32"           # optional cast; tables default to float (see below)
    # delimiter = ";"             # CSV only (default ","; tab for .tsv)

    [targets]                     # (N,) or (N, t) targets; any numeric dtype, read as float64
    file = "labels.csv"           # may be another file: both must have the same N
    columns = ["y0", "y1"]

    [range]                       # optional: samples [start, stop) of the files
    start = 0
    stop = 10000

    [standardize]                 # optional: z-score float inputs and/or the targets
    inputs = true
    targets = false

Named inputs, for models whose ``forward`` takes keyword arguments, are sub-tables of
``[inputs]``; keys set in ``[inputs]`` itself (``file``, ``dtype``, ``delimiter``) are their
defaults, and an ``.npz`` array defaults to the input's name::

    [inputs]
    file = "tokens.npz"
    [inputs.input_ids]            # array "input_ids"
    [inputs.attention_mask]
    array = "mask"

Rules
-----
* Column selection keeps the order written; a glob expands in the file's column order. Columns
  must be numeric (int, float, bool); text, dates, lists and nulls are refused, a null naming
  its column and first row.
* Dtypes: table columns become one float array: the columns' float dtype if they all share one,
  else float64 (so integer features need no conversion). ``.npy``/``.npz`` arrays keep their
  stored dtype, so integer token ids reach the model unchanged. ``dtype`` overrides both.
* N: Parquet from its metadata; ``.npy``/``.npz`` from the array headers; CSV from one counting
  pass over a single column when the data set is opened (CSV has no row count).
* Standardisation: before the first batch, one extra pass over the selected samples (the range,
  cut to ``--max-samples``) computes, per input feature and per target column, the mean and the
  population standard deviation (ddof 0) in float64, merging per-chunk moments (Chan et al.)
  with a chunk size fixed by the row width, so the statistics do not depend on ``--batch-size``.
  Batches are then ``(v - mean) / std``, computed in float64 and cast back to the input's dtype;
  a constant column (std 0) is only centred. Integer and bool inputs (ids, masks) are never
  standardised. The statistics are in :attr:`SpecDataset.statistics`.
* Errors in the spec itself (unknown keys, wrong types, a bad range) are
  :class:`~nrc_cli.errors.ConfigError`; problems with the files it names are
  :class:`~nrc_cli.errors.DataError`.
"""

from __future__ import annotations

import keyword
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io._files import special_kind
from nrc_cli.io.data import (
    _NUMERIC_KINDS,
    ArrayInfo,
    Batch,
    _check_dtype,
    _check_finite,
    _positive_int,
    check_part,
)
from nrc_cli.io.sources import ArraySource, Source, TableSource, open_source

__all__ = ["DataSpec", "FieldSpec", "SpecDataset", "parse_spec", "read_spec"]

_TOP_KEYS = ("file", "delimiter", "inputs", "targets", "range", "standardize")
_FIELD_KEYS = ("file", "columns", "array", "dtype", "delimiter")
_INHERITED = ("file", "dtype", "delimiter")
_DOC_HINT = "see docs/data-spec.md for the spec format"
# Bytes of one chunk of the standardisation pass; rows per chunk depend only on the row width.
_STATS_CHUNK_BYTES = 1 << 23


@dataclass(frozen=True)
class FieldSpec:
    """Where one input (or the targets) comes from.

    Parameters
    ----------
    file : Path
        The data file, resolved.
    origin : str
        Where this was asked for, for messages: ``"[inputs] of spec.toml"`` or ``"--input"``.
    columns : tuple of str, optional
        Parquet/CSV columns or globs.
    array : str, optional
        ``.npz`` array name.
    dtype : numpy.dtype, optional
        Cast to this dtype.
    delimiter : str, optional
        CSV field separator.
    """

    file: Path
    origin: str
    columns: tuple[str, ...] | None = None
    array: str | None = None
    dtype: np.dtype | None = None
    delimiter: str | None = None


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec (see the module docstring).

    Parameters
    ----------
    path : Path
        The spec file (or the data file a spec was built for).
    inputs : tuple of (str, FieldSpec)
        The inputs; one entry named ``""`` for a single positional input, else one per named
        input, in order.
    targets : FieldSpec
    start, stop : int, int or None
        Sample range ``[start, stop)``; ``stop`` None means N.
    standardize_inputs, standardize_targets : bool
    """

    path: Path
    inputs: tuple[tuple[str, FieldSpec], ...]
    targets: FieldSpec
    start: int = 0
    stop: int | None = None
    standardize_inputs: bool = False
    standardize_targets: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of named inputs; empty for a single positional input."""
        return tuple(n for n, _ in self.inputs if n)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every data file the spec reads (inputs, then targets), each once, in that order."""
        found = [f.file for _, f in self.inputs] + [self.targets.file]
        return tuple(dict.fromkeys(found))


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------


def read_spec(path: str | os.PathLike) -> DataSpec:
    """Read and check a TOML data spec (the files it names are not opened here).

    Raises
    ------
    DataError
        The spec file is missing or unreadable.
    ConfigError
        Invalid TOML, or a spec that breaks the rules of the module docstring.
    """
    p = Path(path)
    if not p.is_file():
        what = "a directory" if p.is_dir() else special_kind(p) or "nothing"
        raise DataError(f"{p}: expected a TOML data spec, found {what}", hint="check the path")
    toml = _toml_module()
    try:
        doc = toml.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: expected a TOML data spec (UTF-8 text), found binary data") from e
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}", hint=_DOC_HINT) from e
    except RecursionError as e:
        raise ConfigError(f"{p}: invalid TOML: nested too deeply to read", hint=_DOC_HINT) from e
    return parse_spec(doc, path=p)


def _toml_module():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading a .toml data spec needs Python 3.11 or later, or the tomli package",
                hint="pip install tomli",
            ) from None
    return tomllib


def parse_spec(doc: dict[str, Any], *, path: Path) -> DataSpec:
    """Check a parsed TOML document and build the :class:`DataSpec`; paths relative to ``path``."""
    where = str(path)
    _only(doc, _TOP_KEYS, where, "the top level")
    base = path.parent
    top = {k: doc[k] for k in ("file", "delimiter") if k in doc}
    for key in ("inputs", "targets"):
        if key not in doc:
            raise ConfigError(
                f"{where}: missing the [{key}] section (where the {key} are)", hint=_DOC_HINT
            )
        if not isinstance(doc[key], dict):
            raise ConfigError(
                f"{where}: '{key}' must be a table ([{key}]), found {_tname(doc[key])}",
                hint=_DOC_HINT,
            )
    raw_inputs = doc["inputs"]
    named = {k: v for k, v in raw_inputs.items() if isinstance(v, dict)}
    inputs: list[tuple[str, FieldSpec]] = []
    if named:
        defaults = {k: v for k, v in raw_inputs.items() if not isinstance(v, dict)}
        _only(defaults, _INHERITED, where, "[inputs] (defaults of the named inputs)")
        for name, table in named.items():
            _check_input_name(name, f"{where}: [inputs.{name}]")
            merged = {**top, **defaults, **table}
            fs = _field(merged, base, where, f"inputs.{name}", own=table, default_array=name)
            inputs.append((name, fs))
    else:
        merged = {**top, **raw_inputs}
        fs = _field(merged, base, where, "inputs", own=raw_inputs, default_array="x")
        inputs.append(("", fs))
    raw_targets = doc["targets"]
    nested = [k for k, v in raw_targets.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(
            f"{where}: [targets.{nested[0]}]: targets cannot be named; one [targets] table "
            "selects all target columns",
            hint=_DOC_HINT,
        )
    targets = _field(
        {**top, **raw_targets}, base, where, "targets", own=raw_targets, default_array="y"
    )
    start, stop = _range(doc.get("range", {}), where)
    std = doc.get("standardize", {})
    if not isinstance(std, dict):
        raise ConfigError(
            f"{where}: 'standardize' must be a table ([standardize]), found {_tname(std)}",
            hint="[standardize]\ninputs = true",
        )
    _only(std, ("inputs", "targets"), where, "[standardize]")
    flags = {}
    for key in ("inputs", "targets"):
        value = std.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(
                f"{where}: [standardize] {key} must be true or false, found {value!r}"
            )
        flags[key] = value
    return DataSpec(
        path=path,
        inputs=tuple(inputs),
        targets=targets,
        start=start,
        stop=stop,
        standardize_inputs=flags["inputs"],
        standardize_targets=flags["targets"],
    )


def _field(
    table: dict, base: Path, where: str, section: str, *, own: dict, default_array: str
) -> FieldSpec:
    """One input or target section; ``table`` holds inherited defaults, ``own`` its own keys."""
    origin = f"[{section}] of {where}"
    _only(table, _FIELD_KEYS, where, f"[{section}]")
    file = table.get("file")
    if file is None:
        raise ConfigError(
            f"{where}: [{section}] names no file",
            hint=f'add file = "data.parquet" to [{section}] (or at the top of the spec)',
        )
    if not isinstance(file, str) or not file:
        raise ConfigError(f"{where}: [{section}] file must be a path string, found {file!r}")
    fpath = Path(file).expanduser()
    if not fpath.is_absolute():
        fpath = base / fpath
    columns = table.get("columns")
    if columns is not None:
        if isinstance(columns, str):
            columns = [columns]
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) and c for c in columns)
        ):
            raise ConfigError(
                f'{where}: [{section}] columns must be a column name, a glob like "f*", or a '
                f"non-empty list of them, found {table['columns']!r}",
            )
        columns = tuple(columns)
    array = table.get("array")
    if array is not None and (not isinstance(array, str) or not array):
        raise ConfigError(f"{where}: [{section}] array must be an array name, found {array!r}")
    dtype = table.get("dtype")
    if dtype is not None:
        dtype = _parse_dtype(dtype, f"{where}: [{section}] dtype")
    delimiter = table.get("delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ConfigError(
            f"{where}: [{section}] delimiter must be one character, found {delimiter!r}"
        )
    suffix = fpath.suffix.lower()
    if delimiter is not None and suffix not in (".csv", ".tsv") and "delimiter" not in own:
        delimiter = None  # a default from an outer table, meant for the CSV files among others
    if delimiter is not None and suffix not in (".csv", ".tsv"):
        raise ConfigError(
            f"{where}: [{section}] delimiter applies to CSV files, but {file} is not one",
            hint="remove delimiter",
        )
    if suffix in (".npz", ".npy"):
        if columns is not None:
            raise ConfigError(
                f"{where}: [{section}] columns select table columns, but {file} is an "
                f"{suffix} file",
                hint='name the array instead: array = "x"'
                if suffix == ".npz"
                else "a .npy file holds one array: remove columns",
            )
        if suffix == ".npy" and array is not None:
            raise ConfigError(
                f"{where}: [{section}] array = {array!r}, but {file} is an .npy file, which "
                "holds one unnamed array",
                hint="remove array",
            )
        if suffix == ".npz" and array is None:
            array = default_array
    elif array is not None:
        raise ConfigError(
            f"{where}: [{section}] array names an .npz array, but {file} is a table",
            hint="select table columns with columns = [...]",
        )
    return FieldSpec(fpath, origin, columns, array, dtype, delimiter)


def _range(table: Any, where: str) -> tuple[int, int | None]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: 'range' must be a table ([range]), found {_tname(table)}")
    _only(table, ("start", "stop"), where, "[range]")
    start = table.get("start", 0)
    stop = table.get("stop")
    for key, value in (("start", start), ("stop", stop)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}: [range] {key} must be a whole number, found {value!r}")
    if start < 0:
        raise ConfigError(f"{where}: [range] start must be >= 0, found {start}")
    if stop is not None and stop <= start:
        raise ConfigError(
            f"{where}: [range] stop ({stop}) must be greater than start ({start})",
            hint="the range is [start, stop): stop is the first sample not used",
        )
    return start, stop


def _parse_dtype(value: Any, where: str) -> np.dtype:
    try:
        if not isinstance(value, str):
            raise TypeError
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS:
        raise ConfigError(
            f"{where} must name a numeric dtype, found {value!r}",
            hint='e.g. dtype = "float32", "float64", "int64" or "bool"',
        )
    return dtype


def _check_input_name(name: str, where: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(
            f"{where}: input name {name!r} is not a valid Python identifier; named inputs "
            "become keyword arguments of the model's forward",
            hint="use the parameter name of forward, e.g. input_ids",
        )


def _only(table: dict, allowed: tuple[str, ...], where: str, section: str) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' in {section}; expected {', '.join(allowed)}",
            hint=_DOC_HINT,
        )


def _tname(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# ------------------------------------------------------------------------------------------------
# The data set
# ------------------------------------------------------------------------------------------------


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
            _check_finite(array, self.names[0], start, self.source.where)
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

    def __init__(self, spec: DataSpec, *, max_samples: int | None = None) -> None:
        if max_samples is not None:
            max_samples = _positive_int(max_samples, "--max-samples", "max_samples")
        self.spec = spec
        self.path = spec.path
        self._where = str(spec.path)
        self._sources: dict[tuple, Source] = {}
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
                "--input": "name the inputs with --input NAME, one per keyword argument of forward",
                "--y-key": "choose the target array with --y-key NAME",
            }.get(fs.origin, f"choose the array with {fs.origin} NAME")
        else:
            flag = f"array = {key!r} in {fs.origin}"
            hint = "set array = NAME to one of the arrays the file holds"
        info = source.array(key, what=what, flag=flag, hint=hint)
        info = ArrayInfo(info.key, info.shape, info.dtype, info.compressed, file=str(fs.file))
        _check_dtype(info, role, source.where)
        dtype = fs.dtype if fs.dtype is not None else info.dtype.newbyteorder("=")
        self._check_shape(info, role, what, source.where)
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

    def _check_shape(self, info: ArrayInfo, role: str, what: str, where: str) -> None:
        if role == "x" and len(info.shape) < 2:
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
                    f"N = {f.n_rows}",
                    hint="the files must hold the same samples, row for row",
                )
        if first.n_rows == 0:
            raise DataError(
                f"{self._where}: the data set has zero samples ({_label(first)} has N = 0)",
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
        size = _positive_int(batch_size, "--batch-size", "batch_size")
        if not self._sources:
            raise ValueError(f"SpecDataset({self._where!r}) is closed")
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
            f"SpecDataset({self._where!r}, {ins}, y={self.y_info.shape}, "
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
