"""``CollapseMonitor(model, task="classification")``: ``update(labels, output)`` in a loop, the
second (nearest-class-mean) pass, merging, state dicts, and agreement with ``nrc analyze``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from dense_classification import dense_class_report
from helpers import assert_close

from nrc_cli import CollapseMonitor, analyze
from nrc_cli.errors import ConfigError, DataError


def _case(n: int = 300, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 4),
    ).eval()
    rng = np.random.default_rng(seed)
    y = torch.from_numpy(rng.integers(0, 4, size=n))
    x = torch.from_numpy(rng.standard_normal((4, 6)) * 2)[y].float() + torch.randn(n, 6)
    return model, x, y


def _feed(monitor, model, x, y, batch=64):
    with monitor, torch.no_grad():
        for s in range(0, len(y), batch):
            monitor.update(y[s : s + batch], model(x[s : s + batch]))


def _same(a: dict, b: dict, rel: float = 1e-9) -> None:
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        for key, value in rb.items():
            if isinstance(value, float):
                assert_close(ra[key], value, rel=rel, abs_=1e-12, what=f"{rb['layer']}.{key}")
            else:
                assert ra[key] == value, (key, ra[key], value)


def test_two_passes_give_what_nrc_analyze_gives():
    model, x, y = _case()
    monitor = CollapseMonitor(model, task="classification")
    _feed(monitor, model, x, y)
    first = monitor.compute().to_dict()
    assert first["layers"][0]["ncc_accuracy"] is None  # no second pass yet
    assert first["summary"]["passes"] == 1
    monitor.begin_second_pass()
    _feed(monitor, model, x, y, batch=50)
    got = monitor.compute().to_dict()
    assert got["summary"]["passes"] == 2
    want = analyze(model, (x, y), batch_size=64).to_dict()
    _same(got, want)
    dense = dense_class_report(model, x.numpy(), y.numpy())
    _same(got, dense, rel=1e-6)
    assert got["summary"]["model_accuracy"] == pytest.approx(dense["summary"]["model_accuracy"])


def test_auto_reads_an_integer_tensor_as_labels():
    model, x, y = _case()
    monitor = CollapseMonitor(model, task="auto")
    _feed(monitor, model, x, y)
    assert monitor.task == "classification"
    floats = CollapseMonitor(model, task="auto")
    _feed(floats, model, x, torch.nn.functional.one_hot(y, 4).double())
    assert floats.task == "regression"


def test_merged_halves_equal_one_stream():
    model, x, y = _case(n=400)
    whole = CollapseMonitor(model, task="classification")
    _feed(whole, model, x, y)
    halves = [CollapseMonitor(model, task="classification") for _ in range(2)]
    _feed(halves[0], model, x[:170], y[:170])
    _feed(halves[1], model, x[170:], y[170:], batch=33)
    merged = halves[0].merge(halves[1])
    _same(merged.compute().to_dict(), whole.compute().to_dict())
    # Monitors merge before the second pass, not during it.
    merged.begin_second_pass()
    with pytest.raises(DataError, match="before their second pass"):
        merged.merge(whole)


def test_state_dict_round_trip_in_the_second_pass():
    model, x, y = _case()
    monitor = CollapseMonitor(model, task="classification")
    _feed(monitor, model, x, y)
    monitor.begin_second_pass()
    _feed(monitor, model, x[:128], y[:128])
    buffer = io.BytesIO()
    torch.save(monitor.state_dict(), buffer)
    buffer.seek(0)
    again = CollapseMonitor(model, task="classification")
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.second_pass_samples == 128
    _feed(again, model, x[128:], y[128:])
    _feed(monitor, model, x[128:], y[128:])
    _same(again.compute().to_dict(), monitor.compute().to_dict(), rel=0.0)
    assert again.compute().layers[0]["ncc_accuracy"] is not None


def test_second_pass_mistakes_are_clear_errors():
    model, x, y = _case()
    regression = CollapseMonitor(model)
    with pytest.raises(ConfigError, match="task regression has no second pass"):
        regression.begin_second_pass()
    monitor = CollapseMonitor(model, task="classification")
    with pytest.raises(ConfigError, match="no samples yet"):
        monitor.begin_second_pass()
    _feed(monitor, model, x, y)
    monitor.begin_second_pass()
    _feed(monitor, model, x[:100], y[:100])
    assert monitor.compute().layers[0]["ncc_accuracy"] is None  # incomplete: null
    with pytest.raises(DataError, match="more than the 300 of the first"):
        _feed(monitor, model, x, y)
    other = CollapseMonitor(model, task="classification")
    _feed(other, model, x, y % 3)  # classes 0, 1, 2
    other.begin_second_pass()
    bad = y % 3
    bad[3] = 3
    with pytest.raises(
        DataError,
        match=r"second pass: label 3 at sample 3 is not one of the classes of the first pass \(\[0, 1, 2\]\)",
    ):
        _feed(other, model, x, bad)


def test_bad_labels_in_update_name_the_sample():
    model, x, y = _case()
    monitor = CollapseMonitor(model, task="classification")
    bad = y.clone()
    bad[70] = 7
    with pytest.raises(DataError, match="label 7 at sample 70 is beyond the model's 4 outputs"):
        _feed(monitor, model, x, bad)


def test_a_join_refuses_a_classifier_fed_other_labels():
    model, x, y = _case(n=256)
    first = CollapseMonitor(model, task="classification", active=["0"])
    _feed(first, model, x[:128], y[:128])
    same = CollapseMonitor(model, task="classification", active=["2", "4"])
    _feed(same, model, x[:128], y[:128], batch=50)
    other = CollapseMonitor(model, task="classification", active=["2", "4"])
    _feed(other, model, x[128:], y[128:])
    assert sorted(torch.bincount(y[:128]).tolist()) != sorted(torch.bincount(y[128:]).tolist())
    with pytest.raises(DataError, match="as many samples, 128, but other targets"):
        first.join(other)
    assert first.compute().layers[0]["layer"] == "0" and len(first.compute().layers) == 1
    whole = CollapseMonitor(model, task="classification")
    _feed(whole, model, x[:128], y[:128])
    _same(first.join(same).compute().to_dict(), whole.compute().to_dict())


def test_the_default_task_is_auto_and_a_classifier_needs_no_task():
    model, x, y = _case()
    monitor = CollapseMonitor(model)  # no task=: decided from the first batch, as analyze does
    _feed(monitor, model, x, y)
    got = monitor.compute()
    assert monitor.task == "classification" and got.summary["task"] == "classification"
    explicit = CollapseMonitor(model, task="classification")
    _feed(explicit, model, x, y)
    _same(got.to_dict(), explicit.compute().to_dict())
    # Without the second pass the nearest-class-mean columns are null, and a note says why.
    assert all(row["ncc_accuracy"] is None for row in got.layers)
    (note,) = [n for n in got.summary["notes"] if "ncc_accuracy" in n]
    assert "second pass" in note and "--no-ncc" in note and "begin_second_pass()" in note


def test_keywords_preds_and_target_and_swapped_calls():
    model, x, y = _case()
    by_keyword = CollapseMonitor(model)
    with by_keyword, torch.no_grad():
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            by_keyword.update(preds=model(xb), target=yb)
    positional = CollapseMonitor(model)
    _feed(positional, model, x, y)
    _same(by_keyword.compute().to_dict(), positional.compute().to_dict())
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        out = model(x[:64])
        with pytest.raises(DataError, match=r"update\(\): .*class labels and the model's scores"):
            monitor.update(out, y[:64])
        with pytest.raises(DataError, match=r"what a model returns"):
            monitor.update((out,), y[:64])
        with pytest.raises(ConfigError, match="given twice"):
            monitor.update(y[:64], out, target=y[:64])
        with pytest.raises(ConfigError, match="no targets"):
            monitor.update(preds=out)
        monitor.update(y[:64], out)  # the refused calls changed nothing
    assert monitor.n_samples == 64


def test_whole_number_float_targets_beside_scores_hint_at_classification():
    model, x, y = _case()
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad(), pytest.raises(DataError) as info:
        monitor.update(y[:64].double(), model(x[:64]))
    assert '--task classification (task="classification" in Python)' in info.value.hint
    assert "--y-key" not in info.value.hint
