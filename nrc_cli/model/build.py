"""Tensors + an architecture -> an ``nn.Module`` in eval mode, loaded strictly.

Three routes, first match wins (CLI.md, "Checkpoints"): a user factory named by ``--arch``
(the only way user code is ever imported), the declarative ``nrc.arch`` metadata, and inference
of a plain MLP from the tensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nrc_cli.errors import CheckpointError, ConfigError
from nrc_cli.io.checkpoint import Checkpoint, parse_arch_metadata
from nrc_cli.model.mlp import InferredMLP, MlpSpec, infer_mlp_spec, spec_from_metadata


@dataclass
class BuiltModel:
    """A model ready to run, and how it was obtained."""

    module: nn.Module
    route: str  # "arch", "metadata" or "inferred"
    description: str
    spec: MlpSpec | None = None  # set for MLPs nrc rebuilt itself
    checkpoint: Checkpoint | None = None

    @property
    def in_features(self) -> int | None:
        return self.spec.in_features if self.spec else None

    @property
    def out_features(self) -> int | None:
        return self.spec.out_features if self.spec else None


def load_factory(arch: str):
    """Import the callable named by ``--arch MODULE:CALLABLE`` or ``--arch file.py:CALLABLE``."""
    target, sep, attr = arch.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"--arch: expected MODULE:CALLABLE or path/to/file.py:CALLABLE, found '{arch}'",
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(
                f"--arch: file '{target}' does not exist",
                hint="give a path to a .py file that defines the factory",
            )
        name = f"_nrc_arch_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"--arch: cannot import '{target}' as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            if not isinstance(exc, Exception) and not _user_exit(exc):
                raise
            del sys.modules[name]
            raise ConfigError(
                f"--arch: importing '{target}' failed: {_raised(exc)}",
            ) from exc
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as exc:
            if not isinstance(exc, Exception) and not _user_exit(exc):
                raise
            raise ConfigError(
                f"--arch: cannot import module '{target}': {_raised(exc)}",
                hint="is it installed or on PYTHONPATH? or pass a file path: --arch file.py:NAME",
            ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        found = sorted(
            n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
        )
        raise ConfigError(
            f"--arch: '{target}' has no callable '{attr}'",
            hint=f"callables there: {', '.join(found[:12]) or 'none'}",
        )
    return factory


def _user_exit(exc: BaseException) -> bool:
    """A plain ``sys.exit()`` in user code (not a subclass: a signal handler's exit goes on)."""
    return type(exc) is SystemExit


def _raised(exc: BaseException) -> str:
    """What user code did, for a message: ``raised ValueError: ...`` or ``called sys.exit(0)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"raised {type(exc).__name__}: {exc}"


def check_memory(ckpt: Checkpoint, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a checkpoint whose tensors exceed the memory.

    Parameters
    ----------
    ckpt : Checkpoint
        An opened checkpoint (its headers give the sizes).
    available : int, optional
        Bytes of memory available (default: measured now).

    Raises
    ------
    CheckpointError
        The tensors need more bytes than are available.
    """
    if ckpt._loaded is not None:
        return  # a .pt file: already in memory
    if available is None:
        from nrc_cli._memory import available_memory

        available = available_memory()
    need = ckpt.nbytes
    if need > available:
        biggest = max(ckpt.tensors.values(), key=lambda t: t.nbytes)
        raise CheckpointError(
            f"{ckpt.path}: the tensors need {_size(need)} once loaded (the largest, "
            f"'{biggest.name}' of shape {list(biggest.shape)}, {_size(biggest.nbytes)}), more "
            f"than the {_size(available)} of memory available",
            hint="run on a machine with more memory; if the file is small, its header is wrong",
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def build_model(
    ckpt: Checkpoint,
    *,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    activation: str | None = None,
    weights: bool = True,
) -> BuiltModel:
    """Rebuild the model a checkpoint holds, load its weights strictly, put it in eval mode.

    Parameters
    ----------
    ckpt : Checkpoint
        An opened checkpoint.
    arch : str, optional
        ``MODULE:CALLABLE`` or ``file.py:CALLABLE`` returning an ``nn.Module``.
    arch_kwargs : dict, optional
        Keyword arguments for the factory.
    activation : str, optional
        Activation for MLP inference (default ``relu``); ignored by the other routes.
    weights : bool
        Load the weights (default). False checks names and shapes against the headers only,
        and builds an MLP rebuilt from the tensors on the ``meta`` device: nothing of the
        checkpoint's size is allocated (``nrc inspect``).
    """
    if weights:
        check_memory(ckpt)
    if arch == "hf":
        module = build_hf(ckpt)
        load_strict(module, ckpt, load=weights)
        module.eval()
        desc = f"{type(module).__name__} from {ckpt.path}/config.json (--arch hf)"
        return BuiltModel(module, "arch", desc, checkpoint=ckpt)
    if arch is not None:
        factory = load_factory(arch)
        try:
            module = factory(**(arch_kwargs or {}))
        except (Exception, SystemExit) as exc:
            if not isinstance(exc, Exception) and not _user_exit(exc):
                raise
            raise ConfigError(
                f"--arch: the factory '{arch}' {_raised(exc)}",
                hint="a factory returns the model; it must not exit"
                if isinstance(exc, SystemExit)
                else "check --arch-kwargs against the factory's parameters",
            ) from exc
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"--arch: the factory '{arch}' returned {type(module).__name__}, expected an "
                "torch.nn.Module",
            )
        load_strict(module, ckpt, load=weights)
        module.eval()
        desc = f"{type(module).__name__} from --arch {arch}"
        return BuiltModel(module, "arch", desc, checkpoint=ckpt)

    meta = parse_arch_metadata(ckpt)
    if meta is not None:
        spec = spec_from_metadata(ckpt, meta)
        route = "metadata"
    else:
        spec = infer_mlp_spec(ckpt, activation or "relu")
        route = "inferred"
    if weights:
        module = InferredMLP(spec)
    else:
        with torch.device("meta"):
            module = InferredMLP(spec)
    load_strict(module, ckpt, load=weights)
    module.eval()
    dims = " -> ".join([str(spec.in_features)] + [str(b.out_features) for b in spec.blocks])
    norms = sorted({b.norm_kind for b in spec.blocks if b.norm_kind})
    desc = f"MLP {dims}, activation {spec.activation}" + (f", {'/'.join(norms)}" if norms else "")
    return BuiltModel(module, route, desc, spec, checkpoint=ckpt)


def build_hf(ckpt: Checkpoint) -> nn.Module:
    """A Hugging Face ``transformers`` model built (randomly initialised) from the folder's
    ``config.json``; the class is the config's first ``architectures`` entry when transformers
    has it, else ``AutoModel``. The weights are loaded strictly afterwards."""
    config = getattr(ckpt, "config", None)
    if config is None:
        raise ConfigError(
            f"--arch hf: '{ckpt.path}' has no config.json beside the weights",
            hint="point nrc at the model folder written by save_pretrained()",
        )
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "--arch hf needs the transformers package, which is not installed",
            hint='pip install "nrc-cli[hf]"',
        ) from exc
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"--arch hf: {ckpt.path}/config.json has no 'model_type'")
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as exc:
        raise ConfigError(
            f"--arch hf: transformers cannot read {ckpt.path}/config.json: "
            f"{type(exc).__name__}: {exc}",
        ) from exc
    names = [a for a in (fields.get("architectures") or []) if isinstance(a, str)]
    cls = getattr(transformers, names[0], None) if names else None
    try:
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls(hf_config)
        return transformers.AutoModel.from_config(hf_config)
    except Exception as exc:
        raise ConfigError(
            f"--arch hf: building the model from {ckpt.path}/config.json failed: "
            f"{type(exc).__name__}: {exc}",
        ) from exc


