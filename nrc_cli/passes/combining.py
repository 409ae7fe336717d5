"""Whether two passes combine: the checks of a merge, a join and a data-parallel sum.

A :class:`~nrc_cli.passes.FirstPass` merges with a pass over other samples, joins a pass of
other layers over the same samples, and sums with the passes of the other ranks of a
data-parallel run. Each combination is checked here in full before anything changes, and what
would give a wrong number is refused:

* a layer whose statistics would not cover every sample of the combined pass: accumulated in
  one of two merged passes only (built with other ``active=`` layers, or whose forward passes
  ran other layers), on some ranks only, or over some batches of its own pass only;
* accumulators that do not add up: a layer sketched in one pass and exact in the other, or
  with another feature width, sketch size or test matrix Ω (on another rank too: a checksum);
* for a join, passes over other data: other sample counts or target widths, or targets whose
  mean and covariance (a classifier's label counts), or the model's errors on them, differ
  beyond round-off. Two sample sets with the same targets throughout cannot be told apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from nrc_cli.accumulate.base import Accumulator, checksum, same_everywhere
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.options import AnalysisOptions

if TYPE_CHECKING:
    from nrc_cli.distributed import Group

__all__ = [
    "check_alike",
    "check_join",
    "check_merge",
    "check_options",
    "covers",
    "feature_width",
    "test_matrices",
]


class Pass(Protocol):
    """What the checks read of a pass (:class:`~nrc_cli.passes.FirstPass` is one)."""

    n: int
    t: int | None
    has_prediction: bool | None
    accs: dict[str, dict[str, Accumulator]]
    predictions: Accumulator


# Two records of the same samples' targets agree to this share of their scale (batches of
# other sizes sum in another order).
_ROUND_OFF = 1e-9


def test_matrices(accs: Mapping[str, Accumulator]) -> list[torch.Tensor]:
    """The test matrices Ω of a layer's sketches (none for an exact layer)."""
    return [acc.omega for acc in accs.values() if acc.omega is not None]


def feature_width(accs: Mapping[str, Accumulator]) -> int | None:
    """p, the width of the features a layer's accumulators summed (None before any)."""
    return next((acc.width for acc in accs.values() if acc.width is not None), None)


def covers(accs: Mapping[str, Accumulator], n: int) -> bool:
    """Whether every accumulator of a layer holds all ``n`` samples of its pass, or none does
    (a layer that did not run)."""
    counts = {acc.n for acc in accs.values()}
    return counts <= {n} or counts == {0}


def _ran(accs: Mapping[str, Accumulator] | None) -> bool:
    return accs is not None and any(acc.n for acc in accs.values())


def _layers(names: Sequence[str]) -> str:
    quoted = ", ".join(f"'{name}'" for name in names)
    return f"layer {quoted} is" if len(names) == 1 else f"layers {quoted} are"


# -- options ---------------------------------------------------------------------------------


def check_options(
    mine: AnalysisOptions,
    theirs: AnalysisOptions,
    mask_keys: tuple[str | None, str | None],
    *,
    other_outputs: bool,
) -> None:
    """Refuse to combine the states of two monitors built with options that change what a
    batch adds to the state: ``precision``, the ``mask_key`` (this monitor's, the other's) and,
    for a state fed the model's outputs (``other_outputs``), the ``output_key``. The options
    that only shape the metrics computed from the state are the combining monitor's.

    Raises
    ------
    ConfigError
        Naming the option and both values.
    """
    if theirs.precision != mine.precision:
        raise ConfigError(
            f"the two monitors accumulate in different precisions ({mine.precision}, "
            f"{theirs.precision}); the result would be reported as {mine.precision}"
        )
    if mask_keys[0] != mask_keys[1]:
        raise ConfigError(
            "the two monitors pool token features with different masks "
            f"(mask_key {mask_keys[0]!r}, {mask_keys[1]!r})"
        )
    if theirs.output_key != mine.output_key and other_outputs:
        raise ConfigError(
            "the two monitors take the prediction from different parts of the model's output "
            f"(output_key {mine.output_key!r}, {theirs.output_key!r})"
        )


# -- merge -----------------------------------------------------------------------------------


def check_merge(first: Pass, other: Pass) -> None:
    """Refuse to merge ``other`` into ``first`` (both non-empty) unless the result is one pass
    over both streams.

    Raises
    ------
    DataError
        Other target widths; model outputs in one pass only; a layer accumulated in one pass
        only, or over some of its pass's samples only; a layer sketched in one pass and exact
        in the other, or with another width or test matrix.
    """
    if other.t != first.t:
        raise DataError(f"cannot merge: target widths differ ({first.t} and {other.t})")
    if other.has_prediction != first.has_prediction:
        raise DataError("cannot merge a monitor fed model outputs with one fed none")
    names = [*first.accs, *(n for n in other.accs if n not in first.accs)]
    short = [n for n in names if not covers(first.accs.get(n, {}), first.n)]
    short += [n for n in names if not covers(other.accs.get(n, {}), other.n)]
    if short:
        raise DataError(
            f"cannot merge: {_layers(short)} accumulated over some of a monitor's samples only "
            "(a layer that did not run on every batch)",
        )
    mine = [n for n in names if _ran(first.accs.get(n)) and not _ran(other.accs.get(n))]
    theirs = [n for n in names if _ran(other.accs.get(n)) and not _ran(first.accs.get(n))]
    if mine or theirs:
        parts = [f"{_layers(mine)} accumulated in one monitor only (this one)"] if mine else []
        if theirs:
            parts.append(f"{_layers(theirs)} accumulated in one monitor only (the other)")
        raise DataError(
            f"cannot merge: {'; '.join(parts)}; its statistics would cover some of the merged "
            "samples only",
            hint="merge monitors that accumulate the same layers (the same active=), whose "
            "forward passes run the same layers",
        )
    for name in names:
        if not _ran(first.accs.get(name)):
            continue
        ours, their = first.accs[name], other.accs[name]
        if sorted(ours) != sorted(their):
            raise DataError(
                f"cannot merge: layer '{name}' is accumulated as {'+'.join(sorted(ours))} in "
                f"this monitor and as {'+'.join(sorted(their))} in the other (sketched in one "
                "only)",
                hint="merge monitors built with the same sketch= or memory_budget",
            )
        for kind, acc in their.items():
            problem = ours[kind].merge_problem(acc)
            if problem is not None:
                raise DataError(
                    f"cannot merge layer '{name}': {problem}",
                    hint="merge monitors of the same model built with the same options",
                )
    problem = first.predictions.merge_problem(other.predictions)
    if problem is not None:
        raise DataError(f"cannot merge the model's predictions: {problem}")


