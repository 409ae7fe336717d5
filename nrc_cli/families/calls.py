"""The arguments of ``CollapseMonitor.update``: names, and calls whose arguments are swapped.

``update(y, output)`` takes the targets first because they are the one required argument
(``update(y)`` is a valid call, for a backbone without a prediction); the keywords
``target=`` and ``preds=`` (torchmetrics' names) say the same. A call that passes the model's
output first is refused where the values show it (see :func:`swapped_problem`); where they do
not (a regression whose prediction has the targets' shape) no check can tell, which is why
the order is not changed (docs/api.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families.outputs import describe_output

__all__ = ["update_arguments"]

_ORDER_HINT = "call update(y, output) or update(target=y, preds=output): the targets come first"


def update_arguments(y: Any, output: Any, target: Any, preds: Any) -> tuple[Any, Any]:
    """``(y, output)`` of one ``update`` call, from its positional or keyword arguments."""
    if target is not None:
        if y is not None:
            raise ConfigError("update(): the targets were given twice, as y and as target=")
        y = target
    if preds is not None:
        if output is not None:
            raise ConfigError("update(): the model's output was given twice, as output and preds=")
        output = preds
    if y is None:
        raise ConfigError("update(): no targets", hint=_ORDER_HINT)
    problem = swapped_problem(y, output)
    if problem is not None:
        raise DataError(f"update(): {problem}", hint=_ORDER_HINT)
    _check_real("y", y)
    if isinstance(output, dict):
        parts = list(output.values())
    else:
        parts = list(output) if isinstance(output, (tuple, list)) else [output]
    for part in parts:
        _check_real("output", part)
    return y, output


def _check_real(what: str, v: Any) -> None:
    """Refuse a complex tensor or array: its imaginary part would be dropped silently."""
    complex_ = (isinstance(v, torch.Tensor) and v.dtype.is_complex) or (
        isinstance(v, np.ndarray) and np.iscomplexobj(v)
    )
    if complex_:
        raise DataError(
            f"update(): {what} is complex (dtype {str(v.dtype).removeprefix('torch.')}); "
            "expected real numbers (floats, or integer labels)",
            hint="pass the real part (x.real) or the magnitude (x.abs()) if that is what you mean",
        )


def _array(v: Any) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def _integer(v: torch.Tensor | np.ndarray) -> bool:
    if isinstance(v, torch.Tensor):
        return not (v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool)
    return bool(np.issubdtype(v.dtype, np.integer))


def swapped_problem(y: Any, output: Any) -> str | None:
    """Why ``(y, output)`` looks like ``(output, y)``, or None where nothing shows it."""
    looks_like_output = isinstance(y, (tuple, dict)) or hasattr(y, "to_tuple")
    if looks_like_output and (output is None or _array(output)):
        return (
            f"the targets are {describe_output(y)}, which is what a model returns; "
            "the output and the targets look swapped"
        )
    scores_first = (
        _array(y) and _array(output) and y.ndim == 2 and y.shape[1] >= 2 and not _integer(y)
    )
    if scores_first and output.ndim == 1 and _integer(output) and output.shape[0] == y.shape[0]:
        return (
            f"the targets are a float matrix of shape {list(y.shape)} and the output a "
            f"vector of {output.shape[0]} integers: class labels and the model's scores "
            "look swapped"
        )
    return None