def load_strict(module: nn.Module, ckpt: Checkpoint, *, load: bool = True) -> None:
    """Load the checkpoint into ``module``; report missing, unexpected and mis-shaped keys together.

    With ``load=False`` only the names and shapes are checked; no tensor data is read.
    """
    expected = module.state_dict()
    # Lazy modules (nn.LazyLinear, ...) have no shape until a forward pass, so neither the shape
    # check below nor load_state_dict can use them.
    lazy = sorted(k for k, v in expected.items() if nn.parameter.is_lazy(v))
    if lazy:
        raise ConfigError(
            f"--arch: the model has uninitialized lazy parameters ({', '.join(lazy)}); "
            "nrc loads the checkpoint before any forward pass",
            hint="build the model with explicit sizes (nn.Linear instead of nn.LazyLinear)",
        )
    missing = sorted(set(expected) - set(ckpt.tensors))
    unexpected = sorted(set(ckpt.tensors) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {list(ckpt.tensors[k].shape)}, model {list(expected[k].shape)})"
        for k in set(expected) & set(ckpt.tensors)
        if tuple(ckpt.tensors[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {', '.join(mismatched)}")
        raise CheckpointError(
            f"{ckpt.path}: the weights do not fit the model: {'; '.join(parts)}",
            hint="check --arch and --arch-kwargs against how the checkpoint was saved",
        )
    if not load:
        return
    state = ckpt.state_dict()
    _check_finite(ckpt, state)
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def _check_finite(ckpt: Checkpoint, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding nan or inf: every number computed from them would be meaningless."""
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{ckpt.path}: tensor '{name}' holds {bad} non-finite value(s) (nan or inf) "
                    f"of {tensor.numel()}",
                    hint="the training diverged or the file is damaged; use an earlier checkpoint",
                )