# -- join ------------------------------------------------------------------------------------


def _targets_seen(accs: Mapping[str, Accumulator]) -> torch.Tensor | None:
    """What a layer's state records of the targets, the same for every layer fed the same
    samples (each accumulator's ``targets_record``: their mean and covariance for regression,
    the count of each label for a classifier); None when it records nothing."""
    records = (acc.targets_record() for acc in accs.values())
    return next((record for record in records if record is not None), None)


def _agree(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Two records of the same samples agree, but for round-off (None: nothing recorded)."""
    if a is None or b is None:
        return True
    if a.shape != b.shape:
        return False
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-300)
    return bool(((a - b).abs() <= _ROUND_OFF * scale).all())


def _seen(first: Pass) -> torch.Tensor | None:
    return next((_targets_seen(accs) for accs in first.accs.values() if _ran(accs)), None)


def check_join(first: Pass, other: Pass) -> None:
    """Refuse to join ``other``'s layers to ``first`` unless it is a pass of other layers over
    the same samples.

    Raises
    ------
    DataError
        A layer in both passes; passes over other data (other sample counts or target widths,
        or other targets or predictions beyond round-off); a layer that covers some of its
        pass's samples only.
    """
    overlap = set(first.accs) & set(other.accs)
    if overlap:
        raise DataError(f"cannot join: layer(s) {', '.join(sorted(overlap))} in both")
    if other.n != first.n or other.t != first.t:
        raise DataError(
            f"cannot join: the passes saw different data ({first.n} and {other.n} samples)"
        )
    short = [n for p in (first, other) for n, accs in p.accs.items() if not covers(accs, p.n)]
    if short:
        raise DataError(
            f"cannot join: {_layers(short)} accumulated over some of its pass's samples only"
        )
    same = _agree(_seen(first), _seen(other))
    if same and first.has_prediction and other.has_prediction:
        a, b = first.predictions.state_dict(), other.predictions.state_dict()
        same = a.keys() == b.keys() and all(
            _agree(a[k].to(torch.float64).reshape(-1), b[k].to(torch.float64).reshape(-1))
            for k in a
        )
    if not same:
        raise DataError(
            f"cannot join: the passes saw different data (as many samples, {first.n}, but "
            "other targets or other predictions)",
            hint="join the passes of one plan over the same data, fed in the same batches",
        )


# -- a data-parallel sum ---------------------------------------------------------------------


def check_alike(first: Pass, group: Group, names: Sequence[str]) -> None:
    """Refuse, on every rank and before anything is summed, ranks whose passes cannot be
    summed (``group``: a :class:`nrc_cli.distributed.Group`; ``names``: every watched layer,
    in the same order on every rank). One checksum of everything that must agree; only when
    it differs, one check at a time, in the same order on every rank, names what differs.

    Raises
    ------
    ValueError
        Other target widths; a layer sketched on some ranks only, or with another feature
        width, sketch size or test matrix.
    DataError
        Model outputs fed on some ranks only; a layer that ran on some ranks only.
    """
    layers = []
    for name in names:
        accs = first.accs.get(name, {})
        kinds = sorted((kind, type(acc).__name__) for kind, acc in accs.items())
        shape = checksum(repr(kinds), feature_width(accs) or 0)
        layers.append((name, int(_ran(accs)), shape, checksum(*test_matrices(accs))))
    outputs = int(bool(first.has_prediction))
    if same_everywhere(group, checksum(first.t or 0, outputs, repr(layers))):
        return
    if not same_everywhere(group, first.t or 0):
        raise ValueError("the ranks' targets have different widths")
    if not same_everywhere(group, outputs):
        raise DataError(
            "the monitors of some ranks were fed the model's outputs, others not",
            hint="pass the output to update() on every rank, or on none",
        )
    for name, ran, shape, omega in layers:
        if not same_everywhere(group, ran):
            raise DataError(
                f"layer '{name}' ran on the samples of some ranks only; its statistics would "
                "cover some of the samples only",
                hint="exclude layers that do not run on every batch",
            )
        if not same_everywhere(group, shape):
            raise ValueError(
                f"layer '{name}' is accumulated differently on the ranks (sketched on some, "
                "exact on others, or with features of another width)"
            )
        if not same_everywhere(group, omega):
            raise ValueError(
                f"layer '{name}' is sketched with different test matrices on the ranks "
                "(another seed or sketch size)"
            )
    raise ValueError("the ranks' monitors are not alike")
