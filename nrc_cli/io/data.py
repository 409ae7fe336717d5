"""Stream an ``.npz`` data set batch by batch, without loading whole arrays.

An ``.npz`` file is a zip archive whose members are ``.npy`` files. :class:`NpzDataset` reads only
the ``.npy`` headers when it opens a file, checks the structure (keys, dtypes, shapes) and then
hands out :class:`Batch` objects on demand, so peak memory depends on the batch size, not on N:

* a member stored uncompressed (``np.savez``) is memory-mapped straight out of the zip file
  (the zip local header and the ``.npy`` header are parsed here to find where its bytes start);
* a compressed member (``np.savez_compressed``) is decompressed as a stream, exactly one batch of
  rows at a time; every pass re-opens the stream.

Nothing is ever unpickled: object arrays are refused from their header alone.
"""

from __future__ import annotations

import ast
import math
import mmap
import operator
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.lib import format as npy_format

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io._files import require_regular

__all__ = ["ArrayInfo", "Batch", "Dataset", "NpzDataset", "open_dataset"]

# Size of the fixed part of a zip local file header (APPNOTE 4.3.7).
_LOCAL_HEADER_SIZE = 30
_LOCAL_HEADER_SIG = b"PK\x03\x04"
# numpy's own bound on the size of an .npy header; larger headers are refused as unsafe.
_MAX_HEADER_SIZE = 10000
#: The largest compressed Fortran-ordered member loaded whole (bytes once decompressed): its
#: rows are scattered over the whole stream, so it cannot be streamed; larger ones are refused
#: rather than let a small file take gigabytes of memory.
MAX_WHOLE_BYTES = 256 * 10**6
# dtype kinds we accept: bool, signed int, unsigned int, float.
_NUMERIC_KINDS = "biuf"
_SAVE_HINT = "save plain numeric arrays, e.g. np.savez(path, x=x.astype(np.float32), y=y)"
_REWRITE_HINT = (
    "the file is truncated or damaged; write it again with np.savez or np.savez_compressed"
)


