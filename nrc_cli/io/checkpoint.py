"""Checkpoints: files and folders -> a checked, lazily loaded set of named tensors plus metadata.

What :func:`open_checkpoint` accepts
------------------------------------
* a ``.safetensors`` file;
* a ``.pt``/``.pth``/``.bin`` file holding a state dict, or a training script's
  ``{"model": state_dict, ...}`` / ``{"state_dict": state_dict, ...}`` wrapper (a PyTorch
  Lightning ``.ckpt`` is such a wrapper);
* a Hugging Face style folder, looked at in this order (the order ``transformers`` uses), first
  match wins: ``model.safetensors``; ``model.safetensors.index.json`` with its shards
  ``model-0000i-of-0000n.safetensors``; ``pytorch_model.bin``; ``pytorch_model.bin.index.json``
  with its ``.bin`` shards; otherwise exactly one ``*.safetensors.index.json``, else exactly one
  ``*.safetensors``, else exactly one ``*.pt``/``*.pth``/``*.bin``. A ``config.json`` in the
  folder is read (as data) into :attr:`Checkpoint.config`;
* a ``*.index.json`` file itself (its folder is then the checkpoint folder).

Reading is lazy and strict in the safetensors manner: the header (names, shapes, dtypes, byte
ranges, ``__metadata__``) of *every* file is read and validated first, against the file size,
before any tensor is touched; for sharded checkpoints the index and the shards must agree (every
shard present, every tensor the index names present in its shard, no tensor in two shards).
Tensor data is then read shard by shard with ``safe_open``.

``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``: nothing is ever
unpickled beyond plain tensors and containers, and a file that holds any other Python object
(an ``argparse.Namespace``, a whole ``nn.Module``...) is refused with a message naming it. Those
files have no separate header, so their tensors are loaded when the checkpoint is opened.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nrc_cli.errors import CheckpointError, ConfigError
from nrc_cli.io.files import require_regular
from nrc_cli.io.nested import find_state, state_paths, unwrap_state_dict

__all__ = [
    "SUFFIXES",
    "Checkpoint",
    "TensorInfo",
    "is_model_folder_listing",
    "open_checkpoint",
    "parse_arch_metadata",
    "unwrap_state_dict",
]

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
_ST_ITEMSIZE.update({"U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8})
_ST_ITEMSIZE.update({"F8_E4M3": 1, "F8_E5M2": 1, "C64": 8})
# A header larger than this is not a real safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000

# What nrc audit takes for a checkpoint in a folder (any .tar opens, but only a .pth.tar is
# surely a torch save rather than an archive of something else).
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pth.tar")
# torch.save files; .ckpt is what PyTorch Lightning writes ({"state_dict": ..., "epoch": ...}),
# .tar (.pth.tar) what much research code writes (a dict of dicts, legacy format or zip).
_PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
_NOT_ST_HINT = "is this really a .safetensors file? re-save it with safetensors.torch.save_file"
_PICKLE_HINT = (
    "nrc never unpickles files; save a plain state dict "
    "(torch.save(model.state_dict(), path)) or use safetensors"
)
_INDEX_HINT = "the index and the shards disagree: re-save the model (save_pretrained) in one go"
# Hugging Face file names, in the order transformers looks for them.
_HF_ORDER = (
    ("model.safetensors", "safetensors"),
    ("model.safetensors.index.json", "safetensors-sharded"),
    ("pytorch_model.bin", "pt"),
    ("pytorch_model.bin.index.json", "pt-sharded"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_model_folder_listing(names: set[str]) -> bool:
    """Whether a folder holding the files ``names`` is one checkpoint for :func:`open_checkpoint`
    (a Hugging Face file it looks for, or an index of shards)."""
    return any(n in names for n, _ in _HF_ORDER) or any(n.endswith(".index.json") for n in names)


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

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor once loaded."""
        size = _ST_ITEMSIZE.get(self.dtype)
        if size is None:  # a .pt tensor: its dtype is a torch name
            dtype = getattr(torch, self.dtype, None)
            size = dtype.itemsize if isinstance(dtype, torch.dtype) else 8
        return self.numel * size


