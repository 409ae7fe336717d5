"""Open a data set by its file: an ``.npz`` of arrays, or a ``.toml`` data spec.

:func:`open_dataset` is the entry point. Every data set is a
:class:`~nrc_cli.io.dataset.SpecDataset`: a ``.toml`` spec as written, an ``.npz`` with named
inputs as the spec of those arrays, and a plain ``.npz`` as :class:`NpzDataset`, the two-field
spec of its ``x`` and ``y`` arrays. So the structure, finiteness and truncation checks exist
once, in :mod:`nrc_cli.io.dataset`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.dataset import Batch, Dataset, SpecDataset, positive_int
from nrc_cli.io.files import require_regular
from nrc_cli.io.npy import ArrayInfo
from nrc_cli.io.npz import MAX_WHOLE_BYTES, describe_file
from nrc_cli.io.sources import NpzSource
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


class NpzDataset(SpecDataset):
    """An ``.npz`` data set ``(x, y)`` read lazily, batch by batch.

    Opening reads only the ``.npy`` headers of ``x`` and ``y`` and validates the structure;
    :meth:`batches` then streams the data. It is the two-field data spec ``[inputs] array =
    x_key``, ``[targets] array = y_key`` of one file, so every check (shapes, finiteness,
    truncation) is :class:`~nrc_cli.io.dataset.SpecDataset`'s; the file is opened as an
    ``.npz`` whatever its suffix, and ``x_info``/``y_info`` are the stored ``.npy`` headers
    (stored byte order; ``file`` empty).

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

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        x_key: str = "x",
        y_key: str = "y",
        max_samples: int | None = None,
    ) -> None:
        p = Path(path)
        if max_samples is not None:
            max_samples = positive_int(max_samples, "--max-samples", "max_samples")
        source = NpzSource(p, os.fspath(path))
        spec = DataSpec(
            path=p,
            inputs=(("", FieldSpec(p, "--x-key", array=x_key)),),
            targets=FieldSpec(p, "--y-key", array=y_key),
        )
        super().__init__(spec, max_samples=max_samples, sources={p: source})
        # The headers as stored (the fields hold the batch dtypes, in native byte order).
        self.x_info = _stored(source, self.x_info)
        self.y_info = _stored(source, self.y_info)


def _stored(source: NpzSource, info: ArrayInfo) -> ArrayInfo:
    stored = source.array(info.key, what="", flag="", hint="")  # already open: no error
    return ArrayInfo(stored.key, stored.shape, stored.dtype, stored.compressed)
