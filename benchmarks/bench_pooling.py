"""What float64 pooling costs: token and spatial means in float64 against float32, per batch.

``nrc`` pools every conv input over its spatial positions and every (batch, T, p) Linear input
over its tokens, in float64 (``nrc_cli.capture.pool``). This script takes the weight-layer
inputs of one batch of two models,

* ``conv``: the benchmark ResNet-18 (base width 16) on 1024 images of 3x32x32, and
* ``tokens``: a 4-block MLP-mixer-like stack on 64 sequences of 128 tokens of width 384
  (every Linear sees a (64, 128, 384) or (64, 128, 1536) input),

and times, summed over the layers, the forward pass of the batch and three ways to pool:
``float32`` (a float32 mean, what nrc did before), ``nrc`` (float64, converted a cache-sized
block of samples at a time) and ``float64 at once`` (the whole activation converted first). It
also reports how far the float32 means are from the float64 ones (largest deviation of a
pooled feature, relative to the layer's largest pooled feature). Pooling runs on one thread,
as in ``nrc``; the forward pass uses torch's default threads.

    python benchmarks/bench_pooling.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models

from nrc_cli.capture import pool


class TokenBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


def token_model(width: int = 384, depth: int = 4) -> nn.Module:
    return nn.Sequential(*[TokenBlock(width) for _ in range(depth)], nn.Linear(width, 4))


def float32_mean(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    dims = (
        tuple(range(1, inp.ndim - 1))
        if isinstance(module, nn.Linear)
        else tuple(range(2, inp.ndim))
    )
    return inp.mean(dim=dims).to(torch.float64)


def float64_at_once(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    dims = (
        tuple(range(1, inp.ndim - 1))
        if isinstance(module, nn.Linear)
        else tuple(range(2, inp.ndim))
    )
    return inp.to(torch.float64).mean(dim=dims)


def inputs_of(model: nn.Module, x: torch.Tensor) -> tuple[list, float]:
    """(module, input) of every pooled weight layer, and the forward time."""
    seen: list = []

    def hook(module, args):
        if args[0].ndim > 2:
            seen.append((module, args[0].detach()))

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    with torch.inference_mode():
        model(x)
        for h in handles:
            h.remove()
        seen_once = list(seen)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return seen_once, statistics.median(times)


def time_pooling(layers: list, fn, repeats: int) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for module, inp in layers:
                fn(module, inp)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                for module, inp in layers:
                    fn(module, inp)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {
        "conv": (models.resnet18(width=16, num_outputs=4).eval(), torch.randn(1024, 3, 32, 32)),
        "tokens": (token_model().eval(), torch.randn(64, 128, 384)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads for the forward pass")
    print()
    print(
        "| model | pooled layers | forward s | float32 mean s | nrc float64 s | "
        "float64 at once s | nrc / forward | float32 rel. error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (model, x) in cases.items():
        layers, forward = inputs_of(model, x)
        f32 = time_pooling(layers, float32_mean, args.repeats)
        f64 = time_pooling(layers, pool, args.repeats)
        naive = time_pooling(layers, float64_at_once, args.repeats)
        err = 0.0
        with torch.inference_mode():
            for module, inp in layers:
                a, b = float32_mean(module, inp), pool(module, inp)
                err = max(err, float((a - b).abs().max() / b.abs().max()))
        print(
            f"| {name} | {len(layers)} | {forward:.3f} | {f32:.4f} | {f64:.4f} | {naive:.4f} | "
            f"{f64 / forward:.1%} | {err:.1e} |"
        )


if __name__ == "__main__":
    main()
