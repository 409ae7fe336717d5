"""``--precision mixed``: float32 products added into float64 sums, and how far it is from exact.

The bound under test (docs/metrics.md, "Mixed precision"): every metric within
1e-5 + 1e-4·|exact| of ``--precision exact``, on the reference cases and on constructed worst
cases (large feature means, wide dynamic range, drifting data, near-rank-deficient features,
``nrc1_noise`` near 0, where only the absolute part of the bound means anything). On dyadic data,
where every float32 product and sum is exact, mixed and exact agree to the last bit.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REFERENCE_DIR
from helpers import (
    AccumulatorCase,
    Wrapped,
    analyze_json,
    check_accumulator_contract,
    dense_moments,
    error_line,
    integer_mlp,
    invoke,
    mlp,
    moments_result,
    save_model,
    save_npz,
    tensor_results,
)

from nrc_cli import analyze
from nrc_cli.accumulate.gram import SYRK_MIN_WIDTH
from nrc_cli.accumulate.moments import (
    GRAM_BLOCK,
    MIXED_ROWS,
    CrossMoments,
    NormalizedGram,
    Workspace,
    add_gram_mixed_,
    symmetric,
)
from nrc_cli.accumulate.precision import (
    SLOW_FLOAT64_RATIO,
    float64_is_slow,
    precision_hint,
)
from nrc_cli.planning import layer_need

ABS, REL = 1e-5, 1e-4  # the mixed-precision bound, as |Δ| <= ABS + REL·|exact|


def _float_fields(report: dict):
    """(where, value) of every float metric of a JSON report (nrc3_gamma is not unique)."""
    for row in report["layers"]:
        for key, value in row.items():
            if isinstance(value, float):
                yield f"{row['layer']}.{key}", value
    for key, value in report["summary"].items():
        if isinstance(value, float) and key != "nrc3_gamma":
            yield f"summary.{key}", value


def _worst(mixed: dict, exact: dict) -> tuple[float, str]:
    """The largest |Δ| / (ABS + REL·|exact|) over every float metric, and where."""
    got = dict(_float_fields(mixed))
    worst, where = 0.0, ""
    for key, want in _float_fields(exact):
        assert got.get(key) is not None, f"{key}: {got.get(key)!r} in mixed, {want!r} in exact"
        ratio = abs(got[key] - want) / (ABS + REL * abs(want))
        if ratio > worst:
            worst, where = ratio, key
    return worst, where


# ------------------------------------------------------------------------------------------------
# The accumulators
# ------------------------------------------------------------------------------------------------


def _dense_gram(z: np.ndarray) -> dict:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    h = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    return {"gram": h.T @ h / len(z)}


def _mixed_cases(workspace: bool) -> tuple[AccumulatorCase, AccumulatorCase]:
    def ws():
        return Workspace() if workspace else None

    cross = AccumulatorCase(
        make=lambda: CrossMoments(workspace=ws(), precision="mixed"),
        update=lambda acc, z, y: acc.update(z, y),
        result=moments_result,
        dense=dense_moments,
    )
    gram = AccumulatorCase(
        make=lambda: NormalizedGram(workspace=ws(), precision="mixed"),
        update=lambda acc, z: acc.update(z),
        result=lambda acc: tensor_results(gram=acc.compute()),
        dense=_dense_gram,
    )
    return cross, gram


def _features(n: int, p: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Correlated features with per-column offsets (±50) and scales (0.1–10)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, p)) @ rng.standard_normal((p, p))
    z = z * rng.uniform(0.1, 10, size=p) + rng.uniform(-50, 50, size=p)
    return torch.from_numpy(z).to(dtype)


@pytest.mark.parametrize(("dtype", "workspace"), [(torch.float32, True), (torch.float64, False)])
def test_mixed_accumulators_keep_the_contract_to_float32_accuracy(dtype, workspace):
    """Streamed (batch sizes 1, 7, 1024) == dense float64, merges, purity, inputs untouched:
    the contract helpers.check_accumulator_contract checks, with a float32-sized tolerance."""
    cross, gram = _mixed_cases(workspace)
    z = _features(1500, 6, seed=1, dtype=dtype)
    y = torch.from_numpy(np.random.default_rng(2).standard_normal((1500, 3)) + 4).to(dtype)
    y = y + 0.5 * z[:, :3]
    check_accumulator_contract(cross, [z, y], rtol=2e-6)
    z[::97] = 0.0
    check_accumulator_contract(gram, [z], rtol=2e-6)


def test_mixed_contract_with_wide_features_in_blocks():
    """p = 300 > GRAM_BLOCK and batches > MIXED_ROWS: blocked float32 products, row chunks."""
    assert GRAM_BLOCK < 300 and 2 * MIXED_ROWS < 520
    cross, gram = _mixed_cases(workspace=True)
    z = _features(520, 300, seed=11)
    y = z[:, :2].double() * 0.5 + torch.from_numpy(
        np.random.default_rng(12).standard_normal((520, 2))
    )
    check_accumulator_contract(cross, [z, y], rtol=2e-6)
    check_accumulator_contract(gram, [z], rtol=2e-6)


def test_mixed_is_measurably_less_exact_than_exact():
    """Negative control: the float32 products do round (else the tests above prove nothing)."""
    z = _features(2048, 64, seed=3)
    y = torch.from_numpy(np.random.default_rng(4).standard_normal((2048, 2)))
    want = dense_moments(z.double().numpy(), y.numpy())["cov_z"]
    errs = {}
    for precision in ("exact", "mixed"):
        acc = CrossMoments(precision=precision)
        for s in range(0, 2048, 512):
            acc.update(z[s : s + 512], y[s : s + 512])
        got = acc.compute().cov_z.numpy()
        errs[precision] = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert errs["exact"] < 1e-13
    assert 1e-10 < errs["mixed"] < 2e-6


def test_mixed_survives_data_drifting_far_from_the_first_batch():
    """Each batch is centred on its own mean, so a drift of 2000 spreads costs no accuracy."""
    rng = np.random.default_rng(14)
    z = rng.standard_normal((4096, 5)) + np.linspace(0, 2000, 4096)[:, None] * [1, -1, 0.5, 0, 2]
    y = z[:, :2] @ rng.standard_normal((2, 2)) + rng.standard_normal((4096, 2))
    z32 = torch.from_numpy(z.astype(np.float32))
    acc = CrossMoments(precision="mixed")
    for s in range(0, 4096, 256):
        acc.update(z32[s : s + 256], torch.from_numpy(y[s : s + 256]))
    got = moments_result(acc)
    want = dense_moments(z32.double().numpy(), y)
    for key in ("mean_z", "cov_z", "cov_zy", "cov_y"):
        err = np.linalg.norm(got[key] - want[key]) / np.linalg.norm(want[key])
        assert err < 1e-6, (key, err)


def test_mixed_and_exact_agree_to_the_bit_on_dyadic_data():
    """Small integers in power-of-two batches: batch means, centred features, their float32
    products and sums are all exact, so mixed gives exact's sums bit for bit."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randint(-3, 4, (1024, 300), generator=gen).float()
    z += torch.arange(300).float() * 8  # offsets, as in real features
    y = torch.randint(-2, 3, (1024, 3), generator=gen).double() / 4
    got = {}
    for precision in ("exact", "mixed"):
        acc = CrossMoments(precision=precision)
        for s in range(0, 1024, 64):
            acc.update(z[s : s + 64], y[s : s + 64])
        got[precision] = moments_result(acc)
    for key, value in got["exact"].items():
        assert np.array_equal(got["mixed"][key], value), key


