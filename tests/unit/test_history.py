"""Results.scalars (what a logger takes) and History (reports over training as one table)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import invoke

from nrc_cli import History, analyze
from nrc_cli.errors import ConfigError
from nrc_cli.results import metric_columns


def test_scalars_name_every_finite_number_of_the_report(tiny):
    results = analyze(tiny.checkpoint, tiny.data, rank=2)
    scalars = results.scalars()
    doc = results.to_dict()
    expected = {}
    for row in doc["layers"]:
        for column in (*metric_columns("regression"), "collapsed"):
            if row[column] is not None:
                expected[f"nrc/{column}/{row['layer']}"] = float(row[column])
    for name in ("n_samples", "target_dim", "rank", "model_mse", "nrc1_last"):
        expected[f"nrc/{name}"] = float(doc["summary"][name])
    for key, value in expected.items():
        assert scalars[key] == value, key
    assert all(isinstance(v, float) and math.isfinite(v) for v in scalars.values())
    # Settings and text are not measurements.
    for name in ("seed", "oversample", "power_iters", "passes", "world_size", "collapse_rule"):
        assert f"nrc/{name}" not in scalars
    assert not any(key.startswith("nrc/type/") for key in scalars)
    # A prefix of one's own.
    assert set(results.scalars("val/nrc.")) == {"val/nrc." + k[4:] for k in scalars}


def test_scalars_leave_out_what_is_undefined(tiny):
    results = analyze(
        tiny.checkpoint, tiny.data, rank=2, prediction=False, collapse_rule="nrc1_noise<=-1"
    )
    doc = results.to_dict()
    assert doc["summary"]["model_mse"] is None
    assert doc["summary"]["first_collapsed_index"] is None  # nothing meets the rule
    scalars = results.scalars()
    assert "nrc/model_mse" not in scalars
    assert "nrc/first_collapsed_index" not in scalars
    assert not any(k.startswith("nrc/nrc4_ratio/") for k in scalars)
    missing = [
        f"nrc/{column}/{row['layer']}"
        for row in doc["layers"]
        for column in metric_columns("regression")
        if row[column] is None
    ]
    assert missing and not set(missing) & set(scalars)
    assert all(v == 0.0 for k, v in scalars.items() if k.startswith("nrc/collapsed/"))


def test_scalars_of_a_classifier(tmp_path):
    from helpers import mlp

    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = (rng.standard_normal((3, 5))[y] + 0.3 * rng.standard_normal((90, 5))).astype(np.float32)
    model = mlp((5, 8, 3), seed=0, dyadic=False)
    results = analyze(model, (x, y), task="classification")
    scalars = results.scalars()
    assert set(metric_columns("classification")) <= {k.split("/")[1] for k in scalars}
    assert scalars["nrc/nc1/0"] == results.layers[0]["nc1"]


def test_history_writes_the_audit_table_that_nrc_plot_draws(tiny, tmp_path):
    history = History(name="mlp")
    first = analyze(tiny.checkpoint, tiny.data, rank=2)
    second = analyze(tiny.checkpoint, tiny.data, rank=1)
    history.add(first, step=10, epoch=0)
    history.add(second, step=20, epoch=1)
    assert len(history) == 2 and [e.step for e in history] == [10, 20]
    rows = history.scalars()
    assert rows[1]["epoch"] == 1.0 and rows[1]["step"] == 20.0
    assert rows[0]["nrc/nrc1_noise/net.0"] == first.layers[0]["nrc1_noise"]

    frame = history.to_frame()
    assert len(frame) == 2 * len(first.layers)
    assert list(frame["checkpoint"].unique()) == ["mlp@step=000000010", "mlp@step=000000020"]
    assert list(frame["meta.epoch"].unique()) == [0, 1]
    for path in (tmp_path / "h.parquet", tmp_path / "h.csv"):
        history.write(path)
        png = tmp_path / f"{path.suffix[1:]}.png"
        result = invoke(["plot", path, "--x", "epoch", "--metric", "nrc1_noise", "-o", png])
        assert result.exit_code == 0, result.stderr
        assert png.stat().st_size > 1000


def test_history_refuses_an_empty_table_and_a_bad_suffix(tmp_path):
    with pytest.raises(ConfigError, match="no evaluation"):
        History().to_frame()
    history = History()
    history.add(analyze(*_pair(), rank=1), step=1)
    with pytest.raises(ConfigError):
        history.write(tmp_path / "h.txt")
    assert not (tmp_path / "h.txt").exists()


def _pair():
    from helpers import mlp

    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    return mlp((4, 6, 2), seed=1, dyadic=False), (x, x[:, :2] * 2)


def test_history_csv_has_step_and_epoch_columns(tmp_path):
    history = History()
    history.add(analyze(*_pair(), rank=1), step=3, epoch=0.5)
    history.write(tmp_path / "h.csv")
    text = (tmp_path / "h.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert "meta.step" in header and "meta.epoch" in header
