"""Checkpoints: files -> a checked, lazily loaded set of named tensors plus metadata.

Reading is lazy and strict in the safetensors manner: the header (names, shapes, dtypes, byte
ranges, ``__metadata__``) is read and validated first, against the file size, before any tensor
is touched. ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``: nothing is
ever unpickled beyond plain tensors and containers.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nrc_cli.errors import CheckpointError

# safetensors dtype names -> torch dtypes (the ones a state dict holds in practice).
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
_ST_ITEMSIZE.update({"U8": 1, "BOOL": 1})
# A header larger than this is not a real safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_NOT_ST_HINT = "is this really a .safetensors file? re-save it with safetensors.torch.save_file"


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one stored tensor, known before it is loaded."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Checkpoint:
    """A checkpoint whose header has been read and checked.

    Attributes
    ----------
    path : Path
        The file.
    format : str
        ``"safetensors"`` or ``"pt"``.
    metadata : dict[str, str]
        The safetensors ``__metadata__`` (empty for ``.pt``).
    tensors : dict[str, TensorInfo]
        Every stored tensor, by name, in file order.
    """

    path: Path
    format: str
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    _loaded: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Load every tensor (CPU) and return them by name."""
        if self._loaded is not None:
            return dict(self._loaded)
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                for name in self.tensors:
                    out[name] = f.get_tensor(name)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"{self.path}: cannot read tensor data: {exc}",
                hint="the file may be corrupt or truncated; re-export it",
            ) from exc
        return out

    @property
    def n_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint file and validate its header without loading tensor data.

    Parameters
    ----------
    path : str or PathLike
        A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` state dict.

    Raises
    ------
    CheckpointError
        Missing file, unknown suffix, truncated file, corrupt header, or a ``.pt`` file that
        would need pickle.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found", hint="check the path")
    if p.is_dir():
        raise CheckpointError(
            f"{p}: is a folder, expected a checkpoint file (.safetensors, .pt, .pth)",
        )
    if p.suffix in (".pt", ".pth", ".bin"):
        return _open_pt(p)
    if p.suffix != ".safetensors":
        raise CheckpointError(
            f"{p}: unknown checkpoint type '{p.suffix}', expected .safetensors, .pt or .pth",
        )
    return _open_safetensors(p)


def _open_safetensors(p: Path) -> Checkpoint:
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{p}: not a safetensors file: {size} bytes, too short for a header",
                hint=_NOT_ST_HINT,
            )
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{p}: not a safetensors file or truncated: header claims {n} bytes, "
                f"file has {size} bytes",
                hint=_NOT_ST_HINT,
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{p}: corrupt safetensors header: {exc}",
            hint=_NOT_ST_HINT,
        ) from exc
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: corrupt safetensors header: __metadata__ is not an object")
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{p}: corrupt safetensors header: entry '{name}' lacks dtype/shape/data_offsets",
            ) from exc
        if end > data_size:
            raise CheckpointError(
                f"{p}: truncated: tensor '{name}' ends at byte {end} of the data section, "
                f"which has only {data_size} bytes",
                hint="the file was cut short (interrupted copy or download?); re-export it",
            )
        numel = 1
        for s in shape:
            numel *= s
        itemsize = _ST_ITEMSIZE.get(dtype)
        if itemsize is not None and (end - start) != numel * itemsize:
            raise CheckpointError(
                f"{p}: corrupt safetensors header: tensor '{name}' of shape {list(shape)} "
                f"and dtype {dtype} needs {numel * itemsize} bytes, header gives {end - start}",
            )
        tensors[name] = TensorInfo(name, shape, dtype)
    return Checkpoint(p, "safetensors", {str(k): str(v) for k, v in meta.items()}, tensors)


def _open_pt(p: Path) -> Checkpoint:
    import pickle

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: refused: the file holds Python objects that would need pickle to load "
            f"({first[:160]})",
            hint="nrc never unpickles files; save a plain state dict "
            "(torch.save(model.state_dict(), path)) or use safetensors",
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{p}: cannot read as a PyTorch checkpoint: {type(exc).__name__}: {exc}",
            hint="the file may be corrupt or truncated",
        ) from exc
    state = unwrap_state_dict(obj, where=str(p))
    tensors = {
        k: TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in state.items()
    }
    return Checkpoint(p, "pt", {}, tensors, _loaded=state)


def unwrap_state_dict(obj: object, *, where: str) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a loaded ``.pt`` object.

    Training scripts often write ``{"model": state_dict, "optimizer": ..., "epoch": ...}`` or
    ``{"state_dict": ...}``; those wrappers are unwrapped. Non-tensor entries are refused.
    """
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return {str(k): v for k, v in inner.items()}
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(
            f"{where}: expected a state dict of tensors (or one under 'model'/'state_dict'), "
            f"found non-tensor entries: {', '.join(bad[:8])}",
        )
    raise CheckpointError(
        f"{where}: expected a state dict (a dict of tensors), found {type(obj).__name__}",
        hint="save with torch.save(model.state_dict(), path)",
    )


def parse_arch_metadata(ckpt: Checkpoint) -> dict | None:
    """Return the declarative ``nrc.arch`` metadata object, or None when absent."""
    raw = ckpt.metadata.get("nrc.arch")
    if raw is None:
        return None
    try:
        arch = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(
            f"{ckpt.path}: metadata 'nrc.arch' is not valid JSON: {exc}",
        ) from exc
    if not isinstance(arch, dict):
        raise CheckpointError(f"{ckpt.path}: metadata 'nrc.arch' must be a JSON object")
    return arch
