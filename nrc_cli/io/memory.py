"""In-memory data for :func:`nrc_cli.analyze`: an ``(x, y)`` pair of arrays, or batches.

Both have the part of the :class:`nrc_cli.io.dataset.Dataset` interface the pipeline reads
(``n_samples``, ``target_dim``, ``input_names``, ``batches``), so that in-memory data goes
through the very same passes as a data file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.dataset import Batch

__all__ = ["ArrayDataset", "BatchesDataset", "as_dataset"]


def _rows(a: Any) -> int:
    return int(a.shape[0])


def _raw_kind(y: Any) -> tuple[Any, tuple[int, ...]]:
    """The dtype and shape of targets as given (before they become float64)."""
    return getattr(y, "dtype", np.asarray(y).dtype), tuple(getattr(y, "shape", np.shape(y)))


def _as_targets(y: Any, where: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise DataError(f"{where}: targets of dtype {y.dtype} are not numbers")
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2:
        raise DataError(f"{where}: expected targets of shape (N, t) or (N,), found {list(y.shape)}")
    return y.astype(np.float64, copy=False)


def _check_inputs(x: Any, where: str) -> None:
    parts = x.values() if isinstance(x, Mapping) else [x]
    for part in parts:
        if not isinstance(part, (np.ndarray, torch.Tensor)):
            raise DataError(
                f"{where}: expected inputs as a tensor or numpy array (or a dict of them), "
                f"found {type(part).__name__}"
            )


class _InMemory:
    path = Path("<memory>")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayDataset(_InMemory):
    """All samples in memory: ``x`` (N, ...) or a dict of such arrays (keyword inputs), ``y``
    (N, t) or (N,); tensors or numpy arrays. Batches are views, never copies of the whole."""

    label = "<arrays>"

    def __init__(self, x: Any, y: Any) -> None:
        _check_inputs(x, "data")
        self.x = x
        # What the targets were (task="auto" reads a 1-D integer array as class labels).
        self.y_dtype, self.y_shape = _raw_kind(y)
        self.y = _as_targets(y, "data")
        n_x = {_rows(v) for v in x.values()} if isinstance(x, Mapping) else {_rows(x)}
        if n_x != {self.y.shape[0]}:
            raise DataError(
                f"data: inputs have {sorted(n_x)} rows but targets {self.y.shape[0]}",
                hint="x and y must hold the same samples, one per row",
            )
        self.n_samples = int(self.y.shape[0])
        self.target_dim = int(self.y.shape[1])
        self.input_names = tuple(x) if isinstance(x, Mapping) else ()
        if self.n_samples == 0:
            raise DataError("data: no samples")

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.n_samples, batch_size):
            stop = start + batch_size
            x = (
                {k: v[start:stop] for k, v in self.x.items()}
                if isinstance(self.x, Mapping)
                else self.x[start:stop]
            )
            yield Batch(start, x, self.y[start:stop])


class BatchesDataset(_InMemory):
    """An iterable of ``(x, y)`` batches (a list, a DataLoader, a generator).

    The number of samples is not known before a pass. A one-shot iterator (a generator) allows
    one pass only; a plan that needs several passes over it is refused.
    """

    label = "<batches>"

    def __init__(self, source: Iterable) -> None:
        self.source = source
        self.one_shot = iter(source) is source
        self._first: tuple[Any, Any] | None = None
        it = iter(source)
        try:
            first = next(it)
        except StopIteration:
            raise DataError("data: the iterable of (x, y) batches is empty") from None
        self._first = self._pair(first, 0)
        self._rest = it if self.one_shot else None
        self.y_dtype, self.y_shape = _raw_kind(self._first[1])
        y0 = _as_targets(self._first[1], "batch 0")
        self.target_dim = int(y0.shape[1])
        self.first_rows = int(y0.shape[0])
        self.n_samples: int | None = None
        x0 = self._first[0]
        self.input_names = tuple(x0) if isinstance(x0, Mapping) else ()
        self._passes = 0

    @staticmethod
    def _pair(item: Any, index: int) -> tuple[Any, Any]:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(
                f"data: batch {index} is a {type(item).__name__}, expected an (x, y) pair"
            )
        _check_inputs(item[0], f"batch {index}")
        return item[0], item[1]

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The batches as given (``batch_size`` does not apply)."""
        self._passes += 1
        if self.one_shot:
            if self._passes > 1:
                raise ConfigError(
                    "data: a one-shot iterator of batches allows one pass, and this analysis "
                    "needs several (the layers' states do not fit the memory budget at once)",
                    hint="pass a list or a DataLoader (iterable again), or raise memory_budget",
                )
            items: Iterable = self._rest_with_first()
        else:
            items = iter(self.source)
        start = 0
        for index, item in enumerate(items):
            x, y = self._pair(item, index) if index or not self.one_shot else item
            y = _as_targets(y, f"batch {index}")
            if y.shape[1] != self.target_dim:
                raise DataError(
                    f"data: batch {index} has {y.shape[1]} target column(s), batch 0 had "
                    f"{self.target_dim}"
                )
            yield Batch(start, x, y)
            start += y.shape[0]
        self.n_samples = start

    def _rest_with_first(self) -> Iterator:
        assert self._first is not None and self._rest is not None
        yield self._first
        yield from self._rest


def as_dataset(data: Any) -> ArrayDataset | BatchesDataset:
    """An ``(x, y)`` pair of arrays/tensors, or an iterable of ``(x, y)`` batches."""
    if isinstance(data, tuple) and len(data) == 2 and not _is_batch_list(data):
        return ArrayDataset(*data)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        return BatchesDataset(data)
    raise DataError(
        f"data: expected a file path, an (x, y) pair or an iterable of (x, y) batches, found "
        f"{type(data).__name__}"
    )


def _is_batch_list(pair: tuple) -> bool:
    """A 2-tuple whose items are themselves (x, y) pairs is two batches, not (x, y)."""
    return all(isinstance(item, (tuple, list)) and len(item) == 2 for item in pair)
