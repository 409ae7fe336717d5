"""Shared test helpers: tiny checkpoints and data files, a dense reference, the accumulator checker.

* Files: tiny MLPs saved with ``safetensors`` and ``.npz`` data sets, written for real in
  ``tmp_path``.
* CLI: :func:`invoke` runs ``nrc`` in-process through ``typer.testing.CliRunner``;
  :func:`analyze_json` runs ``nrc analyze --format json`` and parses stdout;
  :func:`assert_usage_error` checks the exit-code-2 contract (docs/analyzing.md, "Exit codes").
* A dense float64 reference of ``docs/metrics.md`` computed from full feature matrices with
  numpy. It is written from the spec, not from ``nrc_cli``: eigenvalues of the covariance for
  NRC1, matrix norms for CKA and stable ranks, an actual least-squares fit (``np.linalg.lstsq``)
  for the probe, explicit projections of every normalised sample for the last-layer NRC, and a
  grid search over the full matrix objective for ``nrc3_last``.
* Hooks left behind: :func:`assert_collected` (nothing keeps a monitor or capture alive once
  the test lets it go), :func:`assert_fed_nothing` (the model's forward no longer feeds a
  monitor), :func:`survivors` (what a call left alive).
* :func:`check_accumulator_contract`: the accumulator contract (streamed == one-shot, merged
  shards == one stream, batch-size invariance, inputs unchanged) for any accumulator.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import subprocess
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from nrc_cli.accumulate.moments import CrossMoments
from nrc_cli.cli import app
from nrc_cli.errors import DataError

# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


class Wrapped(nn.Module):
    """Holds a model under ``self.<prefix>`` so that state-dict keys read ``net.0.weight``."""

    def __init__(self, body: nn.Module, prefix: str = "net") -> None:
        super().__init__()
        self.prefix = prefix
        self.add_module(prefix, body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.prefix)(x)


def mlp(
    dims: Sequence[int],
    *,
    norm: str | None = None,
    activation: type[nn.Module] = nn.ReLU,
    seed: int = 0,
    dyadic: bool = False,
) -> nn.Sequential:
    """A plain ``nn.Sequential`` MLP: (Linear [-> norm] -> activation)* -> Linear, in eval mode.

    ``norm`` is None, ``"layernorm"`` or ``"batchnorm"`` (with random running statistics, so
    that eval-mode BatchNorm differs from LayerNorm and from no norm). ``dyadic=True`` draws
    weights and biases from multiples of 1/8 in [-1/2, 1/2]: with small integer inputs every
    float32 product and sum of a few layers is then exact, so features do not depend on how the
    forward pass is batched.
    """
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            if dyadic:
                lin.weight.copy_(torch.randint(-4, 5, (b, a), generator=gen) / 8)
                lin.bias.copy_(torch.randint(-4, 5, (b,), generator=gen) / 8)
            else:
                lin.weight.copy_(torch.randn(b, a, generator=gen) * (2 / a) ** 0.5)
                lin.bias.copy_(torch.randn(b, generator=gen) * 0.1)
        layers.append(lin)
        if i == len(dims) - 2:
            break
        if norm == "layernorm":
            ln = nn.LayerNorm(b)
            with torch.no_grad():
                ln.weight.copy_(1 + 0.3 * torch.randn(b, generator=gen))
                ln.bias.copy_(0.2 * torch.randn(b, generator=gen))
            layers.append(ln)
        elif norm == "batchnorm":
            bn = nn.BatchNorm1d(b)
            with torch.no_grad():
                bn.weight.copy_(1 + 0.3 * torch.randn(b, generator=gen))
                bn.bias.copy_(0.2 * torch.randn(b, generator=gen))
                bn.running_mean.copy_(torch.randn(b, generator=gen))
                bn.running_var.copy_(0.5 + torch.rand(b, generator=gen))
                bn.num_batches_tracked.fill_(7)
            layers.append(bn)
        elif norm is not None:
            raise ValueError(norm)
        layers.append(activation())
    return nn.Sequential(*layers).eval()


def save_model(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    """Save ``model.state_dict()`` with ``safetensors.torch.save_file``."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def save_npz(path: Path, *, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def overflow_case(folder: Path) -> tuple[Path, Path]:
    """An MLP 3 -> 4 -> 2 whose first Linear overflows float32 on sample 123 alone (of 200):
    the input of ``net.2`` is inf there. Returns (checkpoint, data)."""
    body = mlp((3, 4, 2), seed=1)
    with torch.no_grad():
        body[0].weight.zero_()
        body[0].weight[0, 0] = 1e36
        body[0].bias.zero_()
    ckpt = save_model(folder / "m.safetensors", Wrapped(body))
    x = np.full((200, 3), 0.5, np.float32)
    x[123, 0] = 1e3  # 1e39 > float32 max
    data = save_npz(folder / "d.npz", x=x, y=np.zeros((200, 2), np.float32))
    return ckpt, data


