"""CollapseMonitor: the in-memory core that ``nrc analyze`` and a training loop share."""

from __future__ import annotations

import io
import math
import weakref

import numpy as np
import pytest
import torch
from helpers import (
    Wrapped,
    analyze_json,
    assert_collected,
    assert_fed_nothing,
    mlp,
    save_model,
    save_npz,
    survivors,
)
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import nrc_cli
from nrc_cli import CollapseMonitor, analyze
from nrc_cli.capture import Capture
from nrc_cli.errors import ConfigError, DataError, NrcError
from nrc_cli.options import AnalysisOptions

# What a hook on a model reports to, and so keeps alive while it is left there.
HOOKERS = (CollapseMonitor, Capture)

NUMERIC = (
    "nrc1_noise",
    "nrc2_cka",
    "nrc2_cka_signal",
    "nrc3_alignment",
    "nrc4_probe_mse",
    "nrc4_ratio",
    "stable_rank_h",
    "stable_rank_w",
)
SUMMARY = ("model_mse", "stable_rank_y", "nrc1_last", "nrc2_last", "nrc3_last", "nrc3_gamma")


def assert_same_metrics(a: dict, b: dict, tol: float) -> None:
    """Two result documents (``Results.to_dict()`` or CLI JSON) agree to ``tol`` (relative)."""
    assert [r["layer"] for r in a["layers"]] == [r["layer"] for r in b["layers"]]
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert ra["collapsed"] == rb["collapsed"] and ra["rank"] == rb["rank"]
        for col in NUMERIC:
            _close(ra[col], rb[col], tol, f"{ra['layer']}.{col}")
    for key in SUMMARY:
        _close(a["summary"][key], b["summary"][key], tol, key)
    for key in ("n_samples", "target_dim", "first_collapsed_index", "target_effective_rank"):
        assert a["summary"][key] == b["summary"][key], key


def _close(x, y, tol, what):
    if x is None or y is None:
        assert x is None and y is None, (what, x, y)
        return
    assert math.isclose(x, y, rel_tol=tol, abs_tol=tol), (what, x, y)


def _data(n: int = 320, p: int = 6, t: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)).astype(np.float32)
    w = rng.standard_normal((p, t))
    y = (np.tanh(x @ w) + 0.05 * rng.standard_normal((n, t))).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def _feed(monitor, model, x, y, batch=64, output=True):
    with monitor, torch.no_grad():
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            out = model(xb)
            monitor.update(yb, out if output else None)
    return monitor