@pytest.mark.parametrize("p", [5, GRAM_BLOCK + 1, 600])
def test_add_gram_mixed_fills_the_upper_triangle(p):
    a = torch.randint(-3, 4, (300, p), generator=torch.Generator().manual_seed(p)).float()
    want = a.double().T @ a.double()
    got = add_gram_mixed_(torch.full((p, p), 7.0, dtype=torch.float64), a, Workspace())
    upper = torch.triu(torch.ones(p, p, dtype=torch.bool))
    assert torch.equal(got[upper], want[upper] + 7.0)  # integers: float32 is exact
    assert torch.equal(symmetric(got - 7.0), want)


def test_wide_mixed_layers_on_the_cpu_are_accumulated_exactly():
    """From SYRK_MIN_WIDTH on, a mixed-precision accumulator on the CPU takes the exact route:
    the same bits as exact, for the moments and the normalised Gram; narrower ones round."""
    gen = torch.Generator().manual_seed(5)
    for p, same in ((SYRK_MIN_WIDTH, True), (300, True), (64, False)):
        z = torch.randn(520, p, generator=gen)
        y = torch.randn(520, 3, generator=gen, dtype=torch.float64)
        got = {}
        for precision in ("exact", "mixed"):
            ws = Workspace()
            ws.reserve_batches(256, p, "cpu", precision)
            cross = CrossMoments(workspace=ws, precision=precision)
            gram = NormalizedGram(workspace=ws, precision=precision)
            for s in range(0, 520, 256):
                cross.update(z[s : s + 256], y[s : s + 256])
                gram.update(z[s : s + 256])
            got[precision] = {**moments_result(cross), "gram": gram.compute().numpy()}
        if same:
            for key, value in got["exact"].items():
                assert np.array_equal(got["mixed"][key], value), (p, key)
        else:  # float32 products round the Grams
            for key in ("cov_z", "gram"):
                assert not np.array_equal(got["mixed"][key], got["exact"][key]), (p, key)


