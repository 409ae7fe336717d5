"""The members of an ``.npz`` file, read row by row without loading whole arrays.

An ``.npz`` file is a zip archive whose members are ``.npy`` files. Opening one reads only the
``.npy`` headers (:mod:`nrc_cli.io.npy`); rows are then read on demand, so peak memory depends
on the batch size, not on N:

* a member stored uncompressed (``np.savez``) is memory-mapped straight out of the zip file
  (the zip local header and the ``.npy`` header are parsed here to find where its bytes start);
* a compressed member (``np.savez_compressed``) is decompressed as a stream, exactly one batch of
  rows at a time; every pass re-opens the stream.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from nrc_cli.errors import DataError
from nrc_cli.io.files import require_regular
from nrc_cli.io.npy import REWRITE_HINT, ArrayInfo, read_npy_header

__all__ = [
    "MAX_WHOLE_BYTES",
    "Member",
    "MemmapReader",
    "StreamReader",
    "describe_file",
    "npz_members",
    "open_zip",
]

# Size of the fixed part of a zip local file header (APPNOTE 4.3.7).
_LOCAL_HEADER_SIZE = 30
_LOCAL_HEADER_SIG = b"PK\x03\x04"
#: The largest compressed Fortran-ordered member loaded whole (bytes once decompressed): its
#: rows are scattered over the whole stream, so it cannot be streamed; larger ones are refused
#: rather than let a small file take gigabytes of memory.
MAX_WHOLE_BYTES = 256 * 10**6

# ------------------------------------------------------------------------------------------------
# One member of the npz
# ------------------------------------------------------------------------------------------------


class Member:
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
    ) -> Member:
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
    ) -> Member:
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
                    hint=REWRITE_HINT,
                )
            name_len, extra_len = struct.unpack("<HH", fixed[26:30])
            member_start = zinfo.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len
            f.seek(member_start)
            shape, fortran, dtype = read_npy_header(f, key, where)
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
                hint=REWRITE_HINT,
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
    ) -> Member:
        """Read only the npy header from the start of the decompressed stream."""
        try:
            with zf.open(zinfo) as fp:
                shape, fortran, dtype = read_npy_header(fp, key, where)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DataError(
                f"{where}: cannot decompress array '{key}': {e}", hint=REWRITE_HINT
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

    def reader(self, zf: zipfile.ZipFile, where: str) -> MemmapReader | StreamReader:
        """Start a fresh pass over the rows of this member."""
        if self.memmap is not None:
            return MemmapReader(self.memmap)
        if self.fortran:
            # Rows of a Fortran-ordered array are scattered over the whole stream: load once.
            if self._whole is None:
                self._whole = self._load_whole(zf, where)
            return MemmapReader(self._whole)
        return StreamReader(zf, self.zinfo, self.info, where)

    def _load_whole(self, zf: zipfile.ZipFile, where: str) -> np.ndarray:
        info = self.info
        reader = StreamReader(zf, self.zinfo, info, where, sample_shape=())
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


class MemmapReader:
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


class StreamReader:
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
            read_npy_header(self._fp, info.key, where)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            self.close()
            raise DataError(
                f"{where}: cannot decompress array '{info.key}': {e}", hint=REWRITE_HINT
            ) from e

    def read(self, start: int, rows: int) -> np.ndarray:
        assert self._fp is not None and start == self._next, "streams are read in order"
        info = self._info
        out = np.empty((rows, *self._sample_shape), dtype=info.dtype)
        row_bytes = max(out.itemsize * math.prod(self._sample_shape), 1)
        want = out.nbytes
        # Decompress straight into the batch's buffer: one batch of bytes at a time.
        view = out.reshape(-1).view(np.uint8).data
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
                hint=REWRITE_HINT,
            ) from e
        if got < want:
            raise DataError(
                f"{self._where}: array '{info.key}' ends early: its data stops at sample "
                f"{start + got // row_bytes}, but its header says shape {info.shape}",
                hint=REWRITE_HINT,
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
                f"{self._where}: array '{self._info.key}' is damaged: {e}", hint=REWRITE_HINT
            ) from e

    def close(self) -> None:
        fp = getattr(self, "_fp", None)
        self._fp = None
        if fp is not None:
            fp.close()


def open_zip(path: Path, where: str) -> zipfile.ZipFile:
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
        what = describe_file(path)
        raise DataError(
            f"{where}: expected an .npz file (a zip of .npy arrays), found {what}",
            hint=_NOT_NPZ_HINTS.get(what.split(" (")[0], "write the data set with np.savez"),
        ) from e


_NOT_NPZ_HINTS = {
    "a single .npy array": "save both arrays together: np.savez(path, x=x, y=y)",
    "a zip archive that cannot be read": REWRITE_HINT,
}


def describe_file(path: Path) -> str:
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


def npz_members(zf: zipfile.ZipFile, where: str) -> dict[str, str]:
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
