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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.files import special_kind, toml_module
from nrc_cli.io.npy import NUMERIC_KINDS

__all__ = ["DataSpec", "FieldSpec", "check_input_name", "parse_spec", "read_spec"]

_TOP_KEYS = ("file", "delimiter", "inputs", "targets", "range", "standardize")
_FIELD_KEYS = ("file", "columns", "array", "dtype", "delimiter")
_INHERITED = ("file", "dtype", "delimiter")
_DOC_HINT = "see docs/data-spec.md for the spec format"
# Bytes of one chunk of the standardisation pass; rows per chunk depend only on the row width.


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
    toml = toml_module(str(p))
    try:
        doc = toml.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: expected a TOML data spec (UTF-8 text), found binary data") from e
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}", hint=_DOC_HINT) from e
    except RecursionError as e:
        raise ConfigError(f"{p}: invalid TOML: nested too deeply to read", hint=_DOC_HINT) from e
    return parse_spec(doc, path=p)


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
            check_input_name(name, f"{where}: [inputs.{name}]")
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
    if dtype is None or dtype.kind not in NUMERIC_KINDS:
        raise ConfigError(
            f"{where} must name a numeric dtype, found {value!r}",
            hint='e.g. dtype = "float32", "float64", "int64" or "bool"',
        )
    return dtype


def check_input_name(name: str, where: str) -> None:
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
