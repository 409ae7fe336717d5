"""The metric families and the steps of a pass they share (nrc_cli.families)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nrc_cli.capture import PendingPool, weight_layers
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families import (
    FAMILIES,
    ClassificationFamily,
    FirstPass,
    LayerOutcome,
    RegressionFamily,
    SecondPass,
)
from nrc_cli.families.batch import check_finite, paired_features
from nrc_cli.families.outputs import describe_output, pick_output
from nrc_cli.families.passes import (
    as_targets,
    first_accumulators,
    layer_state,
    load_layer_states,
    plan_row,
    single_pass_sketches,
    sketched_size,
)
from nrc_cli.options import AnalysisOptions


def test_families_by_task_and_built_from_the_analysis_options():
    assert dict(FAMILIES) == {
        "regression": RegressionFamily,
        "classification": ClassificationFamily,
    }
    assert LayerOutcome([], {}).rows == []
    options = AnalysisOptions(rank=2, svd="exact", seed=7, output_key="logits")
    for task, cls in FAMILIES.items():
        family = cls.from_options(options)
        assert type(family) is cls and family.task == task
        assert (family.rank, family.svd, family.seed, family.output_key) == (
            2,
            "exact",
            7,
            "logits",
        )
        assert family.rule.text == options.rule(task).text
    assert FAMILIES["classification"].second_pass and not FAMILIES["regression"].second_pass


def test_the_prediction_is_picked_by_index_key_or_attribute():
    assert pick_output((1, 2), "1") == 2
    assert pick_output({"logits": 3}, "logits") == 3
    with pytest.raises(DataError, match=r"use an index 0\.\.1"):
        pick_output((1, 2), "5")
    with pytest.raises(DataError, match="has keys a, b"):
        pick_output({"a": 1, "b": 2}, "c")
    assert describe_output([1, 2, 3]) == "a list of 3 items"
    assert describe_output(None) == "a NoneType"


def test_targets_become_float64_columns_and_bad_ones_are_refused():
    y = as_targets(np.arange(4, dtype=np.int32))
    assert y.dtype == torch.float64 and y.shape == (4, 1)
    assert as_targets(torch.ones(3, 2)).shape == (3, 2)
    with pytest.raises(DataError, match="non-finite"):
        as_targets(torch.tensor([1.0, float("nan")]))
    with pytest.raises(DataError, match="expected y as a tensor or array, found list"):
        as_targets([1.0, 2.0])
    with pytest.raises(DataError, match=r"shape \(b, t\) or \(b,\)"):
        as_targets(torch.ones(2, 2, 2))


def test_captured_features_are_paired_with_the_targets_rows():
    z = torch.randn(4, 3)
    assert paired_features({"a": z}, 4).features["a"] is z
    tokens = PendingPool(nn.Linear(3, 2), torch.randn(4, 5, 3))
    mask = torch.ones(4, 5)
    pooled = paired_features({"a": tokens}, 4, mask=mask).features["a"]
    assert pooled.shape == (4, 3)
    with pytest.raises(ConfigError, match="none of the selected weight layers ran"):
        paired_features({}, 4)
    with pytest.raises(DataError, match="found no captured features"):
        paired_features({}, 4, ran=["a"])
    with pytest.raises(
        DataError, match="layer 'a' sees 4 rows for 5 samples: rows of parts, not samples"
    ):
        paired_features({"a": z}, 5)
    with pytest.raises(DataError, match=r"layer\(s\) b ran in earlier batches"):
        paired_features({"a": z}, 4, again=["a", "b"])
    check_finite({"a": z}, 0)
    z[2, 1] = float("inf")
    with pytest.raises(DataError, match=r"non-finite features .* at sample 12"):
        check_finite({"a": z}, 10)


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
