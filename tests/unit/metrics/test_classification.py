"""Tests for :mod:`nrc_cli.metrics.classification` against the dense float64 reference.

Constructed cases with known answers (perfect collapse, a simplex ETF of class means, weights
equal to the class means), random cases with an absent class and imbalance checked column by
column against ``dense_classification``, and real models (an MLP, a conv net, the public
``nc_gauss_mlp`` case) streamed through the accumulators in two passes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_classification import dense_class_layer, dense_class_report, dense_duality
from helpers import assert_close
from safetensors.torch import load_file
from torch import nn

from nrc_cli.accumulate.classes import (
    Agreement,
    ClassMoments,
    ClassSketch,
    NearestClassMean,
)
from nrc_cli.accumulate.labels import predicted_classes
from nrc_cli.capture import Capture, weight_layers
from nrc_cli.metrics.classification import (
    between_spectrum,
    class_layer_metrics,
    classification_summary,
    duality_last,
    nc1_from_whitened,
)

F64 = torch.float64
REFERENCE = Path(__file__).resolve().parents[2] / "reference_cases" / "nc_gauss_mlp"
COLUMNS = (
    "in_dim",
    "rank",
    "nc1",
    "nc1_trace",
    "nc2_equinorm",
    "nc2_etf",
    "nc3_alignment",
    "ncc_accuracy",
    "nc4_ncc_mismatch",
    "stable_rank_h",
    "stable_rank_w",
)


def _stream(z: torch.Tensor, labels: torch.Tensor, batch: int = 64):
    acc = ClassMoments()
    for s in range(0, len(z), batch):
        acc.update(z[s : s + batch], labels[s : s + batch])
    return acc.compute()


def _ncc(stats, z, labels, predicted=None, batch: int = 64, projection=None):
    acc = NearestClassMean(stats.labels, stats.means, stats.mean, projection=projection)
    for s in range(0, len(z), batch):
        pred = None if predicted is None else predicted[s : s + batch]
        acc.update(z[s : s + batch], labels[s : s + batch], pred)
    return acc.compute()


def _metrics(z, labels, module, predicted=None):
    stats = _stream(z, labels)
    return class_layer_metrics(stats, module, ncc=_ncc(stats, z, labels, predicted))


def _linear(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def _simplex(c: int, p: int, seed: int = 0) -> torch.Tensor:
    """C vertices of a simplex ETF in R^p (rows), rotated at random: unit norms, cosines −1/(C−1)."""
    e = torch.eye(c, dtype=F64) - 1.0 / c
    e = e / torch.linalg.vector_norm(e, dim=1, keepdim=True)
    q, _ = torch.linalg.qr(
        torch.randn(p, c, generator=torch.Generator().manual_seed(seed), dtype=F64)
    )
    return e @ q.T


def _compare(got: dict, want: dict, rel: float, abs_: float, where: str = "") -> None:
    for key in COLUMNS:
        if key in want:
            assert_close(got[key], want[key], rel=rel, abs_=abs_, what=f"{where}{key}")


# -- constructed cases with known answers --------------------------------------------------------


def test_perfectly_collapsed_features():
    # Every sample sits on its class mean: no within-class variance; NCC is always right.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 6, generator=g, dtype=F64) * 2 + 10
    labels = torch.tensor([0] * 40 + [2] * 7 + [3] * 120 + [4] * 1 + [0] * 12)  # 1 is absent
    z = centres[labels]
    got = _metrics(z, labels, _linear(torch.randn(3, 6, generator=g, dtype=F64)), labels)
    assert got["rank"] == 3  # C − 1 with C = 4 classes present
    assert abs(got["nc1"]) <= 1e-12
    assert abs(got["nc1_trace"]) <= 1e-12
    assert got["ncc_accuracy"] == 1.0
    assert got["nc4_ncc_mismatch"] == 0.0


def test_simplex_etf_class_means():
    # Balanced classes whose means form a (scaled, shifted, rotated) simplex ETF, with
    # within-class spread that leaves every class mean where it is.
    c, p, per = 4, 7, 30
    means = 3.0 * _simplex(c, p) + 5.0
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(c, per // 2, p, generator=g, dtype=F64) * 0.4
    z = torch.cat([means[:, None] + spread, means[:, None] - spread], dim=1).reshape(-1, p)
    labels = torch.arange(c).repeat_interleave(per)
    perm = torch.randperm(len(z), generator=g)
    z, labels = z[perm], labels[perm]
    got = _metrics(z, labels, _linear(torch.randn(c, p, generator=g, dtype=F64)))
    assert got["rank"] == c - 1
    assert abs(got["nc2_etf"]) <= 1e-12
    assert abs(got["nc2_equinorm"]) <= 1e-12
    assert got["nc1"] > 0.001  # the spread is measured
    assert got["nc4_ncc_mismatch"] is None  # no prediction given
    # A distorted simplex is measurably off.
    z2 = z.clone()
    z2[labels == 0] *= 1.5
    worse = _metrics(z2, labels, _linear(torch.randn(c, p, generator=g, dtype=F64)))
    assert worse["nc2_etf"] > 0.05 and worse["nc2_equinorm"] > 0.05


def test_weights_equal_to_the_class_means():
    # A head whose rows are the centred class means: the class-mean subspace is the weight's
    # input subspace (NC3 alignment 1) and Wᵀ ∝ M (Papyan's NC3 distance 0).
    g = torch.Generator().manual_seed(2)
    c, p = 5, 9
    labels = torch.tensor(np.random.default_rng(0).choice(c, size=400, p=[0.4, 0.3, 0.1, 0.1, 0.1]))
    z = torch.randn(c, p, generator=g, dtype=F64)[labels] * 3 + torch.randn(
        400, p, generator=g, dtype=F64
    )
    stats = _stream(z, labels)
    head = _linear(2.5 * stats.centred_means.T)
    got = class_layer_metrics(stats, head)
    assert got["rank"] == c - 1
    assert got["nc3_alignment"] == pytest.approx(1.0, abs=1e-12)
    assert duality_last(head, stats) == pytest.approx(0.0, abs=1e-12)
    # A random head is not aligned.
    other = _linear(torch.randn(c, p, generator=g, dtype=F64))
    assert class_layer_metrics(stats, other)["nc3_alignment"] < 0.9
    assert duality_last(other, stats) > 0.5


def test_constant_features_give_nulls_not_a_crash():
    z = torch.ones(50, 4, dtype=F64)
    labels = torch.arange(50) % 3
    got = _metrics(z, labels, _linear(torch.randn(2, 4, dtype=F64)), labels)
    assert got["rank"] == 0
    for key in ("nc1", "nc1_trace", "nc2_equinorm", "nc2_etf", "nc3_alignment", "stable_rank_h"):
        assert got[key] is None, key
    assert got["ncc_accuracy"] == pytest.approx(17 / 50)  # every tie goes to label 0
    assert duality_last(_linear(torch.randn(3, 4, dtype=F64)), _stream(z, labels)) is None


# -- random cases against the dense reference ----------------------------------------------------


@pytest.mark.parametrize(
    ("c", "p", "offset"),
    [(4, 10, 0.0), (4, 10, 100.0), (12, 5, 1.0), (2, 3, 0.0)],
    ids=["p>C", "offset", "C>p", "binary"],
)
def test_random_classes_match_the_dense_reference(c, p, offset):
    rng = np.random.default_rng(c * 100 + p)
    present = np.sort(rng.choice(np.arange(c + 2), size=c, replace=False))  # two labels absent
    weights = rng.dirichlet(np.ones(c)) * 0.8 + 0.2 / c  # imbalanced
    labels = rng.choice(present, size=600, p=weights)
    centres = rng.standard_normal((present.max() + 1, p)) * 2 + offset
    z = centres[labels] + rng.standard_normal((600, p)) @ rng.standard_normal((p, p))
    w = rng.standard_normal((7, p))
    predicted = np.where(rng.random(600) < 0.7, labels, rng.choice(present, size=600))
    zt, lt = torch.from_numpy(z), torch.from_numpy(labels)
    got = _metrics(zt, lt, _linear(torch.from_numpy(w)), torch.from_numpy(predicted))
    want = dense_class_layer(z, labels, w, predicted)
    _compare(got, want, rel=1e-9, abs_=1e-12)
    assert got["rank"] == min(c - 1, p)


def test_nc1_from_the_second_pass_equals_nc1_from_the_within_class_covariance():
    rng = np.random.default_rng(5)
    labels = rng.choice([1, 2, 4], size=500)
    z = torch.from_numpy(rng.standard_normal((5, 6))[labels] * 2 + rng.standard_normal((500, 6)))
    lt = torch.from_numpy(labels)
    stats = _stream(z, lt)
    between = between_spectrum(stats)
    counts = _ncc(stats, z, lt, projection=between.whitening())
    want = class_layer_metrics(stats, _linear(torch.randn(3, 6, dtype=F64)))["nc1"]
    assert nc1_from_whitened(counts, stats.n_classes) == pytest.approx(want, rel=1e-10)


def test_a_sketched_layer_gives_the_exact_columns_with_the_second_pass():
    # A sketch as wide as the layer reconstructs Σ_T exactly; nc1 comes from the second pass.
    rng = np.random.default_rng(8)
    labels = rng.choice([0, 1, 3, 4], size=700, p=[0.5, 0.2, 0.2, 0.1])
    p = 12
    z = rng.standard_normal((5, p))[labels] * 2 + rng.standard_normal((700, p)) @ np.diag(
        np.linspace(0.2, 2, p)
    )
    zt, lt = torch.from_numpy(z), torch.from_numpy(labels)
    omega = torch.randn(p, p, generator=torch.Generator().manual_seed(1), dtype=F64)
    acc = ClassSketch(omega)
    for s in range(0, 700, 64):
        acc.update(zt[s : s + 64], lt[s : s + 64])
    stats = acc.compute()
    assert stats.cov_within is None
    head = _linear(torch.from_numpy(rng.standard_normal((6, p))))
    without = class_layer_metrics(stats, head)
    assert without["nc1"] is None  # Σ_W was never formed and no second pass was given
    counts = _ncc(stats, zt, lt, projection=between_spectrum(stats).whitening())
    got = class_layer_metrics(stats, head, ncc=counts)
    want = dense_class_layer(z, labels, head.weight.detach().numpy())
    _compare(got, want, rel=1e-8, abs_=1e-12)


def test_duality_needs_one_output_per_class_and_labels_0_to_c_minus_1():
    rng = np.random.default_rng(6)
    labels = rng.choice([0, 1, 3], size=300)
    z = rng.standard_normal((4, 5))[labels] + rng.standard_normal((300, 5))
    stats = _stream(torch.from_numpy(z), torch.from_numpy(labels))
    assert duality_last(_linear(torch.randn(3, 5, dtype=F64)), stats) is None  # labels 0, 1, 3
    assert duality_last(_linear(torch.randn(4, 5, dtype=F64)), stats) is None  # C_out ≠ C
    labels = labels.clip(max=2)
    stats = _stream(torch.from_numpy(z), torch.from_numpy(labels))
    w = rng.standard_normal((3, 5))
    assert duality_last(_linear(torch.from_numpy(w)), stats) == pytest.approx(
        dense_duality(w, z, labels), rel=1e-12
    )
    conv = nn.Conv1d(5, 3, 1, dtype=F64)
    assert duality_last(conv, stats) is None


# -- real models streamed in two passes ----------------------------------------------------------


def stream_report(model: nn.Module, x: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict:
    """The classification report of ``model`` from the accumulators: one pass for the per-class
    moments and the model's accuracy, a second for the nearest class means."""
    layers = weight_layers(model)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    moments = {w.name: ClassMoments() for w in layers}
    agreement = Agreement()
    state: dict = {}

    def first(name, z):
        moments[name].update(z, state["y"])

    with Capture(layers, first) as cap, torch.no_grad():
        for s in range(0, len(y), batch):
            state["y"] = y[s : s + batch]
            cap.next_batch()
            agreement.update(predicted_classes(model(xt[s : s + batch])), state["y"])
        order = list(cap.order)
    stats = {name: acc.compute() for name, acc in moments.items()}
    ncc = {n: NearestClassMean(s.labels, s.means, s.mean) for n, s in stats.items()}
    nearest: dict = {}

    def second(name, z):
        nearest[name] = ncc[name].assign(z)

    with Capture(layers, second) as cap, torch.no_grad():
        for s in range(0, len(y), batch):
            cap.next_batch()
            pred = predicted_classes(model(xt[s : s + batch]))
            for name in order:
                ncc[name].add(nearest[name], y[s : s + batch], pred)
    modules = {w.name: w for w in layers}
    rows = []
    for i, name in enumerate(order, start=1):
        w = modules[name]
        row = {"layer": name, "index": i, "type": w.type}
        row.update(class_layer_metrics(stats[name], w.module, ncc=ncc[name].compute()))
        rows.append(row)
    head = modules[order[-1]].module
    summary = classification_summary(stats[order[-1]], head, accuracy=agreement.compute())
    return {"summary": summary, "layers": rows}


