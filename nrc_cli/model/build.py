"""Tensors + an architecture -> an ``nn.Module`` in eval mode, loaded strictly.

Routes, first match wins (docs/analyzing.md): a user factory named by ``--arch``
(the only way user code is ever imported) or a Hugging Face model from ``config.json`` (``--arch
hf``), the declarative ``nrc.arch`` metadata, and inference of a plain MLP from the tensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nrc_cli.errors import CheckpointError, ConfigError
from nrc_cli.io.checkpoint import Checkpoint, open_checkpoint, parse_arch_metadata
from nrc_cli.model.mlp import InferredMLP, MlpSpec, infer_mlp_spec, spec_from_metadata


@dataclass
class BuiltModel:
    """A model ready to run, and how it was obtained."""

    module: nn.Module
    route: str  # "arch", "hf", "metadata" or "inferred"
    description: str
    spec: MlpSpec | None = None  # set for MLPs nrc rebuilt itself
    checkpoint: Checkpoint | None = None
    loaded: LoadReport = field(default_factory=lambda: LoadReport())
    # How the MLP activation was chosen: "option" (--activation), "metadata", or "assumed"
    # (inferred MLP, nothing said: relu). None for models nrc did not rebuild itself.
    activation_source: str | None = None

    @property
    def in_features(self) -> int | None:
        return self.spec.in_features if self.spec else None

    @property
    def out_features(self) -> int | None:
        return self.spec.out_features if self.spec else None

    @property
    def activation(self) -> str | None:
        return self.spec.activation if self.spec else None

    @property
    def norm(self) -> str | None:
        """The norms of a rebuilt MLP ("layernorm", "batchnorm", both joined by "/"), or None."""
        if self.spec is None:
            return None
        return "/".join(sorted({b.norm_kind for b in self.spec.blocks if b.norm_kind})) or None

    def summary_fields(self) -> dict:
        """How the model was built, for the summary: route, description, activation, norm."""
        return {
            "build": self.route,
            "model": self.description,
            "activation": self.activation,
            "norm": self.norm,
        }

    def notes(self) -> list[str]:
        """What loading filled in or left out (one line), for stderr and the summary."""
        line = self.loaded.note()
        return [f"loading: {line}"] if line else []

    def warnings(self) -> list[str]:
        """What about the build may make every number wrong: an activation nobody stated."""
        if self.activation_source != "assumed":
            return []
        return [
            f"the MLP was rebuilt from its tensors with activation {self.activation}, "
            "assumed: the checkpoint does not say which activation it was trained with; if it "
            "was another, every number is wrong: pass --activation (gelu, tanh, silu, ...) "
            "or save 'nrc.arch' metadata"
        ]


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
        ckpt = _hf_folder(ckpt)
        module = build_hf(ckpt)
        report = load_strict(module, ckpt, load=weights)
        module.eval()
        desc = f"{type(module).__name__} from {ckpt.path}/config.json (--arch hf)"
        return BuiltModel(module, "hf", desc, checkpoint=ckpt, loaded=report)
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
        report = load_strict(module, ckpt, load=weights)
        module.eval()
        desc = f"{type(module).__name__} from --arch {arch}"
        return BuiltModel(module, "arch", desc, checkpoint=ckpt, loaded=report)

    meta = parse_arch_metadata(ckpt)
    try:
        if meta is not None:
            spec = spec_from_metadata(ckpt, meta)
            route, source = "metadata", "metadata"
        else:
            spec = infer_mlp_spec(ckpt, activation or "relu")
            route, source = "inferred", ("option" if activation else "assumed")
    except CheckpointError as err:
        if getattr(ckpt, "config", None) is None:
            raise
        raise CheckpointError(
            err.message,
            hint="the folder has a config.json: pass --arch hf to build the Hugging Face model "
            "it describes (or --arch MODULE:CALLABLE for your own code)",
        ) from err
    if weights:
        module = InferredMLP(spec)
    else:
        with torch.device("meta"):
            module = InferredMLP(spec)
    report = load_strict(module, ckpt, load=weights)
    module.eval()
    dims = " -> ".join([str(spec.in_features)] + [str(b.out_features) for b in spec.blocks])
    norms = sorted({b.norm_kind for b in spec.blocks if b.norm_kind})
    act = spec.activation + (" (assumed)" if source == "assumed" else "")
    desc = f"MLP {dims}, activation {act}" + (f", {'/'.join(norms)}" if norms else "")
    return BuiltModel(
        module, route, desc, spec, checkpoint=ckpt, loaded=report, activation_source=source
    )


def _hf_folder(ckpt: Checkpoint) -> Checkpoint:
    """``--arch hf`` on a weights file inside a model folder: the folder, with its config.json."""
    if getattr(ckpt, "config", None) is not None or ckpt.container != "file":
        return ckpt
    path = Path(ckpt.path)
    if not (path.parent / "config.json").is_file():
        return ckpt
    try:
        folder = open_checkpoint(path.parent)
    except CheckpointError:
        folder = None
    if folder is None or path.resolve() not in {Path(f).resolve() for f in folder.files}:
        raise ConfigError(
            f"--arch hf: '{path}' is not the checkpoint of the model folder '{path.parent}'",
            hint=f"give the folder itself: nrc ... {path.parent} --arch hf",
        )
    return folder


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
            hint='pip install transformers (or, from a clone of nrc: pip install ".[hf]")',
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


@dataclass(frozen=True)
class LoadReport:
    """What loading did beyond copying one checkpoint tensor into each model tensor.

    Attributes
    ----------
    filled : tuple of str
        Model keys absent from the checkpoint that the model's own loading code fills in (a
        BatchNorm's ``num_batches_tracked``, which torch sets when the checkpoint predates it).
    tied : tuple of str
        Model keys absent from the checkpoint whose tensor is shared with a key that is present
        (tied weights, written once by ``save_pretrained``): loading the one loads the other.
    dropped : tuple of str
        Checkpoint keys that name a non-persistent buffer of the model (a BERT ``position_ids``
        saved by older transformers) or that the model class declares ignorable
        (``_keys_to_ignore_on_load_unexpected``); the model computes them itself.
    """

    filled: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    def note(self) -> str | None:
        """One line for the user, or None when loading was one to one."""
        parts = []
        if self.filled:
            parts.append(f"filled in by the model's own loading code: {', '.join(self.filled)}")
        if self.tied:
            parts.append(f"loaded through the weights they are tied to: {', '.join(self.tied)}")
        if self.dropped:
            parts.append(
                f"checkpoint keys not loaded (the model computes them itself): "
                f"{', '.join(self.dropped)}"
            )
        return "; ".join(parts) or None


def load_strict(module: nn.Module, ckpt: Checkpoint, *, load: bool = True) -> LoadReport:
    """Load the checkpoint into ``module`` as strictly as the model's own framework does.

    Every model tensor must come from the checkpoint with the right shape, and every checkpoint
    tensor must go into the model, with the exceptions the frameworks themselves make (and no
    others), which are returned in the :class:`LoadReport`:

    * a key the model's ``load_state_dict(strict=True)`` fills in itself (torch's BatchNorm
      adds a missing ``num_batches_tracked``) is accepted: torch is asked, not a list of names;
    * a key whose parameter is shared with a key the checkpoint has (tied weights) is loaded
      through that key;
    * a checkpoint key that names a non-persistent buffer of the model, or that the model
      class lists in ``_keys_to_ignore_on_load_unexpected`` (transformers), is not loaded, as
      transformers' ``from_pretrained`` does.

    Missing, unexpected and mis-shaped keys beyond these are reported together in one error.
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
    have = set(ckpt.tensors)
    missing = set(expected) - have
    unexpected = have - set(expected)
    tied = _tied_to_present(module, missing, have)
    missing -= set(tied)
    filled = _filled_by_module(module, missing)
    missing -= filled
    dropped = _ignorable(module, unexpected, set(expected))
    unexpected -= dropped
    mismatched = sorted(
        f"{k} (checkpoint {list(ckpt.tensors[k].shape)}, model {list(expected[k].shape)})"
        for k in set(expected) & have
        if tuple(ckpt.tensors[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(sorted(missing))}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(sorted(unexpected))}")
        if mismatched:
            parts.append(f"shape mismatches: {', '.join(mismatched)}")
        raise CheckpointError(
            f"{ckpt.path}: the weights do not fit the model: {'; '.join(parts)}",
            hint="check --arch and --arch-kwargs against how the checkpoint was saved",
        )
    report = LoadReport(tuple(sorted(filled)), tuple(sorted(tied)), tuple(sorted(dropped)))
    if not load:
        return report
    state = {k: v for k, v in ckpt.state_dict().items() if k not in dropped}
    _check_finite(ckpt, state)
    for key, source in tied.items():
        state[key] = state[source]
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
    return report


def _tied_to_present(module: nn.Module, missing: set[str], have: set[str]) -> dict[str, str]:
    """Missing keys whose tensor is the same object as a present key's: key -> that key."""
    if not missing:
        return {}
    groups: dict[int, list[str]] = {}
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    out = {}
    for names in groups.values():
        present = sorted(n for n in names if n in have)
        if present:
            out.update({n: present[0] for n in names if n in missing})
    return out


def _filled_by_module(module: nn.Module, missing: set[str]) -> set[str]:
    """The missing keys that the owning submodule's own ``load_state_dict`` fills in.

    Each owning submodule is handed its own current tensors minus the missing ones, with no
    version metadata (as a checkpoint read from a file has none), through the public
    ``load_state_dict(strict=False)``: whatever torch then does not report as missing, the
    module's loading code supplied. Copying a tensor onto itself changes nothing.
    """
    filled: set[str] = set()
    owners: dict[str, set[str]] = {}
    for key in missing:
        prefix, _, _ = key.rpartition(".")
        owners.setdefault(prefix, set()).add(key)
    for prefix, keys in owners.items():
        sub = module.get_submodule(prefix) if prefix else module
        lead = f"{prefix}." if prefix else ""
        own = {k: v for k, v in sub.state_dict().items() if lead + k not in keys}
        with torch.no_grad():
            result = sub.load_state_dict(own, strict=False)
        still = {lead + k for k in result.missing_keys}
        filled |= keys - still
    return filled


def _ignorable(module: nn.Module, unexpected: set[str], persistent: set[str]) -> set[str]:
    """Unexpected checkpoint keys that the model's framework does not load and does not miss."""
    if not unexpected:
        return set()
    # A buffer that state_dict() leaves out is non-persistent: the module computes it.
    non_persistent = {n for n, _ in module.named_buffers(remove_duplicate=False)} - persistent
    patterns = getattr(module, "_keys_to_ignore_on_load_unexpected", None) or ()
    regex = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    return {k for k in unexpected if k in non_persistent or (regex is not None and regex.search(k))}


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