def test_add_gram_mixed_wants_float32():
    with pytest.raises(ValueError, match="expected a float32 batch"):
        add_gram_mixed_(
            torch.zeros(3, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
        )


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="expected one of exact, mixed, got 'half'"):
        CrossMoments(precision="half")
    with pytest.raises(ValueError, match="expected one of exact, mixed"):
        NormalizedGram(precision="single")


def test_mixed_plan_counts_float32_temporaries():
    exact = layer_need("l", 512, 4, 4, oversample=10, batch=1024, head=True)
    mixed = layer_need("l", 512, 4, 4, oversample=10, batch=1024, head=True, precision="mixed")
    assert mixed.exact_state == exact.exact_state  # the same float64 sums
    assert exact.exact_temp == 8 * 2 * 1024 * 512
    # 512 wide: accumulated as in exact on the CPU (two float64 b×p), more than the float32
    # temporaries of a GPU; 128 wide: the float32 centred batch and product.
    assert mixed.exact_temp == max(8 * 2 * 1024 * 512, 8 * 1024 * 512 + 4 * (1024 * 512 + 512**2))
    narrow = layer_need("l", 128, 4, 4, oversample=10, batch=1024, head=True, precision="mixed")
    assert narrow.exact_temp == 8 * 1024 * 128 + 4 * (1024 * 128 + 128 * 128)


# ------------------------------------------------------------------------------------------------
# End to end: mixed against exact on every metric
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp_relu", "mlp_layernorm_1d_target"])
def test_reference_cases_in_mixed_precision(case):
    folder = REFERENCE_DIR / case
    mixed = analyze_json(folder / "model.safetensors", folder / "data.npz", "--precision", "mixed")
    exact = analyze_json(folder / "model.safetensors", folder / "data.npz")
    assert mixed["summary"]["precision"] == "mixed"
    assert exact["summary"]["precision"] == "exact"
    worst, where = _worst(mixed, exact)
    assert worst <= 1.0, f"{case}: {where} off by {worst:.2f}x the bound"
    # and against the independent dense report, with the same bound
    expected = json.loads((folder / "expected.json").read_text())
    expected["layers"] = [
        {k: v for k, v in row.items() if isinstance(v, float)} | {"layer": row["layer"]}
        for row in expected["layers"]
    ]
    expected["summary"].pop("nrc3_last", None)  # compared within 1e-4 in test_reference_cases
    worst, where = _worst(mixed, expected)
    assert worst <= 1.0, f"{case} vs dense: {where} off by {worst:.2f}x the bound"


