"""Regenerate the sample data set and checkpoints shipped in ``sample_checkpoints/``.

Run ``python scripts/make_samples.py`` from the repository root (``--only main`` or
``--only zoo`` rebuilds one part). Everything is seeded, single-threaded and run with
deterministic algorithms, so a rerun on the same machine writes byte-identical files.

What it writes, and why:

``sample_checkpoints/lowrank.npz``
    A synthetic regression set with a low-rank target (uncompressed ``np.savez``, float32):
    ``x`` (4000, 20) standard Gaussian inputs and ``y`` (4000, 4) targets
    ``y = A g(x) + 0.01 noise`` with ``g(x) = (tanh(u1.x), sin(u2.x))`` for fixed unit
    vectors ``u1, u2`` and a fixed ``A`` (4 x 2). The target covariance therefore has two
    dominant eigenvalues and two at the noise floor.

``sample_checkpoints/mlp_wd.safetensors`` and ``sample_checkpoints/mlp_nowd.safetensors``
    Two six-layer ReLU MLPs (20 -> 64 -> 64 -> 64 -> 64 -> 64 -> 4, state-dict keys
    ``net.0.weight`` ... ``net.10.bias``) trained identically on that set (full-batch SGD
    with momentum, cosine learning-rate decay), except that the first uses weight decay and
    the second does not. Both fit the data well, but only the weight-decay model shows Deep
    Neural Regression Collapse from its early hidden layers on: its features become
    (numerically) rank <= 4 and line up with the top right singular vectors of the next
    weight matrix, whereas the model without weight decay keeps clearly more energy outside
    the top-4 feature directions and collapses (by the 0.2 threshold) only in later layers.

``sample_checkpoints/zoo/wd{0,1e-4,1e-3,5e-3}_seed{0,1}.safetensors``
    The same MLP trained with four weight-decay values and two seeds (fewer steps), to show
    how collapse grows with weight decay.

Every checkpoint carries string metadata: ``weight_decay``, ``epochs``, ``seed``, ``lr``,
``optimizer``, ``train_mse``, a few training details (``momentum``, ``lr_schedule``,
``batch_size``, ``init``, ``train_data``) and ``nrc.arch``, the JSON description of the
architecture.

At the end, :func:`summarize` recomputes the collapse metrics of the two main models with a
dense float64 numpy computation (independent of ``nrc_cli``) and prints them per layer.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "sample_checkpoints"

# Data set.
DATA_SEED = 1234
N_SAMPLES = 4000
IN_DIM = 20
OUT_DIM = 4
NOISE_STD = 0.01

# Model and training.
WIDTH = 64
N_LINEAR = 6
LR = 0.05
MOMENTUM = 0.9
MAIN_STEPS = 3000
MAIN_SEED = 0
MAIN_WEIGHT_DECAY = 5e-3
ZOO_STEPS = 1500
ZOO_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 5e-3)
ZOO_SEEDS = (0, 1)
ARCH = {"type": "mlp", "activation": "relu", "norm": None}

# Metric.
COLLAPSE_THRESHOLD = 0.2


def _setup_torch() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    # Weight decay drives many weights towards zero; denormal floats would slow training.
    torch.set_flush_denormal(True)


def make_data(seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` (N, 20) and ``y`` (N, 4) as float32; ``y`` has intrinsic rank 2."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((2, IN_DIM))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    a = rng.standard_normal((OUT_DIM, 2))
    x = rng.standard_normal((N_SAMPLES, IN_DIM))
    g = np.stack([np.tanh(x @ u[0]), np.sin(x @ u[1])], axis=1)
    y = g @ a.T + NOISE_STD * rng.standard_normal((N_SAMPLES, OUT_DIM))
    return x.astype(np.float32), y.astype(np.float32)


class MLP(nn.Module):
    """Six Linear layers with ReLU in between, held in ``self.net``."""

    def __init__(self) -> None:
        super().__init__()
        dims = [IN_DIM] + [WIDTH] * (N_LINEAR - 1) + [OUT_DIM]
        layers: list[nn.Module] = []
        for i in range(N_LINEAR):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < N_LINEAR - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        for module in self.net:
            if isinstance(module, nn.Linear):
                # Orthogonal (norm-preserving) init keeps the untrained features high-rank,
                # so any collapse seen later is produced by training.
                nn.init.orthogonal_(module.weight, gain=2**0.5)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(
    x: np.ndarray, y: np.ndarray, weight_decay: float, seed: int, steps: int
) -> tuple[MLP, float]:
    """Full-batch SGD with momentum and cosine learning-rate decay; returns model, train MSE."""
    torch.manual_seed(seed)
    model = MLP()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        loss = torch.mean((model(xt) - yt) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        mse = torch.mean((model(xt) - yt) ** 2).item()
    return model, mse


def _canonical_safetensors(data: bytes) -> bytes:
    """Sort the ``__metadata__`` keys of a serialized safetensors file.

    safetensors writes metadata in hash-map order, which changes from process to process;
    reordering keys keeps the header length, so only the JSON text is rewritten.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__")
    if meta is not None:
        header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:
        raise RuntimeError("canonical safetensors header is longer than the original")
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


