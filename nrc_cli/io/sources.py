"""Data files as row streams: ``.npz`` arrays, ``.npy`` arrays, Parquet and CSV columns.

A *source* is one file. It knows how many rows it holds and which names (arrays or columns) it
offers, checks those names and their dtypes from headers or schemas alone, and opens *passes*:
sequential reads of some of its names from a given row onwards, one batch of rows at a time.
:mod:`nrc_cli.io.spec` joins sources into a data set.

How each kind is read, so that memory depends on the batch size and not on the row count N:

* ``.npz``: through the member readers of :mod:`nrc_cli.io.npz` (stored members memory-
  mapped, compressed members decompressed a batch at a time);
* ``.npy``: ``np.load(mmap_mode="r", allow_pickle=False)``; the pages of each batch are released
  once copied (see :class:`nrc_cli.io.npz.MemmapReader`);
* Parquet: ``ParquetFile.iter_batches(columns=..., batch_size=...)``, starting at the row group
  that holds the first wanted row; N comes from the file's metadata. Peak memory also grows with
  the size of one row group of the selected columns (Parquet decodes column chunks whole);
* CSV: pyarrow's streaming reader (``pyarrow.csv.open_csv``, one thread) with only the selected
  columns converted, one block at a time (blocks of at least 64 rows, 256 KiB or more). The
  header row names the columns. A CSV file has no row count, so N costs one extra streaming pass
  that parses a single column.
"""

from __future__ import annotations

import fnmatch
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nrc_cli.errors import DataError
from nrc_cli.io.files import require_regular
from nrc_cli.io.npy import ArrayInfo, read_npy_header
from nrc_cli.io.npz import Member, MemmapReader, StreamReader, describe_file, npz_members, open_zip

__all__ = ["ArraySource", "NpySource", "NpzSource", "Pass", "TableSource", "open_source"]

# CSV blocks (bytes parsed at a time; one record batch each). pyarrow's streaming reader keeps
# a few dozen blocks in flight (measured: about 35 x 256 KiB, whatever the file size), so the
# block sets the memory bound; a block must still hold whole rows, hence the row-length rule.
_CSV_MIN_BLOCK = 1 << 18
_CSV_MAX_BLOCK = 1 << 26
_CSV_ROWS_PER_BLOCK = 64
_NUMERIC_HINT = "select numeric columns only (int, float or bool); encode others as numbers first"
_NULL_HINT = "fill or drop the missing values; nrc needs a number in every selected cell"

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv")
ARRAY_SUFFIXES = (".npz", ".npy")


def open_source(path: Path, *, where: str, delimiter: str | None = None) -> Source:
    """Open the data file ``path`` by its suffix.

    Parameters
    ----------
    path : Path
        An ``.npz``, ``.npy``, ``.parquet``/``.pq``, ``.csv`` or ``.tsv`` file.
    where : str
        How to name the file in messages.
    delimiter : str, optional
        CSV field separator (default ``,``; ``\\t`` for ``.tsv``).
    """
    suffix = path.suffix.lower()
    if (
        suffix not in TABLE_SUFFIXES + ARRAY_SUFFIXES
        and path.is_file()
        and zipfile.is_zipfile(path)
    ):
        suffix = ".npz"  # an .npz saved under another name
    if suffix not in TABLE_SUFFIXES + ARRAY_SUFFIXES:
        raise DataError(
            f"{where}: unsupported data file type '{path.suffix}'; expected one of "
            f"{', '.join(ARRAY_SUFFIXES + TABLE_SUFFIXES)}",
            hint="convert it to Parquet, CSV or .npy/.npz",
        )
    if not path.exists():
        hint = "check the path (relative paths in a spec are relative to the spec file)"
        raise DataError(f"{where}: data file not found", hint=hint)
    if path.is_dir():
        raise DataError(f"{where}: expected a data file, found a directory")
    require_regular(path, where, DataError, expected="a data file")
    if suffix == ".npz":
        return NpzSource(path, where)
    if suffix == ".npy":
        return NpySource(path, where)
    if suffix in (".parquet", ".pq"):
        return ParquetSource(path, where)
    default = "\t" if suffix == ".tsv" else ","
    return CsvSource(path, where, delimiter=delimiter or default)


