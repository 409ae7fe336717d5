"""Tests for :mod:`nrc_cli.accumulate.moments`: the accumulator contract.

Every accumulator goes through :func:`helpers.check_accumulator_contract`: streamed == dense
one-shot float64 on the concatenation (1e-12 relative), shards merged == one stream, batch sizes
1, 7 and 1024 agree, inputs are never modified, ``compute()`` is pure, ``reset()`` works.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    AccumulatorCase,
    check_accumulator_contract,
    dense_moments,
    moments_result,
    tensor_results,
)

from nrc_cli.accumulate.moments import (
    GRAM_BLOCK,
    CrossMoments,
    NormalizedGram,
    SquaredError,
    Workspace,
    add_gram_,
    symmetric,
)
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.linalg import gaussian_test_matrix

CROSS = AccumulatorCase(
    make=CrossMoments,
    update=lambda acc, z, y: acc.update(z, y),
    result=moments_result,
    dense=dense_moments,
)


def _dense_gram(z: np.ndarray) -> dict:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    h = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    return {"gram": h.T @ h / len(z)}


GRAM = AccumulatorCase(
    make=NormalizedGram,
    update=lambda acc, z: acc.update(z),
    result=lambda acc: tensor_results(gram=acc.compute()),
    dense=_dense_gram,
)

SQUARED = AccumulatorCase(
    make=SquaredError,
    update=lambda acc, pred, y: acc.update(pred, y),
    result=lambda acc: tensor_results(mse=acc.compute()),
    dense=lambda pred, y: {"mse": np.asarray(np.mean((pred - y) ** 2))},
)


_OMEGA = gaussian_test_matrix(6, 4, seed=5)


def _dense_sketch(z: np.ndarray, y: np.ndarray) -> dict:
    d = dense_moments(z, y)
    return {
        "sketch": d["cov_z"] @ _OMEGA.numpy(),
        "trace": np.asarray(np.trace(d["cov_z"])),
        "cov_zy": d["cov_zy"],
        "cov_y": d["cov_y"],
        "mean_z": d["mean_z"],
    }


def _sketch_result(acc: CovarianceSketch) -> dict:
    r = acc.compute()
    m = r.moments
    return tensor_results(
        sketch=r.sketch, trace=r.trace, cov_zy=m.cov_zy, cov_y=m.cov_y, mean_z=m.mean_z
    )


SKETCH = AccumulatorCase(
    make=lambda: CovarianceSketch(_OMEGA),
    update=lambda acc, z, y: acc.update(z, y),
    result=_sketch_result,
    dense=_dense_sketch,
)


def _features(n: int, p: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Correlated features with per-column offsets and scales (not centred, not whitened)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, p)) @ rng.standard_normal((p, p))
    z = z * rng.uniform(0.1, 10, size=p) + rng.uniform(-50, 50, size=p)
    return torch.from_numpy(z).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_moments_contract(dtype):
    z = _features(1500, 6, seed=1, dtype=dtype)
    y = torch.from_numpy(np.random.default_rng(2).standard_normal((1500, 3)) + 4).to(dtype)
    y = y + 0.5 * z[:, :3]
    check_accumulator_contract(CROSS, [z, y])


def test_covariance_sketch_contract():
    """The sketch shares the exact accumulator's shift-and-merge (ShiftedSums)."""
    z = _features(1200, 6, seed=21)
    y = torch.from_numpy(np.random.default_rng(22).standard_normal((1200, 2)) - 3) + z[:, :2]
    check_accumulator_contract(SKETCH, [z, y], rtol=1e-11)


def test_accumulators_refuse_to_merge_another_kind():
    with pytest.raises(TypeError, match="cannot merge NormalizedGram into CrossMoments"):
        CrossMoments().merge(NormalizedGram())


def test_cross_moments_contract_single_target_and_feature():
    z = _features(1100, 1, seed=3)
    y = 2 * z + torch.from_numpy(np.random.default_rng(4).standard_normal((1100, 1)))
    check_accumulator_contract(CROSS, [z, y])


