"""The pooled features of a first pass kept on disk, so a second pass need not run the model.

A classifier's nearest-class-mean columns need the class means before they can assign a
sample (docs/classification.md), so they take a second pass over the data. Where the pooled
features of every layer fit a disk budget, the first pass writes them, with the labels and
the model's predicted classes, to a :class:`FeatureSpill`; the second pass then reads them
back instead of running the model again. The features are written as float64 (a float32
input widened exactly), which is what the nearest-class-mean pass computes in, so its
numbers are the same as those of a second forward pass.

The file is an anonymous temporary file (``tempfile.TemporaryFile``: on Linux it never has a
name, elsewhere its name is removed at once), written and read sequentially: it is gone when
the process ends however it ends (an error, Ctrl-C, SIGTERM, even SIGKILL), and its pages sit
in the page cache, not in the process's memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from nrc_cli.errors import ConfigError

# The default budget: this share of the free space where the spill file goes.
DEFAULT_SHARE = 0.5


def default_directory() -> str:
    """Where a spill file goes by default: the system temporary directory."""
    return tempfile.gettempdir()


def default_budget(directory: str) -> int:
    """Half the free space of ``directory``'s file system, in bytes."""
    return int(shutil.disk_usage(directory).free * DEFAULT_SHARE)


def spill_bytes(n_samples: int, widths: Mapping[str, int]) -> int:
    """Bytes a spill of ``n_samples`` takes: float64 features of every layer, a float64
    label and an int64 predicted class per sample."""
    return n_samples * (8 * sum(widths.values()) + 16)


def size_text(n: int) -> str:
    """A size in bytes for a message: ``12.3 kB``, ``4.5 MB``, ``1.2 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@dataclass
class _Record:
    start: int
    rows: int
    layers: tuple[tuple[str, int], ...]  # (name, width) in the order written
    prediction: bool


class FeatureSpill:
    """First-pass batches (features by layer, labels, predictions) in a temporary file.

    Parameters
    ----------
    directory : str, optional
        Where the file goes (default: the system temporary directory).
    budget : int, optional
        Bytes the file may take (default: half the free space there). A batch that would
        go over it, or a full disk, ends the spill: :attr:`complete` turns False, the file
        is closed, and :attr:`reason` says why.
    """

    def __init__(self, directory: str | None = None, budget: int | None = None) -> None:
        self.directory = directory or default_directory()
        if not os.path.isdir(self.directory):
            raise ConfigError(f"--spill-dir: {self.directory!r} is not a directory")
        self.budget = default_budget(self.directory) if budget is None else budget
        try:
            # Closed by close() / the with block; the system frees it however the process ends.
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix="nrc-spill-")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                f"--spill-dir: cannot create a file in {self.directory!r}: {exc.strerror}",
                hint="give a writable directory with --spill-dir, or --spill-budget 0",
            ) from None
        self.bytes = 0
        self.complete = True
        self.reason: str | None = None
        self._records: list[_Record] = []

    # -- writing ----------------------------------------------------------------------------

    def write(
        self,
        start: int,
        features: Mapping[str, torch.Tensor],
        y: torch.Tensor,
        pred: torch.Tensor | None,
    ) -> None:
        """Append one batch: ``features`` (b, p) by layer, labels ``y`` (b, 1) float64, the
        predicted classes ``pred`` (b,) or None. Ends the spill instead when the budget or
        the disk is full."""
        if not self.complete:
            return
        b = y.shape[0]
        layers = tuple((name, int(z.shape[1])) for name, z in features.items())
        size = b * (8 * sum(p for _, p in layers) + 8 + (8 if pred is not None else 0))
        if self.bytes + size > self.budget:
            self._stop(f"the pooled features outgrew the spill budget ({size_text(self.budget)})")
            return
        try:
            self._put(y, torch.float64)
            if pred is not None:
                self._put(pred, torch.int64)
            for name, _ in layers:
                self._put(features[name], torch.float64)
            self._file.flush()  # a full disk is found now, not at the second pass
        except OSError as exc:
            self._stop(f"writing the spill file failed: {exc.strerror or exc}")
            return
        self.bytes += size
        self._records.append(_Record(start, b, layers, pred is not None))

    def _put(self, t: torch.Tensor, dtype: torch.dtype) -> None:
        a = t.detach().to(device="cpu", dtype=dtype).contiguous().numpy()
        self._file.write(a.data.cast("B"))

    def _stop(self, reason: str) -> None:
        self.complete, self.reason = False, reason
        self._records.clear()
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def read(
        self, device: torch.device | str | None = None
    ) -> Iterator[tuple[int, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]]:
        """The batches as written: ``(start, features, y, pred)``, on ``device``."""
        if not self.complete:
            raise RuntimeError(f"the spill is incomplete: {self.reason}")
        self._file.flush()
        self._file.seek(0)
        for rec in self._records:
            y = self._get((rec.rows, 1), np.float64, device)
            pred = self._get((rec.rows,), np.int64, device) if rec.prediction else None
            features = {
                name: self._get((rec.rows, p), np.float64, device) for name, p in rec.layers
            }
            yield rec.start, features, y, pred

    def _get(self, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
        a = np.empty(shape, dtype=dtype)
        view = a.data.cast("B")
        got = self._file.readinto(view)
        if got != view.nbytes:
            raise OSError(f"the spill file ended early ({got} of {view.nbytes} bytes)")
        t = torch.from_numpy(a)
        return t if device is None else t.to(device)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the file (it has no name: closing it frees its space)."""
        if not self._file.closed:
            with contextlib.suppress(OSError):  # a write that failed: its data is dropped
                self._file.close()

    def __enter__(self) -> FeatureSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
