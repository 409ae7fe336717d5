"""Wide layers and bounded memory: randomized spectra, sketches, multi-pass plans, devices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import analyze_json
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from nrc_cli.accumulate.moments import CrossMoments, Moments
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.cli import app
from nrc_cli.errors import ConfigError
from nrc_cli.linalg import gaussian_test_matrix, projector_distance
from nrc_cli.metrics.layer import (
    Spectrum,
    WeightBasis,
    layer_metrics,
    probe_mse_exact,
    probe_mse_regularized,
    weight_input_basis,
)
from nrc_cli.planning import (
    available_memory,
    cgroup_headroom,
    default_budget,
    layer_need,
    make_plan,
    parse_size,
)

F64 = torch.float64
METRICS = ("nrc1_noise", "nrc2_cka", "nrc3_alignment", "nrc4_probe_mse")


def householder_spectrum(p: int, values: torch.Tensor, seed: int) -> tuple:
    """Σ = H diag(λ) H with a Householder H: eigenpairs known without an eigensolver."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(p, generator=g, dtype=F64)
    v /= v.norm()
    # H e_j are the eigenvectors; H = I − 2vvᵀ is symmetric and orthogonal.
    h = torch.eye(p, dtype=F64) - 2 * torch.outer(v, v)
    cov = (h * values) @ h
    return cov, h, values


def constructed_layer(p: int, t: int, values: torch.Tensor, seed: int = 0):
    """Moments with a known spectrum and a target cross-covariance living mostly on top."""
    cov, vecs, lam = householder_spectrum(p, values, seed)
    g = torch.Generator().manual_seed(seed + 1)
    # Σ_ZY = Σ_Z B: the targets are a linear read-out of the features.
    b = torch.randn(p, t, generator=g, dtype=F64)
    cov_zy = cov @ b
    cov_y = b.T @ cov @ b + 0.01 * torch.eye(t, dtype=F64)
    moments = Moments(
        1000, torch.zeros(p, dtype=F64), torch.zeros(t, dtype=F64), cov, cov_zy, cov_y
    )
    exact = Spectrum(lam, vecs, float(lam.sum()), float((lam * lam).sum()), True)
    return moments, exact


def weight_on_top(vecs: torch.Tensor, k: int, q: int, seed: int) -> nn.Linear:
    """A Linear (q×p) whose rows mostly span the top-k eigenvectors, plus some noise."""
    g = torch.Generator().manual_seed(seed)
    p = vecs.shape[0]
    w = torch.randn(q, k, generator=g, dtype=F64) @ vecs[:, :k].T
    w += 0.05 * torch.randn(q, p, generator=g, dtype=F64) / math.sqrt(p)
    lin = nn.Linear(p, q, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w.float())
    return lin


def test_randomized_matches_exact_on_a_4096_wide_decaying_spectrum():
    p, t, k = 4096, 4, 4
    lam = 0.7 ** torch.arange(p, dtype=F64)
    moments, exact = constructed_layer(p, t, lam)
    lin = weight_on_top(exact.vectors, k, 16, seed=3)
    want = layer_metrics(moments, exact, lin, k, 0.01, weight=weight_input_basis(lin))
    opts = {"oversample": 10, "power_iters": 4, "seed": 0}
    spectrum = Spectrum.randomized(moments.cov_z, k, **opts)
    got = layer_metrics(
        moments,
        spectrum,
        lin,
        k,
        0.01,
        probe_mse=probe_mse_regularized(moments, spectrum.top),
        weight=weight_input_basis(lin, k, **opts),
    )
    assert projector_distance(spectrum.vectors, exact.vectors[:, :k]) < 1e-3
    for col in METRICS:
        assert abs(got[col] - want[col]) < 1e-3, (col, got[col], want[col])


