"""Hook the weight layers of a model and hand their pooled inputs to a callback.

The weight layers are the ``Linear`` and ``Conv1d/2d/3d`` modules (docs/metrics.md, "Notation").
Their features are the layer *inputs*, pooled to one vector per sample: global average pooling
over the spatial positions of a conv input, mean over every axis between the first and the last
of a Linear input (token pooling).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nrc_cli._glob import glob_match
from nrc_cli._threads import single_threaded
from nrc_cli.errors import ConfigError, DataError, OptionError

WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear``, or PyTorch Geometric's own ``Linear`` (inside GCNConv, GATConv, SAGEConv,
    ...), which holds a weight (out, in) and applies it as ``nn.Linear`` does.

    PyTorch Geometric is recognised by the class's module, never imported.
    """
    if isinstance(module, nn.Linear):
        return True
    cls = type(module)
    return cls.__name__ == "Linear" and cls.__module__ == "torch_geometric.nn.dense.linear"


def is_weight_layer(module: nn.Module) -> bool:
    """A layer ``nrc`` measures: Linear (torch's or PyTorch Geometric's) or Conv1d/2d/3d."""
    return isinstance(module, WEIGHT_TYPES) or is_linear(module)


def out_dim(module: nn.Module) -> int:
    """Outputs of a Linear (``out_features``, or PyTorch Geometric's ``out_channels``)."""
    return int(getattr(module, "out_features", getattr(module, "out_channels", -1)))


@dataclass(frozen=True)
class WeightLayer:
    """A weight layer found in a model (registration order, not yet forward order)."""

    name: str
    module: nn.Module

    @property
    def type(self) -> str:
        return type(self.module).__name__

    @property
    def in_dim(self) -> int:
        m = self.module
        if isinstance(m, nn.Linear):
            return m.in_features
        if is_linear(m):
            return int(m.in_channels)  # type: ignore[arg-type]
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels
        raise TypeError(f"{self.name}: {self.type} is not a weight layer")

    @property
    def weight_shape(self) -> list[int]:
        weight = self.module.weight
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{self.name}: its weight is not a tensor")
        return list(weight.shape)


