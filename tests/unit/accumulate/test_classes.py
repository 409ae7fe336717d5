"""Tests for :mod:`nrc_cli.accumulate.classes`: per-class moments and the nearest-class-mean pass.

Both go through the accumulator contract (streamed == dense one-shot float64, merged shards ==
one stream, batch sizes 1, 7 and 1024 agree, inputs never modified, ``compute()`` pure), on
imbalanced data with an absent label, so that shards meet classes the others have not seen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_classification import dense_class_stats, dense_predicted
from helpers import AccumulatorCase, check_accumulator_contract, tensor_results

from nrc_cli.accumulate.classes import (
    Agreement,
    ClassMoments,
    ClassSketch,
    NearestClassMean,
)
from nrc_cli.accumulate.labels import as_labels, is_label_array, predicted_classes, show_values
from nrc_cli.accumulate.moments import Workspace

F64 = torch.float64


def _class_data(n=900, p=7, seed=0, dtype=F64, offset=50.0):
    """Imbalanced labels in {0, 2, 3, 6} (1, 4, 5 absent; class 6 has 3 samples), features with
    class structure far from the origin (an offset the shifts must remove)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(
        np.random.default_rng(seed).choice([0, 2, 3], size=n, p=[0.6, 0.3, 0.1]), dtype=torch.int64
    )
    labels[torch.tensor([5, n // 2, n - 2])] = 6
    centres = torch.randn(7, p, generator=g, dtype=F64) * 3 + offset
    z = centres[labels] + torch.randn(n, p, generator=g, dtype=F64) @ torch.randn(
        p, p, generator=g, dtype=F64
    )
    return z.to(dtype), labels


def _stats_result(acc: ClassMoments) -> dict:
    s = acc.compute()
    return tensor_results(
        n=s.n,
        labels=s.labels,
        counts=s.counts,
        means=s.means,
        mean=s.mean,
        cov_within=s.cov_within,
        cov_total=s.cov_total(),
    )


def _dense_stats(z: np.ndarray, labels: np.ndarray) -> dict:
    s = dense_class_stats(z, labels)
    return {
        "n": np.asarray(len(z), dtype=np.float64),
        "labels": s["classes"].astype(np.float64),
        "counts": s["counts"].astype(np.float64),
        "means": s["means"],
        "mean": s["mean"],
        "cov_within": s["cov_within"],
        "cov_total": s["cov_total"],
    }


CLASSES = AccumulatorCase(
    make=ClassMoments,
    update=lambda acc, z, labels: acc.update(z, labels),
    result=_stats_result,
    dense=_dense_stats,
)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_class_moments_contract(dtype):
    z, labels = _class_data(dtype=dtype)
    check_accumulator_contract(CLASSES, [z, labels], rtol=1e-12)


OMEGA = torch.randn(7, 4, generator=torch.Generator().manual_seed(9), dtype=F64)


def _sketch_result(acc: ClassSketch) -> dict:
    s = acc.compute()
    return tensor_results(
        n=s.n,
        labels=s.labels,
        counts=s.counts,
        means=s.means,
        mean=s.mean,
        within_trace=s.within_trace,
        within_sketch=s.within_sketch,
        total_sketch=s.total_sketch(),
        total_trace=s.total_trace(),
    )


def _dense_sketch(z: np.ndarray, labels: np.ndarray) -> dict:
    d = _dense_stats(z, labels)
    omega = OMEGA.numpy()
    return {
        "n": d["n"],
        "labels": d["labels"],
        "counts": d["counts"],
        "means": d["means"],
        "mean": d["mean"],
        "within_trace": np.trace(d["cov_within"]),
        "within_sketch": d["cov_within"] @ omega,
        "total_sketch": d["cov_total"] @ omega,
        "total_trace": np.trace(d["cov_total"]),
    }


SKETCH = AccumulatorCase(
    make=lambda: ClassSketch(OMEGA),
    update=lambda acc, z, labels: acc.update(z, labels),
    result=_sketch_result,
    dense=_dense_sketch,
)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_class_sketch_contract(dtype):
    z, labels = _class_data(dtype=dtype)
    check_accumulator_contract(SKETCH, [z, labels], rtol=1e-11)


def test_sketches_with_different_test_matrices_do_not_merge():
    z, labels = _class_data(n=100)
    a, b = ClassSketch(OMEGA), ClassSketch(OMEGA + 1)
    a.update(z[:50], labels[:50])
    b.update(z[50:], labels[50:])
    with pytest.raises(ValueError, match="different test matrices"):
        a.merge(b)


@pytest.mark.parametrize("make", [ClassMoments, lambda: ClassSketch(OMEGA)])
def test_per_class_sums_moved_to_common_shifts_add_up_to_one_stream(make):
    # What a data-parallel sum does (align_): two shards with different label sets (the first
    # never sees 6, the second never sees 0), both moved to one shift per class, the shard
    # with fewer label values grown; then every summed state adds.
    z, labels = _class_data(n=400)
    first, second = labels != 6, labels != 0
    parts = [make(), make()]
    parts[0].update(z[first], labels[first])
    parts[1].update(z[second], labels[second])
    assert (parts[0].labels.tolist(), parts[1].labels.tolist()) == ([0, 2, 3], [2, 3, 6])
    whole = make()
    whole.update(z[first], labels[first])
    whole.update(z[second], labels[second])
    values = torch.tensor([0, 2, 3, 6, 9])  # more label values than either has
    shift = torch.randn(5, z.shape[1], dtype=F64) + 50
    for part in parts:
        part.reshift_(shift, values)
        assert torch.equal(part.shift, shift) and torch.equal(part.labels, values)
    total = parts[0]
    for name in total.summed_states:
        setattr(total, name, getattr(total, name) + getattr(parts[1], name))
    want, got = whole.compute(), total.compute()
    assert torch.equal(got.labels, want.labels) and torch.equal(got.counts, want.counts)
    np.testing.assert_allclose(got.means, want.means, rtol=1e-12)
    assert got.within_trace == pytest.approx(want.within_trace, rel=1e-11)
    if want.cov_within is not None:
        np.testing.assert_allclose(got.cov_within, want.cov_within, rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(got.within_sketch, want.within_sketch, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="expected shifts of shape"):
        total.reshift_(shift[:3])


def test_class_moments_with_a_workspace():
    z, labels = _class_data()
    ws = Workspace()
    acc = ClassMoments(workspace=ws)
    for s in range(0, len(z), 100):
        acc.update(z[s : s + 100], labels[s : s + 100])
    want = _dense_stats(z.numpy(), labels.numpy())
    got = _stats_result(acc)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_within_class_covariance_keeps_its_accuracy_when_features_collapse():
    # Classes 1e-6 apart from their means, 1e3 from each other: Σ_W is 1e-18 of Σ_T. Taken
    # as total minus between it would be round-off; about per-class shifts it stays exact.
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(600) % 3
    centres = torch.randn(3, 5, generator=g, dtype=F64) * 1e3
    noise = torch.randn(600, 5, generator=g, dtype=F64) * 1e-6
    z = centres[labels] + noise
    acc = ClassMoments()
    for s in range(0, 600, 64):
        acc.update(z[s : s + 64], labels[s : s + 64])
    want = dense_class_stats(z.numpy(), labels.numpy())["cov_within"]
    got = acc.compute().cov_within.numpy()
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
    # The negative control: the same quantity as total minus between loses it entirely.
    s = acc.compute()
    m = s.centred_means
    naive = s.cov_total() - (m * (s.counts.to(F64) / s.n)) @ m.T
    assert np.linalg.norm(naive.numpy() - want) > 1e-3 * np.linalg.norm(want)


def test_class_moments_reject_bad_input():
    acc = ClassMoments()
    with pytest.raises(ValueError, match="integer labels"):
        acc.update(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        acc.update(torch.zeros(3, 2), torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        acc.update(torch.zeros(3, 2), torch.tensor([0, 1]))
    acc.update(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="width changed"):
        acc.update(torch.zeros(3, 4), torch.tensor([0, 1, 1]))


# -- the nearest-class-mean pass ------------------------------------------------------------------


def _ncc_case():
    z, labels = _class_data(n=700, p=5, seed=1, offset=2.0)
    stats = dense_class_stats(z.numpy(), labels.numpy())
    # A "model" whose predicted class is right about 80% of the time.
    rng = np.random.default_rng(2)
    pred = np.where(rng.random(len(z)) < 0.8, labels.numpy(), rng.choice([0, 2, 3, 6], len(z)))
    return z, labels, torch.from_numpy(pred), stats


def _ncc_dense(z, labels, pred, stats):
    dist = np.linalg.norm(z[:, None, :] - stats["means"][None], axis=2)
    nearest = stats["classes"][np.argmin(dist, axis=1)]
    return {
        "n": np.asarray(len(z), dtype=np.float64),
        "correct": np.asarray((nearest == labels).sum(), dtype=np.float64),
        "mismatch": np.asarray((nearest != pred).sum(), dtype=np.float64),
        "n_predicted": np.asarray(len(z), dtype=np.float64),
    }


def test_nearest_class_mean_contract():
    z, labels, pred, stats = _ncc_case()

    def make():
        return NearestClassMean(
            torch.from_numpy(stats["classes"]),
            torch.from_numpy(stats["means"]),
            torch.from_numpy(stats["mean"]),
        )

    def result(acc):
        c = acc.compute()
        return tensor_results(
            n=c.n, correct=c.correct, mismatch=c.mismatch, n_predicted=c.n_predicted
        )

    case = AccumulatorCase(
        make=make,
        update=lambda acc, z, labels, pred: acc.update(z, labels, pred),
        result=result,
        dense=lambda z, labels, pred: _ncc_dense(z, labels, pred, stats),
    )
    check_accumulator_contract(case, [z, labels, pred], rtol=0.0)
    # The case is not trivial: the nearest mean is wrong for some samples.
    want = _ncc_dense(z.numpy(), labels.numpy(), pred.numpy(), stats)
    assert 0 < want["correct"] < len(z)


def test_nearest_class_mean_projection_sums_the_whitened_within_class_scatter():
    z, labels, _, stats = _ncc_case()
    proj = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    acc = NearestClassMean(
        torch.from_numpy(stats["classes"]),
        torch.from_numpy(stats["means"]),
        torch.from_numpy(stats["mean"]),
        projection=proj,
    )
    for s in range(0, len(z), 50):
        acc.update(z[s : s + 50], labels[s : s + 50])
    own = stats["means"][np.searchsorted(stats["classes"], labels.numpy())]
    r = (z.numpy() - own) @ proj.numpy()
    got = acc.compute()
    assert got.whitened_within == pytest.approx(float((r * r).sum()), rel=1e-12)
    assert got.mismatch_share is None  # no prediction given


def test_a_tie_goes_to_the_smaller_label():
    # Means (0.5, 0.25) and (1.5, −0.75) for labels 2 and 5; (1, −0.25) is exactly halfway.
    means = torch.tensor([[0.5, 0.25], [1.5, -0.75]], dtype=F64)
    acc = NearestClassMean(torch.tensor([2, 5]), means, means.mean(dim=0))
    z = torch.tensor([[1.0, -0.25], [1.1, -0.25], [0.9, -0.25]], dtype=F64)
    assert acc.assign(z).tolist() == [2, 5, 2]


def test_a_tie_that_the_expanded_distances_miss_is_still_a_tie():
    # Far from the origin the expanded distances lose the last bits; explicit ones do not.
    means = torch.tensor([[1e4 + 0.5, 0.25], [1e4 + 1.5, -0.75]], dtype=F64)
    acc = NearestClassMean(torch.tensor([0, 1]), means, torch.tensor([0.0, 0.0], dtype=F64))
    z = torch.tensor([[1e4 + 1.0, -0.25]] * 4, dtype=F64)
    assert acc.assign(z).tolist() == [0, 0, 0, 0]


def test_nearest_class_mean_refuses_labels_that_are_not_classes():
    means = torch.zeros(2, 3, dtype=F64)
    acc = NearestClassMean(torch.tensor([0, 2]), means, means[0])
    with pytest.raises(ValueError, match=r"label 1 at row 1 is not one of the classes"):
        acc.update(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"label 3 at row 1 is not one of the classes"):
        acc.update(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"label -1 at row 0 is not one of the classes"):
        acc.update(torch.zeros(2, 3), torch.tensor([-1, 0]))


# -- predictions -------------------------------------------------------------------------------


def test_predicted_classes_argmax_and_single_logit():
    out = torch.tensor([[0.1, 0.9, 0.0], [2.0, 2.0, 1.0], [-1.0, -3.0, -0.5]])
    assert predicted_classes(out).tolist() == dense_predicted(out.numpy()).tolist() == [1, 0, 2]
    logit = torch.tensor([[0.3], [-0.2], [0.0]])
    assert predicted_classes(logit).tolist() == [1, 0, 0]
    assert predicted_classes(logit[:, 0]).tolist() == [1, 0, 0]


def test_agreement_counts_correct_predictions_and_merges():
    a, b = Agreement(), Agreement()
    a.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    b.update(torch.tensor([1]), torch.tensor([1]))
    assert a.merge(b).compute() == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        Agreement().compute()


# -- labels ---------------------------------------------------------------------------------------


def test_auto_reads_only_1d_integer_arrays_as_labels():
    assert is_label_array(np.int64, (10,))
    assert is_label_array(torch.int32, (10,))
    assert is_label_array("uint8", (10,))
    assert not is_label_array(np.float32, (10,))
    assert not is_label_array(np.int64, (10, 1))
    assert not is_label_array(torch.bool, (10,))
    assert not is_label_array(np.float64, (10, 3))


def test_labels_from_integers_integral_floats_and_one_hot_rows():
    assert as_labels(torch.tensor([3, 0, 2])).tolist() == [3, 0, 2]
    assert as_labels(torch.tensor([[3.0], [0.0], [2.0]])).tolist() == [3, 0, 2]
    one_hot = torch.eye(4)[torch.tensor([2, 0, 3])]
    assert as_labels(one_hot, n_outputs=4).tolist() == [2, 0, 3]
    assert as_labels(torch.tensor([0, 1, 1]), n_outputs=1).tolist() == [0, 1, 1]
    assert as_labels(torch.tensor([], dtype=torch.int64)).tolist() == []


@pytest.mark.parametrize(
    ("y", "n_outputs", "message"),
    [
        (torch.tensor([0.0, 1.5, 2.0]), None, r"integers, found 1\.5 at row 1"),
        (torch.tensor([0.0, float("nan")]), None, r"integers, found nan at row 1"),
        (torch.tensor([0, 2, -1]), None, r">= 0, found -1 at row 2"),
        (
            torch.tensor([0, 5, 2]),
            5,
            r"label 5 at row 1 is beyond the model's 5 outputs \(labels 0\.\.4\)",
        ),
        (
            torch.tensor([0, 2]),
            1,
            r"label 2 at row 1 is beyond the model's single output \(a binary",
        ),
        (torch.tensor([[1.0, 0.0], [0.5, 0.5]]), None, r"row 1 is not one-hot \(\[0\.5, 0\.5\]\)"),
        (torch.tensor([[1.0, 0.0], [1.0, 1.0]]), None, r"row 1 is not one-hot"),
        (torch.eye(3), 4, r"one-hot labels of 3 columns, but the model has 4 outputs"),
        (torch.zeros(2, 2, 2), None, r"expected labels of shape"),
        (torch.tensor([True, False]), None, r"integers, found dtype torch\.bool"),
    ],
)
def test_bad_labels_are_named_with_their_row(y, n_outputs, message):
    with pytest.raises(ValueError, match=message):
        as_labels(y, n_outputs=n_outputs)


def test_show_values_names_at_most_six_values():
    assert show_values(torch.tensor([0.0, 1.0, 0.5])) == "[0, 1, 0.5]"
    assert show_values(torch.arange(8.0)) == "[0, 1, 2, 3, 4, 5, ...]"


def test_an_empty_sketch_does_not_take_a_sketch_of_another_test_matrix():
    z, labels = _class_data(n=100)
    a, b = ClassSketch(OMEGA), ClassSketch(OMEGA + 1)
    b.update(z, labels)
    with pytest.raises(ValueError, match="different test matrices"):
        a.merge(b)
    assert a.n == 0 and a.s_omega is None