class Pass:
    """A sequential read of some names of a source, from a first row onwards."""

    def read(self, rows: int) -> dict[str, np.ndarray]:
        """The next ``rows`` rows of every name: fresh arrays, shape ``(rows, ...)``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files and buffers; idempotent."""


class Source:
    """One data file (see the module docstring). ``tabular`` sources offer 1-D columns."""

    where: str
    tabular: bool = False

    def names(self) -> list[str]:
        """Every array or column the file offers, in file order."""
        raise NotImplementedError

    def open_pass(
        self, names: list[str], start: int, chunk_rows: int, dtypes: dict | None = None
    ) -> Pass:
        """Start reading ``names`` at row ``start``.

        Parameters
        ----------
        names : list of str
            Arrays or columns to read.
        start : int
            First row.
        chunk_rows : int
            The usual number of rows per :meth:`Pass.read` (a hint for internal buffers).
        dtypes : dict of str to numpy.dtype, optional
            The dtype each column will be converted to; CSV parses text straight into it.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; idempotent."""


# ------------------------------------------------------------------------------------------------
# Arrays: .npz members and .npy files
# ------------------------------------------------------------------------------------------------


class ArraySource(Source):
    """A file of whole arrays; :meth:`array` gives the header of one."""

    def array(self, key: str, *, what: str, flag: str, hint: str) -> ArrayInfo:
        """Header of array ``key`` (shape ``(N, ...)``); its dtype is checked by the caller."""
        raise NotImplementedError


class NpzSource(ArraySource):
    """The arrays of an ``.npz`` file (:mod:`nrc_cli.io.npz` reads its members)."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where
        self._members: dict[str, Member] = {}
        self._zip: zipfile.ZipFile | None = open_zip(path, where)
        try:
            self._names = npz_members(self._zip, where)
        except BaseException:
            self.close()
            raise

    def names(self) -> list[str]:
        return list(self._names)

    def array(self, key: str, *, what: str, flag: str, hint: str) -> ArrayInfo:
        assert self._zip is not None
        if key not in self._members:
            self._members[key] = Member.open(
                self._zip, self._names, key, "x", self.where, what=what, flag=flag, hint=hint
            )
        return self._members[key].info

    def open_pass(self, names, start, chunk_rows, dtypes=None) -> Pass:
        if self._zip is None:
            raise ValueError(f"{self.where} is closed")
        readers = {}
        try:
            for key in names:
                member = self._members[key]
                readers[key] = (member.reader(self._zip, self.where), member.info.shape[0])
        except BaseException:
            for reader, _ in readers.values():
                reader.close()
            raise
        return _ArrayPass(readers, start)

    def close(self) -> None:
        for member in self._members.values():
            member.release()
        if self._zip is not None:
            self._zip.close()
            self._zip = None


class NpySource(ArraySource):
    """One ``.npy`` array, memory-mapped; its only name is the file's stem."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where
        self.key = path.stem
        try:
            with open(path, "rb") as f:
                shape, fortran, dtype = read_npy_header(f, self.key, where)
                data_offset = f.tell()
                size = os.fstat(f.fileno()).st_size
        except DataError as e:
            raise DataError(
                f"{where}: expected an .npy array, found {describe_file(path)} ({e.message})",
                hint="write it with np.save(path, array)",
            ) from e
        self.info = ArrayInfo(key=self.key, shape=shape, dtype=dtype, compressed=False, file=where)
        self._fortran = fortran
        self._map: np.ndarray | None = None
        if dtype.hasobject:
            return  # refused by array() from the header: never map or unpickle it
        needed = math.prod(shape) * dtype.itemsize
        if size - data_offset < needed:
            row_bytes = math.prod(shape[1:]) * dtype.itemsize if shape else dtype.itemsize
            got = max(size - data_offset, 0) // row_bytes if row_bytes else 0
            raise DataError(
                f"{where}: array ends early: its data stops at sample {got}, but its header "
                f"says shape {shape} ({needed} bytes, {max(size - data_offset, 0)} present)",
                hint="the file is truncated or damaged; write it again with np.save",
            )
        if needed:
            self._map = np.load(path, mmap_mode="r", allow_pickle=False)

    def names(self) -> list[str]:
        return [self.key]

    def array(self, key: str, *, what: str, flag: str, hint: str) -> ArrayInfo:
        return self.info

    def open_pass(self, names, start, chunk_rows, dtypes=None) -> Pass:
        if self._map is None:
            raise ValueError(f"{self.where} holds no data or is closed")
        return _ArrayPass({self.key: (MemmapReader(self._map), self.info.shape[0])}, start)

    def close(self) -> None:
        self._map = None  # the map closes once no batch view uses it