def _worst_case(folder, x: np.ndarray, *, seed: int = 0, noise: float = 0.05):
    """An MLP p -> 32 -> 32 -> 3 on data ``x``, targets its own output plus noise; the report
    in both precisions. The first layer's features are ``x`` itself."""
    folder.mkdir()
    p = x.shape[1]
    model = Wrapped(mlp((p, 32, 32, 3), seed=seed))
    x = x.astype(np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).double().numpy()
    rng = np.random.default_rng(seed + 1)
    y = pred + noise * pred.std(axis=0) * rng.standard_normal(pred.shape)
    ckpt = save_model(folder / "m.safetensors", model)
    data = save_npz(folder / "d.npz", x=x, y=y.astype(np.float32))
    return {
        precision: analyze(ckpt, data, precision=precision, batch_size=512).to_dict()
        for precision in ("exact", "mixed")
    }


def _base(n: int = 4096, p: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, p)) @ rng.standard_normal((p, p)) / math.sqrt(p)


WORST_CASES = {
    # feature means 1e4 and spreads 0.1: 1e5 times the spread (hidden features reach 3e4)
    "large_means": lambda: _base() * 0.1 + 1e4,
    # column scales from 1e-3 to 1e3
    "wide_dynamic_range": lambda: _base() * np.logspace(-3, 3, 20),
    # data sorted along a drift of 50 spreads
    "drift": lambda: _base() + np.linspace(0, 50, 4096)[:, None],
    # rank 3 plus noise 1e-3: eigenvalues down to 1e-7 of the largest
    "near_rank_deficient": lambda: (
        np.random.default_rng(2).standard_normal((4096, 3))
        @ np.random.default_rng(3).standard_normal((3, 20))
        + 1e-3 * np.random.default_rng(4).standard_normal((4096, 20))
    ),
}


@pytest.mark.parametrize("name", sorted(WORST_CASES))
def test_constructed_worst_cases_stay_within_the_bound(tmp_path, name):
    got = _worst_case(tmp_path / name, WORST_CASES[name]())
    worst, where = _worst(got["mixed"], got["exact"])
    assert worst <= 1.0, f"{name}: {where} off by {worst:.2f}x the bound"