@dataclass(frozen=True)
class ArrayInfo:
    """What the ``.npy`` header of one member of the npz says (no data is read).

    Parameters
    ----------
    key : str
        Array name inside the npz (the member name without ``.npy``).
    shape : tuple of int
        Shape of the stored array.
    dtype : numpy.dtype
        Stored dtype, byte order included.
    compressed : bool
        Whether the member is compressed in the zip (then it is streamed, not memory-mapped).
    file : str
        The file it comes from, when that is not the data set's own path (spec data sets);
        empty otherwise.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    compressed: bool
    file: str = ""


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


DATA_SUFFIXES = (".npz", ".toml")


def open_dataset(
    path: str | os.PathLike,
    *,
    x_key: str = "x",
    y_key: str = "y",
    inputs: tuple[str, ...] = (),
    max_samples: int | None = None,
) -> Dataset:
    """Open a data set by its suffix: an ``.npz`` file or a ``.toml`` data spec.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz`` (arrays ``x_key`` and ``y_key``) or ``.toml`` (a data spec naming ``.npz``,
        ``.npy``, ``.parquet`` or ``.csv`` files: :mod:`nrc_cli.io.spec`, docs/data-spec.md).
    x_key, y_key : str
        ``.npz`` only: the input and target arrays. ``x_key`` is unused when ``inputs`` is given.
    inputs : tuple of str
        ``.npz`` only (``--input``): names of arrays passed to the model as keyword arguments;
        each batch's ``x`` is then ``{name: array}``. All must have the same N as the targets;
        integer arrays (token ids, masks) are passed unchanged.
    max_samples : int, optional
        Use only the first ``max_samples`` samples (of the spec's range, for a spec).

    Returns
    -------
    Dataset
        :class:`NpzDataset` for an ``.npz`` without ``inputs``, else a
        :class:`nrc_cli.io.spec.SpecDataset`; both have the :class:`Dataset` interface.

    Raises
    ------
    DataError
        An unsupported file type, or any problem the data set finds when it opens.
    ConfigError
        ``inputs`` with a spec, an input name that is not an identifier or given twice, or a
        bad spec.
    """
    from nrc_cli.io import spec as _spec  # spec builds on this module

    p = Path(path)
    suffix = p.suffix.lower()
    inputs = tuple(inputs)
    if suffix == ".toml":
        if inputs:
            raise ConfigError(
                f"--input {inputs[0]}: a data spec names its inputs itself ({p})",
                hint="name keyword inputs in the spec: [inputs.NAME] sections",
            )
        return _spec.SpecDataset(_spec.read_spec(p), max_samples=max_samples)
    require_regular(p, str(p), DataError, expected="a data file")
    if suffix != ".npz" and not (p.is_file() and zipfile.is_zipfile(p)):
        # (An existing zip is opened whatever its suffix: an .npz saved under another name.)
        if p.is_dir():
            found = "a directory"
        elif p.exists():
            found = _describe_file(p)
        else:
            found = "no such file"
        raise DataError(
            f"{p}: unsupported data: expected an .npz file (arrays x and y) or a .toml data spec "
            f"(naming .npz, .npy, .parquet or .csv files), found {found}",
            hint=_TABLE_HINTS.get(suffix, "see docs/data-spec.md"),
        )
    if not inputs:
        return NpzDataset(p, x_key=x_key, y_key=y_key, max_samples=max_samples)
    for name in inputs:
        _spec._check_input_name(name, f"--input {name}")
    if len(set(inputs)) != len(inputs):
        dup = next(n for n in inputs if inputs.count(n) > 1)
        raise ConfigError(f"--input {dup} is given twice", hint="name each input once")
    spec = _spec.DataSpec(
        path=p,
        inputs=tuple((n, _spec.FieldSpec(p, "--input", array=n)) for n in inputs),
        targets=_spec.FieldSpec(p, "--y-key", array=y_key),
    )
    return _spec.SpecDataset(spec, max_samples=max_samples)


_SPEC_HINT = (
    'write a data spec, e.g. data.toml holding [inputs] file = "{name}" columns = ["f*"] and '
    "[targets] with the target columns; see docs/data-spec.md"
)
_TABLE_HINTS = {
    suffix: _SPEC_HINT.format(name=f"table{suffix}")
    for suffix in (".parquet", ".pq", ".csv", ".tsv")
}
_TABLE_HINTS[".npy"] = (
    'write a data spec, e.g. data.toml holding [inputs] file = "x.npy" and [targets] '
    'file = "y.npy"; see docs/data-spec.md'
)


class NpzDataset:
    """An ``.npz`` data set ``(x, y)`` read lazily, batch by batch.

    Opening reads only the ``.npy`` headers of ``x`` and ``y`` and validates the structure;
    :meth:`batches` then streams the data.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file, written by ``np.savez`` or ``np.savez_compressed``.
    x_key : str
        Name of the input array, shape ``(N, features...)``: ``(N, F)`` features, ``(N, T)``
        token ids, ``(N, C, H, W)`` images... Float, integer or bool.
    y_key : str
        Name of the target array, shape ``(N,)`` or ``(N, t)``. Any numeric dtype; batches
        give it as float64.
    max_samples : int, optional
        Use only the first ``max_samples`` samples.

    Raises
    ------
    DataError
        The file is missing, not an npz, lacks a key, holds an object/pickled or non-numeric
        array, or the shapes of ``x`` and ``y`` are wrong or disagree.
    ConfigError
        ``max_samples`` is below 1.

    Notes
    -----
    A compressed member stored in Fortran order cannot be decompressed row by row; such a
    member (rare: ``np.savez_compressed`` of a transposed array) is loaded whole, once, and
    kept in memory for the life of the data set, up to :data:`MAX_WHOLE_BYTES`; a larger one
    is refused when the file is opened.
    """

    #: Named model inputs; empty: the inputs are one array, passed positionally.
    input_names: tuple[str, ...] = ()

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        x_key: str = "x",
        y_key: str = "y",
        max_samples: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._where = os.fspath(path)
        self._zip: zipfile.ZipFile | None = None
        if max_samples is not None:
            max_samples = _positive_int(max_samples, "--max-samples", "max_samples")
        self._zip = _open_zip(self.path, self._where)
        try:
            names = _npz_members(self._zip, self._where)
            self._x = _Member.open(self._zip, names, x_key, "x", self._where)
            self._y = _Member.open(self._zip, names, y_key, "y", self._where)
            self._validate()
        except BaseException:
            self.close()
            raise
        self.x_info: ArrayInfo = self._x.info
        self.y_info: ArrayInfo = self._y.info
        n = self.x_info.shape[0]
        self.n_samples: int = n if max_samples is None else min(n, max_samples)
        self.x_sample_shape: tuple[int, ...] = self.x_info.shape[1:]
        self.n_features: int = self.x_info.shape[1]
        self.target_dim: int = 1 if len(self.y_info.shape) == 1 else self.y_info.shape[1]

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> None:
        """Check dtypes and shapes of x and y from their headers alone."""
        where = self._where
        x, y = self._x.info, self._y.info
        for info, role in ((x, "x"), (y, "y")):
            _check_dtype(info, role, where)
        if len(x.shape) < 2:
            raise DataError(
                f"{where}: array '{x.key}' (inputs) must be 2-D or more, (N, features...), "
                f"but has shape {x.shape}",
                hint="reshape it to one row per sample, e.g. x[:, None] for one feature",
            )
        if len(y.shape) not in (1, 2):
            raise DataError(
                f"{where}: array '{y.key}' (targets) must be (N,) or (N, t), but has shape "
                f"{y.shape}",
                hint="flatten the targets of each sample, e.g. y.reshape(len(y), -1)",
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{where}: arrays '{x.key}' and '{y.key}' must have the same number of samples "
                f"N, but '{x.key}' has shape {x.shape} and '{y.key}' has shape {y.shape}",
                hint="the first dimension of both arrays is the sample index",
            )
        if x.shape[0] == 0:
            raise DataError(
                f"{where}: the data set has zero samples ('{x.key}' has shape {x.shape}, "
                f"'{y.key}' has shape {y.shape})",
                hint="save at least one sample",
            )
        if math.prod(x.shape[1:]) == 0:
            raise DataError(
                f"{where}: array '{x.key}' has no input values per sample (shape {x.shape})"
            )
        if math.prod(y.shape[1:]) == 0:
            raise DataError(f"{where}: array '{y.key}' has no targets per sample (shape {y.shape})")

    # -- reading ----------------------------------------------------------------------------

    def batches(self, batch_size: int, *, part: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Yield consecutive batches covering samples ``[0, n_samples)``; a fresh pass per call.

        Parameters
        ----------
        batch_size : int
            Samples per batch (the last batch may be smaller).
        part : (start, stop), optional
            Only samples ``[start, stop)`` (see :func:`check_part`), batched from ``start``:
            one process's share of a data-parallel run. Memory-mapped arrays are read from
            ``start`` on; a compressed member is decompressed from its beginning (deflate
            cannot seek) but only the rows of the part are kept.

        Yields
        ------
        Batch
            ``x`` of shape ``(b, *x_sample_shape)``, ``y`` of shape ``(b, target_dim)`` float64.

        Raises
        ------
        ConfigError
            ``batch_size`` is below 1 (raised at the call, not at the first batch).
        DataError
            At the batch where it happens: a non-finite value in ``x`` (float dtypes) or ``y``
            (the message names the first bad sample), or a member whose data ends early.
        """
        size = _positive_int(batch_size, "--batch-size", "batch_size")
        if self._zip is None:
            raise ValueError(f"NpzDataset({self._where!r}) is closed")
        first, stop = check_part(part, self.n_samples)
        # Validation above runs at the call; the generator below runs lazily.
        return self._iter_batches(size, first, stop)

    def _iter_batches(self, batch_size: int, first: int, stop: int) -> Iterator[Batch]:
        assert self._zip is not None
        x_reader = self._x.reader(self._zip, self._where)
        try:
            y_reader = self._y.reader(self._zip, self._where)
            try:
                for reader in (x_reader, y_reader):
                    if first and isinstance(reader, _StreamReader):
                        reader.skip_to(first)
                for start in range(first, stop, batch_size):
                    rows = min(batch_size, stop - start)
                    x = x_reader.read(start, rows)
                    y = y_reader.read(start, rows)
                    if x.dtype.kind == "f":
                        _check_finite(x, self._x.info.key, start, self._where)
                    y = y.astype(np.float64, copy=False).reshape(rows, -1)
                    _check_finite(y, self._y.info.key, start, self._where)
                    yield Batch(start=start, x=x, y=y)
                if stop == self._x.info.shape[0]:
                    # A full pass: let zip verify the CRC of compressed members at their end.
                    x_reader.finish()
                    y_reader.finish()
            finally:
                y_reader.close()
        finally:
            x_reader.close()

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the zip file and memory maps; idempotent."""
        for member in (getattr(self, "_x", None), getattr(self, "_y", None)):
            if member is not None:
                member.release()
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> NpzDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"NpzDataset({self._where!r}, x={self.x_info.shape} {self.x_info.dtype}, "
            f"y={self.y_info.shape} {self.y_info.dtype}, n_samples={self.n_samples})"
        )


# ------------------------------------------------------------------------------------------------
# One member of the npz
# ------------------------------------------------------------------------------------------------


class _Member:
    """One ``.npy`` member: its header, and how to read its rows (memory map or stream)."""

    def __init__(
        self,
        info: ArrayInfo,
        zinfo: zipfile.ZipInfo,
        fortran: bool,
        memmap: np.memmap | None,
    ) -> None:
        self.info = info
        self.zinfo = zinfo
        self.fortran = fortran
        # Set for uncompressed members only; the test suite checks it is a real np.memmap.
        self.memmap = memmap
        # Set lazily for compressed Fortran-ordered members, which must be loaded whole.
        self._whole: np.ndarray | None = None

    @classmethod
    def open(
        cls,
        zf: zipfile.ZipFile,
        names: dict[str, str],
        key: str,
        role: str,
        where: str,
        *,
        what: str | None = None,
        flag: str | None = None,
        hint: str = "choose the arrays with --x-key NAME --y-key NAME, or give a model's "
        "keyword inputs with --input NAME (once per array)",
    ) -> _Member:
        """Find ``key`` in the archive and read its header (and map it if stored uncompressed).

        ``what`` and ``flag`` name the array's use in the message when it is missing (default:
        the inputs/targets and their ``--x-key``/``--y-key`` options, from ``role``).
        """
        name = names.get(key)
        if name is None and key.endswith(".npy"):
            name = names.get(key[: -len(".npy")])
        if name is None:
            shown = ", ".join(repr(k) for k in list(names)[:20])
            more = f" and {len(names) - 20} more" if len(names) > 20 else ""
            flag = flag or ("--x-key" if role == "x" else "--y-key")
            what = what or ("inputs" if role == "x" else "targets")
            raise DataError(
                f"{where}: no array '{key}' for the {what} ({flag}); the file holds: {shown}{more}",
                hint=hint,
            )
        zinfo = zf.getinfo(name)
        if zinfo.flag_bits & 0x1:
            raise DataError(f"{where}: array '{key}' is encrypted in the zip; nrc cannot read it")
        if zinfo.compress_type == zipfile.ZIP_STORED:
            return cls._open_stored(zf, zinfo, key, where)
        return cls._open_compressed(zf, zinfo, key, where)

    @classmethod
    def _open_stored(
        cls, zf: zipfile.ZipFile, zinfo: zipfile.ZipInfo, key: str, where: str
    ) -> _Member:
        """Parse the zip local header and the npy header by hand, then memory-map the data."""
        path = zf.filename
        assert path is not None
        with open(path, "rb") as f:
            # The central directory (parsed by zipfile) gives where the local header is; the
            # local header's name and extra field (Zip64 data lives there) may differ in length
            # from the central directory's copy, so read their lengths from the local header.
            f.seek(zinfo.header_offset)
            fixed = f.read(_LOCAL_HEADER_SIZE)
            if len(fixed) < _LOCAL_HEADER_SIZE or fixed[:4] != _LOCAL_HEADER_SIG:
                raise DataError(
                    f"{where}: the zip entry of array '{key}' is damaged (no local file header "
                    f"at byte {zinfo.header_offset})",
                    hint=_REWRITE_HINT,
                )
            name_len, extra_len = struct.unpack("<HH", fixed[26:30])
            member_start = zinfo.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len
            f.seek(member_start)
            shape, fortran, dtype = _read_npy_header(f, key, where)
            data_offset = f.tell()
            file_size = os.fstat(f.fileno()).st_size
        info = ArrayInfo(key=key, shape=shape, dtype=dtype, compressed=False)
        if dtype.hasobject:
            # Refuse before mapping: the bytes are a pickle, not an array.
            return cls(info, zinfo, fortran, None)
        needed = math.prod(shape) * dtype.itemsize
        # Bytes of this member after its npy header, bounded by the real end of the file.
        available = min(member_start + zinfo.file_size, file_size) - data_offset
        if available < needed:
            row_bytes = math.prod(shape[1:]) * dtype.itemsize if shape else dtype.itemsize
            got_rows = max(available, 0) // row_bytes if row_bytes else 0
            raise DataError(
                f"{where}: array '{key}' ends early: its data stops at sample {got_rows}, "
                f"but its header says shape {shape} ({needed} bytes, {max(available, 0)} present)",
                hint=_REWRITE_HINT,
            )
        if needed == 0:
            # np.memmap refuses empty maps; shape checks reject empty arrays later anyway.
            return cls(info, zinfo, fortran, None)
        mm = np.memmap(
            path,
            dtype=dtype,
            mode="r",
            offset=data_offset,
            shape=shape,
            order="F" if fortran else "C",
        )
        return cls(info, zinfo, fortran, mm)

    @classmethod
    def _open_compressed(
        cls, zf: zipfile.ZipFile, zinfo: zipfile.ZipInfo, key: str, where: str
    ) -> _Member:
        """Read only the npy header from the start of the decompressed stream."""
        try:
            with zf.open(zinfo) as fp:
                shape, fortran, dtype = _read_npy_header(fp, key, where)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DataError(
                f"{where}: cannot decompress array '{key}': {e}", hint=_REWRITE_HINT
            ) from e
        info = ArrayInfo(key=key, shape=shape, dtype=dtype, compressed=True)
        if fortran and math.prod(shape[1:]) <= 1:
            fortran = False  # one value per row: the same bytes in either order
        if fortran and not dtype.hasobject:
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > MAX_WHOLE_BYTES:
                raise DataError(
                    f"{where}: array '{key}' is compressed and stored in Fortran (column) "
                    f"order, so its rows cannot be read one batch at a time; reading it would "
                    f"take {nbytes / 1e6:,.0f} MB at once (nrc allows {MAX_WHOLE_BYTES // 10**6} "
                    f"MB for that)",
                    hint=f"save it in row order: np.savez_compressed(path, {key}="
                    f"np.ascontiguousarray({key}), ...), or uncompressed with np.savez",
                )
        return cls(info, zinfo, fortran, None)

    def reader(self, zf: zipfile.ZipFile, where: str) -> _MemmapReader | _StreamReader:
        """Start a fresh pass over the rows of this member."""
        if self.memmap is not None:
            return _MemmapReader(self.memmap)
        if self.fortran:
            # Rows of a Fortran-ordered array are scattered over the whole stream: load once.
            if self._whole is None:
                self._whole = self._load_whole(zf, where)
            return _MemmapReader(self._whole)
        return _StreamReader(zf, self.zinfo, self.info, where)

    def _load_whole(self, zf: zipfile.ZipFile, where: str) -> np.ndarray:
        info = self.info
        reader = _StreamReader(zf, self.zinfo, info, where, sample_shape=())
        try:
            n = math.prod(info.shape)
            flat = reader.read(0, n)
        finally:
            reader.close()
        return flat.reshape(info.shape, order="F")

    def release(self) -> None:
        """Drop the memory map and any loaded data (the map closes once no array uses it)."""
        self.memmap = None
        self._whole = None


class _MemmapReader:
    """Rows of an array already addressable in place (memory map or in-memory array).

    For a memory map, the pages of each batch are handed back to the kernel once the batch has
    been copied out (see :class:`_PageReleaser`), so a pass over a file larger than memory keeps
    the resident set at about one batch.
    """

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self._release = _PageReleaser.of(array)

    def read(self, start: int, rows: int) -> np.ndarray:
        # Copy: the batch must outlive the map and be writable; also fixes byte order and order.
        chunk = self._array[start : start + rows]
        out = np.array(chunk, dtype=chunk.dtype.newbyteorder("="), order="C", copy=True)
        if self._release is not None:
            self._release.rows(start, start + rows)
        return out

    def finish(self) -> None:
        """Nothing to verify for data read in place."""

    def close(self) -> None:
        self._array = None  # type: ignore[assignment]
        self._release = None


class _PageReleaser:
    """Drop the pages of a read-only memory map that a pass has already copied out.

    Why: pages of a file mapping that have been read stay mapped into the process, and count in
    its resident set size (RSS), until memory pressure evicts them. A sequential pass over a
    4 GB uncompressed array would thus show an RSS growing to 4 GB, although the data are used
    one batch at a time; a job scheduler that limits RSS kills the run. ``MADV_DONTNEED`` on the
    consumed range unmaps those pages at once. The map is read-only and shared, so nothing is
    lost: the kernel's page cache still holds the data, and touching the range again (a second
    pass) simply maps the pages back in.

    Only on platforms with ``mmap.madvise`` and ``MADV_DONTNEED`` (Linux, macOS); elsewhere
    :meth:`of` returns None and nothing is released.
    """

    def __init__(self, mm: mmap.mmap, offset: int, row_bytes: int | None) -> None:
        self._mm: mmap.mmap | None = mm
        self._offset = offset  # where element 0 of the array lies in the map
        self._row_bytes = row_bytes  # None: rows are scattered (Fortran order)

    @classmethod
    def of(cls, array: np.ndarray) -> _PageReleaser | None:
        mm = getattr(array, "_mmap", None)  # set by np.memmap (also behind np.load(mmap_mode))
        if (
            mm is None
            or not isinstance(mm, mmap.mmap)
            or not hasattr(mm, "madvise")
            or not hasattr(mmap, "MADV_DONTNEED")
        ):
            return None
        try:
            view = np.frombuffer(mm, dtype=np.uint8, count=1)
            offset = array.ctypes.data - view.ctypes.data
            del view  # a live export would keep the map from closing
        except (TypeError, ValueError, BufferError):
            return None
        if not 0 <= offset <= len(mm):
            return None
        c_rows = array.ndim >= 1 and array.flags.c_contiguous
        return cls(mm, offset, array.strides[0] if c_rows and array.ndim else None)

    def rows(self, start: int, stop: int) -> None:
        """Release the whole pages that lie within rows ``[start, stop)``."""
        if self._mm is None:
            return
        if self._row_bytes is None:
            lo, hi = 0, len(self._mm)  # a Fortran-ordered batch touches pages everywhere
        else:
            lo = self._offset + start * self._row_bytes
            hi = min(self._offset + stop * self._row_bytes, len(self._mm))
        page = mmap.PAGESIZE
        lo -= lo % page  # madvise wants a page-aligned start
        hi -= hi % page  # the last, partial page still holds rows of the next batch
        if hi <= lo:
            return
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            self._mm = None  # the platform refuses: stop trying, reading still works


class _StreamReader:
    """Rows of a compressed C-ordered member, decompressed sequentially from its start."""

    def __init__(
        self,
        zf: zipfile.ZipFile,
        zinfo: zipfile.ZipInfo,
        info: ArrayInfo,
        where: str,
        *,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        self._info = info
        self._where = where
        self._sample_shape = info.shape[1:] if sample_shape is None else sample_shape
        self._next = 0  # the only row this stream can produce next
        try:
            self._fp: IO[bytes] | None = zf.open(zinfo)
            _read_npy_header(self._fp, info.key, where)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            self.close()
            raise DataError(
                f"{where}: cannot decompress array '{info.key}': {e}", hint=_REWRITE_HINT
            ) from e

    def read(self, start: int, rows: int) -> np.ndarray:
        assert self._fp is not None and start == self._next, "streams are read in order"
        info = self._info
        out = np.empty((rows, *self._sample_shape), dtype=info.dtype)
        row_bytes = max(out.itemsize * math.prod(self._sample_shape), 1)
        want = out.nbytes
        # Decompress straight into the batch's buffer: one batch of bytes at a time.
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        try:
            while got < want:
                n = self._fp.readinto(view[got:])  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DataError(
                f"{self._where}: array '{info.key}' is damaged: decompression failed near "
                f"sample {start + got // row_bytes}: {e}",
                hint=_REWRITE_HINT,
            ) from e
        if got < want:
            raise DataError(
                f"{self._where}: array '{info.key}' ends early: its data stops at sample "
                f"{start + got // row_bytes}, but its header says shape {info.shape}",
                hint=_REWRITE_HINT,
            )
        self._next = start + rows
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return out

    def skip_to(self, start: int) -> None:
        """Decompress and drop rows until row ``start`` is the next one (bounded chunks)."""
        row_bytes = max(self._info.dtype.itemsize * math.prod(self._sample_shape), 1)
        chunk = max(1, (1 << 22) // row_bytes)
        while self._next < start:
            self.read(self._next, min(chunk, start - self._next))

    def finish(self) -> None:
        """Read to the end of the member so that zipfile checks its CRC-32.

        Damage that still decompresses (e.g. inside a stored deflate block) is only caught by
        the CRC, which zipfile checks when the stream reaches its end.
        """
        assert self._fp is not None
        try:
            while self._fp.read(1 << 16):
                pass  # bytes past the header's shape: harmless, but the CRC covers them
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DataError(
                f"{self._where}: array '{self._info.key}' is damaged: {e}", hint=_REWRITE_HINT
            ) from e

    def close(self) -> None:
        fp = getattr(self, "_fp", None)
        self._fp = None
        if fp is not None:
            fp.close()


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def check_part(part: tuple[int, int] | None, n_samples: int) -> tuple[int, int]:
    """``part`` of :meth:`Dataset.batches` checked against ``n_samples``: ``(start, stop)``
    with ``0 <= start <= stop <= n_samples`` (None: all samples)."""
    if part is None:
        return 0, n_samples
    start, stop = (operator.index(v) for v in part)
    if not 0 <= start <= stop <= n_samples:
        raise ValueError(f"part {part} is not within the {n_samples} samples")
    return start, stop


def _positive_int(value: Any, flag: str, name: str) -> int:
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


def _open_zip(path: Path, where: str) -> zipfile.ZipFile:
    """Open ``path`` as a zip, turning every failure into a :class:`DataError` that says what the
    file is instead."""
    if not path.exists():
        hint = "check the path"
        if not path.parent.is_dir():
            hint = f"check the path: the folder {os.fspath(path.parent)!r} does not exist either"
        raise DataError(f"{where}: data file not found (expected an .npz file)", hint=hint)
    if path.is_dir():
        raise DataError(
            f"{where}: expected an .npz data file, found a directory",
            hint="pass the .npz file inside it",
        )
    require_regular(path, where, DataError, expected="an .npz data file")
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        what = _describe_file(path)
        raise DataError(
            f"{where}: expected an .npz file (a zip of .npy arrays), found {what}",
            hint=_NOT_NPZ_HINTS.get(what.split(" (")[0], "write the data set with np.savez"),
        ) from e


_NOT_NPZ_HINTS = {
    "a single .npy array": "save both arrays together: np.savez(path, x=x, y=y)",
    "a zip archive that cannot be read": _REWRITE_HINT,
}


def _describe_file(path: Path) -> str:
    """Guess what a file that is not a readable zip is, from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"a file that cannot be read ({e.strerror or e})"
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "a zip archive that cannot be read (truncated or damaged)"
    magics = {
        b"\x89HDF\r\n\x1a\n": "an HDF5 file",
        b"PAR1": "a Parquet file",
        b"\x1f\x8b": "a gzip file",
        b"BZh": "a bzip2 file",
        b"\xfd7zXZ\x00": "an xz file",
        b"\x28\xb5\x2f\xfd": "a zstd file",
    }
    for magic, what in magics.items():
        if head.startswith(magic):
            return what
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


