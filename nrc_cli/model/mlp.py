"""Plain MLPs rebuilt from their tensors alone (docs/analyzing.md, routes 2 and 3).

The rules: 2-D ``<path>.weight`` tensors, in natural-sort order of ``<path>``, form a chain of
Linear layers whose shapes must chain. A module with 1-D ``weight``/``bias`` of the previous
Linear's width is a LayerNorm (a BatchNorm1d when it also has running statistics) following that
Linear. Hidden blocks are Linear -> norm -> activation. Module paths are kept exactly as in the
keys, so layer names match what the user's own code calls them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from nrc_cli.errors import CheckpointError, ConfigError
from nrc_cli.io.checkpoint import Checkpoint

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "identity": nn.Identity,
}
NORMS = (None, "layernorm", "batchnorm")
_ARCH_HINT = "pass --arch MODULE:CALLABLE (or --arch file.py:CALLABLE) to build the model yourself"


def natural_key(text: str) -> list:
    """Sort key that orders digit runs by value, so ``net.10`` follows ``net.9``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class MlpBlock:
    """One Linear layer and the norm that follows it (if any)."""

    linear: str  # module path, e.g. "net.0"
    in_features: int
    out_features: int
    bias: bool
    norm: str | None = None  # module path of the norm
    norm_kind: str | None = None  # "layernorm" or "batchnorm"
    norm_affine: bool = True
    norm_bias: bool = True


@dataclass(frozen=True)
class MlpSpec:
    """An MLP described by data only: its blocks and activation."""

    blocks: tuple[MlpBlock, ...]
    activation: str

    @property
    def in_features(self) -> int:
        return self.blocks[0].in_features

    @property
    def out_features(self) -> int:
        return self.blocks[-1].out_features


def infer_mlp_spec(ckpt: Checkpoint, activation: str = "relu") -> MlpSpec:
    """Infer an MLP from the checkpoint's tensor names and shapes.

    Raises
    ------
    CheckpointError
        When the tensors do not describe a plain MLP; the message says which tensor broke the
        rules and the hint names ``--arch``.
    """
    if activation not in ACTIVATIONS:
        # Only --activation can get here (metadata is checked in spec_from_metadata): a usage error.
        raise ConfigError(
            f"--activation: unknown activation '{activation}', expected one of "
            f"{', '.join(ACTIVATIONS)}"
        )
    where = str(ckpt.path)
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, info in ckpt.tensors.items():
        path, _, leaf = name.rpartition(".")
        if not path or "" in path.split("."):
            raise CheckpointError(
                f"{where}: cannot infer an MLP: tensor '{name}' is not '<module>.<param>'"
                + (" (a module name is empty)" if path else ""),
                hint=_ARCH_HINT,
            )
        modules.setdefault(path, {})[leaf] = info.shape
    if not modules:
        raise CheckpointError(f"{where}: the checkpoint holds no tensors", hint=_ARCH_HINT)

    blocks: list[MlpBlock] = []
    for path in sorted(modules, key=natural_key):
        params = modules[path]
        w = params.get("weight")
        if w is not None and len(w) == 2:
            if 0 in w:
                raise CheckpointError(
                    f"{where}: cannot infer an MLP: '{path}.weight' has shape {list(w)}, a layer "
                    "of width 0",
                    hint="re-export the model; every layer needs at least one unit",
                )
            extra = sorted(set(params) - {"weight", "bias"})
            if extra or ("bias" in params and params["bias"] != (w[0],)):
                raise CheckpointError(
                    f"{where}: cannot infer an MLP: module '{path}' has a 2-D weight {list(w)} "
                    f"but unexpected tensors {extra or ['bias of shape ' + str(list(params['bias']))]}",
                    hint=_ARCH_HINT,
                )
            if blocks and blocks[-1].out_features != w[1]:
                prev = blocks[-1]
                raise CheckpointError(
                    f"{where}: cannot infer an MLP: '{path}.weight' has in_features {w[1]} but "
                    f"the previous Linear '{prev.linear}' has out_features {prev.out_features}",
                    hint=_ARCH_HINT,
                )
            blocks.append(MlpBlock(path, int(w[1]), int(w[0]), "bias" in params))
            continue
        kind = _norm_kind(params)
        if kind is None or not blocks or blocks[-1].norm is not None:
            found = ", ".join(f"{k} {list(v)}" for k, v in sorted(params.items()))
            raise CheckpointError(
                f"{where}: cannot infer an MLP: module '{path}' ({found}) is neither a Linear "
                f"(2-D weight) nor a LayerNorm/BatchNorm1d following one",
                hint=_ARCH_HINT,
            )
        width = blocks[-1].out_features
        shapes = {k: v for k, v in params.items() if k != "num_batches_tracked"}
        if any(v != (width,) for v in shapes.values()):
            raise CheckpointError(
                f"{where}: cannot infer an MLP: norm '{path}' has shapes "
                f"{ {k: list(v) for k, v in shapes.items()} }, expected [{width}] "
                f"(the width of '{blocks[-1].linear}')",
                hint=_ARCH_HINT,
            )
        prev = blocks[-1]
        blocks[-1] = MlpBlock(
            prev.linear,
            prev.in_features,
            prev.out_features,
            prev.bias,
            norm=path,
            norm_kind=kind,
            norm_affine="weight" in params,
            norm_bias="bias" in params,
        )
    if not blocks:
        raise CheckpointError(
            f"{where}: cannot infer an MLP: no 2-D '<module>.weight' tensor found",
            hint=_ARCH_HINT,
        )
    if blocks[-1].norm is not None:
        raise CheckpointError(
            f"{where}: cannot infer an MLP: the last Linear '{blocks[-1].linear}' is followed by "
            f"a norm '{blocks[-1].norm}'; a plain MLP ends with a Linear",
            hint=_ARCH_HINT,
        )
    return MlpSpec(tuple(blocks), activation)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _norm_kind(params: dict[str, tuple[int, ...]]) -> str | None:
    keys = set(params)
    if {"running_mean", "running_var"} <= keys and keys <= {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }:
        return "batchnorm"
    if keys in ({"weight", "bias"}, {"weight"}) and all(len(v) == 1 for v in params.values()):
        return "layernorm"
    return None


