"""One batch: the features a forward pass captured, paired with the batch's targets.

:func:`as_targets` reads the targets; :func:`paired_features` pools what the hooks held (token axes with the batch's mask, rows of
parts with the declared :mod:`~nrc_cli.segments`) to one row per sample and checks that every
layer has as many rows as the targets; :func:`check_finite` refuses a nan or inf.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from nrc_cli._threads import single_threaded
from nrc_cli.capture import PendingPool
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.segments import Declared, segment_pool

__all__ = ["PARTIAL_HINT", "Paired", "as_targets", "check_finite", "paired_features", "record_rows"]

PARTIAL_HINT = (
    "exclude layers that do not run on every batch, or measure them over the samples they "
    "saw with partial_layers=[...] (--partial-layers GLOB)"
)


def as_targets(y) -> torch.Tensor:
    """The targets ``y`` of ``update(y, ...)`` as a (b, t) float64 tensor, checked finite."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise DataError(f"update(): expected y as a tensor or array, found {type(y).__name__}")
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2:
        raise DataError(f"update(): expected y of shape (b, t) or (b,), found {list(y.shape)}")
    y = y.detach().to(torch.float64)
    if not bool(torch.isfinite(y).all()):
        raise DataError("update(): y has non-finite values (nan or inf)")
    return y


@dataclass
class Paired:
    """A batch's features by layer, (b, p) each; the kind of each layer's rows (``sample``,
    ``graph``, or a segments' kind such as ``node``); warnings about ambiguous rows."""

    features: dict[str, torch.Tensor]
    rows: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    keep: dict[str, torch.Tensor] = field(default_factory=dict)  # partial layers: samples seen


def paired_features(
    pending: Mapping[str, torch.Tensor | PendingPool],
    b: int,
    *,
    mask: torch.Tensor | None = None,
    ran: Sequence[str] = (),
    again: Sequence[str] = (),
    segments: Declared | None = None,
    rows_before: Mapping[str, str] | None = None,
    partial: Collection[str] = (),
) -> Paired:
    """The features one forward pass captured, pooled, each with the ``b`` rows of the targets.

    ``pending`` holds what the hooks captured (a :class:`PendingPool` is pooled with ``mask``);
    ``ran`` the layers that ran in any forward pass so far; ``again`` those that ran in earlier
    batches and so must run in this one too. A layer whose row count is not ``b`` is pooled
    by the ``segments`` declared for the batch (its rows are parts of samples: atoms, edges,
    points); ``rows_before`` holds each layer's kind of rows in earlier batches. The layers in
    ``partial`` may skip a batch or have no rows for some samples: ``keep`` then says which
    samples they saw.

    Raises
    ------
    DataError
        Rows that are neither the samples nor a declared segmentation (the message says what
        it saw), a sample that has no row in a layer, a layer that stopped running.
    """
    if not pending:
        if not ran:
            raise ConfigError(
                "none of the selected weight layers ran during the forward pass",
                hint="run the model inside 'with monitor:' before update(); check the "
                "layer selection",
            )
        raise DataError(
            "update() found no captured features: run the model on the batch inside "
            "'with monitor:' first",
        )
    declared = segments if segments is not None else Declared()
    before = rows_before or {}
    out = Paired({})
    for name, z in pending.items():
        if isinstance(z, PendingPool):
            z = z.pool(mask)
        found = declared.resolve(name, int(z.shape[0]), b, before.get(name))
        if found.warning:
            out.warnings.append(found.warning)
        if found.segments is not None:
            seg = found.segments
            with single_threaded(z.device):
                z, counts = segment_pool(z, seg.owner(b), b, seg.reduce)
            empty = (counts == 0).nonzero()
            if empty.numel() and name in partial:
                out.keep[name] = counts > 0
            elif empty.numel():
                raise DataError(
                    f"layer '{name}': sample {int(empty[0])} of the batch has no {seg.kind} "
                    f"rows ({empty.numel()} of {b} samples have none), so the layer has no "
                    "features for it",
                    hint=PARTIAL_HINT,
                )
        out.features[name] = z
        if not found.tentative:
            out.rows[name] = found.kind
    missing = [n for n in again if n not in out.features and n not in partial]
    if missing:
        raise DataError(
            f"layer(s) {', '.join(missing)} ran in earlier batches but not in this one; "
            "their statistics would cover different samples",
            hint=PARTIAL_HINT,
        )
    return out


def record_rows(
    rows: list[dict],
    plan_layers: list[dict],
    kinds: Mapping[str, str],
    counts: Mapping[str, int],
    n: int,
) -> None:
    """Record each layer's kind of rows (``rows``) and samples (``n_samples``) in its plan
    entry, and in the note of a layer pooled from rows of parts (``rows of nodes pooled per
    sample``) or seen by some of the ``n`` samples only (whose ``nrc4_ratio`` is null: the
    model's error is over every sample)."""
    for entry in plan_layers:
        entry["rows"] = kinds.get(entry["layer"], "sample")
        entry["n_samples"] = counts.get(entry["layer"], n)
    for row in rows:
        kind, seen = kinds.get(row["layer"], "sample"), counts.get(row["layer"], n)
        said = [f"rows of {kind}s pooled per sample"] if kind not in ("sample", "graph") else []
        if seen < n and "nrc4_ratio" in row:
            row["nrc4_ratio"] = None
            said.append(
                f"seen by {seen} of {n} samples (partial_layers): its metrics are over those; "
                "nrc4_ratio is null, the model's error being over all"
            )
        if said:
            row["note"] = "; ".join([row["note"], *said] if row.get("note") else said)


def check_finite(features: Mapping[str, torch.Tensor], start: int) -> None:
    """Refuse features with a nan or inf (``start``: the batch's first sample, for messages)."""
    # One reduction per layer finds any nan/inf (they propagate into the sum; a float32 sum
    # that merely overflows is taken again in float64), read together: on a GPU each read
    # stalls the stream.
    sums = {}
    for name, z in features.items():
        with single_threaded(z.device):
            sums[name] = z.sum()
    if bool(torch.isfinite(torch.stack([s.to(torch.float64) for s in sums.values()])).all()):
        return
    for name, z in features.items():
        if bool(torch.isfinite(sums[name])):
            continue
        if z.dtype != torch.float64 and bool(torch.isfinite(z.sum(dtype=torch.float64))):
            continue  # finite features whose float32 sum overflowed: float64 holds them
        bad = ~torch.isfinite(z).all(dim=1)
        row = int(bad.nonzero()[0]) if bool(bad.any()) else None
        if row is None:
            raise DataError(
                f"layer '{name}': features too large to sum in float64 in the batch "
                f"starting at sample {start}",
                hint="check the input scale",
            )
        raise DataError(
            f"layer '{name}': non-finite features (nan or inf) at sample {start + row}",
            hint="the model overflows on this input; check the input scale, or use --dtype float32",
        )