def _compare_reports(got: dict, want: dict, rel: float, abs_: float) -> None:
    assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for key, value in w.items():
            if key in ("ncc_accuracy", "nc4_ncc_mismatch"):
                assert g[key] == value, f"{w['layer']}.{key}: {g[key]} != {value}"  # exactly
            elif key in g:
                assert_close(g[key], value, rel=rel, abs_=abs_, what=f"{w['layer']}.{key}")
    for key, value in want["summary"].items():
        if key in got["summary"]:
            assert_close(got["summary"][key], value, rel=rel, abs_=abs_, what=f"summary.{key}")


def test_the_public_reference_case():
    # An MLP 12 → 32 → 32 → 32 → 4 trained on 4 Gaussian classes; 1e-8 absolute + 1e-6
    # relative, the NCC shares exactly (tests/reference_cases/README.md).
    state = load_file(str(REFERENCE / "model.safetensors"))
    dims = [state["0.weight"].shape[1]] + [state[f"{i}.weight"].shape[0] for i in (0, 2, 4, 6)]
    mods: list[nn.Module] = []
    for i in range(4):
        mods += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    model = nn.Sequential(*mods[:-1])
    model.load_state_dict(state)
    model.eval()
    data = np.load(REFERENCE / "data.npz")
    expected = json.loads((REFERENCE / "expected.json").read_text())
    got = stream_report(model, data["x"], data["y"], batch=256)
    _compare_reports(got, expected, rel=1e-6, abs_=1e-8)
    # ... and the reference computed here agrees with the published one.
    _compare_reports(dense_class_report(model, data["x"], data["y"]), expected, 1e-6, 1e-8)


