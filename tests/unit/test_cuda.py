"""The CUDA path: forward pass and float64 accumulation on the GPU give the CPU's numbers.

Every test here needs a CUDA device and is skipped without one (CI has none). The tiny case has
dyadic weights and small integer inputs, so its float32 features are exact on either device and
any difference left comes from the float64 accumulation order alone.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import REFERENCE_DIR, make_tiny_case
from helpers import (
    analyze_json,
    assert_close,
    dense_report,
    error_line,
    integer_mlp,
    invoke,
    overflow_case,
)

from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.linalg import gaussian_test_matrix
from nrc_cli.planning import default_budget

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

F64 = torch.float64
NUMBERS = (
    "nrc1_noise",
    "nrc1_signal",
    "nrc2_cka",
    "nrc2_cka_signal",
    "nrc3_alignment",
    "nrc4_probe_mse",
    "stable_rank_h",
    "stable_rank_w",
    "rank",
)


def assert_same_report(got: dict, want: dict, rel: float, abs_: float = 1e-12) -> None:
    assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for key, value in w.items():
            if isinstance(value, float):
                assert_close(g[key], value, rel=rel, abs_=abs_, what=f"{w['layer']}.{key}")
            elif key not in ("layer", "index", "type"):
                assert g[key] == value, f"{w['layer']}.{key}: {g[key]!r} != {value!r}"
    for key in ("model_mse", "nrc1_last", "nrc2_last", "nrc3_last", "first_collapsed_index"):
        assert_close(got["summary"][key], want["summary"][key], rel=rel, abs_=abs_, what=key)


@pytest.fixture
def tiny_case(tmp_path):
    return make_tiny_case(tmp_path / "tiny", dims=(6, 16, 16, 16, 2), n=500)


def test_cuda_analysis_gives_the_cpu_numbers(tiny_case):
    cpu = analyze_json(tiny_case.checkpoint, tiny_case.data, "--device", "cpu", "--batch-size", 64)
    gpu = analyze_json(tiny_case.checkpoint, tiny_case.data, "--device", "cuda", "--batch-size", 64)
    assert cpu["summary"]["device"] == "cpu"
    assert gpu["summary"]["device"] == f"cuda:{torch.cuda.current_device()}"
    assert_same_report(gpu, cpu, rel=1e-9)


def test_auto_picks_the_gpu(tiny_case):
    got = analyze_json(tiny_case.checkpoint, tiny_case.data)
    assert got["summary"]["device"].startswith("cuda:")


def test_cuda_analysis_matches_the_dense_reference(tiny_case):
    got = analyze_json(tiny_case.checkpoint, tiny_case.data, "--device", "cuda:0")
    want = dense_report(tiny_case.model, tiny_case.x, tiny_case.y)
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for key in ("nrc1_noise", "nrc2_cka", "nrc3_alignment", "nrc4_probe_mse"):
            assert_close(g[key], w[key], rel=1e-9, abs_=1e-12, what=f"{w['layer']}.{key}")


@pytest.mark.parametrize("case", ["mlp_relu", "mlp_layernorm_1d_target"])
def test_reference_cases_on_cuda(case):
    folder = REFERENCE_DIR / case
    args = (folder / "args").read_text().split() if (folder / "args").is_file() else []
    got = analyze_json(folder / "model.safetensors", folder / "data.npz", "--device", "cuda", *args)
    expected = json.loads((folder / "expected.json").read_text())
    for g, w in zip(got["layers"], expected["layers"], strict=True):
        for key, value in w.items():
            if isinstance(value, float):
                assert_close(g[key], value, rel=1e-4, abs_=1e-6, what=f"{case} {w['layer']}.{key}")


def test_accumulators_on_cuda_match_the_cpu():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(700, 40, generator=g, dtype=F64) @ torch.randn(40, 40, generator=g, dtype=F64)
    z += 3.0  # an offset the centring must remove
    y = torch.randn(700, 3, generator=g, dtype=F64)
    omega = gaussian_test_matrix(40, 12, seed=1)
    accs = {}
    for dev in ("cpu", "cuda"):
        cm, ng, sk = CrossMoments(dev), NormalizedGram(dev), CovarianceSketch(omega.to(dev))
        for s in range(0, 700, 64):
            zb, yb = z[s : s + 64].to(dev), y[s : s + 64].to(dev)
            cm.update(zb, yb)
            ng.update(zb)
            sk.update(zb, yb)
        accs[dev] = (cm.compute(), ng.compute(), sk.compute())
    (mc, gc, sc), (mg, gg, sg) = accs["cpu"], accs["cuda"]
    assert mg.cov_z.device.type == "cuda" and mg.cov_z.dtype == F64
    for a, b in (
        (mc.cov_z, mg.cov_z),
        (mc.cov_zy, mg.cov_zy),
        (mc.cov_y, mg.cov_y),
        (mc.mean_z, mg.mean_z),
        (gc, gg),
        (sc.sketch, sg.sketch),
    ):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)


def test_several_passes_on_cuda_give_the_one_pass_numbers(tmp_path):
    case = make_tiny_case(tmp_path / "w", dims=(6, 256, 256, 2), n=400, dyadic=False)
    args = ("--device", "cuda", "--batch-size", 64)
    one = analyze_json(case.checkpoint, case.data, *args)
    many = analyze_json(case.checkpoint, case.data, *args, "--memory-budget", "1.5MB")
    assert one["summary"]["passes"] == 1 and many["summary"]["passes"] > 1
    assert_same_report(many, one, rel=1e-12)


def test_a_sketched_layer_runs_on_cuda(tmp_path):
    case = make_tiny_case(tmp_path / "s", dims=(6, 1024, 1024, 2), n=400, dyadic=False)
    budget = ("--batch-size", 64, "--memory-budget", "5MB")
    exact = analyze_json(case.checkpoint, case.data, "--device", "cuda", "--batch-size", 64)
    cpu = analyze_json(case.checkpoint, case.data, "--device", "cpu", *budget)
    gpu = analyze_json(case.checkpoint, case.data, "--device", "cuda", *budget)
    modes = {r["accumulator"] for r in gpu["summary"]["plan"]["layers"]}
    assert "sketch" in modes
    assert_same_report(gpu, cpu, rel=1e-5, abs_=1e-8)
    for a, b in zip(exact["layers"], gpu["layers"], strict=True):
        assert b["nrc1_noise"] == pytest.approx(a["nrc1_noise"], abs=2e-2)


def test_randomized_spectra_on_cuda_match_the_cpu(tmp_path):
    case = make_tiny_case(tmp_path / "r", dims=(6, 128, 128, 2), n=400, dyadic=False)
    args = ("--svd", "randomized", "--seed", "3")
    cpu = analyze_json(case.checkpoint, case.data, "--device", "cpu", *args)
    gpu = analyze_json(case.checkpoint, case.data, "--device", "cuda", *args)
    assert gpu["summary"]["svd"] == "randomized"
    assert_same_report(gpu, cpu, rel=1e-5, abs_=1e-8)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_forward_on_cuda(tiny_case, dtype):
    full = analyze_json(tiny_case.checkpoint, tiny_case.data, "--device", "cuda")
    half = analyze_json(tiny_case.checkpoint, tiny_case.data, "--device", "cuda", "--dtype", dtype)
    assert half["summary"]["dtype"] == dtype
    for a, b in zip(full["layers"], half["layers"], strict=True):
        for key in ("nrc1_noise", "nrc2_cka", "nrc3_alignment"):
            assert b[key] == pytest.approx(a[key], abs=5e-2), (a["layer"], key)


def test_non_finite_features_on_cuda_name_the_layer_and_the_sample(tmp_path):
    ckpt, data = overflow_case(tmp_path)
    out = tmp_path / "out.json"
    result = invoke(
        ["analyze", ckpt, "--data", data, "--device", "cuda", "--batch-size", 50, "-o", out]
    )
    line = error_line(result)
    assert re.search(r"layer 'net\.2': non-finite features \(nan or inf\) at sample 123\b", line)
    assert not out.exists()


def test_a_missing_card_is_a_usage_error(tiny_case):
    count = torch.cuda.device_count()
    result = invoke(
        ["analyze", tiny_case.checkpoint, "--data", tiny_case.data, "--device", f"cuda:{count}"]
    )
    assert f"this machine has {count} CUDA device(s)" in error_line(result)


def test_the_default_budget_is_a_share_of_the_cards_memory():
    free, total = torch.cuda.mem_get_info(0)
    budget = default_budget(torch.device("cuda", 0))
    assert 0 < budget <= total // 2 + 1
    assert budget == pytest.approx(free / 2, rel=0.05)


CONV_SOURCE = """
import torch
from torch import nn


