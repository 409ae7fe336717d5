"""A monitor's state dict read back: :func:`state_header` (its layers' order and its task)
and :func:`load_passes` (both passes), checked in full before a monitor takes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from nrc_cli.capture import WeightLayer
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.options import PRECISIONS
from nrc_cli.passes.combining import feature_width
from nrc_cli.passes.first import FirstPass
from nrc_cli.passes.second import SecondPass
from nrc_cli.passes.states import check_counts, check_numbers

if TYPE_CHECKING:
    from nrc_cli.families.regression import RegressionFamily

__all__ = ["load_passes", "state_header"]


def state_header(
    state: Mapping[str, torch.Tensor], names: Sequence[str], tasks: Sequence[str]
) -> tuple[list[str], str | None]:
    """What a monitor's state dict says of itself: the forward order of its layers (``names``,
    the monitor's) and its task (one of ``tasks``; None: not recorded).

    Raises
    ------
    ConfigError
        Entries missing, or not indices into ``names`` and ``tasks``.
    """
    try:
        order = [names[_index(i, len(names))] for i in state["order"].tolist()]
        task = tasks[_index(state["task"], len(tasks))] if "task" in state else None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"not a CollapseMonitor state for this model's layers ({exc})") from None
    return order, task


def _index(value, size: int) -> int:
    """``value`` (a number or 0-d tensor) as an index into a sequence of ``size`` items."""
    i = int(value)
    if not 0 <= i < size:
        raise IndexError(f"index {i} out of range")
    return i


def load_passes(
    family: RegressionFamily, state: Mapping[str, torch.Tensor], layers: Mapping[str, WeightLayer]
) -> tuple[FirstPass, SecondPass | None]:
    """The passes of a monitor's state dict (:meth:`FirstPass.state_dict`, and
    :meth:`SecondPass.state_dict` when ``second_n`` is there), built apart from any monitor and
    checked in full (``layers``: the monitor's, by name), so that a monitor takes them only
    once nothing can fail.

    Raises
    ------
    ConfigError
        Not a state of ``family`` for these layers: accumulated in another precision (its
        ``precision``), missing or malformed entries, a layer not among ``layers`` or whose
        features have another width, a layer whose statistics cover some of the samples only,
        a second pass longer than the first.
    """
    first = FirstPass(family)
    second = None
    try:
        if "precision" in state:
            precision = PRECISIONS[_index(state["precision"], len(PRECISIONS))]
            if precision != family.precision:
                raise ConfigError(
                    f"a state accumulated in {precision} precision, for a monitor of "
                    f"precision {family.precision}"
                )
        check_numbers(state)
        first.load_state_dict(state, layers)
        check_counts(first.n, first.predictions)
        for name, accs in first.accs.items():
            width = feature_width(accs)
            if width is not None and width != layers[name].in_dim:
                raise ValueError(
                    f"layer '{name}' has {layers[name].in_dim} input features, the state {width}"
                )
        short = first.incomplete()
        if short:
            raise ValueError(f"layer(s) {', '.join(short)} hold some of the {first.n} samples")
        if "second_n" in state:
            if not family.second_pass:
                raise ValueError(f"task {family.task} has no second pass")
            second = SecondPass(family, first.accs)
            second.load_state_dict(state)
            if not 0 <= second.n <= first.n:
                raise ValueError(f"a second pass of {second.n} samples, of {first.n}")
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError, DataError) as exc:
        raise ConfigError(f"not a CollapseMonitor state for this monitor: {exc}") from None
    return first, second
