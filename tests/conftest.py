"""Fixtures shared by the test modules: tiny models and data sets written to ``tmp_path``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import Wrapped, int_inputs, mlp, save_model, save_npz
from torch import nn

TESTS_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = TESTS_DIR / "reference_cases"
SAMPLES_DIR = TESTS_DIR.parent / "sample_checkpoints"


@dataclass
class TinyCase:
    """A tiny MLP saved as ``model.safetensors`` next to its ``data.npz``."""

    model: nn.Module
    x: np.ndarray
    y: np.ndarray
    checkpoint: Path
    data: Path


def make_tiny_case(
    folder: Path,
    *,
    dims=(6, 8, 8, 8, 2),
    n: int = 300,
    seed: int = 0,
    norm: str | None = None,
    activation: type[nn.Module] = nn.ReLU,
    dyadic: bool = True,
    metadata: dict[str, str] | None = None,
    prefix: str | None = "net",
) -> TinyCase:
    """Write a tiny MLP and a data set for it into ``folder``.

    With ``dyadic=True`` (and no norm) the inputs are small integers and the weights multiples
    of 1/8, so every feature is exact in float32 whatever the batch size. The targets are a
    smooth function of the inputs plus noise.
    """
    folder.mkdir(parents=True, exist_ok=True)
    body = mlp(dims, norm=norm, activation=activation, seed=seed, dyadic=dyadic)
    model = Wrapped(body, prefix) if prefix else body
    rng = np.random.default_rng(seed + 100)
    if dyadic:
        x = int_inputs(n, dims[0], seed=seed)
    else:
        x = rng.standard_normal((n, dims[0])).astype(np.float32)
    mix = rng.standard_normal((dims[0], dims[-1]))
    y = np.tanh(x.astype(np.float64) @ mix / 3) + 0.05 * rng.standard_normal((n, dims[-1]))
    y = y.astype(np.float32)
    ckpt = save_model(folder / "model.safetensors", model, metadata)
    data = save_npz(folder / "data.npz", x=x, y=y)
    return TinyCase(model, x, y, ckpt, data)


@pytest.fixture
def tiny(tmp_path: Path) -> TinyCase:
    """A 4-Linear ReLU MLP (6 -> 8 -> 8 -> 8 -> 2) with exact float32 features, N = 300."""
    return make_tiny_case(tmp_path / "tiny")