def test_cross_moments_contract_wide_features_in_blocks():
    """p = 600 > GRAM_BLOCK: the CPU product is taken in blocks (256, 256, 88) above the diagonal."""
    assert GRAM_BLOCK < 600 < 3 * GRAM_BLOCK
    z = _features(520, 600, seed=11)
    y = z[:, :2] * 0.5 + torch.from_numpy(np.random.default_rng(12).standard_normal((520, 2)))
    check_accumulator_contract(CROSS, [z, y])


def test_normalized_gram_contract_wide_features_in_blocks():
    z = _features(520, 300, seed=13)
    z[::31] = 0.0
    check_accumulator_contract(GRAM, [z])


@pytest.mark.parametrize("p", [5, GRAM_BLOCK, GRAM_BLOCK + 1, 600])
def test_add_gram_fills_the_upper_triangle_and_symmetric_reads_it(p):
    a = _features(64, p, seed=p)
    want = a.T @ a
    got = add_gram_(torch.full((p, p), 7.0, dtype=torch.float64), a)
    upper = torch.triu(torch.ones(p, p, dtype=torch.bool))
    torch.testing.assert_close(got[upper], want[upper] + 7.0, rtol=1e-13, atol=1e-9)
    torch.testing.assert_close(symmetric(got - 7.0), want, rtol=1e-13, atol=1e-9)


def test_cross_moments_survive_sorted_data_whose_first_batch_is_far_off():
    """The shift is the first batch's mean; data sorted by a drifting mean must not cancel."""
    rng = np.random.default_rng(14)
    z = rng.standard_normal((4000, 4)) + np.linspace(0, 200, 4000)[:, None] * [1, -1, 0.5, 0]
    y = z[:, :2] @ rng.standard_normal((2, 2)) + rng.standard_normal((4000, 2))
    acc = CrossMoments()
    for s in range(0, 4000, 100):
        acc.update(torch.from_numpy(z[s : s + 100]), torch.from_numpy(y[s : s + 100]))
    got, want = moments_result(acc), dense_moments(z, y)
    for key in ("mean_z", "cov_z", "cov_zy", "cov_y"):
        err = np.linalg.norm(got[key] - want[key]) / np.linalg.norm(want[key])
        assert err < 1e-12, (key, err)


def test_contracts_hold_with_a_workspace():
    z = _features(700, 40, seed=15, dtype=torch.float32)
    y = torch.from_numpy(np.random.default_rng(16).standard_normal((700, 2)))
    z[::50] = 0.0
    with_ws = AccumulatorCase(
        make=lambda: CrossMoments(workspace=Workspace()),
        update=CROSS.update,
        result=CROSS.result,
        dense=CROSS.dense,
    )
    check_accumulator_contract(with_ws, [z, y])
    gram_ws = AccumulatorCase(
        make=lambda: NormalizedGram(workspace=Workspace()),
        update=GRAM.update,
        result=GRAM.result,
        dense=GRAM.dense,
    )
    check_accumulator_contract(gram_ws, [z])


def test_accumulators_sharing_one_workspace_give_the_results_of_their_own():
    """As in a forward pass: several layers, of several widths, updated in turn."""
    shared = Workspace()
    widths = (30, 300, 7)
    mine = [(CrossMoments(workspace=shared), NormalizedGram(workspace=shared)) for _ in widths]
    own = [(CrossMoments(), NormalizedGram()) for _ in widths]
    feats = [_features(400, p, seed=20 + p, dtype=torch.float32) for p in widths]
    y = torch.from_numpy(np.random.default_rng(21).standard_normal((400, 3)))
    for s in range(0, 400, 64):
        for z, (cm, ng), (cm2, ng2) in zip(feats, mine, own, strict=True):
            for acc_m, acc_g in ((cm, ng), (cm2, ng2)):
                acc_m.update(z[s : s + 64], y[s : s + 64])
                acc_g.update(z[s : s + 64])
    for (cm, ng), (cm2, ng2) in zip(mine, own, strict=True):
        a, b = cm.compute(), cm2.compute()
        for x, w in ((a.cov_z, b.cov_z), (a.cov_zy, b.cov_zy), (a.mean_z, b.mean_z)):
            assert torch.equal(x, w)
        assert torch.equal(ng.compute(), ng2.compute())


