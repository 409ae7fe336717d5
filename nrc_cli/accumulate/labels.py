"""Class labels: reading a batch of targets as labels, and a classifier's output as classes.

The classification family (:mod:`nrc_cli.families`) and the data layer's ``task="auto"`` read
targets through these helpers; the per-class accumulators (:mod:`nrc_cli.accumulate.classes`)
take the int64 labels they return.
"""

from __future__ import annotations

import numpy as np
import torch

_F64 = torch.float64
_I64 = torch.int64


def predicted_classes(output: torch.Tensor) -> torch.Tensor:
    """The class a classifier predicts for each sample of a batch, as int64 labels (b,).

    ``output`` of shape (b, K) with K ≥ 2 (or (b, …) flattened to that): the argmax (the first
    one on a tie). A single output, (b,) or (b, 1): a binary classifier whose prediction is 1
    when the output is > 0, else 0.
    """
    if output.ndim == 0:
        raise ValueError("expected a batch of outputs, got a scalar")
    flat = output.reshape(output.shape[0], -1)
    if flat.shape[1] == 1:
        return (flat[:, 0] > 0).to(_I64)
    return flat.argmax(dim=1)


def is_label_array(dtype: torch.dtype | np.dtype | str, shape: tuple[int, ...]) -> bool:
    """Whether ``task="auto"`` reads a target array as class labels: 1-D and of integer type.

    ``dtype`` is a torch or numpy dtype (or its name); booleans are not labels.
    """
    if isinstance(dtype, torch.dtype):
        integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    else:
        integer = np.issubdtype(np.dtype(dtype), np.integer)
    return len(shape) == 1 and bool(integer)


def as_labels(
    y: torch.Tensor, *, n_outputs: int | None = None, offset: int | None = None
) -> torch.Tensor:
    """Class labels (int64, shape (b,)) from a batch of targets, checked.

    ``y`` of shape (b,) or (b, 1) holds the labels themselves (integers, or floats with integral
    values); ``y`` of shape (b, K), K ≥ 2, holds one-hot rows, read as their argmax. With
    ``n_outputs`` (the model's number of outputs) every label must be one of its classes:
    0..K−1, or 0 and 1 for a single-output (binary) classifier.

    Raises
    ------
    ValueError
        On a non-integral or non-finite value, a negative label, a label beyond the model's
        outputs, or a row that is not one-hot; the message names the row within the batch, or
        the sample ``offset + row`` when ``offset`` (the batch's first sample) is given.
    """

    def where(row: int) -> str:
        return f"row {row}" if offset is None else f"sample {offset + row}"

    if y.ndim == 2 and y.shape[1] >= 2:
        flat = y.to(_F64)
        ones = flat == 1
        bad = ~(((flat == 0) | ones).all(dim=1) & (ones.sum(dim=1) == 1))
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ValueError(
                f"targets of {y.shape[1]} columns are read as one-hot labels, but {where(row)} "
                f"is not one-hot ({show_values(y[row])})"
            )
        if n_outputs is not None and n_outputs >= 2 and y.shape[1] != n_outputs:
            raise ValueError(
                f"one-hot labels of {y.shape[1]} columns, but the model has {n_outputs} outputs"
            )
        labels = flat.argmax(dim=1)
    elif y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        flat = y.reshape(-1)
        if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
            if flat.is_complex() or flat.dtype == torch.bool:
                raise ValueError(f"labels must be integers, found dtype {flat.dtype}")
            wide = flat.to(_F64)
            bad = ~torch.isfinite(wide) | (wide != torch.round(wide))
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                raise ValueError(
                    f"labels must be integers, found {float(wide[row])!r} at {where(row)}"
                )
            if bool((wide.abs() > 2**53).any()):
                raise ValueError("labels must be integers below 2**53")
        labels = flat.to(_I64)
    else:
        raise ValueError(
            f"expected labels of shape (b,), (b, 1) or one-hot (b, K), got {tuple(y.shape)}"
        )
    if labels.numel():
        low = int(labels.min())
        if low < 0:
            row = int((labels < 0).nonzero()[0])
            raise ValueError(f"labels must be >= 0, found {low} at {where(row)}")
        if n_outputs is not None:
            limit = 2 if n_outputs == 1 else n_outputs
            high = int(labels.max())
            if high >= limit:
                row = int((labels >= limit).nonzero()[0])
                what = (
                    "single output (a binary classifier: labels 0 and 1)"
                    if n_outputs == 1
                    else f"{n_outputs} outputs (labels 0..{n_outputs - 1})"
                )
                raise ValueError(f"label {high} at {where(row)} is beyond the model's {what}")
    return labels


def show_values(row: torch.Tensor, limit: int = 6) -> str:
    """The first ``limit`` values of ``row`` for a message: ``[0, 1, 0.5, ...]``."""
    values = [f"{float(v):g}" for v in row[:limit]]
    return "[" + ", ".join(values) + (", ...]" if row.numel() > limit else "]")


def floating(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, as float32 or float64 (other dtypes become float64)."""
    dtype = x.dtype if x.dtype in (torch.float32, _F64) else _F64
    return x.to(device=device, dtype=dtype)


def check_label_batch(labels: torch.Tensor, b: int) -> None:
    """Refuse ``labels`` that are not ``b`` integers in one dimension (ValueError)."""
    if labels.ndim != 1 or labels.shape[0] != b:
        raise ValueError(f"expected labels of shape ({b},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