def test_nrc1_noise_near_zero_has_the_absolute_bound_only(tmp_path):
    """Features of rank 3 plus noise 1e-5 (t = 3, k = 3): nrc1_noise ~ 1e-9. Its absolute error
    stays far below 1e-5 (documented: about 1e-7 or less), its relative error does not."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4096, 3)) @ rng.standard_normal((3, 16)) + 5
    x += 1e-5 * rng.standard_normal(x.shape)
    got = _worst_case(tmp_path / "collapsed", x)
    exact = got["exact"]["layers"][0]["nrc1_noise"]
    mixed = got["mixed"]["layers"][0]["nrc1_noise"]
    assert 0 < exact < 1e-8
    assert abs(mixed - exact) < 1e-7
    worst, where = _worst(got["mixed"], got["exact"])
    assert worst <= 1.0, f"{where} off by {worst:.2f}x the bound"


def test_mixed_equals_exact_end_to_end_on_dyadic_features(tmp_path):
    ckpt, data = integer_mlp(tmp_path / "int")
    exact = analyze_json(ckpt, data, "--batch-size", 8)
    mixed = analyze_json(ckpt, data, "--batch-size", 8, "--precision", "mixed")
    for e, m in zip(exact["layers"], mixed["layers"], strict=True):
        assert e == m  # every per-layer column, to the last bit
    # The last-layer NRC reads the Gram of z/‖z‖, which is not dyadic: float32-close only.
    for key in ("nrc1_last", "nrc2_last", "nrc3_last"):
        assert abs(mixed["summary"][key] - exact["summary"][key]) < 1e-6, key


# ------------------------------------------------------------------------------------------------
# The command line, and the CUDA hint's decision
# ------------------------------------------------------------------------------------------------


def test_precision_is_recorded_and_checked(tiny):
    got = analyze_json(tiny.checkpoint, tiny.data, "--precision", "mixed")
    assert got["summary"]["precision"] == "mixed"
    bad = invoke(["analyze", tiny.checkpoint, "--data", tiny.data, "--precision", "half"])
    assert bad.exit_code == 2
    assert error_line(bad) == "error: --precision: expected one of exact, mixed, found 'half'"


def test_check_and_audit_take_precision(tiny, tmp_path):
    gate = ["--require", "nrc1_noise[-1] <= 1", "--format", "json"]
    check = invoke(["check", tiny.checkpoint, "--data", tiny.data, "--precision", "mixed", *gate])
    assert check.exit_code == 0, check.stderr
    out = tmp_path / "audit.csv"
    audit = invoke(
        ["audit", tiny.checkpoint, "--data", tiny.data, "--precision", "mixed", "-o", out]
    )
    assert audit.exit_code == 0, audit.stderr
    import pandas as pd

    assert set(pd.read_csv(out)["precision"]) == {"mixed"}


@pytest.mark.parametrize(
    ("f32", "f64", "slow"),
    [
        (60e12, 60e12, False),  # H100: float64 at the float32 rate
        (19.5e12, 9.7e12, False),  # A100 without tensor cores: 2x
        (30e12, 30e12 / (SLOW_FLOAT64_RATIO - 0.5), False),
        (30e12, 30e12 / SLOW_FLOAT64_RATIO, True),
        (31e12, 31e12 / 64, True),  # L4 / consumer cards: 1/64
        (0.0, 1e9, False),  # a failed measurement never hints
        (1e12, 0.0, False),
    ],
)
def test_float64_is_slow_decides_on_the_rate_ratio(f32, f64, slow):
    assert float64_is_slow(f32, f64) is slow


def test_precision_hint_only_for_exact_runs_on_cuda_with_slow_float64():
    slow, fast = (31e12, 31e12 / 64), (60e12, 60e12)
    cuda = torch.device("cuda", 0)  # a device name only: nothing runs on it with rates given
    hint = precision_hint(cuda, "exact", slow)
    assert hint is not None and "\n" not in hint
    assert hint.startswith("hint: this GPU multiplies float64 at 1/64 of its float32 rate")
    assert "--precision mixed" in hint
    assert precision_hint(cuda, "exact", fast) is None
    assert precision_hint(cuda, "mixed", slow) is None
    assert precision_hint(torch.device("cpu"), "exact", slow) is None
    # no measurement is attempted on the CPU
    assert precision_hint(torch.device("cpu"), "exact") is None


def test_no_hint_on_the_cpu(tiny):
    result = invoke(["analyze", tiny.checkpoint, "--data", tiny.data, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert "--precision" not in result.stderr


def test_the_monitor_takes_precision_and_merges_and_restores_it(tmp_path):
    from nrc_cli import CollapseMonitor
    from nrc_cli.errors import ConfigError

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=gen)
    model = Wrapped(mlp((8, 48, 48, 2), seed=2))
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(600, 2, generator=gen)

    def feed(monitor, lo, hi):
        with monitor, torch.no_grad():
            for s in range(lo, hi, 128):
                monitor.update(y[s : min(s + 128, hi)], model(x[s : min(s + 128, hi)]))
        return monitor

    exact = feed(CollapseMonitor(model), 0, 600).compute().to_dict()
    mixed = feed(CollapseMonitor(model, precision="mixed"), 0, 600)
    got = mixed.compute().to_dict()
    assert got["summary"]["precision"] == "mixed"
    assert exact["summary"]["precision"] == "exact"
    worst, where = _worst(got, exact)
    assert worst <= 1.0, f"{where} off by {worst:.2f}x the bound"
    # shards merged, and a state dict loaded, give the single stream's numbers
    first = feed(CollapseMonitor(model, precision="mixed"), 0, 256)
    first.merge(feed(CollapseMonitor(model, precision="mixed"), 256, 600))
    assert _worst(first.compute().to_dict(), got)[0] <= 0.01
    again = CollapseMonitor(model, precision="mixed")
    again.load_state_dict(mixed.state_dict())
    assert again.compute().to_dict()["layers"] == got["layers"]
    with pytest.raises(ConfigError, match="precision: expected one of exact, mixed"):
        CollapseMonitor(model, precision="fp32")
