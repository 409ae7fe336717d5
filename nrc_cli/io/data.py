"""Open a data set by its file: an ``.npz`` of arrays, or a ``.toml`` data spec.

:func:`open_dataset` is the entry point. A plain ``.npz`` is read by :class:`NpzDataset`, which
reads only the ``.npy`` headers when it opens a file, checks the structure (keys, dtypes,
shapes) and then hands out :class:`~nrc_cli.io.dataset.Batch` objects on demand
(:mod:`nrc_cli.io.npz` reads the members); a spec, or an ``.npz`` with named inputs, is a
:class:`~nrc_cli.io.dataset.SpecDataset`.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.dataset import Batch, Dataset, SpecDataset, check_part, positive_int
from nrc_cli.io.files import require_regular
from nrc_cli.io.npy import ArrayInfo, check_dtype, check_finite
from nrc_cli.io.npz import (
    MAX_WHOLE_BYTES,
    Member,
    StreamReader,
    describe_file,
    npz_members,
    open_zip,
)
from nrc_cli.io.spec import DataSpec, FieldSpec, check_input_name, read_spec

# Batch, Dataset, ArrayInfo and MAX_WHOLE_BYTES are re-exported: the data set's public names.
__all__ = ["MAX_WHOLE_BYTES", "ArrayInfo", "Batch", "Dataset", "NpzDataset", "open_dataset"]


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
        :class:`nrc_cli.io.dataset.SpecDataset`; both have the :class:`Dataset` interface.

    Raises
    ------
    DataError
        An unsupported file type, or any problem the data set finds when it opens.
    ConfigError
        ``inputs`` with a spec, an input name that is not an identifier or given twice, or a
        bad spec.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    inputs = tuple(inputs)
    if suffix == ".toml":
        if inputs:
            raise ConfigError(
                f"--input {inputs[0]}: a data spec names its inputs itself ({p})",
                hint="name keyword inputs in the spec: [inputs.NAME] sections",
            )
        return SpecDataset(read_spec(p), max_samples=max_samples)
    require_regular(p, str(p), DataError, expected="a data file")
    if suffix != ".npz" and not (p.is_file() and zipfile.is_zipfile(p)):
        # (An existing zip is opened whatever its suffix: an .npz saved under another name.)
        if p.is_dir():
            found = "a directory"
        elif p.exists():
            found = describe_file(p)
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
        check_input_name(name, f"--input {name}")
    if len(set(inputs)) != len(inputs):
        dup = next(n for n in inputs if inputs.count(n) > 1)
        raise ConfigError(f"--input {dup} is given twice", hint="name each input once")
    spec = DataSpec(
        path=p,
        inputs=tuple((n, FieldSpec(p, "--input", array=n)) for n in inputs),
        targets=FieldSpec(p, "--y-key", array=y_key),
    )
    return SpecDataset(spec, max_samples=max_samples)


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
            max_samples = positive_int(max_samples, "--max-samples", "max_samples")
        self._zip = open_zip(self.path, self._where)
        try:
            names = npz_members(self._zip, self._where)
            self._x = Member.open(self._zip, names, x_key, "x", self._where)
            self._y = Member.open(self._zip, names, y_key, "y", self._where)
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
            check_dtype(info, role, where)
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
        size = positive_int(batch_size, "--batch-size", "batch_size")
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
                    if first and isinstance(reader, StreamReader):
                        reader.skip_to(first)
                for start in range(first, stop, batch_size):
                    rows = min(batch_size, stop - start)
                    x = x_reader.read(start, rows)
                    y = y_reader.read(start, rows)
                    if x.dtype.kind == "f":
                        check_finite(x, self._x.info.key, start, self._where)
                    y = y.astype(np.float64, copy=False).reshape(rows, -1)
                    check_finite(y, self._y.info.key, start, self._where)
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