class _ArrayPass(Pass):
    """Member or memory-map readers advanced together from ``start``."""

    def __init__(self, readers: dict, start: int) -> None:
        self._readers = readers
        self._pos = start
        if start:
            for reader, _ in readers.values():
                if isinstance(reader, StreamReader):
                    reader.skip_to(start)

    def read(self, rows: int) -> dict[str, np.ndarray]:
        out = {}
        for key, (reader, n) in self._readers.items():
            out[key] = reader.read(self._pos, rows)
            if self._pos + rows == n:
                reader.finish()  # the end of a compressed member: zipfile checks its CRC
        self._pos += rows
        return out

    def close(self) -> None:
        for reader, _ in self._readers.values():
            reader.close()
        self._readers = {}


# ------------------------------------------------------------------------------------------------
# Tables: Parquet and CSV
# ------------------------------------------------------------------------------------------------


class TableSource(Source):
    """A file of named 1-D columns."""

    tabular = True
    # column name -> numpy dtype the column converts to (None: unknown yet, e.g. an empty CSV
    # column in the first block).
    column_dtypes: dict[str, np.dtype | None]

    def names(self) -> list[str]:
        return list(self.column_dtypes)

    @property
    def n_rows(self) -> int:
        raise NotImplementedError

    def select(self, patterns: list[str], *, what: str) -> list[str]:
        """Expand names and glob patterns (``f*``) into columns, checked to exist and be numeric.

        Each pattern keeps the file's column order; a column may be selected once only.
        """
        available = self.names()
        chosen: list[str] = []
        for pattern in patterns:
            if pattern in self.column_dtypes:
                matches = [pattern]
            elif any(c in pattern for c in "*?["):
                matches = fnmatch.filter(available, pattern)
            else:
                matches = []
            if not matches:
                raise DataError(
                    f"{self.where}: no column {pattern!r} for the {what}; the file has "
                    f"{len(available)} column(s): {_listing(available)}",
                    hint="column names are case-sensitive; globs like 'f*' select several",
                )
            for m in matches:
                if m in chosen:
                    raise DataError(
                        f"{self.where}: column {m!r} is selected twice for the {what}",
                        hint="list each column once",
                    )
                chosen.append(m)
        for name in chosen:
            if name in self._non_numeric:
                raise DataError(
                    f"{self.where}: column {name!r} ({what}) holds {self._non_numeric[name]}, "
                    "expected numbers (int, float or bool)",
                    hint=_NUMERIC_HINT,
                )
        return chosen

    _non_numeric: dict[str, str]


