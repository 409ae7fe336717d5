"""``nrc`` on classifiers: analyze, check, compare, audit and plot with ``--task classification``.

The public ``nc_gauss_mlp`` case through the command line (1e-8 absolute + 1e-6 relative, NCC
shares exactly), the ``auto`` task, ``--no-ncc``, wide layers (sketches, several passes), every
output format, requirements and baselines over the classification columns, audit tables mixing
tasks, and bad labels (exit 2, one ``error:`` line).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dense_classification import dense_class_report
from helpers import (
    Wrapped,
    analyze_json,
    assert_close,
    error_line,
    invoke,
    mlp,
    save_model,
    save_npz,
)

from nrc_cli.audit import audit_frame, checkpoint_summary, read_table
from nrc_cli.report.plot import plot_profile, results_from_table
from nrc_cli.results import Results

REFERENCE = Path(__file__).resolve().parents[1] / "reference_cases" / "nc_gauss_mlp"
NCC = ("ncc_accuracy", "nc4_ncc_mismatch")


def _compare(
    got: dict, want: dict, rel: float = 1e-6, abs_: float = 1e-8, skip: tuple = ()
) -> None:
    assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for key, value in w.items():
            if key in NCC:
                assert g[key] == value, (w["layer"], key, g[key], value)
            else:
                assert_close(g[key], value, rel=rel, abs_=abs_, what=f"{w['layer']}.{key}")
    for key, value in want["summary"].items():
        if key in skip:
            continue
        if isinstance(value, (list, dict)):
            assert got["summary"][key] == value, key
        else:
            assert_close(got["summary"][key], value, rel=rel, abs_=abs_, what=f"summary.{key}")


@pytest.fixture(scope="module")
def reference() -> dict:
    extra = shlex.split((REFERENCE / "args").read_text())
    return analyze_json(REFERENCE / "model.safetensors", REFERENCE / "data.npz", *extra)


def test_the_public_reference_case_through_the_command_line(reference):
    expected = json.loads((REFERENCE / "expected.json").read_text())
    _compare(reference, expected)
    s = reference["summary"]
    assert s["task"] == "classification" and s["passes"] == 2
    assert s["plan"]["ncc_pass"] == 2
    assert "nrc1_noise" not in reference["layers"][0]


def test_auto_reads_integer_labels_as_classification(reference):
    got = analyze_json(REFERENCE / "model.safetensors", REFERENCE / "data.npz")
    assert got["summary"]["task"] == "classification"
    assert got["layers"] == reference["layers"]


def test_no_ncc_makes_one_pass_and_leaves_the_ncc_columns_null(reference):
    got = analyze_json(REFERENCE / "model.safetensors", REFERENCE / "data.npz", "--no-ncc")
    assert got["summary"]["passes"] == 1
    for g, r in zip(got["layers"], reference["layers"], strict=True):
        assert g["ncc_accuracy"] is None and g["nc4_ncc_mismatch"] is None
        assert g["nc1"] == pytest.approx(r["nc1"], rel=1e-12)


def test_float_labels_are_regression_under_auto_and_labels_under_classification(tmp_path):
    data = np.load(REFERENCE / "data.npz")
    path = save_npz(tmp_path / "f.npz", x=data["x"], y=data["y"].astype(np.float32))
    ckpt = REFERENCE / "model.safetensors"
    as_labels = analyze_json(ckpt, path, "--task", "classification")
    assert as_labels["layers"] == analyze_json(ckpt, REFERENCE / "data.npz")["layers"]
    # Under auto a float array is a regression target: a 1-column target for 4 outputs.
    line = error_line(invoke(["analyze", ckpt, "--data", path, "--activation", "relu"]))
    assert "targets 'y' have 1 column(s)" in line and "outputs 4" in line


def test_one_hot_targets_are_read_as_their_argmax(tmp_path, reference):
    data = np.load(REFERENCE / "data.npz")
    one_hot = np.eye(4, dtype=np.float32)[data["y"]]
    path = save_npz(tmp_path / "h.npz", x=data["x"], y=one_hot)
    got = analyze_json(REFERENCE / "model.safetensors", path, "--task", "classification")
    assert got["layers"] == reference["layers"]


def test_csv_and_parquet_carry_the_task_and_the_classification_columns(tmp_path, reference):
    ckpt, data = REFERENCE / "model.safetensors", REFERENCE / "data.npz"
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"r.{fmt}"
        result = invoke(["analyze", ckpt, "--data", data, "-o", out, "-q"])
        assert result.exit_code == 0, result.stderr
        frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        assert set(frame["task"]) == {"classification"}
        assert "nrc1_noise" not in frame.columns and "model_mse" not in frame.columns
        want = [r["nc1_trace"] for r in reference["layers"]]
        assert np.allclose(frame["nc1_trace"], want, rtol=1e-12)
        assert list(frame["n_classes"]) == [4] * 4
        back = results_from_table(frame)
        assert back.task == "classification"
        assert back.layers[2]["nc2_etf"] == pytest.approx(reference["layers"][2]["nc2_etf"])


def test_the_table_shows_the_neural_collapse_columns():
    result = invoke(
        ["analyze", REFERENCE / "model.safetensors", "--data", REFERENCE / "data.npz", "-q"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Deep Neural Collapse" in out and "nc1_trace" in out and "ncc_acc" in out
    assert "model_accuracy" in out and "collapsed from layer `2`" in out


# -- check and compare -----------------------------------------------------------------------------


def _check(*args: object):
    ckpt, data = REFERENCE / "model.safetensors", REFERENCE / "data.npz"
    return invoke(["check", ckpt, "--data", data, "--activation", "relu", *args])


def test_check_requirements_over_the_classification_columns():
    ok = _check("--require", "nc1_trace[-1] <= 0.1", "--require", "model_accuracy >= 0.9")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    failed = _check("--require", "nc1_trace[1] <= 0.1")
    assert failed.exit_code == 1
    assert "nc1_trace" in failed.stdout


def test_a_requirement_on_a_regression_column_is_an_error_for_a_classifier():
    line = error_line(_check("--require", "nrc1_noise[-1] <= 0.1"))
    assert "'nrc1_noise' is not a column of a classification report" in line


def test_a_collapse_rule_of_the_other_task_is_refused():
    line = error_line(_check("--collapse-rule", "nrc1_noise<=0.2", "--require", "nc1[-1] <= 1"))
    assert "unknown column 'nrc1_noise'" in line and "classification" in line


def test_compare_two_classification_reports(tmp_path, reference):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(reference))
    doc = analyze_json(REFERENCE / "model.safetensors", REFERENCE / "data.npz", "--no-ncc")
    b = tmp_path / "b.json"
    b.write_text(json.dumps(doc))
    result = invoke(["compare", a, b, "--format", "json"])
    assert result.exit_code in (0, 1), result.stderr
    rows = json.loads(result.stdout)["rows"]
    metrics = {r["metric"] for r in rows}
    assert {"nc1", "nc1_trace", "ncc_accuracy"} <= metrics and "nrc1_noise" not in metrics
    beyond = {(r["layer"], r["metric"]) for r in rows if r["beyond_tolerance"]}
    assert beyond == {(r["layer"], m) for r in reference["layers"] for m in NCC}


def test_compare_refuses_reports_of_different_tasks(tmp_path, reference):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(reference))
    relu = Path(__file__).resolve().parents[1] / "reference_cases" / "mlp_relu"
    b = tmp_path / "b.json"
    b.write_text(json.dumps(analyze_json(relu / "model.safetensors", relu / "data.npz")))
    line = error_line(invoke(["compare", a, b]))
    assert "classification report" in line and "regression report" in line


# -- audit ---------------------------------------------------------------------------------------


def test_audit_of_classifiers_and_a_table_mixing_tasks(tmp_path, reference):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    state = (REFERENCE / "model.safetensors").read_bytes()
    for name in ("a", "b"):
        (zoo / f"{name}.safetensors").write_bytes(state)
    out = tmp_path / "zoo.parquet"
    result = invoke(["audit", zoo, "--data", REFERENCE / "data.npz", "--output", out, "-q"])
    assert result.exit_code == 0, result.stderr
    table = read_table(out)
    assert set(table["task"]) == {"classification"} and len(table) == 8
    # A regression report and a classification report in one table: the columns of both.
    relu = Path(__file__).resolve().parents[1] / "reference_cases" / "mlp_relu"
    reg = Results.from_dict(analyze_json(relu / "model.safetensors", relu / "data.npz"))
    cls = Results.from_dict(reference)
    reg.checkpoint, cls.checkpoint = "reg.safetensors", "cls.safetensors"
    rows = [*reg.tidy_rows(), *cls.tidy_rows()]
    for r in rows:
        r.update({"checkpoint_size": 1, "checkpoint_mtime": "t"})
    mixed = audit_frame(rows)
    assert {"nrc1_noise", "model_mse", "nc1", "model_accuracy", "task"} <= set(mixed.columns)
    by_task = mixed.groupby("task")
    assert by_task["nc1"].count()["regression"] == 0
    assert by_task["nrc1_noise"].count()["classification"] == 0
    path = tmp_path / "mixed.csv"
    mixed.to_csv(path, index=False)
    back = read_table(path)
    assert list(back["task"]) == list(mixed["task"])
    assert np.allclose(back["nc1"], mixed["nc1"], equal_nan=True)
    summary = checkpoint_summary(back)
    assert dict(zip(summary["checkpoint"], summary["task"], strict=True)) == {
        "cls.safetensors": "classification",
        "reg.safetensors": "regression",
    }
    shown = plot_profile(results_from_table(back, "cls.safetensors"), tmp_path / "p.png")
    assert list(shown.series) == ["nc1", "nc2_etf", "nc3_alignment", "ncc_accuracy"]


def test_plot_a_classification_report(tmp_path, reference):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(reference))
    result = invoke(["plot", path, "--output", tmp_path / "profile.png"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "profile.png").read_bytes().startswith(b"\x89PNG")


# -- wide layers and many classes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """An MLP 8 -> 600 -> 600 -> 12 on 12 classes (one absent), N = 600: small enough to
    compute densely, wide enough for a small budget to sketch it (sketch size 128)."""
    folder = tmp_path_factory.mktemp("wide")
    body = mlp((8, 600, 600, 12), seed=3)
    model = Wrapped(body)
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11], size=600)
    centres = rng.standard_normal((12, 8)) * 2
    x = (centres[labels] + rng.standard_normal((600, 8))).astype(np.float32)
    ckpt = save_model(folder / "m.safetensors", model)
    data = save_npz(folder / "d.npz", x=x, y=labels)
    return model, x, labels, ckpt, data


def test_wide_layers_sketched_and_in_several_passes_match_the_exact_analysis(wide):
    model, x, labels, ckpt, data = wide
    exact = analyze_json(ckpt, data, "--batch-size", "128")
    want = dense_class_report(model, x, labels)
    _compare(exact, want, rel=1e-6, abs_=1e-9)
    # Three passes (one per layer) plus the NCC pass: the same numbers.
    several = analyze_json(ckpt, data, "--batch-size", "128", "--memory-budget", "5MB")
    assert several["summary"]["passes"] >= 3
    _compare(several, exact, rel=1e-9, abs_=1e-12, skip=("passes", "plan"))
    # Sketched (the 600-wide layers' p×p state does not fit): the class-mean columns and the
    # traces stay exact, nc1 comes exactly from the second pass.
    sketched = analyze_json(ckpt, data, "--batch-size", "128", "--memory-budget", "3MB")
    modes = {r["layer"]: r["accumulator"] for r in sketched["summary"]["plan"]["layers"]}
    assert "sketch" in modes.values()
    for g, e in zip(sketched["layers"], exact["layers"], strict=True):
        for key in ("rank", "nc1", "nc1_trace", "nc2_equinorm", "nc2_etf", "nc3_alignment", *NCC):
            assert_close(g[key], e[key], rel=1e-8, abs_=1e-10, what=f"{e['layer']}.{key}")
    no_ncc = analyze_json(ckpt, data, "--batch-size", "128", "--memory-budget", "3MB", "--no-ncc")
    for row in no_ncc["layers"]:
        if modes[row["layer"]] == "sketch":
            assert row["nc1"] is None and "nc1 needs the nearest-class-mean pass" in row["note"]


def test_randomized_spectra_for_wide_layers(wide):
    _, _, _, ckpt, data = wide
    exact = analyze_json(ckpt, data)
    rnd = analyze_json(ckpt, data, "--svd", "randomized")
    spectra = {r["layer"]: r["spectrum"] for r in rnd["summary"]["plan"]["layers"]}
    assert spectra == {"net.0": "exact", "net.2": "randomized", "net.4": "randomized"}
    for g, e in zip(rnd["layers"], exact["layers"], strict=True):
        assert g["stable_rank_h"] == pytest.approx(e["stable_rank_h"], rel=1e-6)
        assert g["nc1"] == pytest.approx(e["nc1"], rel=1e-12)


# -- bad input -------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    model = Wrapped(mlp((4, 8, 3), seed=1))
    ckpt = save_model(tmp_path / "m.safetensors", model)
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    return ckpt, x, tmp_path


@pytest.mark.parametrize(
    ("y", "args", "message"),
    [
        (
            np.arange(50) % 3 + 0.5,
            ["--task", "classification"],
            "labels must be integers, found 0.5 at sample 0",
        ),
        (
            np.where(np.arange(50) == 7, -1, np.arange(50) % 3),
            [],
            "labels must be >= 0, found -1 at sample 7",
        ),
        (
            np.where(np.arange(50) == 9, 5, np.arange(50) % 3),
            [],
            "label 5 at sample 9 is beyond the model's 3 outputs",
        ),
        (np.zeros(50, dtype=np.int64), [], "the labels hold one class (label 0)"),
        (np.arange(49) % 3, [], "must have the same number of samples"),
        (np.array(["a"] * 50), ["--task", "classification"], "dtype"),
    ],
    ids=["non-integral", "negative", "beyond-outputs", "one-class", "length", "strings"],
)
def test_bad_labels_exit_2_with_one_error_line(small, y, args, message):
    ckpt, x, folder = small
    data = save_npz(folder / "d.npz", x=x, y=y)
    line = error_line(invoke(["analyze", ckpt, "--data", data, *args]))
    assert message in line, line


def test_labels_beyond_the_outputs_in_a_later_batch_name_the_sample(small):
    ckpt, x, folder = small
    y = np.arange(50) % 3
    y[42] = 3
    data = save_npz(folder / "d.npz", x=x, y=y)
    line = error_line(invoke(["analyze", ckpt, "--data", data, "--batch-size", "16"]))
    assert "label 3 at sample 42 is beyond the model's 3 outputs" in line


def test_a_single_logit_binary_classifier(tmp_path):
    model = Wrapped(mlp((4, 8, 1), seed=2))
    ckpt = save_model(tmp_path / "m.safetensors", model)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=80)
    x = (rng.standard_normal((80, 4)) + y[:, None]).astype(np.float32)
    data = save_npz(tmp_path / "d.npz", x=x, y=y)
    got = analyze_json(ckpt, data)
    want = dense_class_report(model.eval(), x, y)
    _compare(got, want, rel=1e-6, abs_=1e-9)
    assert got["summary"]["n_classes"] == 2 and got["layers"][-1]["rank"] == 1
    y[3] = 2
    save_npz(data, x=x, y=y)
    line = error_line(invoke(["analyze", ckpt, "--data", data]))
    assert "beyond the model's single output (a binary classifier" in line


def test_a_conv_net_through_the_python_api():
    from nrc_cli import analyze

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=160)
    x = rng.standard_normal((160, 3, 8, 8)) + rng.standard_normal((4, 3))[y][..., None, None]
    x = x.astype(np.float32)
    got = analyze(model, (x, y), batch_size=64).to_dict()
    assert got["summary"]["task"] == "classification"
    _compare(got, dense_class_report(model, x, y), rel=1e-6, abs_=1e-9)


def test_check_against_a_classification_baseline(tmp_path, reference):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(reference))
    ok = _check("--baseline", base, "--format", "json")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    columns = [c["column"] for c in json.loads(ok.stdout)["baseline"]["columns"]]
    assert columns[:3] == ["nc1", "nc1_trace", "nc2_equinorm"] and "nrc1_noise" not in columns
    moved = json.loads(json.dumps(reference))
    moved["layers"][1]["nc1_trace"] += 0.5
    base.write_text(json.dumps(moved))
    failed = _check("--baseline", base)
    assert failed.exit_code == 1 and "nc1_trace" in failed.stdout