def test_training_loop_final_compute_equals_nrc_analyze_on_the_saved_checkpoint(tmp_path):
    torch.manual_seed(0)
    x, y = _data()
    model = Wrapped(mlp((6, 16, 16, 3), seed=1))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    monitor = CollapseMonitor(model)
    history = []
    for step in range(36):
        i = (step * 64) % 320
        loss = ((model(x[i : i + 64]) - y[i : i + 64]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 12 == 0:  # every N steps: a fresh measurement on the whole set
            monitor.reset()
            _feed(monitor, model.eval(), x, y)
            model.train()
            history.append(monitor.compute())
    assert len(history) == 3
    # The measurements moved with training: the weights changed between them.
    assert history[0].layers[0]["stable_rank_w"] != history[-1].layers[0]["stable_rank_w"]
    # No hook is left behind on any module: the model runs without feeding the monitor, and
    # nothing holds the monitor once the test lets it go.
    assert_fed_nothing(monitor, model.eval(), x[:64], y[:64])
    model.train()
    ref = weakref.ref(monitor)
    del monitor
    assert_collected(ref, "the monitor")

    ckpt = save_model(tmp_path / "m.safetensors", model)
    data = save_npz(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    cli = analyze_json(ckpt, data, "--batch-size", "64", "--device", "cpu")
    assert_same_metrics(history[-1].to_dict(), cli, 1e-9)
    assert history[-1].summary["n_samples"] == 320 and history[-1].summary["prediction"] == "output"


def test_two_halves_merged_equal_one_monitor_over_all():
    x, y = _data(seed=3)
    model = Wrapped(mlp((6, 12, 3), seed=2))
    whole = _feed(CollapseMonitor(model), model, x, y).compute().to_dict()
    first = _feed(CollapseMonitor(model), model, x[:150], y[:150], batch=50)
    second = _feed(CollapseMonitor(model), model, x[150:], y[150:], batch=17)
    merged = first.merge(second).compute().to_dict()
    assert_same_metrics(merged, whole, 1e-9)
    # Into an empty monitor, a merge is a copy.
    again = CollapseMonitor(model).merge(first)
    assert_same_metrics(again.compute().to_dict(), first.compute().to_dict(), 0.0)


def test_a_refused_merge_leaves_the_state_unchanged():
    x, y = _data(n=128, seed=3)
    model = Wrapped(mlp((6, 12, 3), seed=2))
    one = _feed(CollapseMonitor(model, active=["net.0"]), model, x[:64], y[:64])
    both = _feed(CollapseMonitor(model), model, x[64:], y[64:])
    before = one.state_dict()
    with pytest.raises(DataError, match=r"layer 'net\.2' is accumulated in one monitor only"):
        one.merge(both)
    after = one.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in after)


def _snapshot(monitor) -> tuple[dict, dict]:
    return monitor.state_dict(), monitor.compute().to_dict()


def _assert_unchanged(monitor, snapshot) -> None:
    """The monitor's state dict and results are what ``_snapshot`` took, to the bit."""
    state, doc = snapshot
    after = monitor.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in after), "the state changed"
    assert monitor.compute().to_dict() == doc


def test_a_merge_refuses_layers_only_this_monitor_accumulated():
    x, y = _data(n=128, seed=3)
    model = Wrapped(mlp((6, 12, 12, 3), seed=2))
    both = _feed(CollapseMonitor(model), model, x[:64], y[:64])
    one = _feed(CollapseMonitor(model, active=["net.0"]), model, x[64:], y[64:])
    before = _snapshot(both)
    # Merged, net.2 and net.4 would hold 64 samples each under n_samples = 128.
    with pytest.raises(
        DataError, match=r"layers 'net\.2', 'net\.4' are accumulated in one monitor only \(this"
    ):
        both.merge(one)
    _assert_unchanged(both, before)
    # The other way round too (and into an empty monitor a merge is a copy).
    with pytest.raises(DataError, match=r"accumulated in one monitor only \(the other\)"):
        one.merge(both)
    assert CollapseMonitor(model, active=["net.0"]).merge(both).n_samples == 64


class _TwoOutputs(nn.Module):
    """An MLP whose output is a dict with two predictions of the same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp((6, 12, 3), seed=2)

    def forward(self, x):
        out = self.net(x)
        return {"pred": out, "other": 2 * out}


@pytest.mark.parametrize(
    ("changed", "error", "match"),
    [
        # A layer sketched with another test matrix: net.0 (exact) would have been merged
        # before net.2 failed.
        ({"seed": 1}, DataError, r"layer 'net\.2': cannot merge sketches built with different"),
        ({"sketch": {}}, DataError, r"layer 'net\.2' is accumulated as sketch in this monitor"),
        ({"sketch": {"net.2": 5}}, DataError, "different test matrices"),
        ({"precision": "mixed"}, ConfigError, r"different precisions \(exact, mixed\)"),
        ({"mask_key": None}, ConfigError, "pool token features with different masks"),
        ({"output_key": "other"}, ConfigError, r"output_key 'pred', 'other'"),
    ],
)
def test_a_merge_of_monitors_that_accumulated_differently_is_refused(changed, error, match):
    x, y = _data(n=128, seed=3)
    model = _TwoOutputs().eval()
    options = {"sketch": {"net.2": 4}, "output_key": "pred"}
    mine = _feed(CollapseMonitor(model, **options), model, x[:64], y[:64])
    theirs = _feed(CollapseMonitor(model, **{**options, **changed}), model, x[64:], y[64:])
    before = _snapshot(mine)
    with pytest.raises(error, match=match):
        mine.merge(theirs)
    _assert_unchanged(mine, before)
    if error is ConfigError:  # what a batch adds differs: not even into an empty monitor
        empty = CollapseMonitor(model, **options)
        with pytest.raises(ConfigError, match=match):
            empty.merge(theirs)
        assert empty.n_samples == 0


def test_options_that_only_shape_compute_are_the_merging_monitors():
    x, y = _data(seed=3)
    model = Wrapped(mlp((6, 12, 3), seed=2))
    mine = _feed(CollapseMonitor(model, rank=1), model, x[:150], y[:150], batch=50)
    theirs = CollapseMonitor(model, rank=3, svd="randomized", collapse_rule="nrc1_noise<=0.5")
    _feed(theirs, model, x[150:], y[150:])
    whole = _feed(CollapseMonitor(model, rank=1), model, x, y).compute().to_dict()
    assert_same_metrics(mine.merge(theirs).compute().to_dict(), whole, 1e-9)


def test_update_refuses_a_layer_that_starts_running_after_the_first_batch():
    class Late(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.late = nn.Linear(6, 3), nn.Linear(3, 3), False

        def forward(self, x):
            h = self.a(x)
            return self.b(h) if self.late else h

    x, y = _data(n=64, seed=21)
    model = Late().eval()
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        monitor.update(y[:32], model(x[:32]))
        before = _snapshot(monitor)
        model.late = True
        with pytest.raises(DataError, match=r"layer\(s\) b ran in this batch but not in earlier"):
            monitor.update(y[32:], model(x[32:]))
    # Layer b never got a sample: it has no row (it would have reported 32 samples as 64).
    _, doc = before
    assert monitor.n_samples == 32 and monitor.compute().to_dict()["layers"] == doc["layers"]
    assert [row["layer"] for row in doc["layers"]] == ["a"]


def _bad_states(state: dict, other: dict) -> dict[str, tuple[dict, str]]:
    """State dicts that must not load into the monitor of ``state`` (``other``: the state of
    a wider model with the same layer names), with the error each gives."""
    layer = {k: v for k, v in state.items() if k.startswith("layer/net.2/")}
    renamed = {k.replace("layer/net.2/", "layer/net.9/"): v for k, v in layer.items()}
    short = dict(state)
    short["layer/net.2/moments/n"] = state["layer/net.2/moments/n"] - 1
    return {
        "unknown layer": ({**state, **renamed}, "state of layer 'net.9', which this monitor"),
        "order": ({**state, "order": torch.tensor([0, 7])}, "for this model's layers"),
        "negative order": ({**state, "order": torch.tensor([-1])}, "for this model's layers"),
        "task": ({**state, "task": torch.tensor(1)}, "a state of task classification"),
        "precision": ({**state, "precision": torch.tensor(1)}, "accumulated in mixed precision"),
        "second pass": ({**state, "second_n": torch.tensor(3)}, "regression has no second pass"),
        "unknown state": (
            {**state, "layer/net.2/moments/bogus": torch.tensor(1)},
            "unknown state",
        ),
        "kind": (
            {**state, "layer/net.2/sketch/n": torch.tensor(1)},
            r"'layer/net\.2/moments/' and 'layer/net\.2/sketch/', found both",
        ),
        "width": (other, "layer 'net.0' has 6 input features, the state 7"),
        "short layer": (short, r"layer\(s\) net\.2 hold some of the 320 samples"),
        "no n": ({k: v for k, v in state.items() if k != "n"}, "'n'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown layer",
        "order",
        "negative order",
        "task",
        "precision",
        "second pass",
        "unknown state",
        "kind",
        "width",
        "short layer",
        "no n",
    ],
)
def test_a_refused_load_leaves_the_monitor_as_it_was(case):
    x, y = _data(seed=4)
    model = Wrapped(mlp((6, 10, 3), seed=5))
    # A monitor of task "auto" (the default) may load a state of either task: here, one that
    # is fixed to regression.
    monitor = _feed(CollapseMonitor(model, task="regression"), model, x, y)
    wider = Wrapped(mlp((7, 10, 3), seed=5))
    other = _feed(CollapseMonitor(wider), wider, torch.randn(320, 7), y).state_dict()
    state, match = _bad_states(monitor.state_dict(), other)[case]
    before = _snapshot(monitor)
    with pytest.raises(ConfigError, match=match):
        monitor.load_state_dict(state)
    _assert_unchanged(monitor, before)
    # ... and it goes on accumulating as before.
    _feed(monitor, model, x[:64], y[:64])
    assert monitor.n_samples == 384


def test_a_join_refuses_monitors_that_saw_other_samples():
    x, y = _data(n=256, seed=22)
    model = Wrapped(mlp((6, 12, 3), seed=23))
    whole = _feed(CollapseMonitor(model), model, x[:128], y[:128]).compute().to_dict()
    # The passes of one plan over the same samples, batched differently: joined, they are one
    # monitor holding every layer.
    first = _feed(CollapseMonitor(model, active=["net.0"]), model, x[:128], y[:128])
    second = _feed(CollapseMonitor(model, active=["net.2"]), model, x[:128], y[:128], batch=50)
    assert_same_metrics(first.join(second).compute().to_dict(), whole, 1e-9)
    # As many samples, other ones: refused, and nothing changes.
    first = _feed(CollapseMonitor(model, active=["net.0"]), model, x[:128], y[:128])
    other = _feed(CollapseMonitor(model, active=["net.2"]), model, x[128:], y[128:])
    before = _snapshot(first)
    with pytest.raises(DataError, match=r"as many samples, 128, but other targets"):
        first.join(other)
    _assert_unchanged(first, before)
    # The same targets, other inputs: the model's errors differ.
    other = CollapseMonitor(model, active=["net.2"])
    _feed(other, model, x[128:], y[:128])
    with pytest.raises(DataError, match="other targets or other predictions"):
        first.join(other)
    with pytest.raises(DataError, match=r"saw different data \(128 and 64 samples\)"):
        first.join(_feed(CollapseMonitor(model, active=["net.2"]), model, x[:64], y[:64]))
    mixed = _feed(CollapseMonitor(model, active=["net.2"], precision="mixed"), model, x, y)
    with pytest.raises(ConfigError, match="different precisions"):
        first.join(mixed)
    _assert_unchanged(first, before)


def test_state_dict_through_torch_save_and_safetensors_gives_identical_results():
    x, y = _data(seed=4)
    model = Wrapped(mlp((6, 10, 3), seed=5))
    monitor = _feed(CollapseMonitor(model, rank=2), model, x, y)
    state = monitor.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    want = monitor.compute().to_dict()
    for loaded in (torch.load(buffer, weights_only=True), st_load(st_save(state))):
        fresh = CollapseMonitor(model, rank=2)
        fresh.load_state_dict(loaded)
        assert fresh.compute().to_dict() == want
        # ... and it goes on accumulating as the original would.
        _feed(fresh, model, x[:64], y[:64])
        _feed(monitor_copy := CollapseMonitor(model, rank=2), model, x, y)
        _feed(monitor_copy, model, x[:64], y[:64])
        assert_same_metrics(fresh.compute().to_dict(), monitor_copy.compute().to_dict(), 1e-12)


def test_compute_is_repeatable_and_works_between_updates():
    x, y = _data(seed=6)
    model = Wrapped(mlp((6, 8, 3), seed=7))
    monitor = CollapseMonitor(model)
    _feed(monitor, model, x[:128], y[:128])
    early = monitor.compute().to_dict()
    assert monitor.compute().to_dict() == early
    _feed(monitor, model, x[128:], y[128:])
    whole = _feed(CollapseMonitor(model), model, x, y)
    assert_same_metrics(monitor.compute().to_dict(), whole.compute().to_dict(), 1e-12)
    assert early["summary"]["n_samples"] == 128


def test_analyze_a_module_on_arrays_equals_the_file_route(tmp_path):
    x, y = _data(seed=8)
    model = Wrapped(mlp((6, 12, 12, 3), seed=9))
    ckpt = save_model(tmp_path / "m.safetensors", model)
    data = save_npz(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    by_file = analyze(ckpt, data, batch_size=100, device="cpu").to_dict()
    by_arrays = analyze(model, (x, y), batch_size=100, device="cpu").to_dict()
    by_numpy = analyze(model, (x.numpy(), y.numpy()), batch_size=100, device="cpu").to_dict()
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 320, 100)]
    by_batches = analyze(model, batches, device="cpu").to_dict()
    # How the model was built differs by route (a rebuilt MLP against the caller's module);
    # every number is the same.
    built = ("plan", "build", "model", "activation", "norm", "notes", "warnings")
    for doc in (by_arrays, by_numpy, by_batches):
        assert doc["layers"] == by_file["layers"]
        assert {k: v for k, v in doc["summary"].items() if k not in built} == {
            k: v for k, v in by_file["summary"].items() if k not in built
        }
        assert doc["summary"]["build"] == "module" and doc["summary"]["model"] == "Wrapped"
        assert doc["summary"]["warnings"] == []
    assert by_file["summary"]["build"] == "inferred"
    assert by_arrays["checkpoint"] == "<Wrapped>" and by_arrays["data"] == "<arrays>"
    # The caller's module is left as it was: training mode, dtype, no hooks.
    model.train()
    left = survivors(lambda: analyze(model, (x, y), dtype="bfloat16", device="cpu"), *HOOKERS)
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert left == [], f"a hook left on the model keeps {left} alive"
    # Run as it is (no copy for another dtype), the caller's module is hooked and unhooked.
    left = survivors(lambda: analyze(model, (x, y), device="cpu"), *HOOKERS)
    assert model.training and left == [], f"a hook left on the model keeps {left} alive"


def test_typed_options_reach_the_analysis_and_bad_ones_are_config_errors(tmp_path):
    x, y = _data(seed=10)
    model = Wrapped(mlp((6, 12, 3), seed=11))
    results = analyze(model, (x, y), rank=1, layers=["net.2"], memory_budget=10**9)
    assert [r["layer"] for r in results.layers] == ["net.2"]
    assert results.summary["rank"] == 1 and results.plan["memory_budget"] == 10**9
    with pytest.raises(ConfigError, match="arch_kwargs: expected a dict"):
        analyze(model, (x, y), arch_kwargs="[1]")
    with pytest.raises(ConfigError, match=r"expected a checkpoint path or a torch\.nn\.Module"):
        analyze(42, (x, y))
    with pytest.raises(DataError, match=r"inputs have \[320\] rows but targets 300"):
        analyze(model, (x, y[:300]))


def test_a_one_shot_iterator_cannot_make_several_passes():
    x, y = _data(n=64, seed=12)
    model = Wrapped(mlp((6, 300, 300, 3), seed=13))
    gen = ((x[i : i + 32], y[i : i + 32]) for i in range(0, 64, 32))
    with pytest.raises(ConfigError, match="one-shot iterator of batches allows one pass"):
        analyze(model, gen, memory_budget="1.7MB", device="cpu")
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 64, 32)]
    several = analyze(model, batches, memory_budget="1.7MB", device="cpu")
    assert several.summary["passes"] > 1
    one = analyze(model, batches, device="cpu")
    assert_same_metrics(several.to_dict(), one.to_dict(), 1e-12)


def test_hooks_are_removed_when_the_body_raises():
    model = Wrapped(mlp((6, 8, 3), seed=14))
    monitor = CollapseMonitor(model)
    with pytest.raises(RuntimeError, match="boom"), monitor:
        assert monitor.hooked
        assert monitor.order == []
        model(torch.randn(4, 6))
        assert monitor.order == [w.name for w in monitor.layers]  # the model's hooks ran
        raise RuntimeError("boom")
    assert not monitor.hooked
    assert_fed_nothing(monitor, model, torch.randn(4, 6), torch.randn(4, 3))
    # Usable again afterwards, with nothing captured left over.
    x, y = _data(n=64, seed=15)
    assert _feed(monitor, model, x, y).compute().summary["n_samples"] == 64
    # Neither exit left a hook on the model holding the monitor.
    ref = weakref.ref(monitor)
    del monitor
    assert_collected(ref, "the monitor")


def test_mismatched_updates_are_clear_errors_and_leave_the_state_unchanged():
    model = Wrapped(mlp((6, 8, 3), seed=16))
    x, y = _data(n=64, seed=17)
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        model(x[:32])
        with pytest.raises(
            DataError, match=r"sees 32 rows for 16 samples: rows of parts, not samples\?"
        ):
            monitor.update(y[:16])
        with pytest.raises(DataError, match="found no captured features"):
            monitor.update(y[:32])
        out = model(x[:32])
        with pytest.raises(DataError, match=r"prediction has shape \[32, 3\].*need \(32, 2\)"):
            monitor.update(y[:32, :2], out)
        model(x[:32])
        with pytest.raises(DataError, match="a forward pass started before the features"):
            model(x[:32])
        with pytest.raises(DataError, match="found no captured features"):
            monitor.update(y[:32])  # both forward passes' features were dropped
    assert monitor.n_samples == 0
    with monitor, torch.no_grad():
        monitor.update(y[:32], model(x[:32]))
        with pytest.raises(DataError, match="for some batches and none for others"):
            model(x[32:])
            monitor.update(y[32:])
    assert monitor.n_samples == 32
    with pytest.raises(ConfigError, match="no samples yet"):
        CollapseMonitor(model).compute()
    assert issubclass(DataError, NrcError)


def test_the_mask_can_come_with_update_or_as_the_models_keyword():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(5, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x, attention_mask=None):
            h = torch.relu(self.proj(x))  # (b, T, 4)
            return self.head(h)[:, 0]

    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(40, 7, 5)
    mask = (torch.rand(40, 7) > 0.4).long()
    mask[:, 0] = 1
    y = torch.randn(40, 2)
    by_kwarg, by_update = CollapseMonitor(model), CollapseMonitor(model)
    with by_kwarg, torch.no_grad():
        for i in range(0, 40, 8):
            by_kwarg.update(y[i : i + 8], model(x[i : i + 8], attention_mask=mask[i : i + 8]))
    with by_update, torch.no_grad():
        for i in range(0, 40, 8):
            by_update.update(y[i : i + 8], model(x[i : i + 8]), mask=mask[i : i + 8])
    a, b = by_kwarg.compute().to_dict(), by_update.compute().to_dict()
    assert_same_metrics(a, b, 1e-12)
    # The masked mean differs from the plain one.
    plain = CollapseMonitor(model, mask_key=None)
    with plain, torch.no_grad():
        for i in range(0, 40, 8):
            plain.update(y[i : i + 8], model(x[i : i + 8], attention_mask=mask[i : i + 8]))
    assert plain.compute().layers[0]["nrc1_noise"] != a["layers"][0]["nrc1_noise"]


def test_a_memory_budget_sketches_the_layers_that_do_not_fit():
    x, y = _data(n=256, seed=18)
    model = Wrapped(mlp((6, 400, 3), seed=19))
    monitor = _feed(CollapseMonitor(model, memory_budget="2MB"), model, x, y)
    results = monitor.compute()
    modes = {row["layer"]: row["accumulator"] for row in results.plan["layers"]}
    assert modes == {"net.0": "exact", "net.2": "sketch"}
    assert results.summary["svd"] == "mixed"
    deeper = Wrapped(mlp((6, 400, 400, 3), seed=20))
    with pytest.raises(ConfigError, match="need 2 passes over the data"):
        _feed(CollapseMonitor(deeper, memory_budget="2MB"), deeper, x, y)


def test_from_options_takes_the_options_whole_and_gives_the_keyword_constructors_results():
    x, y = _data(seed=21)
    model = Wrapped(mlp((6, 400, 3), seed=22))
    fields = {
        "rank": 2,
        "layers": ("net.*",),
        "svd": "randomized",
        "oversample": 6,
        "power_iters": 2,
        "seed": 5,
        "collapse_rule": "nrc1_noise<=0.5",
        "memory_budget": "2MB",  # net.2 is sketched
        "precision": "mixed",
    }
    keyword = _feed(CollapseMonitor(model, **fields), model, x, y)
    # The options a monitor does not use (the data's keys, the batch size) are carried.
    options = AnalysisOptions(**fields, batch_size=64, x_key="inputs")
    whole = _feed(CollapseMonitor.from_options(model, options), model, x, y)
    assert keyword.options == AnalysisOptions(**fields)
    assert whole.options is options and whole.family.options is options
    assert whole.mask_key == keyword.mask_key == "attention_mask"
    assert whole.sketch == keyword.sketch == {"net.2": whole.sketch["net.2"]}
    assert whole.compute().to_dict() == keyword.compute().to_dict()
    # Built alike, the two combine.
    assert keyword.merge(whole).n_samples == 640
    # A classifier, found from the labels (task "auto"), and an explicit mask key.
    labels = torch.from_numpy(np.random.default_rng(23).integers(0, 3, 320))
    a = _feed(CollapseMonitor(model, mask_key=None), model, x, labels)
    b = CollapseMonitor.from_options(model, AnalysisOptions(), mask_key=None)
    _feed(b, model, x, labels)
    assert b.task == a.task == "classification" and b.mask_key is None
    assert b.compute().to_dict() == a.compute().to_dict()
    assert CollapseMonitor.from_options(model, AnalysisOptions(mask_key="m")).mask_key == "m"
    with pytest.raises(ConfigError, match="from_options: expected AnalysisOptions, found dict"):
        CollapseMonitor.from_options(model, {"rank": 2})
    with pytest.raises(ConfigError, match=r"from_options: expected a torch\.nn\.Module"):
        CollapseMonitor.from_options("model.pt", options)


def test_the_docstring_examples_run(monkeypatch):
    import doctest
    from pathlib import Path

    import nrc_cli.monitor

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert doctest.testmod(nrc_cli.monitor).failed == 0
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(nrc_cli.analyze, "analyze", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_the_public_surface():
    assert set(nrc_cli.__all__) == {
        "CollapseMonitor",
        "History",
        "NrcError",
        "Results",
        "__version__",
        "analyze",
    }
    assert CollapseMonitor.__doc__ and "Example" in CollapseMonitor.__doc__
