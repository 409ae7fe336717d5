"""Benchmark models: plain MLPs and a CIFAR-style ResNet-18 with a width knob.

This file is imported both by the benchmark scripts and by ``nrc`` itself through
``--arch benchmarks/models.py:resnet18 --arch-kwargs '{"width": 16}'``, so it depends on torch
only.

The MLPs keep their layers in an ``nn.Sequential`` called ``net`` (``net.0`` Linear, ``net.1``
ReLU, ``net.2`` Linear, ...), which is the key layout ``nrc`` infers an MLP from, so their
checkpoints need no ``--arch``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear through the given widths (no activation at the end)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least an input and an output width, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp(in_dim: int = 32, width: int = 1024, depth: int = 8, out_dim: int = 4) -> MLP:
    """``depth`` Linear layers: in_dim -> width -> ... -> width -> out_dim."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return MLP([in_dim, *([width] * (depth - 1)), out_dim])


def mlp_dims(dims: Sequence[int]) -> MLP:
    """An MLP through explicit widths, e.g. ``[64, 512, 4096, 512, 4]``."""
    return MLP(list(dims))


class BasicBlock(nn.Module):
    """3x3 conv - BN - ReLU - 3x3 conv - BN, plus identity or 1x1-conv/BN shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool) for 32x32 inputs, with a regression head.

    Stages have ``width``, 2x, 4x and 8x channels (``width=64`` is the standard ResNet-18),
    strides 1, 2, 2, 2; global average pooling; ``Linear(8*width, num_outputs)``.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        num_outputs: int = 4,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes = width
        stages = []
        in_planes = width
        for i, n_blocks in enumerate(blocks):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n_blocks):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
            planes *= 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(width: int = 64, num_outputs: int = 4, in_channels: int = 3) -> ResNet:
    """ResNet-18 (BasicBlocks [2, 2, 2, 2]) for 32x32 inputs; ``width`` is the stem width."""
    return ResNet((2, 2, 2, 2), width=width, num_outputs=num_outputs, in_channels=in_channels)


FACTORIES = {"mlp": mlp, "mlp_dims": mlp_dims, "resnet18": resnet18}


def build(factory: str, kwargs: dict) -> nn.Module:
    """Build a model by factory name (a key of :data:`FACTORIES`) with keyword arguments."""
    return FACTORIES[factory](**kwargs)