def test_power_iterations_matter_on_a_slowly_decaying_spectrum():
    # Negative control: without power iterations the subspace and the metrics are worse.
    p, t, k = 1024, 4, 4
    lam = 1.0 / torch.sqrt(torch.arange(1, p + 1, dtype=F64))
    moments, exact = constructed_layer(p, t, lam, seed=5)
    top = exact.vectors[:, :k]
    errs = {}
    for q in (0, 4):
        s = Spectrum.randomized(moments.cov_z, k, oversample=10, power_iters=q, seed=0)
        noise_err = abs(s.tail_sum(k) / s.trace - exact.tail_sum(k) / exact.trace)
        errs[q] = (projector_distance(s.vectors, top), noise_err)
    assert errs[0][0] > 3 * errs[4][0]
    assert errs[0][1] > 10 * errs[4][1]


def test_regularized_probe_is_close_to_the_exact_cutoff_probe():
    p, t = 512, 3
    lam = 0.85 ** torch.arange(p, dtype=F64)
    moments, exact = constructed_layer(p, t, lam, seed=9)
    want = probe_mse_exact(moments, exact)
    got = probe_mse_regularized(moments, exact.top)
    assert abs(got - want) < 1e-3 * max(1.0, want)


def test_randomized_weight_basis_matches_the_full_svd():
    torch.manual_seed(0)
    lin = nn.Linear(2600, 2100)  # both sides above the exact limit: the randomized path
    with torch.no_grad():
        u, _, _ = torch.linalg.svd(torch.randn(2100, 50), full_matrices=False)
        _, _, vh2 = torch.linalg.svd(torch.randn(50, 2600), full_matrices=False)
        lin.weight.copy_((u * (0.5 ** torch.arange(50.0))) @ vh2)
    full = weight_input_basis(lin)
    fast = weight_input_basis(lin, 4, oversample=10, power_iters=4, seed=0)
    assert isinstance(fast, WeightBasis)
    assert projector_distance(full.basis[:, :4], fast.basis) < 1e-6
    assert fast.fro2 == pytest.approx(full.fro2, rel=1e-12)
    assert fast.top == pytest.approx(full.top, rel=1e-9)


# -- the sketch accumulator --------------------------------------------------------------------


def low_rank_features(n: int, p: int, r: int, t: int, seed: int):
    g = np.random.default_rng(seed)
    basis = np.linalg.qr(g.standard_normal((p, r)))[0]
    scales = 2.0 ** -np.arange(r)
    z = (g.standard_normal((n, r)) * scales) @ basis.T + 3.0  # offset: centring matters
    z += 1e-4 * g.standard_normal((n, p))
    y = z @ g.standard_normal((p, t)) + 0.1 * g.standard_normal((n, t))
    return torch.from_numpy(z), torch.from_numpy(y)


def sketch_of(z, y, omega, batch):
    acc = CovarianceSketch(omega)
    for i in range(0, z.shape[0], batch):
        acc.update(z[i : i + batch], y[i : i + batch])
    return acc


def test_sketch_streams_merges_and_ignores_batch_size():
    z, y = low_rank_features(500, 40, 5, 3, seed=1)
    z0, y0 = z.clone(), y.clone()
    omega = gaussian_test_matrix(40, 12, seed=0)
    zc = z - z.mean(0)
    yc = y - y.mean(0)
    dense_sketch = (zc.T @ zc / 500) @ omega
    results = []
    for batch in (1, 7, 1024):
        results.append(sketch_of(z, y, omega, batch).compute())
    shards = [sketch_of(z[a:b], y[a:b], omega, 64) for a, b in ((0, 130), (130, 131), (131, 500))]
    merged = shards[0].merge(shards[1]).merge(shards[2]).compute()
    for r in [*results, merged]:
        assert torch.allclose(r.sketch, dense_sketch, rtol=1e-10, atol=1e-12)
        assert torch.allclose(r.moments.cov_zy, zc.T @ yc / 500, rtol=1e-10, atol=1e-12)
        assert torch.allclose(r.moments.cov_y, yc.T @ yc / 500, rtol=1e-10, atol=1e-12)
        assert r.trace == pytest.approx(float((zc * zc).sum() / 500), rel=1e-10)
    assert torch.equal(z, z0) and torch.equal(y, y0)


