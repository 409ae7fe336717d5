"""A monitor's passes over the data: the state a :class:`~nrc_cli.monitor.CollapseMonitor`
accumulates, whatever the family, and how it combines.

The monitor owns the hooks and the bookkeeping of a stream (samples, forward order); a family
(:mod:`nrc_cli.families`) says which accumulators a layer gets and how a batch updates them;
these modules hold the state in between:

* :mod:`~nrc_cli.passes.first`: :class:`FirstPass`, every layer's accumulators and the
  prediction's, made at the first batch (:func:`first_accumulators`, with
  :func:`single_pass_sketches` under a memory budget; :func:`plan_row`, how a layer was
  accumulated); it merges, joins and reduces across ranks;
* :mod:`~nrc_cli.passes.second`: :class:`SecondPass`, a second pass over the same data for a
  family with one (``second_pass``: the nearest-class-mean pass of a classifier), fed through
  the family's ``second_accumulator`` and ``update_second``;
* :mod:`~nrc_cli.passes.combining`: the checks, before anything changes, that a merge, a join
  or a data-parallel sum gives the right numbers. They read only the accumulators' declared
  interface (:mod:`nrc_cli.accumulate.base`), never their classes;
* :mod:`~nrc_cli.passes.reduce`: :func:`reduce_passes`, a monitor's passes summed over the
  ranks of a data-parallel run (``all_reduce``), once the ranks agree that they can be;
* :mod:`~nrc_cli.passes.states`: a pass's layers in a monitor's flat state dict
  (``layer/<layer>/<kind>/<state>``, ``omega/<layer>``) and the checks of a state read back;
* :mod:`~nrc_cli.passes.saved`: a monitor's state dict read back whole (:func:`state_header`,
  :func:`load_passes`), checked in full before a monitor takes it.
"""

from __future__ import annotations

from nrc_cli.passes.combining import check_options
from nrc_cli.passes.first import (
    FirstPass,
    first_accumulators,
    plan_row,
    single_pass_sketches,
    sketched_size,
)
from nrc_cli.passes.reduce import reduce_passes
from nrc_cli.passes.saved import load_passes, state_header
from nrc_cli.passes.second import SecondPass
from nrc_cli.passes.states import layer_state, load_layer_states

__all__ = [
    "FirstPass",
    "SecondPass",
    "check_options",
    "first_accumulators",
    "layer_state",
    "load_layer_states",
    "load_passes",
    "plan_row",
    "reduce_passes",
    "single_pass_sketches",
    "sketched_size",
    "state_header",
]
