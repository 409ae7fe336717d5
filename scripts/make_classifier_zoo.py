"""Regenerate the sample classifier zoo shipped in ``sample_checkpoints/``.

Run ``python scripts/make_classifier_zoo.py`` from the repository root. Everything is seeded,
single-threaded and run with deterministic algorithms, so a rerun on the same machine writes
byte-identical files.

What it writes, and why:

``sample_checkpoints/blobs.npz``
    A synthetic classification set (uncompressed ``np.savez``): ``x`` (1500, 10) float32 and
    ``y`` (1500,) int64 labels 0..4, 300 samples per class. Class c is a standard Gaussian
    around a centre at distance 4 from the origin (fixed random directions); the inputs then
    pass through a fixed random rotation and a smooth nonlinearity (``x ← x + 0.5·sin(x)``),
    so the classes overlap a little.

``sample_checkpoints/classifiers/wd{0,1e-3,5e-3,1e-2}_seed{0,1}.safetensors``
    A four-layer ReLU MLP (10 -> 32 -> 32 -> 32 -> 5, state-dict keys ``net.0.weight`` ...
    ``net.6.bias``) trained with cross-entropy, full-batch SGD with momentum and cosine
    learning-rate decay, with four weight-decay values and two seeds. Weight decay drives
    Deep Neural Collapse: the within-class variability of the features shrinks against the
    between-class one from layer to layer, and the more so the stronger the decay.

Every checkpoint carries string metadata: ``weight_decay``, ``epochs``, ``seed``, ``lr``,
``optimizer``, ``loss``, ``train_accuracy``, a few training details and ``nrc.arch``, the JSON
description of the architecture. At the end, the per-layer NC1 (tr Σ_W / tr Σ_B) of every
checkpoint is printed from a dense float64 numpy computation (independent of ``nrc_cli``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from make_samples import _canonical_safetensors, wd_tag
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "sample_checkpoints"
ZOO_DIR = OUT_DIR / "classifiers"
DATA_NAME = "blobs.npz"

# Data set.
DATA_SEED = 4321
PER_CLASS = 300
N_CLASSES = 5
IN_DIM = 10
SEPARATION = 4.0

# Model and training.
WIDTH = 32
N_LINEAR = 4
LR = 0.05
MOMENTUM = 0.9
STEPS = 1500
WEIGHT_DECAYS = (0.0, 1e-3, 5e-3, 1e-2)
SEEDS = (0, 1)
ARCH = {"type": "mlp", "activation": "relu", "norm": None}


def _setup_torch() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)


def make_data(seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` (N, 10) float32 and ``y`` (N,) int64 labels, classes in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLASSES, IN_DIM))
    centres *= SEPARATION / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    x = centres[y] + rng.standard_normal((len(y), IN_DIM))
    rotation, _ = np.linalg.qr(rng.standard_normal((IN_DIM, IN_DIM)))
    x = x @ rotation
    x = x + 0.5 * np.sin(x)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order].astype(np.int64)


class MLP(nn.Module):
    """Four Linear layers with ReLU in between, held in ``self.net``."""

    def __init__(self) -> None:
        super().__init__()
        dims = [IN_DIM] + [WIDTH] * (N_LINEAR - 1) + [N_CLASSES]
        layers: list[nn.Module] = []
        for i in range(N_LINEAR):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < N_LINEAR - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(x: np.ndarray, y: np.ndarray, weight_decay: float, seed: int) -> tuple[MLP, float]:
    """Full-batch SGD on cross-entropy; returns the model and its training accuracy."""
    torch.manual_seed(seed)
    model = MLP()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(STEPS):
        loss = loss_fn(model(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        accuracy = (model(xt).argmax(dim=1) == yt).double().mean().item()
    return model, accuracy


def save_checkpoint(
    model: MLP, path: Path, *, weight_decay: float, seed: int, accuracy: float
) -> None:
    metadata = {
        "weight_decay": repr(float(weight_decay)),
        "epochs": str(STEPS),
        "seed": str(seed),
        "lr": repr(LR),
        "optimizer": "sgd",
        "momentum": repr(MOMENTUM),
        "lr_schedule": "cosine",
        "loss": "cross_entropy",
        "batch_size": str(PER_CLASS * N_CLASSES),
        "init": "pytorch default",
        "train_data": DATA_NAME,
        "train_accuracy": f"{accuracy:.6g}",
        "nrc.arch": json.dumps(ARCH),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_canonical_safetensors(save(state, metadata=metadata)))


def dense_nc1_trace(model_path: Path, x: np.ndarray, y: np.ndarray) -> list[float]:
    """tr Σ_W / tr Σ_B of the input of every Linear layer, densely in float64."""
    with safe_open(str(model_path), framework="np") as f:
        tensors = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    z = x.astype(np.float64)
    out = []
    for i in range(N_LINEAR):
        classes = np.unique(y)
        means = np.stack([z[y == c].mean(axis=0) for c in classes])
        within = z - means[np.searchsorted(classes, y)]
        between = means - z.mean(axis=0)
        out.append(float((within**2).sum() / len(z) / ((between**2).sum() / len(classes))))
        w, b = tensors[f"net.{2 * i}.weight"], tensors[f"net.{2 * i}.bias"]
        z = z @ w.T + b
        if i < N_LINEAR - 1:
            z = np.maximum(z, 0.0)
    return out


def main() -> None:
    _setup_torch()
    t0 = time.perf_counter()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    data_path = OUT_DIR / DATA_NAME
    x, y = make_data()
    np.savez(data_path, x=x, y=y)
    print(f"wrote {data_path.relative_to(REPO_ROOT)}  x{x.shape} y{y.shape}")
    print(f"\n{'checkpoint':<24}{'train acc':>10}  nc1_trace by layer")
    for wd in WEIGHT_DECAYS:
        for seed in SEEDS:
            model, accuracy = train(x, y, wd, seed)
            path = ZOO_DIR / f"{wd_tag(wd)}_seed{seed}.safetensors"
            save_checkpoint(model, path, weight_decay=wd, seed=seed, accuracy=accuracy)
            nc1 = "  ".join(f"{v:7.4f}" for v in dense_nc1_trace(path, x, y))
            print(f"{path.name:<24}{accuracy:>10.3f}  {nc1}")
    print(f"\ntotal time: {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
