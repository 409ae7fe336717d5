"""State dicts nested inside what research code saves with ``torch.save``.

A training script's checkpoint is often a dict of dicts: ``{"epoch": 90, "model":
{"state_dict": {...}}, "ema": {...}, "optimizer": {...}}`` (the ``.pth.tar`` of many research
repositories). :func:`state_paths` lists the dotted paths of every dict of tensors inside such
an object (the candidates ``nrc inspect`` shows), :func:`find_state` follows one
``--state-key`` path (``model.state_dict``), saying where it failed and what it found there,
and :func:`unwrap_state_dict` finds the state dict of the common wrappers without a path.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nrc_cli.errors import CheckpointError, ConfigError

__all__ = ["find_state", "is_state_dict", "state_paths", "unwrap_state_dict"]

_MAX_DEPTH = 6
_MAX_PATHS = 50


def is_state_dict(obj: object) -> bool:
    """A non-empty dict whose values are all tensors."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def state_paths(obj: object) -> list[str]:
    """Dotted paths of the dicts of tensors inside ``obj`` (``""`` for ``obj`` itself), in
    the order they are stored, at most a few levels deep."""
    found: list[str] = []

    def walk(node: object, path: str, depth: int) -> None:
        if len(found) >= _MAX_PATHS or depth > _MAX_DEPTH or not isinstance(node, Mapping):
            return
        if is_state_dict(node):
            found.append(path)
            return
        for key, value in node.items():
            walk(value, f"{path}.{key}" if path else str(key), depth + 1)

    walk(obj, "", 0)
    return found


def find_state(obj: object, key: str, *, where: str) -> dict[str, torch.Tensor]:
    """The dict of tensors at the dotted path ``key`` inside ``obj``.

    A key that itself holds dots (``"model.ema"``) is matched whole before it is split.

    Raises
    ------
    ConfigError
        An empty path.
    CheckpointError
        A step that is not there (the message lists the keys found at that level and the
        candidate paths), or a path that ends at something other than a dict of tensors.
    """
    if not isinstance(key, str) or not key.strip(".").strip():
        raise ConfigError(
            f"--state-key: expected a dotted path such as model.state_dict, found {key!r}"
        )
    parts = key.split(".")
    node: object = obj
    walked: list[str] = []
    while parts:
        if not isinstance(node, Mapping):
            at = ".".join(walked) or "the top level"
            raise CheckpointError(
                f"{where}: --state-key {key!r}: {at!r} holds {type(node).__name__}, not a dict",
                hint=_candidates(obj),
            )
        for size in range(len(parts), 0, -1):  # the longest key first: keys may hold dots
            step = ".".join(parts[:size])
            if step in node:
                node, walked, parts = node[step], [*walked, step], parts[size:]
                break
        else:
            at = f"under {'.'.join(walked)!r}" if walked else "at the top level"
            keys = ", ".join(repr(str(k)) for k in list(node)[:12])
            more = f" (and {len(node) - 12} more)" if len(node) > 12 else ""
            raise CheckpointError(
                f"{where}: --state-key {key!r}: no key {parts[0]!r} {at}; found {keys or 'none'}"
                f"{more}",
                hint=_candidates(obj),
            )
    if not is_state_dict(node):
        raise CheckpointError(
            f"{where}: --state-key {key!r} leads to {type(node).__name__}, not a dict of tensors",
            hint=_candidates(obj),
        )
    assert isinstance(node, Mapping)
    return {str(k): v for k, v in node.items()}


def _candidates(obj: object) -> str:
    paths = [p for p in state_paths(obj) if p]
    if not paths:
        return "the file holds no dict of tensors"
    return "dicts of tensors in this file: " + ", ".join(paths)


def unwrap_state_dict(
    obj: object, *, where: str, paths: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a loaded ``.pt`` object.

    Training scripts often write ``{"model": state_dict, "optimizer": ..., "epoch": ...}`` or
    ``{"state_dict": ...}``; those wrappers are unwrapped. Non-tensor entries are refused; where
    dicts of tensors lie deeper (``paths``, from :func:`nrc_cli.io.nested.state_paths`), the
    hint names them for ``--state-key``.
    """
    nested = [q for q in (paths if paths is not None else state_paths(obj)) if q]
    fix = (
        f"pick one with --state-key: {', '.join(nested[:8])}"
        if nested
        else "save with torch.save(model.state_dict(), path)"
    )
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
            f"found non-tensor entries: {', '.join(bad[:8]) or 'none (the dict is empty)'}",
            hint=fix,
        )
    raise CheckpointError(
        f"{where}: expected a state dict (a dict of tensors), found {type(obj).__name__}",
        hint=fix,
    )