def test_normalized_gram_contract_with_zero_rows():
    z = _features(1200, 5, seed=5)
    z[::97] = 0.0  # zero rows stay zero after normalising (docs/metrics.md)
    check_accumulator_contract(GRAM, [z])


def test_normalized_gram_is_uncentred_and_scale_free():
    z = _features(400, 4, seed=6)
    a, b = NormalizedGram(), NormalizedGram()
    a.update(z)
    b.update(z * torch.linspace(0.5, 30, 400)[:, None])  # per-sample scaling: h̃ unchanged
    torch.testing.assert_close(a.compute(), b.compute(), rtol=1e-12, atol=0)
    assert float(torch.trace(a.compute())) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_squared_error_contract(dtype):
    rng = np.random.default_rng(7)
    y = torch.from_numpy(rng.standard_normal((1300, 3)) * 3 + 1).to(dtype)
    pred = y + torch.from_numpy(rng.standard_normal((1300, 3)) * 0.1).to(dtype)
    check_accumulator_contract(SQUARED, [pred, y])


def test_cross_moments_survive_a_large_offset_one_sample_at_a_time():
    """Habit 4: a mean 1e6 times the spread must not cancel (raw Σz² would lose ~1e-4)."""
    rng = np.random.default_rng(8)
    z = rng.standard_normal((2000, 3)) + 1e6
    y = rng.standard_normal((2000, 2)) - 1e6
    acc = CrossMoments()
    for i in range(len(z)):
        acc.update(torch.from_numpy(z[i : i + 1]), torch.from_numpy(y[i : i + 1]))
    got = moments_result(acc)
    want = dense_moments(z, y)
    for key in ("cov_z", "cov_zy", "cov_y"):
        err = np.linalg.norm(got[key] - want[key]) / np.linalg.norm(want[key])
        assert err < 1e-8, (key, err)


def test_cross_moments_refuse_mismatched_shapes():
    acc = CrossMoments()
    with pytest.raises(ValueError, match=r"expected z \(b, p\) and y \(b, t\)"):
        acc.update(torch.zeros(4, 3), torch.zeros(5, 2))
    acc.update(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="width changed"):
        acc.update(torch.zeros(4, 5), torch.zeros(4, 2))


def test_empty_batches_change_nothing():
    z = _features(50, 3, seed=9)
    y = z[:, :2] * 2
    acc = CrossMoments()
    acc.update(z[:0], y[:0])
    acc.update(z, y)
    acc.update(z[:0], y[:0])
    want = dense_moments(z.numpy(), y.numpy())
    got = moments_result(acc)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [CrossMoments, NormalizedGram, SquaredError])
def test_compute_on_nothing_raises(make):
    with pytest.raises(ValueError, match="no samples"):
        make().compute()


def test_a_sketch_merges_only_a_sketch_with_its_own_test_matrix_and_a_refusal_changes_nothing():
    z = _features(60, 6, seed=10)
    y = z[:, :2] * 2
    theirs = CovarianceSketch(_OMEGA + 1)
    theirs.update(z[30:], y[30:])
    # Into an empty sketch as well: its Σ_Z·Ω would be read against this sketch's Ω.
    empty = CovarianceSketch(_OMEGA)
    assert empty.merge_problem(theirs) == "cannot merge sketches built with different test matrices"
    with pytest.raises(ValueError, match="different test matrices"):
        empty.merge(theirs)
    assert empty.n == 0 and empty.s_omega is None
    mine = CovarianceSketch(_OMEGA)
    mine.update(z[:30], y[:30])
    before = mine.state_dict()
    with pytest.raises(ValueError, match="different test matrices"):
        mine.merge(theirs)
    # Widths are checked before anything is added, too.
    wider = CrossMoments()
    wider.update(_features(10, 9, seed=11), y[:10])
    exact = CrossMoments()
    exact.update(z[:30], y[:30])
    assert "width changed" in exact.merge_problem(wider)
    with pytest.raises(ValueError, match="width changed"):
        exact.merge(wider)
    after = mine.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert CrossMoments().merge_problem(NormalizedGram()) == (
        "cannot merge NormalizedGram into CrossMoments"
    )
