"""The monitor against inputs an attacker or a careless caller gives: complex numbers, labels
of any value, more classes than a run may hold."""

from __future__ import annotations

import resource

import pytest
import torch
from helpers import Wrapped, mlp

from nrc_cli import CollapseMonitor
from nrc_cli.accumulate.classes import MAX_CLASSES, ClassMoments, max_classes
from nrc_cli.errors import DataError


def _model(k: int = 3):
    return Wrapped(mlp((4, 8, k), seed=0))


@pytest.mark.parametrize(
    ("target", "output", "match"),
    [
        (torch.randn(16, 3, dtype=torch.complex64), None, r"y is complex \(dtype complex64\)"),
        (torch.randn(16, 3), "complex", r"output is complex \(dtype complex128\)"),
        (torch.randint(0, 3, (16,)).to(torch.complex64), None, r"y is complex"),
    ],
)
def test_complex_targets_or_outputs_are_refused_with_their_dtype(target, output, match):
    model = _model()
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        out = model(torch.randn(16, 4))
    if output == "complex":
        output = out.to(torch.complex128)
    with pytest.raises(DataError, match=match):
        monitor.update(target, output)
    assert monitor.n_samples == 0
    # A numpy complex array is refused the same way.
    with monitor, torch.no_grad():
        model(torch.randn(16, 4))
    with pytest.raises(DataError, match=r"y is complex"):
        monitor.update(torch.randn(16, 3).numpy().astype("complex128"))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_one_huge_label_without_an_output_costs_one_class():
    # Nothing bounds the labels (no output): 10^12 is one class among three, not 10^12 rows.
    model = _model()
    labels = torch.tensor([0, 1, 10**12, 1] * 8)
    before = _peak_mb()
    monitor = CollapseMonitor(model, task="classification")
    with monitor, torch.no_grad():
        for xb, yb in zip(torch.randn(32, 4).split(8), labels.split(8), strict=True):
            model(xb)
            monitor.update(yb)
    doc = monitor.compute().to_dict()
    assert doc["summary"]["n_classes"] == 3
    assert _peak_mb() - before < 200
    state = monitor.state_dict()
    assert state["layer/net.0/classes/labels"].tolist() == [0, 1, 10**12]
    assert state["layer/net.0/classes/sums"].shape == (3, 4)
    # The nearest-class-mean pass maps the label values the same way.
    monitor.begin_second_pass()
    with monitor, torch.no_grad():
        for xb, yb in zip(torch.randn(32, 4).split(8), labels.split(8), strict=True):
            model(xb)
            monitor.update(yb)
    assert monitor.compute().to_dict()["layers"][0]["ncc_accuracy"] is not None


def test_the_limit_on_classes_is_checked_before_anything_is_allocated(monkeypatch):
    assert max_classes() == MAX_CLASSES == 1_000_000
    monkeypatch.setenv("NRC_MAX_CLASSES", "5")
    acc = ClassMoments()
    acc.update(torch.randn(5, 3), torch.tensor([0, 7, 9, 10**9, 10**12]))
    with pytest.raises(ValueError, match=r"6 distinct values, more than the limit of 5 classes"):
        acc.update(torch.randn(2, 3), torch.tensor([3, 7]))
    assert acc.n == 5 and acc.labels.tolist() == [0, 7, 9, 10**9, 10**12]
    # Through the monitor: a DataError naming the variable that raises the limit.
    model = _model()
    monitor = CollapseMonitor(model, task="classification")
    with monitor, torch.no_grad(), pytest.raises(DataError, match=r"NRC_MAX_CLASSES"):
        model(torch.randn(6, 4))
        monitor.update(torch.arange(6) * 10**11)
    assert monitor.n_samples == 0
    monkeypatch.setenv("NRC_MAX_CLASSES", "zero")
    with pytest.raises(ValueError, match=r"NRC_MAX_CLASSES must be a whole number >= 1"):
        max_classes()
