"""``nrc analyze`` end to end, through ``typer.testing.CliRunner`` on real files in ``tmp_path``.

Covers: agreement with the dense reference of ``helpers`` (exact float32 features, so 1e-9
relative), batch-size invariance, constructed truths through the whole pipeline, the collapse
rule option, the sample checkpoints, and every output format (JSON, CSV, Parquet, table, files).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REFERENCE_DIR, SAMPLES_DIR, make_tiny_case
from helpers import (
    CNN_FACTORY,
    analyze_json,
    assert_close,
    dense_report,
    dense_target_fields,
    invoke,
    save_model,
    save_npz,
)
from torch import nn

LAYER_NUMBERS = (
    "nrc1_noise",
    "nrc2_cka",
    "nrc2_cka_signal",
    "nrc3_alignment",
    "nrc4_probe_mse",
    "nrc4_ratio",
    "stable_rank_h",
    "stable_rank_w",
)
SUMMARY_NUMBERS = ("model_mse", "stable_rank_y", "nrc1_last", "nrc2_last")


def _assert_matches_reference(got: dict, want: dict, rel: float) -> None:
    assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for col in ("index", "type", "in_dim", "rank"):
            assert g[col] == w[col], (g["layer"], col)
        for col in LAYER_NUMBERS:
            assert_close(g[col], w[col], rel=rel, abs_=1e-12, what=f"{g['layer']}.{col}")
    s, ref = got["summary"], want["summary"]
    for key in ("n_samples", "target_dim", "rank", "target_effective_rank"):
        assert s[key] == ref[key], key
    for key in SUMMARY_NUMBERS:
        assert_close(s[key], ref[key], rel=rel, abs_=1e-12, what=key)
    assert_close(s["nrc3_last"], ref["nrc3_last"], rel=0, abs_=1e-7, what="nrc3_last")


# ------------------------------------------------------------------------------------------------
# Numbers: dense reference, batch sizes, constructed truths
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [None, 1, 5])
def test_matches_the_dense_reference(tiny, rank):
    extra = [] if rank is None else ["--rank", rank]
    got = analyze_json(tiny.checkpoint, tiny.data, *extra)
    want = dense_report(tiny.model, tiny.x, tiny.y, rank=rank)
    _assert_matches_reference(got, want, rel=1e-9)
    assert got["summary"]["rank"] == (rank or 2)
    assert [r["rank"] for r in got["layers"]] == [min(rank or 2, p) for p in (6, 8, 8, 8)]


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_matches_the_dense_reference_with_norm_layers(tmp_path, norm):
    case = make_tiny_case(tmp_path, dims=(5, 7, 7, 3), norm=norm, dyadic=False, n=400)
    got = analyze_json(case.checkpoint, case.data)
    # float32 features through norms are not exact: allow float32 round-off.
    _assert_matches_reference(got, dense_report(case.model, case.x, case.y), rel=1e-5)


def test_conv_and_token_pooling_model_matches_the_dense_reference(tmp_path):
    """Conv2d (spatial mean), grouped Conv2d (null weight metrics), Conv1d, Linear on tokens."""
    src = tmp_path / "cnn.py"
    src.write_text(CNN_FACTORY)
    namespace: dict = {}
    exec(compile(CNN_FACTORY, str(src), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["Net"](channels=4).eval()
    ckpt = save_model(tmp_path / "m.safetensors", model)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 2, 6, 5)).astype(np.float32)
    y = (x.mean(axis=(2, 3)) @ rng.standard_normal((2, 2))).astype(np.float32)
    data = save_npz(tmp_path / "d.npz", x=x, y=y)
    # The CPU, like the dense reference: a GPU convolution rounds float32 in another order.
    got = analyze_json(
        ckpt, data, "--arch", f"{src}:make", "--arch-kwargs", '{"channels": 4}', "--device", "cpu"
    )
    assert [(r["layer"], r["type"], r["in_dim"]) for r in got["layers"]] == [
        ("conv1", "Conv2d", 2),
        ("conv2", "Conv2d", 4),
        ("mix", "Conv1d", 4),
        ("fc", "Linear", 3),
    ]
    grouped = got["layers"][1]
    assert grouped["nrc3_alignment"] is None and grouped["stable_rank_w"] is None
    assert "grouped" in grouped["note"]
    _assert_matches_reference(got, dense_report(model, x, y), rel=1e-6)


def test_batch_size_does_not_change_the_numbers(tiny):
    runs = [analyze_json(tiny.checkpoint, tiny.data, "--batch-size", b) for b in (1, 7, 1024)]
    base = runs[0]
    for other in runs[1:]:
        assert other["summary"]["first_collapsed_index"] == base["summary"]["first_collapsed_index"]
        for g, w in zip(other["layers"], base["layers"], strict=True):
            for col in LAYER_NUMBERS:
                assert_close(g[col], w[col], rel=1e-9, abs_=1e-15, what=f"{g['layer']}.{col}")
        for key in (*SUMMARY_NUMBERS, "nrc3_last"):
            assert_close(other["summary"][key], base["summary"][key], rel=1e-9, abs_=1e-15)


def test_max_samples_uses_the_first_n(tiny):
    got = analyze_json(tiny.checkpoint, tiny.data, "--max-samples", 120)
    assert got["summary"]["n_samples"] == 120
    want = dense_report(tiny.model, tiny.x[:120], tiny.y[:120])
    _assert_matches_reference(got, want, rel=1e-9)


def _sequential(*weights: tuple[np.ndarray, np.ndarray]) -> nn.Sequential:
    """Linear layers with given (W, b), identity activation in between (``--activation``)."""
    layers = []
    for w, b in weights:
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
    return nn.Sequential(*layers)


def test_rank_k_inputs_aligned_weight_and_affine_targets(tmp_path):
    """x = G A has rank 2; W1 = R A spans its top-2 subspace; y = x M + c is affine in x."""
    rng = np.random.default_rng(0)
    g = rng.integers(-3, 4, (400, 2))
    a = np.array([[1, 0, 1, -1, 2, 0], [0, 1, -1, 1, 0, 2]])
    x = (g @ a).astype(np.float32)  # small integers: exact in float32
    y = (x @ rng.integers(-2, 3, (6, 2)) + [1.0, -3.0]).astype(np.float32)
    w1 = np.array([[1, 1], [1, -1], [2, 0]]) @ a / 4  # 3 rows, all in the row space of A
    w2 = np.array([[1, -2, 3], [2, 1, -1]]) / 8
    model = _sequential(
        (w1.astype(np.float32), np.array([0.5, -0.25, 0.0], np.float32)),
        (w2.astype(np.float32), np.zeros(2, np.float32)),
    )
    ckpt = save_model(tmp_path / "m.safetensors", model)
    data = save_npz(tmp_path / "d.npz", x=x, y=y)
    got = analyze_json(ckpt, data, "--activation", "identity")
    first, second = got["layers"]
    assert 0 <= first["nrc1_noise"] <= 1e-12
    assert 0 <= second["nrc1_noise"] <= 1e-12
    assert first["nrc3_alignment"] == pytest.approx(1.0, abs=1e-9)
    var_y = float(np.var(y.astype(np.float64), axis=0).mean())
    assert 0 <= first["nrc4_probe_mse"] <= 1e-12 * var_y
    assert 0 <= second["nrc4_probe_mse"] <= 1e-12 * var_y


def test_targets_as_features_have_cka_one(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 3)).astype(np.float32)
    model = _sequential(
        (rng.standard_normal((5, 3)).astype(np.float32), np.zeros(5, np.float32)),
        (rng.standard_normal((3, 5)).astype(np.float32), np.zeros(3, np.float32)),
    )
    ckpt = save_model(tmp_path / "m.safetensors", model)
    data = save_npz(tmp_path / "d.npz", x=x, y=x)
    first = analyze_json(ckpt, data)["layers"][0]
    assert first["nrc2_cka"] == pytest.approx(1.0, abs=1e-12)
    assert first["nrc2_cka_signal"] == pytest.approx(1.0, abs=1e-12)
    assert first["nrc4_probe_mse"] == pytest.approx(0.0, abs=1e-12)


def test_head_features_in_the_row_space_of_w_give_zero_nrc2_last(tmp_path):
    """z = W1 x with W1 = W2ᵀ C: every head input lies in the row space of the head W2."""
    rng = np.random.default_rng(2)
    w2 = rng.integers(-4, 5, (2, 3)) / 8
    w1 = w2.T @ (rng.integers(-4, 5, (2, 4)) / 8)  # dyadic: exact in float32
    x = rng.integers(-3, 4, (300, 4)).astype(np.float32)
    y = rng.standard_normal((300, 2)).astype(np.float32)
    model = _sequential(
        (w1.astype(np.float32), np.zeros(3, np.float32)),
        (w2.astype(np.float32), np.zeros(2, np.float32)),
    )
    ckpt = save_model(tmp_path / "m.safetensors", model)
    data = save_npz(tmp_path / "d.npz", x=x, y=y)
    s = analyze_json(ckpt, data, "--activation", "identity")["summary"]
    assert s["nrc2_last"] == pytest.approx(0.0, abs=1e-12)
    # Negative control: a bias moves the head inputs out of the row space.
    model[0].bias.data.fill_(0.5)
    save_model(ckpt, model)
    assert analyze_json(ckpt, data, "--activation", "identity")["summary"]["nrc2_last"] > 1e-3


def test_one_dimensional_target_gives_zero_nrc3_last(tmp_path):
    case = make_tiny_case(tmp_path, dims=(4, 6, 1))
    save_npz(case.data, x=case.x, y=case.y[:, 0])  # stored 1-D: t = 1
    s = analyze_json(case.checkpoint, case.data)["summary"]
    assert s["target_dim"] == 1 and s["rank"] == 1
    assert s["nrc3_last"] == pytest.approx(0.0, abs=1e-12)


def test_constant_features_give_nulls_and_dashes(tmp_path):
    """W1 = 0 and a positive bias: every sample reaches the second layer as the same vector."""
    rng = np.random.default_rng(3)
    model = _sequential(
        (np.zeros((3, 4), np.float32), np.array([1.0, 2.0, 3.0], np.float32)),
        (rng.standard_normal((2, 3)).astype(np.float32), np.zeros(2, np.float32)),
    )
    ckpt = save_model(tmp_path / "m.safetensors", model)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = rng.standard_normal((200, 2)).astype(np.float32)
    data = save_npz(tmp_path / "d.npz", x=x, y=y)
    got = analyze_json(ckpt, data)
    assert got["layers"][0]["stable_rank_w"] is None  # W1 = 0: ‖W‖_F² / ‖W‖_2² is 0/0
    second = got["layers"][1]
    for col in ("nrc1_noise", "nrc2_cka", "nrc2_cka_signal", "nrc3_alignment", "stable_rank_h"):
        assert second[col] is None, col
    assert second["collapsed"] is False  # a null never satisfies the rule
    var_y = float(np.var(y.astype(np.float64), axis=0).mean())
    assert second["nrc4_probe_mse"] == pytest.approx(var_y, rel=1e-9)
    assert got["summary"]["first_collapsed_index"] is None
    table = invoke(["analyze", ckpt, "--data", data], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.stderr
    rows = _table_rows(table.stdout)
    assert [r[1] for r in rows] == ["0", "1"]
    assert rows[1][5] == "–" and rows[0][5] != "–"  # the nrc1 column
    assert rows[0][-2] == "–"  # W1 = 0: srank_w is 0/0 on the first layer too


# ------------------------------------------------------------------------------------------------
# The collapse rule and the sample checkpoints
# ------------------------------------------------------------------------------------------------


def _rule_holds(row: dict, terms: list[tuple[str, str, float]]) -> bool:
    for col, op, value in terms:
        x = row[col]
        if x is None or (op == "<=" and not x <= value) or (op == ">=" and not x >= value):
            return False
    return True


def _first_from(flags: list[bool]) -> int | None:
    first = None
    for i in range(len(flags), 0, -1):
        if not flags[i - 1]:
            break
        first = i
    return first


def test_custom_collapse_rule_changes_the_result():
    folder = REFERENCE_DIR / "mlp_relu"
    ckpt, data = folder / "model.safetensors", folder / "data.npz"
    default = analyze_json(ckpt, data)
    rule = "nrc1_noise<=0.5,nrc3_alignment>=0.5"
    custom = analyze_json(ckpt, data, "--collapse-rule", rule)
    assert default["summary"]["collapse_rule"] == "nrc1_noise<=0.2"
    assert custom["summary"]["collapse_rule"] == rule
    for doc, terms in (
        (default, [("nrc1_noise", "<=", 0.2)]),
        (custom, [("nrc1_noise", "<=", 0.5), ("nrc3_alignment", ">=", 0.5)]),
    ):
        flags = [_rule_holds(r, terms) for r in doc["layers"]]
        assert [r["collapsed"] for r in doc["layers"]] == flags
        first = _first_from(flags)
        assert doc["summary"]["first_collapsed_index"] == first
        expected_name = None if first is None else doc["layers"][first - 1]["layer"]
        assert doc["summary"]["first_collapsed_layer"] == expected_name
    assert custom["summary"]["first_collapsed_index"] != default["summary"]["first_collapsed_index"]


def test_weight_decay_sample_collapses_earlier():
    data = SAMPLES_DIR / "lowrank.npz"
    wd = analyze_json(SAMPLES_DIR / "mlp_wd.safetensors", data)["summary"]
    nowd = analyze_json(SAMPLES_DIR / "mlp_nowd.safetensors", data)["summary"]
    assert wd["first_collapsed_index"] is not None
    assert nowd["first_collapsed_index"] is None or (
        wd["first_collapsed_index"] < nowd["first_collapsed_index"]
    )
    assert wd["n_samples"] == nowd["n_samples"] == 4000
    y = np.load(data)["y"]
    ref = dense_target_fields(y)
    assert wd["target_effective_rank"] == ref["target_effective_rank"]
    assert wd["stable_rank_y"] == pytest.approx(ref["stable_rank_y"], rel=1e-9)


# ------------------------------------------------------------------------------------------------
# Output formats and files
# ------------------------------------------------------------------------------------------------


def _run(args, **kw):
    result = invoke(["analyze", *args], **kw)
    assert result.exit_code == 0, result.stderr
    return result


def test_json_is_byte_identical_across_runs(tiny):
    args = [tiny.checkpoint, "--data", tiny.data, "--format", "json"]
    first, second = _run(args), _run(args)
    assert first.stdout == second.stdout
    doc = json.loads(first.stdout)
    assert set(doc) == {"nrc_version", "checkpoint", "data", "summary", "layers"}
    assert doc["checkpoint"] == str(tiny.checkpoint)


def test_csv_is_tidy_with_checkpoint_and_summary_columns(tiny):
    doc = analyze_json(tiny.checkpoint, tiny.data)
    frame = pd.read_csv(io.StringIO(_run([tiny.checkpoint, "-d", tiny.data, "-f", "csv"]).stdout))
    assert len(frame) == len(doc["layers"]) == 4
    assert list(frame["layer"]) == [r["layer"] for r in doc["layers"]]
    assert set(frame["checkpoint"]) == {str(tiny.checkpoint)}
    for key in ("n_samples", "model_mse", "first_collapsed_index", "collapse_rule", "nrc1_last"):
        assert key in frame.columns, key
        assert frame[key].nunique(dropna=False) == 1
    assert "requested_rank" in frame.columns and "rank" in frame.columns
    assert frame["model_mse"].iloc[0] == pytest.approx(doc["summary"]["model_mse"], rel=1e-15)
    # 1e-14: some pandas versions parse decimal text a few ulp off the written digits.
    for col in LAYER_NUMBERS:
        np.testing.assert_allclose(frame[col], [r[col] for r in doc["layers"]], rtol=1e-14)


def test_parquet_file_has_the_same_numbers(tiny, tmp_path):
    out = tmp_path / "report.parquet"
    result = _run([tiny.checkpoint, "--data", tiny.data, "--output", out])
    assert result.stdout == ""
    frame = pq.read_table(out).to_pandas()
    doc = analyze_json(tiny.checkpoint, tiny.data)
    assert list(frame["layer"]) == [r["layer"] for r in doc["layers"]]
    for col in LAYER_NUMBERS:
        np.testing.assert_allclose(frame[col], [r[col] for r in doc["layers"]], rtol=1e-15)
    assert list(frame["collapsed"]) == [r["collapsed"] for r in doc["layers"]]
    assert frame["first_collapsed_index"].iloc[0] == doc["summary"]["first_collapsed_index"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("suffix", "fmt"), [(".json", None), (".csv", None), (".txt", "json")])
def test_output_file_gets_the_result_and_stdout_nothing(tiny, tmp_path, suffix, fmt):
    out = tmp_path / f"report{suffix}"
    args = [tiny.checkpoint, "--data", tiny.data, "--output", out]
    if fmt:
        args += ["--format", fmt]
    result = _run(args)
    assert result.stdout == ""
    text = out.read_text()
    if suffix == ".csv":
        assert len(pd.read_csv(io.StringIO(text))) == 4
    else:
        assert text == _run([tiny.checkpoint, "--data", tiny.data, "--format", "json"]).stdout


WEIGHT_TYPES = {"Linear", "Conv1d", "Conv2d", "Conv3d"}


def _table_rows(text: str) -> list[list[str]]:
    """The body rows of the layer table as cells (index, layer, type, ..., collapsed)."""
    rows = []
    for line in text.splitlines():
        cells = [c for c in line.replace("│", " ").split() if c]
        if len(cells) > 3 and cells[0].isdigit() and cells[2] in WEIGHT_TYPES:
            rows.append(cells)
    return rows


def test_table_lists_every_layer_and_the_verdict(tmp_path):
    case = make_tiny_case(tmp_path, dims=(6, 8, 8, 8, 8, 8, 2))
    # --activation: with the activation stated, nothing needs saying on stderr.
    args = [case.checkpoint, "--data", case.data, "--activation", "relu"]
    result = _run(args, env={"COLUMNS": "200"})
    doc = analyze_json(case.checkpoint, case.data, "--activation", "relu")
    rows = _table_rows(result.stdout)
    assert [r[1] for r in rows] == [r["layer"] for r in doc["layers"]]
    assert [r[-1] for r in rows] == ["yes" if r["collapsed"] else "no" for r in doc["layers"]]
    first = doc["summary"]["first_collapsed_index"]
    if first is None:
        verdict = "no collapse: the last layer is not collapsed under nrc1_noise<=0.2"
    else:
        verdict = f"collapsed from layer `{doc['summary']['first_collapsed_layer']}`"
    assert verdict in result.stdout.splitlines()[-1]
    assert result.stderr == ""


def test_table_verdict_names_the_first_collapsed_layer():
    folder = REFERENCE_DIR / "mlp_relu"
    result = _run(
        [folder / "model.safetensors", "--data", folder / "data.npz"], env={"COLUMNS": "200"}
    )
    assert [r[1] for r in _table_rows(result.stdout)] == ["0", "2", "4", "6"]
    last = result.stdout.strip().splitlines()[-1]
    assert last == "collapsed from layer `4` (layers 3–4 of 4) under nrc1_noise<=0.2"


def test_json_has_no_nan_or_infinity(tmp_path):
    rng = np.random.default_rng(4)
    model = _sequential(
        (np.zeros((3, 4), np.float32), np.ones(3, np.float32)),
        (rng.standard_normal((1, 3)).astype(np.float32), np.zeros(1, np.float32)),
    )
    ckpt = save_model(tmp_path / "m.safetensors", model)
    data = save_npz(
        tmp_path / "d.npz",
        x=rng.standard_normal((50, 4)).astype(np.float32),
        y=np.ones(50, np.float32),
    )  # constant targets too
    text = _run([ckpt, "--data", data, "--format", "json"]).stdout
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["summary"]["stable_rank_y"] is None
    assert all(not isinstance(v, float) or math.isfinite(v) for v in doc["summary"].values())


# --------------------------------------------------------------------------- vacuous layers


def test_a_layer_no_wider_than_the_rank_is_never_collapsed(tmp_path):
    # 4 inputs, 4 targets: the first layer's features have no direction outside the top 4,
    # so nrc1_noise is 0 whatever the network learned; it says nothing about collapse.
    case = make_tiny_case(tmp_path, dims=(4, 16, 16, 4), n=400)
    args = [case.checkpoint, "--data", case.data, "--activation", "relu"]
    doc = analyze_json(
        case.checkpoint, case.data, "--activation", "relu", "--collapse-rule", "nrc1_noise<=1"
    )
    first = doc["layers"][0]
    assert (first["in_dim"], first["rank"], first["nrc1_noise"]) == (4, 4, 0.0)
    assert first["collapsed"] is False
    assert first["note"].startswith("in_dim 4 <= rank 4:") and "never counted" in first["note"]
    assert [r["collapsed"] for r in doc["layers"]] == [False, True, True]
    assert all(r["note"] is None for r in doc["layers"][1:])
    assert doc["summary"]["first_collapsed_index"] == 2
    assert doc["summary"]["warnings"] == []
    table = _run([*args, "--collapse-rule", "nrc1_noise<=1"], env={"COLUMNS": "200"}).stdout
    assert "note: net.0: in_dim 4 <= rank 4:" in table
    assert "collapsed from layer `net.2` (layers 2–3 of 3)" in table
    # --rank 2 makes the first layer's test meaningful again.
    doc = analyze_json(
        case.checkpoint,
        case.data,
        "--activation",
        "relu",
        "--rank",
        "2",
        "--collapse-rule",
        "nrc1_noise<=1",
    )
    assert doc["layers"][0]["collapsed"] is True and doc["layers"][0]["note"] is None


def test_too_few_samples_for_the_width_is_warned_about(tmp_path):
    case = make_tiny_case(tmp_path, dims=(4, 16, 16, 4), n=400)
    small = save_npz(tmp_path / "small.npz", x=case.x[:12], y=case.y[:12])
    result = invoke(
        ["analyze", case.checkpoint, "--data", small, "--activation", "relu", "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: N = 12 samples is not well above the width of ")
    assert "net.0 (in_dim 4), net.2 (in_dim 16), net.4 (in_dim 16)" in line
    assert doc["summary"]["warnings"] == [line.removeprefix("warning: ")]
    # 10 samples per probe parameter (400 >= 10 x 17) is enough.
    big = analyze_json(case.checkpoint, case.data, "--activation", "relu")
    assert big["summary"]["warnings"] == []
    # With N = 12 < in_dim + 1 = 17 the probe nearly interpolates the targets: it reads low.
    for few, many in zip(doc["layers"][1:], big["layers"][1:], strict=True):
        assert few["nrc4_probe_mse"] < 0.05 * many["nrc4_probe_mse"]


def test_svd_randomized_takes_the_exact_spectrum_of_a_narrow_layer(tmp_path):
    case = make_tiny_case(tmp_path, dims=(16, 64, 4), n=400, dyadic=False)
    base = (case.checkpoint, case.data, "--activation", "relu")
    exact = analyze_json(*base, "--svd", "exact")
    rand = analyze_json(*base, "--svd", "randomized")
    # net.0 is 16 wide: a sketch of 4 + 10 columns is more than half of it.
    assert rand["layers"][0] == exact["layers"][0]
    layers = rand["summary"]["plan"]["layers"]
    assert [row["spectrum"] for row in layers] == ["exact", "randomized"]
    assert layers[0]["spectrum_note"].startswith("exact, not randomized:")
    assert "spectrum_note" not in layers[1]
    assert rand["summary"]["svd"] == "mixed"
    want = dense_report(case.model, case.x, case.y, rank=4)
    assert_close(rand["layers"][0]["nrc1_noise"], want["layers"][0]["nrc1_noise"], rel=1e-9)


def test_columns_and_markdown_show_the_reports_numbers(tiny):
    args = ["analyze", tiny.checkpoint, "--data", tiny.data]
    report = json.loads(invoke([*args, "--format", "json"]).stdout)
    done = invoke([*args, "--columns", "layer,nrc1_noise,nrc3_alignment", "--format", "markdown"])
    assert done.exit_code == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert lines[0] == "| layer | nrc1_noise | nrc3_alignment |"
    for line, row in zip(lines[1:], report["layers"], strict=True):
        layer, nrc1, nrc3 = (c.strip() for c in line.strip("|").split("|"))
        assert layer == row["layer"]
        assert float(nrc1) == pytest.approx(row["nrc1_noise"], rel=1e-3, abs=1e-12)
        assert float(nrc3) == pytest.approx(row["nrc3_alignment"], rel=1e-3, abs=1e-12)
    table = invoke([*args, "--columns", "layer,nrc1_noise"])
    assert table.exit_code == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if line.split()[:1] == ["layer"])
    assert header.split() == ["layer", "nrc1"]
    out = tiny.checkpoint.parent / "t.md"
    written = invoke([*args, "--output", out])
    assert written.exit_code == 0, written.stderr
    assert sum(line.startswith("|") for line in out.read_text().splitlines()) == 2 + len(
        report["layers"]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--columns", "layer,nrc9"], "--columns: expected per-layer columns, found 'nrc9'"),
        (["--columns", "layer", "--format", "json"], "--columns picks the columns"),
        (["--format", "html"], "--format: expected one of table, markdown"),
    ],
)
def test_bad_columns_or_format_is_an_exit_2_error_before_the_run(tiny, extra, message):
    done = invoke(["analyze", tiny.checkpoint, "--data", tiny.data, *extra])
    assert done.exit_code == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    if "nrc9" in extra[1]:
        assert "valid columns: layer, index" in done.stderr
