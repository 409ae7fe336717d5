"""A monitor's state dict checked whole before any of it is taken (``load_state_dict``).

A layer's accumulators are kept in a monitor's flat state dict as
``layer/<layer>/<kind>/<state>``, with ``omega/<layer>`` for an accumulator built with a test
matrix (:func:`layer_state`, read back by :func:`load_layer_states`).

A state dict comes from a file, and a file may be damaged or forged: an entry removed, a
tensor cut short, another dtype, NaN. Every check here is pure and raises ``ValueError``
naming the entry (:func:`nrc_cli.passes.saved.load_passes` turns it into a
``ConfigError``), so that a refused state changes nothing:

* :func:`check_numbers`: the monitor's own plain numbers (``n``, ``target_dim``, ...);
* :func:`check_kinds`: a layer holds the accumulators its family makes, no others;
* :func:`check_omega`: a sketch's test matrix, p×s, float64, finite;
* :func:`check_accumulator`: one accumulator's entries against its declaration
  (:meth:`nrc_cli.accumulate.base.Accumulator.state_problem`: every entry there, of its
  dtype and shape, finite, its counts adding up);
* :func:`check_counts`: the prediction's samples are the state's.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

import torch

from nrc_cli.accumulate.base import Accumulator
from nrc_cli.errors import ConfigError

if TYPE_CHECKING:
    from nrc_cli.families.regression import RegressionFamily

__all__ = [
    "check_accumulator",
    "check_counts",
    "check_kinds",
    "check_numbers",
    "check_omega",
    "layer_state",
    "load_layer",
    "load_layer_states",
]

# The monitor's own numbers: required ones, and those older states may lack, with the values
# each may take (None: any whole number >= 0).
_REQUIRED = ("n", "target_dim")
_OPTIONAL: dict[str, tuple[int, ...] | None] = {
    "batch": None,
    "passes": None,
    "prediction": (-1, 0, 1),
    "world_size": None,
    "second_n": None,
    "second_world_size": None,
}


def _whole(key: str, value) -> int:
    """``value`` (a 0-d tensor) as a whole number, or ValueError naming ``key``."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_complex():
        found = type(value).__name__
        if isinstance(value, torch.Tensor):
            found = f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
        raise ValueError(f"entry '{key}': expected one whole number, found {found}")
    number = value.item()
    if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
        raise ValueError(f"entry '{key}': expected a whole number, found {number}")
    return int(number)


def check_numbers(state: Mapping[str, torch.Tensor]) -> None:
    """The monitor's plain numbers: ``n`` and ``target_dim`` there, each number whole and in
    its range, ``pass/<layer>`` >= 1."""
    for key in _REQUIRED:
        if key not in state:
            raise ValueError(f"entry '{key}' is missing")
    for key, value in state.items():
        if key in _REQUIRED or key in _OPTIONAL or key.startswith("pass/"):
            number = _whole(key, value)
            allowed = _OPTIONAL.get(key)
            low = 1 if key.startswith("pass/") or key.endswith("world_size") else 0
            if allowed is not None and number not in allowed:
                raise ValueError(f"entry '{key}': expected one of {allowed}, found {number}")
            if allowed is None and number < low:
                raise ValueError(f"entry '{key}': expected a whole number >= {low}, found {number}")


def check_kinds(family: RegressionFamily, name: str, kinds: Mapping[str, object]) -> None:
    """A layer's accumulators are of its family's kinds, with one main accumulator (the
    exact one, ``family.kinds[0]``, or a sketch)."""
    unknown = sorted(set(kinds) - set(family.kinds))
    if unknown:
        raise ValueError(
            f"entries 'layer/{name}/{unknown[0]}/...': unknown accumulator kind "
            f"{unknown[0]!r} for task {family.task} (expected {', '.join(family.kinds)})"
        )
    main = [k for k in (family.kinds[0], "sketch") if k in kinds]
    if len(main) != 1:
        found = "neither" if not main else "both"
        raise ValueError(
            f"layer '{name}': expected the entries of one of 'layer/{name}/{family.kinds[0]}/' "
            f"and 'layer/{name}/sketch/', found {found}"
        )