def weight_layers(
    model: nn.Module,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[WeightLayer]:
    """List the model's weight layers, optionally filtered by module-path globs.

    Raises
    ------
    ConfigError
        When an ``include`` glob matches no layer (the message lists the layer names).
    """
    found = [WeightLayer(n, m) for n, m in model.named_modules() if is_weight_layer(m)]
    names = [w.name for w in found]
    for pattern in include:
        if not any(glob_match(n, pattern) for n in names):
            raise OptionError(
                f"layers: '{pattern}' matches no weight layer",
                cli_message=f"--layers '{pattern}' matches no weight layer",
                hint=f"weight layers: {', '.join(names)}; '*' matches within one dotted "
                "segment, '**' across segments (e.g. '**.dense')",
            )
    if include:
        found = [w for w in found if any(glob_match(w.name, p) for p in include)]
    if exclude:
        found = [w for w in found if not any(glob_match(w.name, p) for p in exclude)]
    if not found:
        raise ConfigError(
            "no weight layer (Linear, Conv1d/2d/3d) is selected",
            hint=f"weight layers: {', '.join(names) or 'none in this model'}",
        )
    lazy = [w.name for w in found if w.in_dim < 0]
    if lazy:
        raise ConfigError(
            f"layer '{lazy[0]}' does not know its input width yet (a lazy layer, in_channels=-1)",
            hint="run the model once on a batch before measuring it, or build it with explicit "
            "input sizes",
        )
    empty = [w.name for w in found if w.in_dim == 0]
    if empty:
        raise ConfigError(
            f"layer '{empty[0]}' has no input features (width 0); nrc cannot measure it",
            hint=f"leave it out with --exclude '{empty[0]}'",
        )
    return found


class Buffers:
    """Tensors kept from one batch to the next, one per key, grown to the largest batch seen.

    Pooling writes every batch's means (and the float64 blocks they are summed from) into
    these instead of new arrays: allocated and freed every batch, arrays of a few MB left
    glibc's heap fragmented, and the peak memory of a classification run grew with N although
    no state did (issue 24). A tensor from :meth:`take` is valid until the next ``take`` of the
    same key.
    """

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def take(
        self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """An uninitialised tensor of ``shape``, ``dtype`` and ``device`` for ``key``."""
        numel = math.prod(shape)
        buf = self._store.get(key)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._store[key] = buf
        return buf[:numel].view(shape)


def pool(
    module: nn.Module,
    inp: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    buffers: Buffers | None = None,
    key: str = "",
) -> torch.Tensor:
    """Pool a layer input to (batch, p): float64 means, or a 2-D Linear input as it is.

    A 2-D Linear input is passed on as it is (half precision widened to float32, exactly): the
    accumulators read it into float64 as they subtract their shift, which saves a separate
    conversion pass over every batch. Means over tokens (a Linear input (batch, ..., p)) or
    over spatial positions (a conv input (batch, channels, ...)) are summed in float64, so
    pooling adds no rounding of its own beyond float64's: a float32 mean of a few hundred
    values is off by ~1e-7 relative, which moved metrics by up to 2e-8. The float64 copy is
    made a few samples at a time (:func:`_sum64`), so it stays in the CPU's cache: on a CIFAR
    ResNet's activations that costs about 3x a float32 mean rather than 25x, a few per cent of
    the convolution that reads the same activation (``benchmarks/bench_pooling.py``).

    ``mask`` (batch, T), when given, turns the token mean of a (batch, T, p) Linear input into a
    masked mean over the tokens where the mask is non-zero (padding ignored).

    ``buffers`` (CPU inputs only): the means go into ``buffers``' tensor for ``key`` and the
    float64 blocks into a shared scratch tensor, instead of new arrays; the result is then
    valid until the next call with the same ``key``. The numbers are the same either way.
    """
    if buffers is not None and inp.device.type != "cpu":
        buffers = None
    if is_linear(module):
        if inp.ndim == 2:
            return _at_least_float32(inp)
        if inp.ndim < 2:
            return _at_least_float32(inp.reshape(1, -1))
        tokens = inp.reshape(inp.shape[0], -1, inp.shape[-1])  # (batch, T, p)
        if mask is not None and inp.ndim == 3 and tuple(mask.shape) == tuple(inp.shape[:2]):
            w = (mask != 0).to(torch.float64)
            sums = _sum64(tokens, 1, w, buffers=buffers, key=key)
            return sums.div_(w.sum(dim=1, keepdim=True).clamp_min(1.0))
        return _sum64(tokens, 1, buffers=buffers, key=key).div_(tokens.shape[1])
    # Conv: (batch, channels, *spatial) -> mean over spatial positions.
    spatial = inp.reshape(inp.shape[0], inp.shape[1], -1)
    return _sum64(spatial, 2, buffers=buffers, key=key).div_(spatial.shape[2])


# Elements converted to float64 at a time: 2 MB on the CPU, which stays in cache (measured best
# between 2^17 and 2^19 elements); on a GPU larger blocks keep the kernel launches few.
_CPU_BLOCK = 1 << 18
_GPU_BLOCK = 1 << 24


def _sum64(
    x: torch.Tensor,
    axis: int,
    weight: torch.Tensor | None = None,
    *,
    buffers: Buffers | None = None,
    key: str = "",
) -> torch.Tensor:
    """Sum of the 3-D ``x`` over ``axis`` (1 or 2) in float64, a block of samples at a time.

    ``weight`` (batch, x.shape[1]), float64, multiplies axis 1 first (a token mask). The sums
    of each block go straight into their rows of the result (``buffers``' tensor for ``key``,
    or a new one); a block of a float32 or half input is widened into a scratch block.
    """
    block_size = _CPU_BLOCK if x.device.type == "cpu" else _GPU_BLOCK
    per = max(1, block_size // max(1, x[0].numel()))
    b = x.shape[0]
    shape = (b, x.shape[2] if axis == 1 else x.shape[1])
    if buffers is None:
        out = torch.empty(shape, dtype=torch.float64, device=x.device)
    else:
        out = buffers.take(key, shape, torch.float64, x.device)
    for i in range(0, b, per):
        part = x[i : i + per]
        if part.dtype == torch.float64:
            block = part if weight is None else part * weight[i : i + per].unsqueeze(-1)
        else:
            if buffers is None:
                block = part.to(torch.float64)
            else:
                block = buffers.take("\0 scratch", tuple(part.shape), torch.float64, x.device)
                block.copy_(part)
            if weight is not None:
                block.mul_(weight[i : i + per].unsqueeze(-1))
        torch.sum(block, dim=axis, out=out[i : i + per])
    return out


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def _arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments by name (positional ones bound to ``forward``'s signature)."""
    named = dict(kwargs)
    if args:
        try:
            params = list(inspect.signature(module.forward).parameters.values())
        except (TypeError, ValueError):
            return named
        positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        named.update(zip(positional, args, strict=False))
    return named


@dataclass(frozen=True)
class PendingPool:
    """A token-axis Linear input kept whole until its mask is known (``update(..., mask=)``)."""

    module: nn.Module
    inp: torch.Tensor

    def pool(self, mask: torch.Tensor | None) -> torch.Tensor:
        with single_threaded(self.inp.device):
            return pool(self.module, self.inp, mask)


FeatureCallback = Callable[[str, "torch.Tensor | PendingPool"], None]


class Capture:
    """Forward pre-hooks that pool each selected layer's input and pass it to a callback.

    Use as a context manager; the hooks are removed on exit, also when the body raises. Each
    forward pass of ``root`` starts a new batch (or call :meth:`next_batch` by hand when there
    is no root). ``order`` lists the layer names in the order in which they first ran.

    Parameters
    ----------
    layers : sequence of WeightLayer
        The layers to hook (only these cost anything).
    callback : callable(name, features)
        Receives the layer name and its pooled features, shape (batch, p): float64 means, or a
        2-D Linear input as it is (float32 or float64). They may share memory with the
        activation: read (or copy) them before the forward pass goes on. On the CPU the means
        (and the copies of ``copy_views``) are written into one tensor per layer, reused by
        the next batch: a callback that keeps them past the next forward pass copies them. With
        ``defer_unmasked``, a Linear input with a token axis seen while no mask is known
        arrives as a :class:`PendingPool` instead, to be pooled later.
    active : set of str, optional
        Layers whose features are pooled and passed on; the others only record their place in
        the forward order. Default: all.
    root : nn.Module, optional
        The model: a pre-hook on it starts each batch, calls ``on_forward`` and reads the
        token mask from its keyword argument ``mask_key``.
    mask_key : str, optional
        Keyword argument of ``root`` that holds the token mask (batch, T).
    on_forward : callable(), optional
        Called when a forward pass of ``root`` starts, before any layer's hook.
    defer_unmasked : bool
        See ``callback``.
    copy_views : bool
        Copy features that share memory with the activation (a 2-D Linear input is passed on
        as it is), for a callback that reads them after the forward pass has gone on.
    """

    def __init__(
        self,
        layers: Sequence[WeightLayer],
        callback: FeatureCallback,
        *,
        active: set[str] | None = None,
        root: nn.Module | None = None,
        mask_key: str | None = None,
        on_forward: Callable[[], None] | None = None,
        defer_unmasked: bool = False,
        copy_views: bool = False,
    ) -> None:
        self.layers = list(layers)
        self.callback = callback
        self.active = active
        self.root = root
        self.mask_key = mask_key
        self.on_forward = on_forward
        self.defer_unmasked = defer_unmasked
        self.copy_views = copy_views
        self.order: list[str] = []
        self.mask: torch.Tensor | None = None
        self._seen: set[str] = set()
        self._handles: list = []
        # Each layer's pooled features (and copies), reused from batch to batch on the CPU.
        self._buffers = Buffers()
        self.other_masks: list[str] = []  # mask-like arguments of this forward pass, unused
        self.unmasked: list[str] = []  # layers whose tokens were pooled without a mask

    def next_batch(self, mask: torch.Tensor | None = None) -> None:
        """Start a forward pass; ``mask`` (batch, T) selects tokens for masked mean pooling."""
        self._seen.clear()
        self.mask = mask
        self.other_masks, self.unmasked = [], []

    def _root_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.on_forward is not None:
            self.on_forward()
        named = _arguments(module, args, kwargs)
        mask = named.get(self.mask_key) if self.mask_key else None
        self.next_batch(mask if isinstance(mask, torch.Tensor) else None)
        self.other_masks = [
            name
            for name, value in named.items()
            if "mask" in name.lower() and name != self.mask_key and isinstance(value, torch.Tensor)
        ]

    def unmasked_warning(self) -> str | None:
        """A warning when this batch's tokens were averaged over padding that a mask-like
        argument of the model (``atom_mask``, say) marks, because it is not the mask used."""
        if not (self.other_masks and self.unmasked):
            return None
        names = ", ".join(repr(n) for n in self.other_masks)
        return (
            f"the model takes {names} but nrc pooled the tokens of {self.unmasked[0]!r}"
            f"{' and others' if len(self.unmasked) > 1 else ''} without a mask, so padding "
            f"is averaged into them; if it marks padding, pass mask_key={self.other_masks[0]!r} "
            f"(--mask-key {self.other_masks[0]}) or update(..., mask=...)"
        )

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise DataError(f"layer '{name}': its input is not a tensor")
            if name in self._seen:
                raise ConfigError(
                    f"layer '{name}' runs more than once in one forward pass (a shared or "
                    "recurrent layer); its per-sample features are not defined",
                    hint=f"leave it out with --exclude '{name}'",
                )
            self._seen.add(name)
            if name not in self.order:
                self.order.append(name)
            if self.active is None or name in self.active:
                inp = args[0].detach()
                if self.mask is None and is_linear(module) and inp.ndim >= 3:
                    self.unmasked.append(name)
                if (
                    self.defer_unmasked
                    and self.mask is None
                    and is_linear(module)
                    and inp.ndim >= 3
                ):
                    pending = PendingPool(module, inp.clone() if self.copy_views else inp)
                    self.callback(name, pending)
                    return
                with single_threaded(inp.device):
                    features = pool(module, inp, self.mask, buffers=self._buffers, key=name)
                    if self.copy_views and features.data_ptr() == inp.data_ptr():
                        if inp.device.type == "cpu":
                            copy = self._buffers.take(
                                f"{name} copy", tuple(features.shape), features.dtype, inp.device
                            )
                            features = copy.copy_(features)
                        else:
                            features = features.clone()
                self.callback(name, features)

        return hook

    def __enter__(self) -> Capture:
        try:
            if self.root is not None:
                self._handles.append(
                    self.root.register_forward_pre_hook(self._root_hook, with_kwargs=True)
                )
            for w in self.layers:
                self._handles.append(w.module.register_forward_pre_hook(self._make_hook(w.name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def hooked(self) -> bool:
        return bool(self._handles)


class HeldFeatures:
    """A monitor's hooks on ``layers``: registered for the life of a ``with`` block, they hold
    the features of the latest forward pass of ``root`` until :meth:`take` pairs them with
    targets, and keep the forward order of the layers across blocks (``order``: it is state).

    Only the layers in ``active`` (a set the owner may grow) are pooled; features that share
    memory with an activation are copied; with a ``mask_key``, the tokens of a Linear input
    seen without a mask are held as a :class:`PendingPool`. A forward pass that starts before
    the features of the previous one were taken is refused, and they are dropped.
    """

    def __init__(
        self,
        layers: Sequence[WeightLayer],
        root: nn.Module,
        *,
        active: set[str],
        mask_key: str | None,
    ) -> None:
        self.layers = list(layers)
        self.root = root
        self.active = active
        self.mask_key = mask_key
        self.order: list[str] = []
        self.pending: dict[str, torch.Tensor | PendingPool] = {}
        self._capture: Capture | None = None

    def __enter__(self) -> HeldFeatures:
        if self._capture is not None:
            raise RuntimeError("this CollapseMonitor is already hooked (nested 'with')")
        capture = Capture(
            self.layers,
            self._hold,
            active=self.active,
            root=self.root,
            mask_key=self.mask_key,
            on_forward=self._on_forward,
            defer_unmasked=self.mask_key is not None,
            copy_views=True,
        )
        capture.order = self.order  # the same list: the order survives re-entry
        capture.__enter__()
        self._capture = capture
        return self

    def __exit__(self, *exc: object) -> None:
        capture, self._capture = self._capture, None
        self.pending.clear()
        if capture is not None:
            capture.remove()

    @property
    def hooked(self) -> bool:
        return self._capture is not None and self._capture.hooked

    def take(
        self, mask: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor | PendingPool], str | None]:
        """The features held since the last take, by layer, and a warning when tokens were
        pooled without a mask that the model seems to take (none when ``mask`` is given);
        the next forward pass starts the next batch."""
        pending, self.pending = self.pending, {}
        notice = None
        if self._capture is not None:
            notice = None if mask is not None else self._capture.unmasked_warning()
            self._capture.next_batch()
        return pending, notice

    def _on_forward(self) -> None:
        if self.pending:
            held = ", ".join(self.pending)
            self.pending.clear()
            raise DataError(
                f"a forward pass started before the features of the previous one ({held}) "
                "were paired with targets",
                hint="call monitor.update(y, output) after each forward pass inside the "
                "'with monitor:' block",
            )

    def _hold(self, name: str, z: torch.Tensor | PendingPool) -> None:
        # Held until take() (copied by the capture where they share memory with an
        # activation the forward pass may still change in place).
        self.pending[name] = z
