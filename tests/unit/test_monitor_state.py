"""Forged and damaged monitor states, written to a real safetensors file and read back.

A state is checked whole before a monitor takes any of it: every entry there, of the
monitor's own shapes and dtypes, finite, its counts adding up; refused with a ConfigError
naming the entry, after which the monitor computes the same numbers as before.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Wrapped, mlp
from safetensors.torch import load_file, save_file

from nrc_cli import CollapseMonitor
from nrc_cli.errors import ConfigError


def _regressor():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((192, 6)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((192, 3)).astype(np.float32))
    model = Wrapped(mlp((6, 10, 3), seed=1))
    monitor = CollapseMonitor(model, task="regression")
    with monitor, torch.no_grad():
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            monitor.update(yb, model(xb))
    return monitor


def _classifier(second: bool = True):
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(240) % 4
    x = torch.randn(4, 6, generator=g)[labels] * 3 + torch.randn(240, 6, generator=g)
    model = Wrapped(mlp((6, 10, 4), seed=3))
    monitor = CollapseMonitor(model, task="classification")
    for again in (False, True)[: 1 + second]:
        if again:
            monitor.begin_second_pass()
        with monitor, torch.no_grad():
            for xb, yb in zip(x.split(80), labels.split(80), strict=True):
                monitor.update(yb, model(xb))
    return monitor


def _through_a_file(state: dict, tmp_path) -> dict:
    path = tmp_path / "state.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return load_file(str(path))


def _without(state: dict, key: str) -> dict:
    assert key in state
    return {k: v for k, v in state.items() if k != key}


def _with(state: dict, key: str, value: torch.Tensor) -> dict:
    assert key in state
    return {**state, key: value}


def _float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _regression_forgeries(s: dict) -> dict[str, tuple[dict, str]]:
    czz = s["layer/net.0/moments/czz"]
    nan = s["layer/net.2/moments/czy"].clone()
    nan[0, 0] = float("nan")
    return {
        "no n": (_without(s, "layer/net.0/moments/n"), r"'layer/net\.0/moments/n' is missing"),
        "no czz": (
            _without(s, "layer/net.2/moments/czz"),
            r"'layer/net\.2/moments/czz' is missing \(the state holds 192 samples\)",
        ),
        "czz cut by a row": (
            _with(s, "layer/net.0/moments/czz", czz[:-1]),
            r"'layer/net\.0/moments/czz': expected shape \(6, 6\), found \(5, 6\)",
        ),
        "float32": (_float32(s), r"expected dtype float64, found float32"),
        "nan": (
            _with(s, "layer/net.2/moments/czy", nan),
            r"'layer/net\.2/moments/czy': non-finite values",
        ),
        "n not whole": (
            _with(s, "layer/net.0/moments/n", torch.tensor(2.5, dtype=torch.float64)),
            r"'layer/net\.0/moments/n': expected a whole number >= 0, found 2\.5",
        ),
        "negative n": (_with(s, "n", torch.tensor(-5)), r"'n': expected a whole number >= 0"),
        "no target_dim": (_without(s, "target_dim"), r"entry 'target_dim' is missing"),
        "prediction": (_with(s, "prediction", torch.tensor(7)), r"'prediction': expected one of"),
        "sse samples": (
            _with(s, "sse.n", torch.tensor(191)),
            r"'sse\.n': 191 samples, but the state's n is 192",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no n",
        "no czz",
        "czz cut by a row",
        "float32",
        "nan",
        "n not whole",
        "negative n",
        "no target_dim",
        "prediction",
        "sse samples",
    ],
)
def test_a_forged_regression_state_is_refused_and_changes_nothing(case, tmp_path):
    monitor = _regressor()
    before = monitor.compute().to_dict()
    forged, match = _regression_forgeries(monitor.state_dict())[case]
    with pytest.raises(ConfigError, match=match):
        monitor.load_state_dict(_through_a_file(forged, tmp_path))
    assert monitor.compute().to_dict() == before
    # The genuine state, through the same file, loads and gives the same numbers.
    monitor.load_state_dict(_through_a_file(monitor.state_dict(), tmp_path))
    assert monitor.compute().to_dict() == before


def _classification_forgeries(s: dict) -> dict[str, tuple[dict, str]]:
    counts = s["layer/net.0/classes/counts"].clone()
    counts[0] += 1
    labels = s["layer/net.0/classes/labels"].flip(0)
    return {
        "counts": (
            _with(s, "layer/net.0/classes/counts", counts),
            r"layer/net\.0/classes: the class counts add up to 241, not to n = 240",
        ),
        "labels out of order": (
            _with(s, "layer/net.0/classes/labels", labels),
            r"'labels' are not distinct label values >= 0 in ascending order",
        ),
        "one class fewer": (
            _with(s, "layer/net.2/classes/labels", s["layer/net.2/classes/labels"][:3]),
            r"'layer/net\.2/classes/shift': expected shape \(3, 10\), found \(4, 10\)",
        ),
        "int32 counts": (
            _with(s, "layer/net.0/classes/counts", s["layer/net.0/classes/counts"].int()),
            r"'layer/net\.0/classes/counts': expected dtype int64, found int32",
        ),
        "second pass": (
            _with(s, "second/net.2/correct", torch.tensor(500)),
            r"second/net\.2: counts that no pass makes: 500 correct",
        ),
        "no second count": (
            _without(s, "second/net.0/mismatch"),
            r"'second/net\.0/mismatch' is missing",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "counts",
        "labels out of order",
        "one class fewer",
        "int32 counts",
        "second pass",
        "no second count",
    ],
)
def test_a_forged_classification_state_is_refused_and_changes_nothing(case, tmp_path):
    monitor = _classifier()
    before = monitor.compute().to_dict()
    forged, match = _classification_forgeries(monitor.state_dict())[case]
    with pytest.raises(ConfigError, match=match):
        monitor.load_state_dict(_through_a_file(forged, tmp_path))
    assert monitor.compute().to_dict() == before
    monitor.load_state_dict(_through_a_file(monitor.state_dict(), tmp_path))
    assert monitor.compute().to_dict() == before