def spec_from_metadata(ckpt: Checkpoint, arch: dict) -> MlpSpec:
    """Build the spec the declarative ``nrc.arch`` metadata asks for, checked against tensors."""
    where = f"{ckpt.path}: metadata 'nrc.arch'"
    kind = arch.get("type")
    if kind != "mlp":
        raise CheckpointError(
            f"{where}: unknown type {_short(kind)}, expected 'mlp'", hint=_ARCH_HINT
        )
    activation = arch.get("activation", "relu")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise CheckpointError(
            f"{where}: unknown activation {_short(activation)}, expected one of "
            f"{', '.join(ACTIVATIONS)}"
        )
    norm = arch.get("norm")
    if not (norm is None or isinstance(norm, str)) or norm not in NORMS:
        raise CheckpointError(
            f"{where}: unknown norm {_short(norm)}, expected null, 'layernorm' or 'batchnorm'"
        )
    spec = infer_mlp_spec(ckpt, activation)
    hidden = spec.blocks[:-1]
    found = {b.norm_kind for b in hidden}
    if hidden and found != {norm}:
        raise CheckpointError(
            f"{where}: says norm {norm!r} but the tensors show "
            f"{sorted(str(f) for f in found)} after the hidden Linear layers",
        )
    return spec


class InferredMLP(nn.Module):
    """An MLP whose submodules sit at the exact paths of the checkpoint's keys."""

    def __init__(self, spec: MlpSpec) -> None:
        super().__init__()
        self.spec = spec
        self._chain: list[tuple[nn.Module, nn.Module | None, nn.Module | None]] = []
        for i, b in enumerate(spec.blocks):
            lin = nn.Linear(b.in_features, b.out_features, bias=b.bias)
            self._place(b.linear, lin)
            norm: nn.Module | None = None
            if b.norm_kind == "layernorm":
                norm = nn.LayerNorm(
                    b.out_features, elementwise_affine=b.norm_affine, bias=b.norm_bias
                )
            elif b.norm_kind == "batchnorm":
                norm = nn.BatchNorm1d(b.out_features, affine=b.norm_affine)
            if norm is not None:
                assert b.norm is not None  # a norm kind comes with the norm's name
                self._place(b.norm, norm)
            last = i == len(spec.blocks) - 1
            act = None if last else ACTIVATIONS[spec.activation]()
            self._chain.append((lin, norm, act))

    def _place(self, path: str, module: nn.Module) -> None:
        parent: nn.Module = self
        *heads, leaf = path.split(".")
        for head in heads:
            child = parent._modules.get(head)
            if child is None:
                child = nn.Module()
                parent.add_module(head, child)
            parent = child
        parent.add_module(leaf, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin, norm, act in self._chain:
            x = lin(x)
            if norm is not None:
                x = norm(x)
            if act is not None:
                x = act(x)
        return x