def save_checkpoint(
    model: MLP, path: Path, *, weight_decay: float, seed: int, steps: int, mse: float
) -> None:
    metadata = {
        "weight_decay": repr(float(weight_decay)),
        "epochs": str(steps),
        "seed": str(seed),
        "lr": repr(LR),
        "optimizer": "sgd",
        "momentum": repr(MOMENTUM),
        "lr_schedule": "cosine",
        "batch_size": str(N_SAMPLES),
        "init": "orthogonal(gain=sqrt(2)), zero bias",
        "train_data": "lowrank.npz",
        "train_mse": f"{mse:.6g}",
        "nrc.arch": json.dumps(ARCH),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_canonical_safetensors(save(state, metadata=metadata)))


def wd_tag(weight_decay: float) -> str:
    """``0`` -> ``wd0``, ``1e-4`` -> ``wd1e-4``, ``5e-3`` -> ``wd5e-3``."""
    if weight_decay == 0:
        return "wd0"
    mantissa, exponent = f"{weight_decay:.0e}".split("e")
    return f"wd{mantissa}e{int(exponent)}"


def make_main(x: np.ndarray, y: np.ndarray) -> None:
    for name, wd in (("mlp_wd", MAIN_WEIGHT_DECAY), ("mlp_nowd", 0.0)):
        t0 = time.perf_counter()
        model, mse = train(x, y, wd, MAIN_SEED, MAIN_STEPS)
        path = OUT_DIR / f"{name}.safetensors"
        save_checkpoint(model, path, weight_decay=wd, seed=MAIN_SEED, steps=MAIN_STEPS, mse=mse)
        dt = time.perf_counter() - t0
        print(f"wrote {path.relative_to(REPO_ROOT)}  train_mse={mse:.3g}  ({dt:.1f}s)")


def make_zoo(x: np.ndarray, y: np.ndarray) -> None:
    for wd in ZOO_WEIGHT_DECAYS:
        for seed in ZOO_SEEDS:
            t0 = time.perf_counter()
            model, mse = train(x, y, wd, seed, ZOO_STEPS)
            path = OUT_DIR / "zoo" / f"{wd_tag(wd)}_seed{seed}.safetensors"
            save_checkpoint(model, path, weight_decay=wd, seed=seed, steps=ZOO_STEPS, mse=mse)
            dt = time.perf_counter() - t0
            print(f"wrote {path.relative_to(REPO_ROOT)}  train_mse={mse:.3g}  ({dt:.1f}s)")


