"""A monitor's passes: their accumulators, state dicts, merges and joins (nrc_cli.passes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ranks import run_ranks
from torch import nn

from nrc_cli.accumulate.base import Accumulator
from nrc_cli.capture import weight_layers
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families import RegressionFamily
from nrc_cli.options import AnalysisOptions
from nrc_cli.passes import (
    FirstPass,
    SecondPass,
    first_accumulators,
    layer_state,
    load_layer_states,
    plan_row,
    single_pass_sketches,
    sketched_size,
)


def test_layer_states_round_trip_and_a_budget_that_needs_two_passes_is_refused():
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    layers = weight_layers(model)
    family = RegressionFamily.from_options(AnalysisOptions())
    cpu = torch.device("cpu")
    accs = first_accumulators(family, layers, 2, 8, cpu, {"0": 8})
    assert sketched_size(accs["0"]) == 8 and sketched_size(accs["2"]) is None
    assert set(accs["2"]) == {"moments", "gram"}  # the possible head keeps its Gram
    z, y = torch.randn(8, 32, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    family.update_layer(accs["2"], z, y)
    family.update_layer(accs["0"], torch.randn(8, 6, dtype=torch.float64), y)
    state = {k: v for name, a in accs.items() for k, v in layer_state(name, a).items()}
    assert "omega/0" in state and "layer/2/gram/n" in state
    loaded = load_layer_states(family, state, ["0", "2"])
    for name in accs:
        assert layer_state(name, loaded[name]).keys() == layer_state(name, accs[name]).keys()
    again = loaded["2"]["moments"].compute()
    assert torch.equal(again.cov_z, accs["2"]["moments"].compute().cov_z)
    with pytest.raises(ConfigError, match="state of layer '2', which this monitor"):
        load_layer_states(family, state, ["0"])
    row = plan_row(family, layers[0], 2, 8, pass_index=1, sketch_size=8, spectrum="nystrom")
    assert row["accumulator"] == "sketch" and row["sketch_size"] == 8 and row["bytes"] > 0
    # Room for either layer's state, not for both at once.
    wide = weight_layers(nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 2)))
    needs = [family.layer_need(w, 2, 8) for w in wide]
    room = max(min(n.exact_state + n.exact_temp, n.sketch_state + n.sketch_temp) for n in needs)
    with pytest.raises(ConfigError, match="memory_budget tiny: the 2 layers' states need 2"):
        single_pass_sketches(family, wide, 2, 8, room, "tiny")
    both = sum(n.exact_state + n.exact_temp for n in needs)
    assert single_pass_sketches(family, wide, 2, 8, both, "ample") == {}


def test_only_a_family_with_a_second_pass_begins_one():
    family = RegressionFamily.from_options(AnalysisOptions())
    with pytest.raises(NotImplementedError, match="regression family has no second pass"):
        SecondPass(family, {"0": {}})


def test_a_first_pass_round_trips_through_its_state_dict_and_merges_only_like_passes():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    layers = weight_layers(model)
    family = RegressionFamily.from_options(AnalysisOptions())
    g = torch.Generator().manual_seed(0)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    features = {w.name: torch.randn(16, w.in_dim, generator=g, dtype=torch.float64) for w in layers}
    first = FirstPass(family)
    first.device = torch.device("cpu")
    first.start(layers, y, {})
    first.update(features, y, y + 0.1)
    assert (first.n, first.t, first.batch, first.has_prediction) == (16, 2, 16, True)
    again = FirstPass(family)
    again.load_state_dict(first.state_dict(), ["0", "2"])
    assert (again.n, again.t, again.pass_of) == (16, 2, {"0": 1, "2": 1})
    assert again.predictions.compute() == first.predictions.compute()
    with pytest.raises(DataError, match="target widths differ"):
        again.merge(FirstPass(family))
    first.check(y, has_prediction=True)
    with pytest.raises(DataError, match="a model output for some batches and none for others"):
        first.check(y, has_prediction=False)
    with pytest.raises(DataError, match="y has 1 target column"):
        first.check(y[:, :1], has_prediction=True)
    again.merge(first)
    assert again.n == 32 and again.state_dict()["layer/0/moments/n"] == 32
    with pytest.raises(DataError, match="cannot join: layer"):
        again.join(first)


# -- a new accumulator: declared in one place, combined without a change elsewhere ------------


class TargetSums(Accumulator):
    """An accumulator no module of the package knows: the column sums of the targets, of their
    squares and (with a test matrix Ω, p×s) of the features times Ω."""

    def __init__(self, omega: torch.Tensor | None = None) -> None:
        super().__init__()
        self.omega = omega
        self.add_state("n", 0)
        self.add_state("sy", None, shape=("t",))
        self.add_state("syy", None, shape=("t",))
        if omega is not None:
            self.add_state("sz_omega", None, shape=("s",))
        self._p: int | None = None

    @property
    def width(self) -> int | None:
        return self._p

    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        if self.sy is None:
            self.sy = torch.zeros(y.shape[1], dtype=torch.float64)
            self.syy = torch.zeros(y.shape[1], dtype=torch.float64)
            if self.omega is not None:
                self.sz_omega = torch.zeros(self.omega.shape[1], dtype=torch.float64)
        self._p = z.shape[1]
        self.sy += y.sum(0)
        self.syy += (y * y).sum(0)
        if self.omega is not None:
            self.sz_omega += (z @ self.omega).sum(0)
        self.n += y.shape[0]

    def compute(self) -> torch.Tensor:
        return self.sy / self.n

    def targets_record(self) -> torch.Tensor | None:
        return None if not self.n else torch.cat([self.sy, self.syy]).cpu() / self.n


class TargetsFamily(RegressionFamily):
    """A family whose layers hold a :class:`TargetSums` only (sketched: with a test matrix)."""

    kinds = ("targets", "sketch")

    def layer_accumulators(self, layer, t, *, sketch_size, device, workspace):
        omega = self.test_matrix(layer.in_dim, sketch_size, device) if sketch_size else None
        return {"sketch" if omega is not None else "targets": TargetSums(omega)}

    def empty_accumulator(self, kind, device, omega=None):
        return TargetSums(omega)

    @staticmethod
    def update_layer(accs, z, y):
        next(iter(accs.values())).update(z, y)


def _targets_data(n: int = 32, seed: int = 1):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    layers = weight_layers(model)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    z = {w.name: torch.randn(n, w.in_dim, generator=g, dtype=torch.float64) for w in layers}
    return layers, z, y


def _targets_pass(layers, z, y, *, sketch=None, seed=0):
    first = FirstPass(TargetsFamily.from_options(AnalysisOptions(seed=seed)))
    first.device = torch.device("cpu")
    for start in range(0, len(y), 8):
        rows = slice(start, start + 8)
        if first.t is None:
            first.start(layers, y[rows], sketch or {})
        first.update({w.name: z[w.name][rows] for w in layers}, y[rows], None)
    return first


def test_a_new_accumulator_merges_joins_and_saves_by_what_it_declares():
    layers, z, y = _targets_data()
    stream = _targets_pass(layers, z, y)
    # Merged halves are the stream (the accumulator's declared sums, added).
    half = {k: v[:16] for k, v in z.items()}
    rest = {k: v[16:] for k, v in z.items()}
    merged = _targets_pass(layers, half, y[:16])
    merged.merge(_targets_pass(layers, rest, y[16:]))
    assert merged.n == stream.n == 32
    for name in ("0", "2"):
        ours, theirs = merged.accs[name]["targets"], stream.accs[name]["targets"]
        torch.testing.assert_close(ours.sy, theirs.sy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.syy, theirs.syy, rtol=1e-12, atol=1e-12)
    # Its state dict round-trips through the pass's.
    again = FirstPass(stream.family)
    again.load_state_dict(stream.state_dict(), ["0", "2"])
    assert torch.equal(again.accs["2"]["targets"].sy, stream.accs["2"]["targets"].sy)
    # A join compares what it records of the targets (targets_record): the same samples join,
    # other targets (the only record of them is this accumulator's) are refused.
    first_layer, last_layer = layers[:1], layers[1:]
    joined = _targets_pass(first_layer, z, y)
    joined.join(_targets_pass(last_layer, z, y))
    assert set(joined.accs) == {"0", "2"} and joined.passes == 2
    other = _targets_pass(first_layer, z, y)
    with pytest.raises(DataError, match="cannot join: the passes saw different data"):
        other.join(_targets_pass(last_layer, z, y + 1.0))


def test_a_new_accumulator_with_a_test_matrix_is_kept_with_it_and_merges_only_alike():
    layers, z, y = _targets_data(16, seed=2)
    sketched = _targets_pass(layers, z, y, sketch={"2": 3})
    acc = sketched.accs["2"]["sketch"]
    assert acc.known_dims() == {"p": 8, "s": 3} and sketched_size(sketched.accs["2"]) == 3
    state = layer_state("2", sketched.accs["2"])
    assert torch.equal(state["omega/2"], acc.omega) and "layer/2/sketch/sz_omega" in state
    loaded = load_layer_states(sketched.family, sketched.state_dict(), ["0", "2"])
    assert torch.equal(loaded["2"]["sketch"].sz_omega, acc.sz_omega)
    sketched.merge(_targets_pass(layers, z, y, sketch={"2": 3}))
    assert sketched.n == 32
    with pytest.raises(DataError, match="layer '2': cannot merge sketches built with different"):
        sketched.merge(_targets_pass(layers, z, y, sketch={"2": 3}, seed=1))


REDUCE_SCRIPT = """
import json, sys
sys.path[:0] = {tests!r}
from test_passes import _targets_data, _targets_pass
from nrc_cli.distributed import launch_from_env, process_group
from nrc_cli.errors import ConfigError
from nrc_cli.passes import reduce_passes