def convnet(width=16, targets=2):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, targets),
    )
"""


def test_a_conv_net_on_cuda_computes_in_float32_and_restores_tf32(tmp_path):
    from safetensors.torch import save_file

    arch = tmp_path / "arch.py"
    arch.write_text(CONV_SOURCE)
    namespace: dict = {}
    exec(compile(CONV_SOURCE, str(arch), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["convnet"]()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "c.safetensors"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3, 16, 16)).astype(np.float32)
    y = np.stack([x[:, 0].mean(axis=(1, 2)), x[:, 1].std(axis=(1, 2))], axis=1).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=x, y=y)
    args = ("--arch", f"{arch}:convnet", "--batch-size", 64)
    torch.backends.cudnn.allow_tf32 = True
    try:
        cpu = analyze_json(
            tmp_path / "c.safetensors", tmp_path / "img.npz", "--device", "cpu", *args
        )
        gpu = analyze_json(
            tmp_path / "c.safetensors", tmp_path / "img.npz", "--device", "cuda", *args
        )
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = True
    # float32 on both devices (different summation orders): far closer than TF32's 1e-3.
    assert_same_report(gpu, cpu, rel=1e-4, abs_=1e-6)


# ------------------------------------------------------------------------------------------------
# --precision mixed on CUDA
# ------------------------------------------------------------------------------------------------


def _within_mixed_bound(got: dict, want: dict, where: str) -> None:
    """Every float metric within 1e-5 + 1e-4·|want| (docs/metrics.md, "Mixed precision")."""
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for key, value in w.items():
            if isinstance(value, float):
                assert_close(g[key], value, rel=1e-4, abs_=1e-5, what=f"{where} {w['layer']}.{key}")
    for key in ("model_mse", "nrc1_last", "nrc2_last", "nrc3_last"):
        assert_close(got["summary"][key], want["summary"][key], rel=1e-4, abs_=1e-5, what=key)


@pytest.mark.parametrize("case", ["mlp_relu", "mlp_layernorm_1d_target"])
def test_mixed_precision_on_cuda_stays_within_the_bound(case):
    folder = REFERENCE_DIR / case
    ckpt, data = folder / "model.safetensors", folder / "data.npz"
    exact = analyze_json(ckpt, data, "--device", "cpu")
    mixed = analyze_json(ckpt, data, "--device", "cuda", "--precision", "mixed")
    assert mixed["summary"]["precision"] == "mixed"
    _within_mixed_bound(mixed, exact, case)


def test_mixed_precision_on_cuda_equals_exact_on_dyadic_features(tmp_path):
    """Integer weights and inputs, batches of 8: every float32 product and sum is exact."""
    ckpt, data = integer_mlp(tmp_path / "int")
    exact = analyze_json(ckpt, data, "--batch-size", 8, "--device", "cpu")
    mixed = analyze_json(ckpt, data, "--batch-size", 8, "--device", "cuda", "--precision", "mixed")
    for e, m in zip(exact["layers"], mixed["layers"], strict=True):
        for key, value in e.items():
            if isinstance(value, float):  # the CPU/GPU agreement of exact precision
                assert_close(m[key], value, rel=1e-9, abs_=1e-12, what=f"{e['layer']}.{key}")
    for key in ("nrc1_last", "nrc2_last", "nrc3_last"):  # z/‖z‖ is not dyadic
        assert_close(mixed["summary"][key], exact["summary"][key], rel=0, abs_=1e-6, what=key)


def test_mixed_accumulators_on_cuda_ignore_a_global_tf32_setting():
    """A user who switched TF32 on still gets float32 products, and the setting back."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(2048, 300, generator=g) @ torch.randn(300, 300, generator=g)).cuda()
    y = torch.randn(2048, 2, generator=g, dtype=F64).cuda()
    saved = torch.backends.cuda.matmul.allow_tf32
    got = {}
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            acc = CrossMoments("cuda", precision="mixed")
            for s in range(0, 2048, 512):
                acc.update(z[s : s + 512], y[s : s + 512])
            got[tf32] = acc.compute().cov_z
            assert torch.backends.cuda.matmul.allow_tf32 is tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert torch.equal(got[True], got[False])
    cpu = CrossMoments("cpu", precision="exact")
    for s in range(0, 2048, 512):
        cpu.update(z[s : s + 512].cpu(), y[s : s + 512].cpu())
    want = cpu.compute().cov_z
    err = float((got[False].cpu() - want).norm() / want.norm())
    assert err < 2e-6


def test_the_float64_rate_is_measured_once_and_drives_the_hint(tiny_case):
    from nrc_cli.accumulate.precision import float64_is_slow, matmul_rates, precision_hint

    device = torch.device("cuda", torch.cuda.current_device())
    f32, f64 = matmul_rates(device)
    assert f32 > 0 and f64 > 0
    assert matmul_rates(device) == (f32, f64)  # cached: measured once per process
    slow = float64_is_slow(f32, f64)
    hint = precision_hint(device, "exact")
    assert (hint is not None) is slow
    base = ["analyze", tiny_case.checkpoint, "--data", tiny_case.data, "--device", "cuda"]
    exact = invoke(base)
    assert exact.exit_code == 0, exact.stderr
    lines = [line for line in exact.stderr.splitlines() if "--precision mixed" in line]
    assert len(lines) == (1 if slow else 0), exact.stderr
    for extra in (["--precision", "mixed"], ["--quiet"]):
        result = invoke([*base, *extra])
        assert result.exit_code == 0, result.stderr
        assert "--precision mixed" not in result.stderr
