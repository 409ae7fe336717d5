"""A monitor's passes summed over the ranks of a data-parallel run
(:meth:`~nrc_cli.monitor.CollapseMonitor.all_reduce`): :func:`reduce_passes`."""

from __future__ import annotations

from nrc_cli.distributed import Group
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.passes.first import FirstPass
from nrc_cli.passes.second import SecondPass

__all__ = ["reduce_passes"]


def reduce_passes(
    first: FirstPass, second: SecondPass | None, names: list[str], ran: int, group: Group
) -> None:
    """Sum a monitor's pass over the ranks of ``group`` (:meth:`CollapseMonitor.all_reduce`),
    after checking on every rank that the ranks agree: each has seen a batch, all are in the
    same pass, that pass was not reduced already, their forward passes ran the same layers
    (``ran``: how many), and (:func:`check_alike`) their states are alike.
    ``first``/``second``: the monitor's passes (``second`` None before the second begins).
    """
    phase = 0 if first.t is None else 1 if second is None else 2
    low, high = group.agree(phase, "min"), group.agree(phase, "max")
    if low == 0:
        raise ConfigError(
            f"rank {group.rank}: CollapseMonitor.all_reduce() before any batch"
            if phase == 0
            else "CollapseMonitor.all_reduce(): another rank has seen no batch",
            hint="give every rank at least one batch",
        )
    if low != high:
        raise DataError(
            "CollapseMonitor.all_reduce(): some ranks are in the second pass, others not",
            hint="call begin_second_pass() on every rank, after all_reduce()",
        )
    reduced = (first if second is None else second).world_size > 1
    if group.agree(int(reduced), "max"):
        which = "first" if second is None else "second"
        raise ConfigError(
            f"CollapseMonitor.all_reduce(): the {which} pass was reduced already; "
            "reducing it again would count the other ranks' samples twice",
            hint="call all_reduce() once per pass; reset() before the next run",
        )
    if second is not None:
        if group.agree(int(first.world_size != group.world_size), "max"):
            raise ConfigError(
                "CollapseMonitor.all_reduce(): the second pass began before the first "
                "was reduced, so each rank's nearest class means were its own",
                hint="call all_reduce(group) after the first pass, then "
                "begin_second_pass() on every rank",
            )
        second.reduce(group, names)
        return
    if group.agree(ran, "min") != group.agree(ran, "max"):
        raise DataError(
            "the ranks' forward passes ran different layers; their statistics would cover "
            "different samples",
            hint="exclude layers that do not run on every batch",
        )
    try:
        first.reduce(group, names)
    except ValueError as exc:
        raise ConfigError(
            f"CollapseMonitor.all_reduce(): {exc}",
            hint="build every rank's monitor alike: the same model and options",
        ) from None
