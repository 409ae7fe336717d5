"""A second pass over the same data, for a family with one: :class:`SecondPass`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator
from nrc_cli.errors import DataError
from nrc_cli.passes.states import check_accumulator

if TYPE_CHECKING:
    from nrc_cli.distributed import Group
    from nrc_cli.families.regression import RegressionFamily

__all__ = ["SecondPass"]

_I64 = torch.int64


class SecondPass:
    """A second pass over the same data, for a family with one (``family.second_pass``).

    One accumulator per layer, made by ``family.second_accumulator`` from that layer's
    first-pass state ``first``, and fed each batch's features with ``family.update_second``;
    ``n`` counts the samples seen. The pass is complete once it has seen the first pass's.

    Raises
    ------
    DataError
        When the first-pass state cannot start a second pass.

    In a data-parallel run every rank builds its pass from the reduced first pass (the same
    class means everywhere), feeds it its own share of the data, and :meth:`reduce` sums the
    counts over the ranks.
    """

    def __init__(
        self, family: RegressionFamily, first: Mapping[str, dict[str, Accumulator]]
    ) -> None:
        self.family = family
        with torch.inference_mode(False), torch.no_grad(), single_threaded():
            try:
                self.accs = {name: family.second_accumulator(a) for name, a in first.items()}
            except ValueError as exc:
                raise DataError(str(exc)) from None
        self.n = 0
        self.world_size = 1  # processes whose samples are in the counts (reduce)

    def update(
        self,
        features: Mapping[str, torch.Tensor],
        y: torch.Tensor,
        pred: torch.Tensor | None,
        *,
        start: int,
        limit: int,
    ) -> None:
        """Fold one batch in: ``features`` by layer, the targets ``y`` (b, t), the model's
        prediction (or None); ``start`` is the batch's first sample, ``limit`` the samples of
        the first pass."""
        b = y.shape[0]
        if self.n + b > limit:
            raise DataError(
                f"the second pass has seen {self.n + b} samples, more than the "
                f"{limit} of the first",
                hint="run the same data through the model again, once",
            )
        with torch.inference_mode(False), torch.no_grad():
            for name, acc in self.accs.items():
                z = features.get(name)
                if z is None:
                    continue
                try:
                    self.family.update_second(acc, z, y, pred, start)
                except ValueError as exc:
                    raise DataError(
                        f"second pass: {exc}",
                        hint="the second pass must see the same data as the first",
                    ) from None
        self.n += b

    def reduce(self, group: Group, names: Sequence[str]) -> None:
        """Sum the counts of every rank's share of the pass in place (``group``: a
        :class:`nrc_cli.distributed.Group`; ``names``: every watched layer, in the same order
        on every rank). Every rank must have built its pass from the same first pass."""
        for name in names:
            if name in self.accs:
                group.reduce(self.accs[name])
        self.n = group.agree(self.n, "sum")
        self.world_size = group.world_size

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``second_n``, ``second_world_size`` once reduced over several processes, and
        ``second/<layer>/<state>``, for a monitor's state dict."""
        out = {"second_n": torch.tensor(self.n, dtype=_I64)}
        if self.world_size > 1:
            out["second_world_size"] = torch.tensor(self.world_size, dtype=_I64)
        for name, acc in self.accs.items():
            for key, value in acc.state_dict().items():
                out[f"second/{name}/{key}"] = value
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the keys :meth:`state_dict` wrote (a monitor's whole state dict will do)."""
        self.n = int(state["second_n"])
        self.world_size = int(state.get("second_world_size", torch.tensor(1)))
        for name, acc in self.accs.items():
            prefix = f"second/{name}/"
            fields = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            check_accumulator(acc, fields, prefix, p=None, t=0)
            acc.load_state_dict(fields)

    def to(self, device: torch.device) -> SecondPass:
        """Move the state to ``device``; return self."""
        for acc in self.accs.values():
            acc.to(device)
        return self
