"""Rows of parts pooled per sample (nrc_cli.segments, update(..., segments=), forward=)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import dense_layer
from torch import nn

from nrc_cli import CollapseMonitor, analyze
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.segments import Segments, declared, segment_pool

METRICS = ("nrc1_noise", "nrc2_cka", "nrc2_cka_signal", "nrc3_alignment", "nrc4_probe_mse")


class SetRegressor(nn.Module):
    """A deep-sets regressor: ``a`` sees one row per element, ``b`` one row per set."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, owner: torch.Tensor, b: int) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        pooled = torch.zeros(b, h.shape[1]).index_add_(0, owner, h)
        return self.b(pooled / torch.bincount(owner, minlength=b).unsqueeze(1))


def _sets(n_batches: int, b: int, seed: int, low: int = 1, high: int = 6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        counts = torch.randint(low, high, (b,), generator=g)
        owner = torch.repeat_interleave(torch.arange(b), counts)
        x = torch.randn(int(counts.sum()), 3, generator=g)
        y = torch.randn(b, 2, generator=g)
        out.append((x, owner, counts, y))
    return out


def _pool_by_hand(rows: np.ndarray, owner: np.ndarray, b: int, reduce: str) -> np.ndarray:
    out = np.zeros((b, rows.shape[1]))
    np.add.at(out, owner, rows.astype(np.float64))
    if reduce == "mean":
        out /= np.maximum(np.bincount(owner, minlength=b), 1)[:, None]
    return out


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_rows_of_parts_pooled_per_sample_match_a_dense_reference(reduce):
    model = SetRegressor().eval()
    batches = _sets(6, 40, seed=1)
    monitor = CollapseMonitor(model)
    za, zb, ys, preds = [], [], [], []
    with monitor, torch.no_grad():
        for x, owner, counts, y in batches:
            out = model(x, owner, len(y))
            monitor.update(y, out, segments=Segments(counts=counts, reduce=reduce))
            preds.append(out.numpy())
    with torch.no_grad():  # the reference, by hand, outside the monitor
        for x, owner, counts, y in batches:
            za.append(_pool_by_hand(x.numpy(), owner.numpy(), len(y), reduce))
            h = torch.tanh(model.a(x))
            zb.append(
                (torch.zeros(len(y), 6).index_add_(0, owner, h) / counts.unsqueeze(1)).numpy()
            )
            ys.append(y.numpy())
    results = monitor.compute()
    y_all = np.concatenate(ys)
    model_mse = float(np.mean((np.concatenate(preds) - y_all) ** 2))
    rows = {r["layer"]: r for r in results.layers}
    for name, z in (("a", np.concatenate(za)), ("b", np.concatenate(zb))):
        weight = getattr(model, name).weight.detach().double().numpy()
        want = dense_layer(z, y_all, weight, 2, model_mse)
        for metric in METRICS:
            assert rows[name][metric] == pytest.approx(want[metric], rel=1e-9, abs=1e-12), metric
    assert [p["rows"] for p in results.plan["layers"]] == ["part", "sample"]
    assert [p["n_samples"] for p in results.plan["layers"]] == [240, 240]
    assert rows["a"]["note"].endswith("rows of parts pooled per sample")
    # An owner index gives the same numbers as counts (mean).
    if reduce == "mean":
        again = CollapseMonitor(model)
        with again, torch.no_grad():
            for x, owner, _, y in batches:
                again.update(y, model(x, owner, len(y)), segments=owner)
        assert again.compute().layers[0]["nrc1_noise"] == rows["a"]["nrc1_noise"]


def test_rows_that_match_no_declaration_are_refused_with_what_was_seen():
    model = SetRegressor().eval()
    (x, owner, _, y), *_ = _sets(1, 16, seed=2)
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        out = model(x, owner, 16)
        with pytest.raises(
            DataError,
            match=rf"layer 'a' sees {len(x)} rows for 16 samples: rows of parts, not samples\? "
            r"declare segments=\.\.\. \(this batch declared no segments\)",
        ) as err:
            monitor.update(y, out)
        assert "segments=owner" in (err.value.hint or "")
        out = model(x, owner, 16)
        with pytest.raises(DataError, match=r"sees \d+ rows for 16 samples.*declared 3 part rows"):
            monitor.update(y, out, segments=torch.tensor([0, 1, 2]))
        out = model(x, owner, 16)
        with pytest.raises(DataError, match=r"segments\['a'\] declares 3"):
            monitor.update(y, out, segments={"a": torch.tensor([0, 1, 2])})
    assert monitor.n_samples == 0


def test_rows_as_many_as_the_samples_warn_when_parts_are_declared():
    """A batch of one-element sets: the element rows are as many as the samples."""
    model = SetRegressor().eval()
    monitor = CollapseMonitor(model)
    batches = [*_sets(1, 24, seed=3, low=1, high=2), *_sets(3, 24, seed=4)]
    with monitor, torch.no_grad():
        for x, owner, counts, y in batches:
            monitor.update(y, model(x, owner, len(y)), segments=Segments(counts=counts))
    results = monitor.compute()
    warning = [w for w in results.summary["warnings"] if "as many as the part rows" in w]
    assert warning and "layer 'a' sees 24 rows in a batch of 24 samples" in warning[0]
    # The later batches decided: the layer's rows are parts.
    assert results.plan["layers"][0]["rows"] == "part"


def test_a_layer_cannot_change_its_kind_of_rows():
    model = SetRegressor().eval()
    monitor = CollapseMonitor(model)
    (x, owner, counts, y), *_ = _sets(1, 8, seed=5, low=2, high=4)
    with monitor, torch.no_grad():
        monitor.update(y, model(x, owner, 8), segments=Segments(counts=counts, kind="atom"))
        model(x, owner, 8)
        with pytest.raises(DataError, match="saw rows of atom in earlier batches and rows of bond"):
            monitor.update(y, None, segments=Segments(counts=counts, kind="bond"))


def test_segments_are_checked():
    with pytest.raises(ConfigError, match="exactly one of index= and counts="):
        Segments()
    with pytest.raises(ConfigError, match="1-D integer tensor, found shape \\[3\\] of float32"):
        Segments(index=torch.zeros(3))
    with pytest.raises(ConfigError, match="negative value"):
        Segments(counts=torch.tensor([1, -1]))
    with pytest.raises(ConfigError, match="reduce expected one of mean, sum"):
        Segments(counts=torch.tensor([1]), reduce="max")
    with pytest.raises(DataError, match="counts has 2 entries, but the batch has 3 samples"):
        Segments(counts=torch.tensor([1, 2])).owner(3)
    with pytest.raises(DataError, match="a row belongs to sample 5, but the batch has 3"):
        Segments(index=torch.tensor([0, 5])).owner(3)
    with pytest.raises(ConfigError, match="found str"):
        declared("node")
    pooled, counts = segment_pool(torch.ones(3, 2), torch.tensor([0, 0, 2]), 3)
    assert pooled.dtype == torch.float64 and counts.tolist() == [2, 0, 1]


class Padded(nn.Module):
    """Sets padded to a fixed length, with the padding marked by ``atom_mask``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.a = nn.Linear(3, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x)) * atom_mask.unsqueeze(-1)
        return self.b(h.sum(1) / atom_mask.sum(1, keepdim=True))


def _padded(seed: int = 7, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 3, generator=g)
    mask = (torch.rand(n, 5, generator=g) > 0.5).float()
    mask[:, 0] = 1
    x = x * mask.unsqueeze(-1) + (1 - mask.unsqueeze(-1)) * 9.0  # padding far from the data
    return x, mask, torch.randn(n, 2, generator=g)


def test_an_unnamed_padding_mask_warns_and_a_named_one_pools_exactly():
    model = Padded().eval()
    x, mask, y = _padded()
    plain = CollapseMonitor(model)
    with plain, torch.no_grad():
        plain.update(y, model(x, mask))
    said = plain.compute().summary["warnings"]
    assert any(
        "the model takes 'atom_mask' but nrc pooled the tokens of 'a' without a mask" in w
        and "mask_key='atom_mask'" in w
        for w in said
    )
    want = (x * mask.unsqueeze(-1)).double().sum(1) / mask.double().sum(1, keepdim=True)
    weight = model.a.weight.detach().double().numpy()
    ref = dense_layer(want.numpy(), y.numpy(), weight, 2)
    for route in ("mask_key", "update"):
        kw = {"mask_key": "atom_mask"} if route == "mask_key" else {}
        monitor = CollapseMonitor(model, **kw)
        with monitor, torch.no_grad():
            out = model(x, mask)  # the mask passed positionally
            monitor.update(y, out, **({"mask": mask} if route == "update" else {}))
        got = monitor.compute()
        assert got.layers[0]["nrc1_noise"] == pytest.approx(ref["nrc1_noise"], rel=1e-9)
        assert not any("without a mask" in w for w in got.summary["warnings"])


def test_batches_start_at_update_when_the_model_calls_forward_directly():
    model = SetRegressor().eval()
    looped, direct = CollapseMonitor(model), CollapseMonitor(model)
    batches = _sets(3, 20, seed=8)
    with looped, torch.no_grad():
        for x, owner, _, y in batches:
            looped.update(y, model(x, owner, len(y)), segments=owner)
    with direct, torch.no_grad():
        for x, owner, _, y in batches:  # the way a model's own predict() API runs it
            direct.update(y, model.forward(x, owner, len(y)), segments=owner)
    assert direct.compute().layers == looped.compute().layers


def test_analyze_with_forward_equals_the_monitor_loop():
    model = SetRegressor().eval()
    batches = [
        {"x": x, "owner": owner, "y": y, "n": len(y)} for x, owner, _, y in _sets(4, 30, seed=9)
    ]
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        for b in batches:
            monitor.update(b["y"], model(b["x"], b["owner"], b["n"]), segments=b["owner"])
    want = monitor.compute()

    def forward(m, b):
        return m.forward(b["x"], b["owner"], b["n"]), b["y"], b["owner"]

    got = analyze(model, batches, forward=forward)
    assert got.layers == want.layers
    assert got.summary["n_samples"] == 120 and got.summary["build"] == "module"
    assert model.training is False
    with pytest.raises(DataError, match=r"returned Tensor for batch 0; expected a tuple"):
        analyze(model, batches, forward=lambda m, b: b["y"])
    with pytest.raises(ConfigError, match=r"forward: needs the model as a torch\.nn\.Module"):
        analyze("model.safetensors", batches, forward=forward)


class Angles(nn.Module):
    """``angle`` runs on rows that some samples do not have (a structure with no angles)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.angle = nn.Linear(2, 4)
        self.head = nn.Linear(3, 1)

    def forward(self, x, angles, owner, b):
        if len(angles):
            extra = torch.zeros(b, 4).index_add_(0, owner, torch.tanh(self.angle(angles)))
            x = x + extra[:, :3]
        return self.head(x)


def test_a_layer_seen_by_some_samples_is_refused_or_measured_over_those():
    model = Angles().eval()
    g = torch.Generator().manual_seed(11)
    batches = []
    for i in range(5):
        counts = torch.randint(0, 3, (30,), generator=g)
        if i == 2:
            counts.zero_()  # a batch with no angle at all: the layer does not run
        owner = torch.repeat_interleave(torch.arange(30), counts)
        angles = torch.randn(len(owner), 2, generator=g)
        batches.append(
            (
                torch.randn(30, 3, generator=g),
                angles,
                owner,
                counts,
                torch.randn(30, 1, generator=g),
            )
        )
    strict = CollapseMonitor(model)
    with strict, torch.no_grad():
        x, angles, owner, counts, y = batches[0]
        out = model(x, angles, owner, 30)
        with pytest.raises(
            DataError, match=r"layer 'angle': sample \d+ of the batch has no part rows"
        ) as err:
            strict.update(y, out, segments=Segments(counts=counts))
    assert "partial_layers" in (err.value.hint or "")

    monitor = CollapseMonitor(model, partial_layers=["angle"])
    seen_z, seen_y = [], []
    with monitor, torch.no_grad():
        for x, angles, owner, counts, y in batches:
            model(x, angles, owner, 30)
            monitor.update(y, None, segments=Segments(counts=counts))
            if len(angles):
                keep = counts.numpy() > 0
                seen_z.append(_pool_by_hand(angles.numpy(), owner.numpy(), 30, "mean")[keep])
                seen_y.append(y.numpy()[keep])
    results = monitor.compute()
    rows = {r["layer"]: r for r in results.layers}
    z, ya = np.concatenate(seen_z), np.concatenate(seen_y)
    want = dense_layer(z, ya, model.angle.weight.detach().double().numpy(), 1)
    for metric in METRICS:
        assert rows["angle"][metric] == pytest.approx(want[metric], rel=1e-9, abs=1e-12), metric
    plan = {p["layer"]: p for p in results.plan["layers"]}
    assert plan["angle"]["n_samples"] == len(z) < 150 == plan["head"]["n_samples"]
    assert f"seen by {len(z)} of 150 samples (partial_layers)" in rows["angle"]["note"]
    assert rows["angle"]["nrc4_ratio"] is None