def int_inputs(n: int, p: int, seed: int = 0, low: int = -3, high: int = 3) -> np.ndarray:
    """Small integers stored as float32 (exact through dyadic layers)."""
    rng = np.random.default_rng(seed)
    return rng.integers(low, high + 1, size=(n, p)).astype(np.float32)


def integer_mlp(folder: Path) -> tuple[Path, Path]:
    """5 -> 8 -> 8 -> 2, integer weights in {-1, 0, 1} and biases, integer inputs in [-2, 2]:
    every feature is a small integer (at most 89), so in batches of 8 the centred features
    (multiples of 1/8) and their float32 products and sums are exact."""
    gen = torch.Generator().manual_seed(3)
    body = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for layer in body[::2]:
            layer.weight.copy_(torch.randint(-1, 2, layer.weight.shape, generator=gen))
            layer.bias.copy_(torch.randint(-1, 2, layer.bias.shape, generator=gen))
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(512, 5)).astype(np.float32)
    y = (rng.integers(-8, 9, size=(512, 2)) / 4).astype(np.float32)
    folder.mkdir()
    return save_model(folder / "m.safetensors", Wrapped(body.eval())), save_npz(
        folder / "d.npz", x=x, y=y
    )


def linear_features(model: nn.Module, x: np.ndarray) -> tuple[list[tuple[str, np.ndarray]], Any]:
    """Inputs of every Linear/Conv of ``model`` in forward order, and the model output.

    The reference's own capture: it runs ``model`` once on the whole of ``x`` in float32 and
    records ``inputs[0]`` of each weight layer (pooled like docs/metrics.md: token mean for a Linear,
    spatial mean for a conv), as float64 numpy arrays.
    """
    names = {m: n for n, m in model.named_modules()}
    found: list[tuple[str, np.ndarray]] = []

    def hook(module, args):
        inp = args[0].detach().to(torch.float64)
        if isinstance(module, nn.Linear):
            inp = inp.reshape(inp.shape[0], -1, inp.shape[-1]).mean(dim=1)
        else:
            inp = inp.flatten(2).mean(dim=2)
        found.append((names[module], inp.numpy()))

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = model.eval()(torch.as_tensor(x, dtype=torch.float32))
    finally:
        for h in handles:
            h.remove()
    return found, out.detach().to(torch.float64).numpy()


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def invoke(args: Sequence[object], env: dict[str, str] | None = None):
    """Run ``nrc ARGS`` in-process; return the click ``Result`` (stdout and stderr apart)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def analyze_json(checkpoint: Path, data: Path, *extra: object) -> dict:
    """``nrc analyze CHECKPOINT --data DATA --format json EXTRA``; exit 0; parsed stdout."""
    result = invoke(["analyze", checkpoint, "--data", data, "--format", "json", *extra])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def error_line(result) -> str:
    """Check the exit-code-2 contract (docs/analyzing.md, "Exit codes") and return the ``error:`` line.

    Exit 2, nothing on stdout, exactly one ``error: …`` line on stderr, optionally followed by
    one ``hint: …`` line, and no traceback.
    """
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    err = result.stderr
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Hooks left behind
# ------------------------------------------------------------------------------------------------
# A forward hook holds what it reports to (a Capture, and through its callback a monitor), so a
# hook left on a model the test still holds keeps that object alive; and the hook keeps feeding
# it when the model runs.


def assert_collected(ref: weakref.ref, what: str) -> None:
    """The object behind ``ref`` is garbage once collected: no hook on a live model holds it."""
    gc.collect()
    assert ref() is None, f"{what} is still alive after its last reference went: a hook left?"


def assert_fed_nothing(monitor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Outside ``with monitor:`` the model's forward pass captures nothing for ``monitor``.

    ``monitor`` has run before (its forward order is known). The model runs on ``x``; ``update(y)`` then finds no features, and the monitor's samples,
    forward order and state are as they were.
    """
    before = monitor.n_samples, monitor.order, monitor.state_dict()
    with torch.no_grad():
        model(x)
    with pytest.raises(DataError, match="no captured features"):
        monitor.update(y)
    n, order, state = monitor.n_samples, monitor.order, monitor.state_dict()
    assert (n, order) == before[:2]
    assert state.keys() == before[2].keys()
    assert all(torch.equal(state[k], before[2][k]) for k in state)