def _npz_members(zf: zipfile.ZipFile, where: str) -> dict[str, str]:
    """Map array key -> member name for every member of the archive (``x.npy`` -> ``x``)."""
    names: dict[str, str] = {}
    for name in zf.namelist():
        if name.endswith("/"):
            continue  # a directory entry
        key = name[: -len(".npy")] if name.endswith(".npy") else name
        names.setdefault(key, name)
    if not any(n.endswith(".npy") for n in names.values()):
        listed = ", ".join(repr(n) for n in list(names.values())[:5]) or "nothing"
        raise DataError(
            f"{where}: expected an .npz file (a zip of .npy arrays), found a zip archive holding "
            f"no .npy array ({len(names)} members: {listed})",
            hint="a model checkpoint is a zip too; pass the data set with np.savez(path, x=x, y=y)",
        )
    return names


def _read_npy_header(fp: IO[bytes], key: str, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse an ``.npy`` header at the position of ``fp``, leaving ``fp`` at the data.

    Returns
    -------
    shape : tuple of int
    fortran_order : bool
    dtype : numpy.dtype
    """
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        elif version == (3, 0):
            shape, fortran, dtype = _read_array_header_3_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(f"shape {_short(shape)} is not a tuple of non-negative integers")
    except (ValueError, TypeError, SyntaxError, struct.error, EOFError, RecursionError) as e:
        reason = "the header is nested too deeply" if isinstance(e, RecursionError) else e
        raise DataError(
            f"{where}: member '{key}' is not a valid .npy array: {_short(reason, 200)}",
            hint=_REWRITE_HINT,
        ) from e
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_array_header_3_0(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Version 3.0 header: as 2.0 (uint32 length) but UTF-8 encoded.

    numpy exposes no public reader for it (its private ``_read_array_header`` moved between
    releases), so parse it here the same way: a Python literal dict, evaluated safely.
    """
    raw = fp.read(4)
    if len(raw) < 4:
        raise EOFError("the .npy header length is cut short")
    (length,) = struct.unpack("<I", raw)
    if length > _MAX_HEADER_SIZE:
        raise ValueError(f"header of {length} bytes is too large to read safely")
    text = fp.read(length)
    if len(text) < length:
        raise EOFError("the .npy header is cut short")
    header = ast.literal_eval(text.decode("utf-8"))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"header is not a valid .npy header: {header!r}")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"shape is not valid: {shape!r}")
    if not isinstance(fortran, bool):
        raise ValueError(f"fortran_order is not a valid bool: {fortran!r}")
    return shape, fortran, npy_format.descr_to_dtype(header["descr"])