launch = launch_from_env()
layers, z, y = _targets_data(40)
rows = slice(0, 24) if launch.rank == 0 else slice(24, 40)
mine = _targets_pass(layers, {{k: v[rows] for k, v in z.items()}}, y[rows], sketch={{"2": 3}})
out = {{}}
with process_group(launch, "cpu") as group:
    reduce_passes(mine, None, ["0", "2"], 2, group)
    out["n"] = mine.n
    out["sums"] = {{n: {{k: v.tolist() for k, v in next(iter(a.values())).state_dict().items()}}
                   for n, a in mine.accs.items()}}
    other = _targets_pass(layers, {{k: v[rows] for k, v in z.items()}}, y[rows],
                          sketch={{"2": 3}}, seed=launch.rank)
    try:
        reduce_passes(other, None, ["0", "2"], 2, group)
    except ConfigError as exc:
        out["refused"] = exc.message
json.dump(out, open("rank%d.json" % launch.rank, "w"))
"""


def test_a_new_accumulator_sums_over_ranks_by_what_it_declares(tmp_path):
    here = Path(__file__).resolve().parent
    script = tmp_path / "reduce.py"
    script.write_text(REDUCE_SCRIPT.format(tests=[str(here), str(here.parent)]))
    ended, _ = run_ranks([str(script)], cwd=tmp_path, timeout=120)
    for e in ended:
        assert e.returncode == 0, e.stderr
    layers, z, y = _targets_data(40)
    stream = _targets_pass(layers, z, y, sketch={"2": 3})
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == 40
        for name, accs in stream.accs.items():
            for key, value in next(iter(accs.values())).state_dict().items():
                want = value.tolist()
                np.testing.assert_allclose(got["sums"][name][key], want, rtol=1e-12, atol=1e-12)
        assert "layer '2' is sketched with different test matrices" in got["refused"]