def layer_metrics(model_path: Path, data_path: Path, ks: tuple[int, ...] = (4, 2)) -> list[dict]:
    """Dense float64 collapse metrics for every Linear layer of a saved MLP.

    For layer l, ``Z_l`` is the input of that layer over all samples (``x`` for the first).
    With ``lambda`` the eigenvalues (descending) of the centred covariance of ``Z_l`` (1/N),
    ``nrc1_noise = sum_{j>k} lambda_j / sum_j lambda_j`` and ``nrc3_alignment`` is the mean
    singular value of ``V_k^T B_k`` (top-k eigenvectors of the covariance against the top-k
    right singular vectors of the layer's weight).
    """
    with safe_open(str(model_path), framework="np") as f:
        tensors = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    names = sorted(
        {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".weight")},
        key=lambda s: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)],
    )
    z = np.load(data_path)["x"].astype(np.float64)
    rows = []
    for i, name in enumerate(names):
        w, b = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
        zc = z - z.mean(axis=0)
        lam, vecs = np.linalg.eigh(zc.T @ zc / len(z))
        lam, vecs = lam[::-1], vecs[:, ::-1]
        _, _, bt = np.linalg.svd(w)
        row = {"layer": name}
        for k in ks:
            row[f"noise{k}"] = float(lam[k:].sum() / lam.sum())
            overlap = vecs[:, :k].T @ bt[:k].T
            row[f"align{k}"] = float(np.linalg.svd(overlap, compute_uv=False).mean())
        rows.append(row)
        z = z @ w.T + b
        if i < len(names) - 1:
            z = np.maximum(z, 0.0)
    return rows


def first_collapsed(noise: list[float], threshold: float = COLLAPSE_THRESHOLD) -> int | None:
    """Smallest index from which every layer has ``nrc1_noise <= threshold`` (None if none)."""
    first = None
    for i in range(len(noise) - 1, -1, -1):
        if noise[i] > threshold:
            break
        first = i
    return first


def summarize(model_path: Path, data_path: Path) -> list[dict]:
    """Print the per-layer collapse table of one checkpoint; return its rows."""
    rows = layer_metrics(model_path, data_path)
    with safe_open(str(model_path), framework="np") as f:
        meta = f.metadata()
    print(
        f"\n{Path(model_path).name}  (weight_decay={meta['weight_decay']}, "
        f"train_mse={meta['train_mse']})"
    )
    print(f"{'layer':<8}{'noise k=4':>11}{'noise k=2':>11}{'align k=4':>11}{'align k=2':>11}")
    for r in rows:
        print(
            f"{r['layer']:<8}{r['noise4']:>11.4f}{r['noise2']:>11.4f}"
            f"{r['align4']:>11.3f}{r['align2']:>11.3f}"
        )
    for k in (4, 2):
        i = first_collapsed([r[f"noise{k}"] for r in rows])
        where = "none" if i is None else f"{rows[i]['layer']} (index {i})"
        print(f"first collapsed layer, k={k}: {where}")
    return rows


def summarize_zoo(data_path: Path) -> None:
    """Print the last two layers' metrics for every zoo checkpoint."""
    print("\nzoo: metrics of the inputs of the last two Linear layers")
    print(f"{'file':<26}{'layer':<8}{'noise k=4':>11}{'align k=4':>11}{'align k=2':>11}")
    paths = [
        OUT_DIR / "zoo" / f"{wd_tag(wd)}_seed{seed}.safetensors"
        for wd in ZOO_WEIGHT_DECAYS
        for seed in ZOO_SEEDS
    ]
    for path in paths:
        for r in layer_metrics(path, data_path)[-2:]:
            print(
                f"{path.name:<26}{r['layer']:<8}{r['noise4']:>11.4f}"
                f"{r['align4']:>11.3f}{r['align2']:>11.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("main", "zoo"), help="rebuild only one part")
    args = parser.parse_args()

    _setup_torch()
    t0 = time.perf_counter()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    data_path = OUT_DIR / "lowrank.npz"
    x, y = make_data()
    np.savez(data_path, x=x, y=y)
    print(f"wrote {data_path.relative_to(REPO_ROOT)}  x{x.shape} y{y.shape}")

    if args.only in (None, "main"):
        make_main(x, y)
    if args.only in (None, "zoo"):
        make_zoo(x, y)

    for name in ("mlp_wd", "mlp_nowd"):
        path = OUT_DIR / f"{name}.safetensors"
        if path.exists():
            summarize(path, data_path)
    if args.only in (None, "zoo"):
        summarize_zoo(data_path)
    print(f"\ntotal time: {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
