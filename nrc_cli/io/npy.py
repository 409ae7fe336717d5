"""``.npy`` headers read and checked before any data: shape, dtype, and what nrc accepts.

Nothing is ever unpickled: object arrays are refused from their header alone.
"""

from __future__ import annotations

import ast
import struct
from dataclasses import dataclass
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from nrc_cli.errors import DataError

__all__ = [
    "NUMERIC_KINDS",
    "REWRITE_HINT",
    "SAVE_HINT",
    "ArrayInfo",
    "check_dtype",
    "check_finite",
    "read_npy_header",
]

# numpy's own bound on the size of an .npy header; larger headers are refused as unsafe.
_MAX_HEADER_SIZE = 10000
# dtype kinds we accept: bool, signed int, unsigned int, float.
NUMERIC_KINDS = "biuf"
REWRITE_HINT = (
    "the file is truncated or damaged; write it again with np.savez or np.savez_compressed"
)
SAVE_HINT = "save plain numeric arrays, e.g. np.savez(path, x=x.astype(np.float32), y=y)"


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


def read_npy_header(fp: IO[bytes], key: str, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
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
            hint=REWRITE_HINT,
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


def check_dtype(info: ArrayInfo, role: str, where: str) -> None:
    """Refuse object (pickled) and non-numeric members; x must also fit a torch dtype."""
    dtype = info.dtype
    if dtype.hasobject:
        raise DataError(
            f"{where}: array '{info.key}' has dtype {dtype} (Python objects); reading it "
            "would need pickle; nrc never unpickles data files",
            hint=SAVE_HINT,
        )
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(
            f"{where}: array '{info.key}' has unsupported dtype {dtype} ({_kind_name(dtype)}); "
            "expected real numbers: float, integer or bool",
            hint=SAVE_HINT,
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


def check_finite(array: np.ndarray, key: str, start: int, where: str) -> None:
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