def test_sketch_spectrum_recovers_a_low_rank_covariance():
    z, y = low_rank_features(2000, 300, 4, 2, seed=2)
    omega = gaussian_test_matrix(300, 14, seed=0)
    r = sketch_of(z, y, omega, 256).compute()
    sk = Spectrum.from_sketch(r.sketch, r.omega, r.trace)
    exact_m = CrossMoments()
    exact_m.update(z, y)
    m = exact_m.compute()
    ex = Spectrum.exact(m.cov_z)
    assert projector_distance(sk.vectors[:, :4], ex.vectors[:, :4]) < 1e-3
    assert sk.tail_sum(4) / sk.trace == pytest.approx(ex.tail_sum(4) / ex.trace, abs=1e-3)
    assert probe_mse_exact(r.moments, sk) == pytest.approx(probe_mse_exact(m, ex), abs=1e-3)


# -- planning -------------------------------------------------------------------------------------

GIB = 1024**3


def _cgroup(root, files: dict[str, str], membership: str):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (root / "self_cgroup").write_text(membership)
    return root / "self_cgroup"


def test_cgroup_v2_memory_max_caps_the_default_budget(tmp_path):
    # A container with a 1 GiB limit of which 256 MiB are in use: 768 MiB are left, whatever
    # the host's MemAvailable says, and the default budget is half of that.
    membership = _cgroup(
        tmp_path, {"memory.max": str(GIB), "memory.current": str(GIB // 4)}, "0::/\n"
    )
    assert cgroup_headroom(tmp_path, membership) == 3 * GIB // 4
    assert available_memory(tmp_path, membership) == 3 * GIB // 4
    # default_budget reads /proc/self/cgroup; the limit sits at the root, which binds any child.
    assert default_budget("cpu", cgroup_root=tmp_path) == 3 * GIB // 8


def test_cgroup_limits_of_parents_bind_and_the_smallest_headroom_wins(tmp_path):
    membership = _cgroup(
        tmp_path,
        {
            "memory.max": "max",
            "jobs/memory.max": str(4 * GIB),
            "jobs/memory.current": str(3 * GIB),
            "jobs/run7/memory.max": str(2 * GIB),
            "jobs/run7/memory.current": str(GIB // 2),
        },
        "0::/jobs/run7\n",
    )
    assert cgroup_headroom(tmp_path, membership) == GIB  # the parent's 4 - 3 GiB


def test_cgroup_v1_limit_in_bytes_and_the_unlimited_value(tmp_path):
    files = {
        "memory/memory.limit_in_bytes": "9223372036854771712",  # v1 for "no limit"
        "memory/docker/abc/memory.limit_in_bytes": str(2 * GIB),
        "memory/docker/abc/memory.usage_in_bytes": str(GIB // 2),
    }
    membership = _cgroup(tmp_path, files, "4:memory:/docker/abc\n3:cpuset:/\n0::/\n")
    assert cgroup_headroom(tmp_path, membership) == 3 * GIB // 2
    (tmp_path / "memory/docker/abc/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_headroom(tmp_path, membership) is None


def test_no_cgroup_limit_leaves_the_host_memory(tmp_path):
    membership = _cgroup(tmp_path, {"memory.max": "max"}, "0::/\n")
    assert cgroup_headroom(tmp_path, membership) is None
    assert cgroup_headroom(tmp_path / "absent", tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1e6", 10**6), ("2 kb", 2000)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "4XB", "0"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="memory_budget: expected"):
        parse_size(text)


def test_plan_splits_passes_then_sketches():
    needs = [layer_need(f"l{i}", 1024, 2, 2, oversample=10, batch=64, head=False) for i in range(4)]
    one = needs[0].exact_state + needs[0].exact_temp
    assert len(make_plan(needs, 10 * one).passes) == 1
    split = make_plan(needs, one + needs[0].exact_state)
    assert len(split.passes) == 2
    assert set(split.mode.values()) == {"exact"}
    sketched = make_plan(needs, one - 1)
    assert set(sketched.mode.values()) == {"sketch"}
    with pytest.raises(ConfigError, match="too small"):
        make_plan(needs, 1000)


# -- through the command line ---------------------------------------------------------------------


def mlp_case(folder, width: int, name: str):
    """An MLP 16 -> width -> width -> 3 on low-rank inputs, random init."""
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    n = 600
    x = (g.standard_normal((n, 3)) @ g.standard_normal((3, 16))).astype(np.float32)
    x += 0.01 * g.standard_normal((n, 16)).astype(np.float32)
    y = (np.tanh(x[:, :3]) + 0.05 * g.standard_normal((n, 3))).astype(np.float32)
    net = nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
    )
    state = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, folder / f"{name}.safetensors")
    np.savez(folder / f"{name}.npz", x=x, y=y)
    return folder / f"{name}.safetensors", folder / f"{name}.npz"


@pytest.fixture
def wide_case(tmp_path):
    return mlp_case(tmp_path, 256, "wide")


@pytest.fixture
def wider_case(tmp_path):
    return mlp_case(tmp_path, 1024, "wider")


def test_several_passes_give_the_one_pass_numbers(wide_case):
    one = analyze_json(*wide_case, "--batch-size", "64")
    many = analyze_json(*wide_case, "--batch-size", "64", "--memory-budget", "1.5MB", "-q")
    assert one["summary"]["passes"] == 1
    assert many["summary"]["passes"] > 1
    assert {row["accumulator"] for row in many["summary"]["plan"]["layers"]} == {"exact"}
    assert many["layers"] == one["layers"]
    for key in ("model_mse", "nrc1_last", "nrc2_last", "nrc3_last", "first_collapsed_index"):
        assert many["summary"][key] == one["summary"][key]


def test_a_budget_below_the_exact_state_sketches_the_wide_layers(wider_case):
    exact = analyze_json(*wider_case, "--batch-size", "64")
    sketched = analyze_json(*wider_case, "--batch-size", "64", "--memory-budget", "5MB", "-q")
    modes = {row["layer"]: row["accumulator"] for row in sketched["summary"]["plan"]["layers"]}
    assert modes == {"net.0": "exact", "net.2": "sketch", "net.4": "sketch"}
    assert sketched["summary"]["svd"] == "mixed"
    # Features of rank ~3 + ReLU: the sketch (s = 128) holds nearly all the variance.
    for a, b in zip(exact["layers"], sketched["layers"], strict=True):
        assert b["nrc1_noise"] == pytest.approx(a["nrc1_noise"], abs=2e-2)
        assert b["nrc3_alignment"] == pytest.approx(a["nrc3_alignment"], abs=2e-2)


def test_same_seed_same_bytes_and_other_seed_other_numbers(wide_case):
    args = ("--svd", "randomized", "--oversample", "2", "--power-iters", "0")
    runner = CliRunner()
    base = ["analyze", str(wide_case[0]), "--data", str(wide_case[1]), "-f", "json", *args]
    a = runner.invoke(app, [*base, "--seed", "1"])
    b = runner.invoke(app, [*base, "--seed", "1"])
    c = runner.invoke(app, [*base, "--seed", "2"])
    assert a.exit_code == b.exit_code == c.exit_code == 0
    assert a.stdout == b.stdout
    assert json.loads(a.stdout)["summary"]["svd"] == "randomized"
    la, lc = json.loads(a.stdout)["layers"], json.loads(c.stdout)["layers"]
    assert any(x["nrc3_alignment"] != y["nrc3_alignment"] for x, y in zip(la, lc, strict=True))


def test_an_impossible_budget_is_a_usage_error(wide_case):
    result = CliRunner().invoke(
        app, ["analyze", str(wide_case[0]), "--data", str(wide_case[1]), "--memory-budget", "10KB"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --memory-budget 10,000 bytes is too small")
    assert "hint:" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_usage_error(wide_case):
    result = CliRunner().invoke(
        app, ["analyze", str(wide_case[0]), "--data", str(wide_case[1]), "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "error: --device cuda: CUDA is not available" in result.stderr


@pytest.mark.parametrize("svd", ["bogus", "EXACT"])
def test_unknown_svd_method_is_a_usage_error(wide_case, svd):
    result = CliRunner().invoke(
        app, ["analyze", str(wide_case[0]), "--data", str(wide_case[1]), "--svd", svd]
    )
    assert result.exit_code == 2
    assert "error:" in result.stderr and "auto" in result.stderr