class ParquetSource(TableSource):
    """A Parquet file; N from its metadata, columns read batch by batch."""

    def __init__(self, path: Path, where: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self.where = where
        try:
            # pre_buffer=False: pre-buffering coalesces reads ahead of use and, measured with
            # pyarrow 26, keeps far more than one row group in memory.
            self._file: object | None = pq.ParquetFile(path, pre_buffer=False)
        except (pa.ArrowException, OSError) as e:
            found = describe_file(path)
            problem = (
                "the Parquet file is damaged or truncated"
                if found.endswith("Parquet file")
                else f"expected a Parquet file, found {found}"
            )
            raise DataError(
                f"{where}: {problem} ({_arrow_message(e)})",
                hint="write it with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table",
            ) from e
        schema = self._file.schema_arrow
        self.column_dtypes = {}
        self._non_numeric = {}
        for fld in schema:
            dtype = _arrow_numeric_dtype(fld.type)
            self.column_dtypes[fld.name] = dtype
            if dtype is None:
                self._non_numeric[fld.name] = f"values of type {fld.type}"
        meta = self._file.metadata
        self._n_rows = int(meta.num_rows)
        self._group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    @property
    def n_rows(self) -> int:
        return self._n_rows

    def open_pass(self, names, start, chunk_rows, dtypes=None) -> Pass:
        if self._file is None:
            raise ValueError(f"{self.where} is closed")
        # Start at the row group holding row `start`: earlier groups are never decoded.
        first, first_row = 0, 0
        while first < len(self._group_rows) and first_row + self._group_rows[first] <= start:
            first_row += self._group_rows[first]
            first += 1
        batches = self._file.iter_batches(  # type: ignore[attr-defined]
            batch_size=max(chunk_rows, 1),
            columns=names,
            row_groups=list(range(first, len(self._group_rows))),
        )
        return _RecordBatchPass(batches, names, first_row, start, self.where, row_name=_row)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()  # type: ignore[attr-defined]


class CsvSource(TableSource):
    """A CSV file with a header row; N from a counting pass (done once, when first needed)."""

    def __init__(self, path: Path, where: str, *, delimiter: str = ",") -> None:
        import pyarrow as pa

        self.path = path
        self.where = where
        self.delimiter = delimiter
        self._block = _csv_block_size(path)
        self._n_rows: int | None = None
        self._closed = False
        # Column names, and types inferred from the first block only: enough to refuse text
        # columns up front. Reading later forces the types, so a block of integers followed by
        # a block of floats cannot fail.
        try:
            reader = self._reader(None, None)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"{where}: cannot read as CSV with a header row: {_arrow_message(e)}",
                hint=f"the first line must name the columns, separated by {delimiter!r}",
            ) from e
        try:
            schema = reader.schema
        finally:
            reader.close()
        self.column_dtypes = {}
        self._non_numeric = {}
        for fld in schema:
            if pa.types.is_null(fld.type):
                self.column_dtypes[fld.name] = None  # empty in the first block
                continue
            dtype = _arrow_numeric_dtype(fld.type)
            self.column_dtypes[fld.name] = dtype
            if dtype is None:
                self._non_numeric[fld.name] = f"text (read as {fld.type} from the first rows)"

    def _reader(self, names: list[str] | None, types: dict | None):
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(
            include_columns=names or [], column_types=types or {}, strings_can_be_null=False
        )
        return pcsv.open_csv(
            self.path,
            # use_threads=False: the threaded reader parses blocks ahead of the consumer without
            # a bound (memory grew with the file in our measurements); one thread is as fast here.
            read_options=pcsv.ReadOptions(block_size=self._block, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=self.delimiter),
            convert_options=convert,
        )

    @property
    def n_rows(self) -> int:
        """Rows below the header: one streaming pass over a single column, done once."""
        if self._n_rows is None:
            import pyarrow as pa

            first = next(iter(self.column_dtypes))
            reader = self._reader([first], {first: pa.string()})
            count = [0]  # read by the error message of _guard
            try:
                for batch in _guard(reader, self.where, lambda: count[0]):
                    count[0] += batch.num_rows
            finally:
                reader.close()
            self._n_rows = count[0]
        return self._n_rows

    def open_pass(self, names, start, chunk_rows, dtypes=None) -> Pass:
        import pyarrow as pa

        if self._closed:
            raise ValueError(f"{self.where} is closed")
        # Parse straight into the output kind: a float column whose first block held only
        # integers must not fail at its first "1.5".
        types = {}
        for n in names:
            kind = np.dtype((dtypes or {}).get(n, np.float64)).kind
            types[n] = {"b": pa.bool_(), "i": pa.int64(), "u": pa.uint64()}.get(kind, pa.float64())
        reader = self._reader(names, types)
        return _RecordBatchPass(
            reader, names, 0, start, self.where, row_name=_csv_row, closer=reader.close
        )

    def close(self) -> None:
        self._closed = True