class _ConvNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("classes", [5, 1], ids=["softmax", "single-logit"])
def test_a_conv_net_matches_the_dense_reference(classes):
    torch.manual_seed(0)
    model = _ConvNet(classes).eval()
    rng = np.random.default_rng(0)
    n = 240
    present = [0, 1, 2, 4] if classes > 1 else [0, 1]  # with 5 outputs, label 3 is absent
    k = len(present)
    labels = rng.choice(present, size=n, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())
    # Class-specific channel offsets (well conditioned: NC1 inverts Σ_B on its range).
    centres = rng.standard_normal((5, 3))
    x = rng.standard_normal((n, 3, 8, 8)) + centres[labels][:, :, None, None]
    x = x.astype(np.float32)
    got = stream_report(model, x, labels, batch=50)
    want = dense_class_report(model, x, labels)
    _compare_reports(got, want, rel=1e-6, abs_=1e-9)
    assert got["layers"][1]["nc3_alignment"] is None  # grouped conv: not defined
    assert got["layers"][1]["note"].startswith("grouped convolution")
    assert got["summary"]["n_classes"] == k
    assert 0 < got["summary"]["model_accuracy"] < 1
    # A single logit for two classes, or 5 outputs for 4 classes: no one row per class.
    assert got["summary"]["nc3_duality_last"] is None
    assert math.isfinite(got["layers"][0]["nc1"])