def _check_dtype(info: ArrayInfo, role: str, where: str) -> None:
    """Refuse object (pickled) and non-numeric members; x must also fit a torch dtype."""
    dtype = info.dtype
    if dtype.hasobject:
        raise DataError(
            f"{where}: array '{info.key}' has dtype {dtype} (Python objects); reading it "
            "would need pickle; nrc never unpickles data files",
            hint=_SAVE_HINT,
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(
            f"{where}: array '{info.key}' has unsupported dtype {dtype} ({_kind_name(dtype)}); "
            "expected real numbers: float, integer or bool",
            hint=_SAVE_HINT,
        )
    if role == "x" and dtype.kind == "f" and dtype.itemsize > 8:
        raise DataError(
            f"{where}: array '{info.key}' has dtype {dtype}; inputs must be float16, float32 or "
            "float64",
            hint="convert it: x.astype(np.float64)",
        )


def _kind_name(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return "structured"
    return {
        "U": "unicode strings",
        "S": "byte strings",
        "V": "raw bytes",
        "M": "datetimes",
        "m": "timedeltas",
        "c": "complex numbers",
    }.get(dtype.kind, f"kind {dtype.kind!r}")


def _check_finite(array: np.ndarray, key: str, start: int, where: str) -> None:
    """Raise naming the first sample (global index) of ``array`` that holds a nan or inf."""
    finite = np.isfinite(array)
    if finite.all():
        return
    rows_ok = finite.reshape(len(array), -1).all(axis=1)
    row = int(np.argmin(rows_ok))
    values = array[row].reshape(-1)
    bad = values[~np.isfinite(values)][0]
    name = "nan" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    raise DataError(
        f"{where}: array '{key}' has a non-finite value ({name}) at sample {start + row}",
        hint="remove or repair that sample (nrc needs finite inputs and targets)",
    )