def survivors(call: Callable[[], object], *kinds: type) -> list[str]:
    """The objects of exactly the types ``kinds`` that ``call()`` made and left alive (after a
    collection). Exact types: ``isinstance`` would ask every live object its ``__class__``."""
    gc.collect()
    before = [o for o in gc.get_objects() if type(o) in kinds]
    call()
    gc.collect()
    return [
        type(o).__name__
        for o in gc.get_objects()
        if type(o) in kinds and not any(o is b for b in before)
    ]


# ------------------------------------------------------------------------------------------------
# Dense float64 reference of docs/metrics.md
# ------------------------------------------------------------------------------------------------

PROBE_RCOND = 1e-3  # singular values below 1e-3 of the largest are ignored by the probe


def _div(num: float, den: float) -> float | None:
    return None if den == 0 else float(num / den)


def _moments(z: np.ndarray, y: np.ndarray):
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(z), -1)
    zc = z - z.mean(axis=0)
    yc = y - y.mean(axis=0)
    n = len(z)
    return z, y, zc, yc, zc.T @ zc / n, yc.T @ yc / n, zc.T @ yc / n


def _eig_desc(sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, vec = np.linalg.eigh(sym)
    return np.clip(lam[::-1], 0.0, None), vec[:, ::-1]


def dense_input_basis(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, s): input-subspace basis of a weight (columns) and its singular values."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 2:
        _, s, vt = np.linalg.svd(w, full_matrices=False)
        return vt.T, s
    wt = np.swapaxes(w, 0, 1).reshape(w.shape[1], -1)
    u, s, _ = np.linalg.svd(wt, full_matrices=False)
    return u, s


def dense_probe_mse(z: np.ndarray, y: np.ndarray) -> float:
    """Mean squared residual of the affine least-squares fit of y from z (rcond 1e-3)."""
    _, _, zc, yc, *_ = _moments(z, y)
    coef, *_ = np.linalg.lstsq(zc, yc, rcond=PROBE_RCOND)
    resid = yc - zc @ coef
    return float(np.mean(resid * resid))


def dense_layer(
    z: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None,
    rank: int,
    model_mse: float | None = None,
    *,
    groups: int = 1,
) -> dict:
    """Every numeric per-layer column of docs/metrics.md from the full feature matrix ``z`` (N×p)."""
    z, y, _, _, sz, sy, szy = _moments(z, y)
    p = z.shape[1]
    k = min(rank, p)
    lam, vec = _eig_desc(sz)
    vk = vec[:, :k]
    fro_z = np.linalg.norm(sz, "fro")
    fro_y = np.linalg.norm(sy, "fro")
    out: dict = {"in_dim": p, "rank": k}
    out["nrc1_noise"] = _div(lam[k:].sum(), lam.sum())
    out["nrc2_cka"] = _div(np.linalg.norm(szy, "fro") ** 2, fro_z * fro_y)
    out["nrc2_cka_signal"] = _div(
        np.linalg.norm(vk.T @ szy, "fro") ** 2, math.sqrt(float((lam[:k] ** 2).sum())) * fro_y
    )
    if weight is None or groups != 1:
        out["nrc3_alignment"] = None
        out["stable_rank_w"] = None
    else:
        basis, _ = dense_input_basis(weight)
        m = min(k, basis.shape[1])
        cosines = np.linalg.svd(vk[:, :m].T @ basis[:, :m], compute_uv=False)
        out["nrc3_alignment"] = float(np.mean(cosines)) if lam.sum() > 0 else None
        w = np.asarray(weight, dtype=np.float64)
        w2 = w if w.ndim == 2 else np.swapaxes(w, 0, 1).reshape(w.shape[1], -1)
        out["stable_rank_w"] = _div(np.linalg.norm(w2, "fro") ** 2, np.linalg.norm(w2, 2) ** 2)
    probe = dense_probe_mse(z, y)
    out["nrc4_probe_mse"] = probe
    out["nrc4_ratio"] = None if model_mse is None else _div(probe, model_mse)
    out["stable_rank_h"] = _div(fro_z**2, np.linalg.norm(sz, 2) ** 2)
    return out


def dense_target_fields(y: np.ndarray) -> dict:
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    yc = y - y.mean(axis=0)
    sy = yc.T @ yc / len(y)
    mu = np.clip(np.linalg.eigvalsh(sy)[::-1], 0, None)
    total = mu.sum()
    eff = None
    if total > 0:
        eff = int(np.argmax(np.cumsum(mu) >= 0.999 * total)) + 1
    return {
        "stable_rank_y": _div(np.linalg.norm(sy, "fro") ** 2, np.linalg.norm(sy, 2) ** 2),
        "target_effective_rank": eff,
    }


def _nrc3_objective(a_hat: np.ndarray, root: np.ndarray, gamma: float) -> float:
    d = root - math.sqrt(max(gamma, 0.0)) * np.eye(len(root))
    dn = np.linalg.norm(d, "fro")
    if dn == 0:
        return math.inf
    return float(np.linalg.norm(a_hat - d / dn, "fro") ** 2)


def dense_nrc3_last(w: np.ndarray, y: np.ndarray) -> float | None:
    """min over γ ∈ [0, μ_t] of the full-matrix NRC3 objective, by nested grid search."""
    w = np.asarray(w, dtype=np.float64)
    *_, sy, _ = _moments(np.zeros((len(y), 1)), y)
    wwt = w @ w.T
    if np.linalg.norm(wwt) == 0:
        return None
    a_hat = wwt / np.linalg.norm(wwt, "fro")
    mu, q = np.linalg.eigh(sy)
    mu = np.clip(mu, 0, None)
    root = q @ np.diag(np.sqrt(mu)) @ q.T
    lo, hi = 0.0, float(mu.min())
    best = math.inf
    for _ in range(4):
        grid = np.linspace(lo, hi, 801) if hi > lo else np.array([lo])
        vals = np.array([_nrc3_objective(a_hat, root, g) for g in grid])
        i = int(np.argmin(vals))
        best = min(best, float(vals[i]))
        step = (hi - lo) / 800 if hi > lo else 0.0
        lo, hi = max(grid[i] - step, 0.0), min(grid[i] + step, float(mu.min()))
    return None if not math.isfinite(best) else max(best, 0.0)


def dense_last_layer(z: np.ndarray, y: np.ndarray, w: np.ndarray, rank: int) -> dict:
    """nrc1_last, nrc2_last, nrc3_last (Andriopoulos et al.) from full features of the head."""
    z, y, _, _, sz, _, _ = _moments(z, y)
    w = np.asarray(w, dtype=np.float64)
    k = min(rank, z.shape[1])
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    h = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    _, vec = _eig_desc(sz)
    vk = vec[:, :k]
    proj_w = np.linalg.pinv(w) @ w  # orthogonal projector on the row space of W
    r1 = h - h @ vk @ vk.T
    r2 = h - h @ proj_w
    return {
        "nrc1_last": float(np.mean(np.sum(r1 * r1, axis=1))),
        "nrc2_last": float(np.mean(np.sum(r2 * r2, axis=1))),
        "nrc3_last": dense_nrc3_last(w, y),
    }


def dense_report(model: nn.Module, x: np.ndarray, y: np.ndarray, rank: int | None = None) -> dict:
    """The reference ``{"summary", "layers"}`` of a model (Linear and Conv weight layers)."""
    feats, out = linear_features(model, x)
    y2 = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    t = y2.shape[1]
    k = rank or t
    model_mse = float(np.mean((out.reshape(len(y2), -1) - y2) ** 2))
    modules = dict(model.named_modules())
    layers = []
    for i, (name, z) in enumerate(feats, start=1):
        module = modules[name]
        w = module.weight.detach().to(torch.float64).numpy()
        row = {"layer": name, "index": i, "type": type(module).__name__}
        row.update(dense_layer(z, y2, w, k, model_mse, groups=getattr(module, "groups", 1)))
        layers.append(row)
    summary = {"n_samples": len(y2), "target_dim": t, "rank": k, "model_mse": model_mse}
    summary.update(dense_target_fields(y2))
    name, z = feats[-1]
    head = modules[name]
    if isinstance(head, nn.Linear) and head.out_features == t:
        summary.update(dense_last_layer(z, y2, head.weight.detach().to(torch.float64).numpy(), k))
    return {"summary": summary, "layers": layers}


def assert_close(actual, expected, *, rel: float, abs_: float = 0.0, what: str = "") -> None:
    """Numbers within ``abs_ + rel·|expected|``; None must match None; other values equal."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: {actual!r} != {expected!r}"
        return
    if isinstance(expected, (bool, str)):
        assert actual == expected, f"{what}: {actual!r} != {expected!r}"
        return
    assert abs(actual - expected) <= abs_ + rel * abs(expected), (
        f"{what}: {actual!r} != {expected!r} (rel {rel}, abs {abs_})"
    )


# ------------------------------------------------------------------------------------------------
# The accumulator contract
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccumulatorCase:
    """How to drive one accumulator class through the contract checker.

    Attributes
    ----------
    make : callable() -> accumulator
    update : callable(acc, *batch_tensors)
    result : callable(acc) -> dict of numpy arrays / numbers
        Reads ``acc.compute()``.
    dense : callable(*full_numpy_float64_arrays) -> dict
        The same quantities computed in one shot on the concatenation.
    """

    make: Callable[[], Any]
    update: Callable[..., None]
    result: Callable[[Any], dict]
    dense: Callable[..., dict]


def _relerr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(a - b))
    return diff if scale == 0 else diff / scale


def assert_results_close(got: dict, want: dict, rtol: float, what: str) -> None:
    assert set(got) == set(want), (what, sorted(got), sorted(want))
    for key in want:
        err = _relerr(got[key], want[key])
        assert err <= rtol, f"{what}: '{key}' relative error {err:.3g} > {rtol:g}"


def _stream(case: AccumulatorCase, arrays: Sequence[torch.Tensor], batch: int, lo=0, hi=None):
    acc = case.make()
    hi = arrays[0].shape[0] if hi is None else hi
    for s in range(lo, hi, batch):
        e = min(s + batch, hi)
        case.update(acc, *(a[s:e] for a in arrays))
    return acc


def check_accumulator_contract(
    case: AccumulatorCase,
    arrays: Sequence[torch.Tensor],
    *,
    rtol: float = 1e-12,
    seed: int = 0,
    n_splits: int = 4,
) -> None:
    """Assert the accumulator contract on the given data.

    * streamed with batch sizes 1, 7, 1024 == dense one-shot on the concatenation (``rtol``,
      norm-wise per quantity);
    * any split into shards, each streamed on its own and merged (left to right and in
      reverse), == one stream;
    * inputs are never modified (values, dtype, shape);
    * ``compute()`` is pure: calling it twice, or writing into what it returned, changes nothing;
    * ``merge`` leaves its argument unchanged and shares no state with it, and merging an empty
      accumulator (either way) is a no-op;
    * ``reset()`` brings back the empty state (``compute`` raises ``ValueError`` as on a fresh
      one), and the accumulator can be reused.
    """
    n = arrays[0].shape[0]
    originals = [a.clone() for a in arrays]
    want = case.dense(*(a.to(torch.float64).numpy() for a in arrays))

    for batch in (1, 7, 1024):
        acc = _stream(case, arrays, batch)
        assert_results_close(case.result(acc), want, rtol, f"batch size {batch}")

    rng = np.random.default_rng(seed)
    whole = case.result(_stream(case, arrays, 64))
    for split in range(n_splits):
        n_shards = int(rng.integers(2, 6))
        cuts = np.sort(rng.choice(np.arange(1, n), size=n_shards - 1, replace=False))
        bounds = [0, *cuts.tolist(), n]
        shards = [
            _stream(case, arrays, int(rng.integers(1, 200)), lo, hi)
            for lo, hi in itertools.pairwise(bounds)
        ]
        for order in (shards, shards[::-1]):
            snapshot = [case.result(s) for s in order[1:]]
            merged = case.make()
            for shard in order:
                merged.merge(shard)
            assert_results_close(case.result(merged), whole, rtol, f"split {split} merged")
            for shard, before in zip(order[1:], snapshot, strict=True):
                assert_results_close(case.result(shard), before, 0.0, "merge changed its argument")

    acc = _stream(case, arrays, 100)
    _poison(acc.compute())  # writing into what compute() returned must not reach the state
    assert_results_close(case.result(acc), case.result(_stream(case, arrays, 100)), 0.0, "pure")
    acc.merge(case.make())
    assert_results_close(case.result(acc), want, rtol, "merge of an empty accumulator")
    empty = case.make()
    empty.merge(acc)
    assert_results_close(case.result(empty), want, rtol, "merge into an empty accumulator")
    before = case.result(acc)
    case.update(empty, *(a[:50] for a in arrays))  # must not write through to acc's state
    assert_results_close(case.result(acc), before, 0.0, "merge shared state with its argument")

    # The declared state: a flat dict of tensors that survives torch.save (weights only) and
    # safetensors, and loads into a fresh accumulator with the same result, bit for bit.
    import io

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    state = acc.state_dict()
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    for loaded in (torch.load(buffer, weights_only=True), st_load(st_save(state))):
        fresh = case.make()
        fresh.load_state_dict(loaded)
        assert_results_close(case.result(fresh), case.result(acc), 0.0, "state_dict round trip")

    # Shift-based sums: re-expressed about one common shift, shards add up to the merge
    # (what a data-parallel all_reduce(SUM) does).
    halves = [_stream(case, arrays, 37, 0, n // 2), _stream(case, arrays, 53, n // 2, n)]
    if hasattr(halves[0], "reshift_"):
        if hasattr(halves[0], "cz"):
            cz, cy = halves[0].cz.clone(), halves[0].cy.clone()
            for h in halves:
                h.reshift_(cz, cy)
        else:  # per-class sums: one shift per class, over the label values of either half
            labels = torch.unique(torch.cat([h.labels for h in halves]))
            shift = torch.zeros(len(labels), halves[0].width, dtype=torch.float64)
            for h in reversed(halves):  # the first half's shift where it saw the class
                seen = h.counts > 0
                shift[torch.searchsorted(labels, h.labels[seen])] = h.shift[seen]
            for h in halves:
                h.reshift_(shift, labels)
        summed = case.make()
        summed.load_state_dict(halves[0].state_dict())
        for name, value in halves[1].state_dict().items():
            if name not in ("cz", "cy", "shift", "labels"):
                summed.load_state_dict({**summed.state_dict(), name: getattr(summed, name) + value})
        assert_results_close(case.result(summed), whole, rtol, "reshifted sum")

    acc.reset()
    with pytest.raises(ValueError):
        acc.compute()
    for s in range(0, n, 333):
        case.update(acc, *(a[s : s + 333] for a in arrays))
    assert_results_close(case.result(acc), want, rtol, "after reset")

    for a, before in zip(arrays, originals, strict=True):
        assert a.dtype == before.dtype and a.shape == before.shape
        assert torch.equal(a, before), "an update modified its input"


def _poison(value: Any) -> None:
    """Overwrite, in place, every tensor in a ``compute()`` result (a tensor or a dataclass)."""
    if isinstance(value, torch.Tensor):
        value.fill_(1e6)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _poison(getattr(value, name))


def tensor_results(**named: Any) -> dict:
    """Turn tensors/numbers into independent numpy arrays for :func:`assert_results_close`."""
    out = {}
    for k, v in named.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().cpu().numpy().copy()
        else:
            out[k] = np.asarray(v, dtype=np.float64)
    return out


# -- shared by the command-line tests ------------------------------------------------------

# A conv net with token pooling, written to a file and named with --arch (analyze, torchrun).
CNN_FACTORY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv1 = nn.Conv2d(2, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, (3, 2), groups=2)
        self.mix = nn.Conv1d(channels, 3, 2)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (b, c, h, w)
        h = torch.tanh(self.mix(h.flatten(2)))  # (b, 3, L)
        return self.fc(h.transpose(1, 2)).mean(dim=1)  # Linear on (b, L, 3): token pooling


def make(**kwargs):
    return Net(**kwargs)
"""


AUDIT_IN, AUDIT_OUT = 6, 2


def make_audit_zoo(folder: Path, n: int = 6) -> list[Path]:
    """``n`` tiny MLPs (6 -> 16 -> 16 -> 2): a weight-decay sweep over two seeds, as metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        wd, seed = (0.0, 1e-4, 1e-3)[(i // 2) % 3], i % 2
        meta = {"weight_decay": repr(wd), "seed": str(seed), "run": str(i)}
        model = mlp((AUDIT_IN, 16, 16, AUDIT_OUT), seed=i)
        paths.append(save_model(folder / f"m{i:02d}.safetensors", model, meta))
    return paths


def make_audit_data(path: Path, n: int = 96) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, AUDIT_IN)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0]), np.sin(x[:, 1])], axis=1).astype(np.float32)
    return save_npz(path, x=x, y=y)


def dense_moments(z: np.ndarray, y: np.ndarray) -> dict:
    """The moments a :class:`CrossMoments` holds, computed densely in float64."""
    n = len(z)
    zc, yc = z - z.mean(axis=0), y - y.mean(axis=0)
    return {
        "n": np.asarray(n, dtype=np.float64),
        "mean_z": z.mean(axis=0),
        "mean_y": y.mean(axis=0),
        "cov_z": zc.T @ zc / n,
        "cov_zy": zc.T @ yc / n,
        "cov_y": yc.T @ yc / n,
    }


def moments_result(acc: CrossMoments) -> dict:
    """``acc.compute()`` as arrays comparable with :func:`dense_moments`."""
    m = acc.compute()
    return tensor_results(
        n=m.n, mean_z=m.mean_z, mean_y=m.mean_y, cov_z=m.cov_z, cov_zy=m.cov_zy, cov_y=m.cov_y
    )


# A small file system for disk-full cases (root only; skipped elsewhere).
@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# A model factory file for --arch whose module's train()/eval() switch raises: a genuine,
# non-nrc exception (exit code 3, and --debug's traceback).
BROKEN_FACTORY = '''
from torch import nn


class Broken(nn.Module):
    """A module whose train()/eval() switch is broken: a genuine, non-nrc exception."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def train(self, mode=True):
        raise RuntimeError("mode switch failed")

    def forward(self, x):
        return self.net(x)


def make():
    return Broken()
'''
