"""The metric families, a batch's targets and features, a model's output (nrc_cli.families)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nrc_cli.capture import PendingPool
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families import FAMILIES, ClassificationFamily, LayerOutcome, RegressionFamily
from nrc_cli.families.batch import as_targets, check_finite, paired_features
from nrc_cli.families.outputs import describe_output, pick_output
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