def check_omega(name: str, omega: torch.Tensor | None, p: int | None) -> None:
    """A sketch's test matrix ``omega/<name>``: there, p×s float64, finite."""
    key = f"omega/{name}"
    if omega is None:
        raise ValueError(f"entry '{key}' is missing (the test matrix of a sketched layer)")
    if not isinstance(omega, torch.Tensor) or omega.dtype != torch.float64 or omega.ndim != 2:
        found = type(omega).__name__
        if isinstance(omega, torch.Tensor):
            found = f"shape {tuple(omega.shape)}, dtype {omega.dtype}"
        raise ValueError(f"entry '{key}': expected a float64 matrix (p, s), found {found}")
    if p is not None and omega.shape[0] != p:
        raise ValueError(
            f"entry '{key}': expected {p} rows (the layer's width), found {omega.shape[0]}"
        )
    if omega.shape[1] < 1 or not bool(torch.isfinite(omega).all()):
        raise ValueError(f"entry '{key}': an empty or non-finite test matrix")


def check_accumulator(
    acc: Accumulator, fields: Mapping[str, torch.Tensor], prefix: str, *, p: int | None, t: int
) -> None:
    """One accumulator's entries (``prefix`` + name) against its declaration, with p the
    layer's feature width and t the target width (0: not known)."""
    dims = {} if p is None else {"p": p}
    if t:
        dims["t"] = t
    problem = acc.state_problem(fields, dims, prefix)
    if problem is not None:
        raise ValueError(problem)


def check_counts(n: int, predictions: Accumulator) -> None:
    """The prediction's accumulator holds the state's n samples, or none (no prediction).
    (A layer's counts are checked against n by the caller: ``FirstPass.incomplete``.)"""
    if predictions.n not in (0, n):
        raise ValueError(f"entry 'sse.n': {predictions.n} samples, but the state's n is {n}")


def load_layer(
    family: RegressionFamily,
    name: str,
    kinds: Mapping[str, Mapping[str, torch.Tensor]],
    omega: torch.Tensor | None,
    *,
    t: int,
) -> dict[str, Accumulator]:
    """The accumulators of layer ``name`` from its entries (``kinds``: kind -> field ->
    tensor; ``omega``: its ``omega/<name>``), each checked before it is loaded, on the
    device of its entries. Their shapes must agree with one another and with t; the feature
    width against the layer's is the caller's check (``load_passes``)."""
    check_kinds(family, name, kinds)
    accs = {}
    for kind, fields in kinds.items():
        if kind == "sketch":
            check_omega(name, omega, None)
        device = next(iter(fields.values())).device
        acc = family.empty_accumulator(kind, device, omega)
        check_accumulator(acc, fields, f"layer/{name}/{kind}/", p=None, t=t)
        acc.load_state_dict(dict(fields))
        accs[kind] = acc
    return accs


# -- a pass's layers in a state dict ---------------------------------------------------------


def layer_state(name: str, accs: Mapping[str, Accumulator]) -> dict[str, torch.Tensor]:
    """One layer's accumulators as ``layer/<name>/<kind>/<state>`` (and ``omega/<name>``)."""
    out: dict[str, torch.Tensor] = {}
    for kind, acc in accs.items():
        if acc.omega is not None:
            out[f"omega/{name}"] = acc.omega.detach().clone()
        for key, value in acc.state_dict().items():
            out[f"layer/{name}/{kind}/{key}"] = value
    return out


def load_layer_states(
    family: RegressionFamily, state: Mapping[str, torch.Tensor], names: Collection[str]
) -> dict[str, dict[str, Accumulator]]:
    """The accumulators of every layer in ``state`` (:func:`layer_state`'s keys), each of
    them one of ``names``, on the device of its state."""
    grouped: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if key.startswith("layer/"):
            _, rest = key.split("/", 1)
            name, kind, field = rest.rsplit("/", 2)
            if name not in names:
                raise ConfigError(f"state of layer '{name}', which this monitor does not watch")
            grouped.setdefault(name, {}).setdefault(kind, {})[field] = value
    t = int(state.get("target_dim", torch.tensor(0)))
    return {
        name: load_layer(family, name, kinds, state.get(f"omega/{name}"), t=t)
        for name, kinds in grouped.items()
    }