@dataclass
class Checkpoint:
    """A checkpoint whose headers have been read and checked.

    Attributes
    ----------
    path : Path
        What was opened: a file, a folder, or a ``*.index.json`` file.
    format : str
        How the tensors are stored: ``"safetensors"`` (one file), ``"pt"`` (one
        ``.pt``/``.pth``/``.bin`` file), ``"safetensors-sharded"`` or ``"pt-sharded"`` (an index
        and its shards).
    metadata : dict[str, str]
        The safetensors ``__metadata__``, merged over all shards (empty for ``.pt``).
    tensors : dict[str, TensorInfo]
        Every stored tensor, by name: shard by shard, in file order within a shard.
    files : list[Path]
        The files the tensors live in (one, or the shards in index order).
    container : str
        ``"file"`` when a checkpoint file was given, ``"folder"`` for a folder or an index file.
    config : dict or None
        The folder's ``config.json`` (Hugging Face model configuration), parsed as plain JSON;
        None when there is none (always None for a single file).
    """

    path: Path
    format: str
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    _loaded: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    files: list[Path] = field(default_factory=list)
    container: str = "file"
    config: dict | None = None
    # tensor name -> the file that stores it (sharded checkpoints).
    _file_of: dict[str, Path] = field(default_factory=dict, repr=False)
    # The dotted paths of every dict of tensors in a torch.save file ("" for the top level).
    state_paths: list[str] = field(default_factory=list)
    state_key: str | None = None

    def __post_init__(self) -> None:
        if not self.files:
            self.files = [self.path]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Load every tensor (CPU) and return them by name, reading one shard at a time."""
        if self._loaded is not None:
            return dict(self._loaded)
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {f: [] for f in self.files}
        for name in self.tensors:
            by_file[self._file_of.get(name, self.files[0])].append(name)
        out: dict[str, torch.Tensor] = {}
        for file, names in by_file.items():
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for name in names:
                        out[name] = f.get_tensor(name)
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(
                    f"{file}: cannot read tensor data: {exc}",
                    hint="the file may be corrupt or truncated; re-export it",
                ) from exc
        return {name: out[name] for name in self.tensors}

    @property
    def n_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        """Bytes of all the tensors once loaded (the headers' claim for safetensors)."""
        return sum(t.nbytes for t in self.tensors.values())


def open_checkpoint(path: str | os.PathLike, *, state_key: str | None = None) -> Checkpoint:
    """Open a checkpoint file or folder and validate its headers without loading tensor data.

    Parameters
    ----------
    path : str or PathLike
        A ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` state dict, a Hugging Face style
        folder, or a ``*.index.json`` file (see the module docstring for the folder rules).
    state_key : str, optional
        The dotted path of the state dict inside a ``torch.save`` file that holds several
        (``model.state_dict``; :mod:`nrc_cli.io.nested`).

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        Missing file, unknown suffix, a folder with no (or several) checkpoints, truncated file,
        corrupt header, an index that disagrees with its shards, a missing shard, or a ``.pt``
        file that would need pickle.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found", hint="check the path")
    if state_key is not None and (p.is_dir() or p.suffix not in _PT_SUFFIXES):
        raise ConfigError(
            f"--state-key applies to torch.save files ({', '.join(_PT_SUFFIXES)}); "
            f"{p} holds one flat state dict",
            hint="drop --state-key",
        )
    if p.is_dir():
        return _open_folder(p)
    require_regular(p, str(p), CheckpointError, expected="a checkpoint file")
    if p.name.endswith(".index.json"):
        fmt = "pt-sharded" if p.name.endswith(".bin.index.json") else "safetensors-sharded"
        return _open_sharded(p, p.parent, fmt, container="folder", path=p)
    if p.suffix in _PT_SUFFIXES:
        obj = _load_pt(p)
        paths = state_paths(obj)
        if state_key is not None:
            state = find_state(obj, state_key, where=str(p))
        else:
            state = unwrap_state_dict(obj, where=str(p), paths=paths)
        return Checkpoint(
            p, "pt", {}, _infos(state), _loaded=state, state_paths=paths, state_key=state_key
        )
    if p.suffix != ".safetensors":
        raise CheckpointError(
            f"{p}: unknown checkpoint type '{p.suffix}', expected .safetensors, .pt, .pth, .bin, "
            ".ckpt, .tar, a *.index.json file or a model folder",
        )
    meta, tensors = _read_safetensors_header(p)
    return Checkpoint(p, "safetensors", meta, tensors)


# ------------------------------------------------------------------------------------------------
# Folders and shards
# ------------------------------------------------------------------------------------------------


def _open_folder(folder: Path) -> Checkpoint:
    """Find the checkpoint inside a folder (module docstring, first match wins) and open it."""
    name, fmt = _find_in_folder(folder)
    file = folder / name
    if fmt.endswith("-sharded"):
        return _open_sharded(file, folder, fmt, container="folder", path=folder)
    config = _read_config(folder)
    if fmt == "pt":
        state = unwrap_state_dict(_load_pt(file), where=str(file))
        return Checkpoint(
            folder,
            "pt",
            {},
            _infos(state),
            _loaded=state,
            files=[file],
            container="folder",
            config=config,
        )
    meta, tensors = _read_safetensors_header(file)
    return Checkpoint(
        folder, "safetensors", meta, tensors, files=[file], container="folder", config=config
    )


def _find_in_folder(folder: Path) -> tuple[str, str]:
    """Return (file name, format) of the checkpoint in ``folder``."""
    for name, fmt in _HF_ORDER:
        if (folder / name).is_file():
            return name, fmt
    names = sorted(e.name for e in folder.iterdir() if e.is_file())
    groups = (
        ("safetensors-sharded", [n for n in names if n.endswith(".safetensors.index.json")]),
        ("pt-sharded", [n for n in names if n.endswith(".bin.index.json")]),
        ("safetensors", [n for n in names if n.endswith(".safetensors")]),
        ("pt", [n for n in names if n.endswith(_PT_SUFFIXES)]),
    )
    for fmt, matches in groups:
        if len(matches) == 1:
            return matches[0], fmt
        if len(matches) > 1:
            shown = ", ".join(matches[:8]) + (
                f" and {len(matches) - 8} more" if len(matches) > 8 else ""
            )
            raise CheckpointError(
                f"{folder}: found several {fmt} checkpoint files and no index to join them: "
                f"{shown}",
                hint="pass one of the files, or add model.safetensors.index.json for shards",
            )
    listed = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    raise CheckpointError(
        f"{folder}: no checkpoint in this folder: expected model.safetensors, "
        "model.safetensors.index.json with its shards, pytorch_model.bin, or one *.safetensors "
        f"/ *.pt / *.pth / *.bin file; found {listed or 'no files'}",
        hint="pass the checkpoint file itself, or the folder save_pretrained wrote",
    )


def _read_config(folder: Path) -> dict | None:
    """Parse ``config.json`` as plain data (it never names code nrc would import)."""
    p = folder / "config.json"
    if not p.is_file():
        return None
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{p}: expected a JSON object (the model configuration), found invalid JSON: "
            f"{_json_problem(exc)}",
            hint="repair or remove config.json",
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{p}: expected a JSON object (the model configuration), found {type(config).__name__}",
            hint="repair or remove config.json",
        )
    return config


def _read_index(index: Path) -> dict[str, str]:
    """Return the index's ``weight_map`` (tensor name -> shard file name), checked."""
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{index}: corrupt shard index: not valid JSON ({_json_problem(exc)})",
            hint=_INDEX_HINT,
        ) from exc
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        found = f"keys {sorted(doc)}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise CheckpointError(
            f"{index}: corrupt shard index: expected an object with a non-empty 'weight_map' "
            f"(tensor name -> shard file), found {found}",
            hint=_INDEX_HINT,
        )
    bad = [k for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if bad:
        raise CheckpointError(
            f"{index}: corrupt shard index: 'weight_map' entry '{bad[0]}' is "
            f"{weight_map[bad[0]]!r}, expected a shard file name",
            hint=_INDEX_HINT,
        )
    return {str(k): v for k, v in weight_map.items()}


def _shard_path(folder: Path, name: str, index: Path) -> Path:
    """The shard's path; an index may only name files inside its own folder.

    Checked on the name, not on the resolved path: in the Hugging Face cache every file of a
    snapshot folder is a symbolic link into a shared ``blobs`` folder.
    """
    p = folder / name
    parts = Path(os.path.normpath(name)).parts
    if Path(name).is_absolute() or not parts or parts[0] == "..":
        raise CheckpointError(
            f"{index}: the index names shard '{name}', which is outside the folder {folder}",
            hint="shard names must be plain file names next to the index",
        )
    return p


def _open_sharded(
    index: Path,
    folder: Path,
    fmt: str,
    *,
    container: str,
    path: Path,
) -> Checkpoint:
    """Read the index, then every shard's header; check they agree before loading anything.

    ``.bin`` shards have no header: they are loaded (weights only) one after the other.
    """
    config = _read_config(folder)
    weight_map = _read_index(index)
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    missing = [s for s in shards if not _shard_path(folder, s, index).is_file()]
    if missing:
        s = missing[0]
        also = (
            f" (and {len(missing) - 1} more shard(s): {', '.join(missing[1:4])})"
            if missing[1:]
            else ""
        )
        raise CheckpointError(
            f"{index}: shard '{s}' is missing from {folder}; the index places "
            f"{len(shards[s])} tensor(s) there, e.g. '{shards[s][0]}'{also}",
            hint="download or copy every shard the index names",
        )
    tensors: dict[str, TensorInfo] = {}
    file_of: dict[str, Path] = {}
    metadata: dict[str, str] = {}
    meta_from: dict[str, Path] = {}
    meta: dict[str, str]
    loaded: dict[str, torch.Tensor] | None = {} if fmt == "pt-sharded" else None
    files: list[Path] = []
    for shard, listed in shards.items():
        file = _shard_path(folder, shard, index)
        files.append(file)
        if loaded is not None:
            state = unwrap_state_dict(_load_pt(file), where=str(file))
            loaded.update(state)
            held, meta = _infos(state), {}
        else:
            meta, held = _read_safetensors_header(file)
        absent = [k for k in listed if k not in held]
        if absent:
            shown = ", ".join(f"'{k}'" for k in list(held)[:8]) or "nothing"
            raise CheckpointError(
                f"{index}: the index places tensor '{absent[0]}' in shard '{shard}', but that "
                f"shard does not hold it ({len(absent)} such tensor(s); the shard holds "
                f"{len(held)}: {shown}{', ...' if len(held) > 8 else ''})",
                hint=_INDEX_HINT,
            )
        for name, info in held.items():
            if name in file_of:
                raise CheckpointError(
                    f"{folder}: tensor '{name}' is stored twice, in shard "
                    f"'{file_of[name].name}' and in shard '{shard}'",
                    hint=_INDEX_HINT,
                )
            if weight_map.get(name) != shard:
                raise CheckpointError(
                    f"{file}: shard '{shard}' holds tensor '{name}', which the index "
                    f"{index.name} does not place there"
                    + (f" (it names '{weight_map[name]}')" if name in weight_map else ""),
                    hint=_INDEX_HINT,
                )
            tensors[name] = info
            file_of[name] = file
        for key, value in meta.items():
            if key in metadata and metadata[key] != value:
                raise CheckpointError(
                    f"{folder}: shards disagree on metadata '{key}': "
                    f"'{meta_from[key].name}' says {metadata[key]!r}, '{shard}' says {value!r}",
                    hint=_INDEX_HINT,
                )
            metadata.setdefault(key, value)
            meta_from.setdefault(key, file)
    return Checkpoint(
        path,
        fmt,
        metadata,
        tensors,
        _loaded=loaded,
        files=files,
        container=container,
        config=config,
        _file_of=file_of,
    )


# ------------------------------------------------------------------------------------------------
# One file
# ------------------------------------------------------------------------------------------------


def _read_safetensors_header(p: Path) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Read and check one safetensors header against the file size; return (metadata, tensors).

    Not through ``safe_open``, which reads tensors later (:meth:`Checkpoint.state_dict`):
    opening a file it maps all of it, so a header claiming a 64 GB tensor fails with "Cannot
    allocate memory" under an address-space limit before its header can be judged (the
    memory-bomb test), and the errors it raises name no tensor and no byte counts.
    """
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
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{p}: corrupt safetensors header: {_json_problem(exc)}",
            hint=_NOT_ST_HINT,
        ) from exc
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: corrupt safetensors header: __metadata__ is not an object")
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        tensors[name] = _header_entry(p, name, info, data_size)
    return {str(k): str(v) for k, v in meta.items()}, tensors


def _header_entry(p: Path, name: str, info: object, data_size: int) -> TensorInfo:
    """Check one tensor entry of a safetensors header completely, before anything is allocated:
    a known dtype, a shape of non-negative integers, and a byte range inside the data section
    whose length is exactly what the shape and dtype need."""
    where = f"{p}: corrupt safetensors header: tensor '{name}'"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        found = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(
            f"{where}: expected an object with dtype, shape and data_offsets, found {found}",
            hint=_NOT_ST_HINT,
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
        raise CheckpointError(
            f"{where}: unknown dtype {_short(dtype)}, expected one of {', '.join(_ST_ITEMSIZE)}",
            hint=_NOT_ST_HINT,
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(
            f"{where}: the shape {_short(shape)} is not a list of non-negative integers",
            hint=_NOT_ST_HINT,
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(
            f"{where}: data_offsets {_short(offsets)} is not [begin, end] with 0 <= begin <= end",
            hint=_NOT_ST_HINT,
        )
    start, end = offsets
    if end > data_size:
        raise CheckpointError(
            f"{p}: truncated: tensor '{name}' ends at byte {end} of the data section, "
            f"which has only {data_size} bytes",
            hint="the file was cut short (interrupted copy or download?); re-export it",
        )
    numel = 1
    for d in shape:
        numel *= d
    if end - start != numel * _ST_ITEMSIZE[dtype]:
        raise CheckpointError(
            f"{where}: shape {shape} and dtype {dtype} need {numel * _ST_ITEMSIZE[dtype]} "
            f"bytes, the header gives {end - start}",
        )
    return TensorInfo(name, tuple(shape), dtype)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    return str(exc)


def _infos(state: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {
        k: TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in state.items()
    }


def _load_pt(p: Path) -> object:
    """``torch.load(weights_only=True)``; refuse anything that needs pickle."""
    import pickle

    require_regular(p, str(p), CheckpointError, expected="a checkpoint file")
    if _is_torchscript(p):
        raise CheckpointError(
            f"{p}: refused: this is a TorchScript archive (torch.jit.save), which holds code as "
            "well as weights; nrc loads plain state dicts only",
            hint="where you trust the file, save its weights: "
            "torch.save(torch.jit.load(path).state_dict(), 'weights.pt')",
        )
    try:
        with warnings.catch_warnings():
            # torch warns on stderr about pickle protocols and TorchScript; the error says it all.
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: refused: the file holds {_pickled_what(exc)}, which would need pickle to load",
            hint=_PICKLE_HINT,
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{p}: cannot read as a PyTorch checkpoint: {type(exc).__name__}: {_torch_reason(exc)}",
            hint="the file may be corrupt or truncated",
        ) from exc
    return obj


def _is_torchscript(p: Path) -> bool:
    """A TorchScript archive is a zip like a ``torch.save`` file, plus compiled code."""
    try:
        if not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _pickled_what(exc: BaseException) -> str:
    """Name the Python object torch's weights-only unpickler stopped at, if it says.

    torch's message also advises passing ``weights_only=False``, which would run the file's
    code: that advice is never repeated.
    """
    text = _ANSI.sub("", str(exc))
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"a Python object of type {m.group(1)}"
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if m and "weights_only" not in m.group(1):
        return f"Python objects the weights-only loader refuses ({m.group(1).strip()[:120]})"
    return "Python objects the weights-only loader refuses"


def _torch_reason(exc: BaseException) -> str:
    """The first line of torch's message, unless it is the advice to drop weights_only."""
    line = _first_line(str(exc))
    if "weights_only" in line:
        return "not a state dict torch can read without running code"
    return line[:200]


def _first_line(text: str) -> str:
    text = _ANSI.sub("", text).strip()
    return text.splitlines()[0] if text else "no details"


def parse_arch_metadata(ckpt: Checkpoint) -> dict | None:
    """Return the declarative ``nrc.arch`` metadata object, or None when absent."""
    raw = ckpt.metadata.get("nrc.arch")
    if raw is None:
        return None
    try:
        arch = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{ckpt.path}: metadata 'nrc.arch' is not valid JSON: {_json_problem(exc)}",
        ) from exc
    if not isinstance(arch, dict):
        raise CheckpointError(f"{ckpt.path}: metadata 'nrc.arch' must be a JSON object")
    return arch