class _RecordBatchPass(Pass):
    """Rows from a stream of pyarrow record batches, regrouped into batches of any size.

    Parameters
    ----------
    batches : iterator of pyarrow.RecordBatch
        The selected columns, in ``names`` order, from row ``first_row`` of the file.
    start : int
        The first row wanted (rows before it are read and dropped).
    """

    def __init__(
        self,
        batches,
        names: list[str],
        first_row: int,
        start: int,
        where: str,
        *,
        row_name,
        closer=None,
    ) -> None:
        self._names = names
        self._where = where
        self._row_name = row_name
        self._closer = closer
        self._next_row = first_row  # file row of self._current[self._offset]
        self._current: Any = None  # a pyarrow RecordBatch (pyarrow has no type information)
        self._offset = 0
        self._it = iter(_guard(batches, where, lambda: self._next_row))
        self._skip = start - first_row

    def read(self, rows: int) -> dict[str, np.ndarray]:
        pieces: dict[str, list[np.ndarray]] = {n: [] for n in self._names}
        need = rows
        while need:
            if self._current is None or self._offset >= self._current.num_rows:
                try:
                    self._current = next(self._it)
                except StopIteration:
                    raise DataError(
                        f"{self._where}: the file ends at {self._row_name(self._next_row)}, "
                        f"before the {need} more row(s) expected (was it changed while read?)",
                    ) from None
                self._offset = 0
            available = self._current.num_rows - self._offset
            if self._skip:
                drop = min(self._skip, available)
                self._skip -= drop
                self._offset += drop
                self._next_row += drop
                continue
            take = min(need, available)
            piece = self._current.slice(self._offset, take)
            for name in self._names:
                col = piece.column(name)
                if col.null_count:
                    row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                    raise DataError(
                        f"{self._where}: column {name!r} has a missing value (null) at "
                        f"{self._row_name(self._next_row + row)}",
                        hint=_NULL_HINT,
                    )
                pieces[name].append(col.to_numpy(zero_copy_only=False))
            self._offset += take
            self._next_row += take
            need -= take
        return {n: p[0] if len(p) == 1 else np.concatenate(p) for n, p in pieces.items()}

    def close(self) -> None:
        self._current = None
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()


def _csv_block_size(path: Path) -> int:
    """A block of at least 64 of the longest rows among the first MiB, within 256 KiB..64 MiB."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return _CSV_MIN_BLOCK  # pyarrow will report the problem
    lines = head.split(b"\n")[:-1] or [head]
    longest = max(len(line) for line in lines) + 1
    return min(max(_CSV_MIN_BLOCK, _CSV_ROWS_PER_BLOCK * longest), _CSV_MAX_BLOCK)


def _guard(batches, where: str, row) -> Iterator:
    """Iterate pyarrow record batches, turning pyarrow's read errors into DataError."""
    import pyarrow as pa

    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"{where}: cannot read the rows after row {row()}: {_arrow_message(e)}",
                hint="every selected cell must be a number; "
                "the file may also be truncated or damaged",
            ) from e
        yield batch


def _row(i: int) -> str:
    return f"row {i}"


def _csv_row(i: int) -> str:
    # Row i (0-based, below the header) is line i + 2 when no line is empty or spans quotes.
    return f"row {i} (line {i + 2})"


def _arrow_numeric_dtype(t) -> np.dtype | None:
    """The numpy dtype of a numeric arrow type; None for anything else (text, dates, lists...)."""
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return np.dtype(bool)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype())
    return None


def _arrow_message(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
