"""The prediction inside a model's output, which every family reads (``--output-key``)."""

from __future__ import annotations

from nrc_cli.errors import DataError


def pick_output(out, key: str):
    """The part ``key`` of a model's output: an index into a tuple or list, a key of a dict or
    ModelOutput, or an attribute."""
    if isinstance(out, (tuple, list)) and not hasattr(out, "keys"):
        try:
            return out[int(key)]
        except (ValueError, IndexError):
            raise DataError(
                f"--output-key {key!r}: the model returned a {type(out).__name__} of "
                f"{len(out)} items; use an index 0..{len(out) - 1}",
            ) from None
    if hasattr(out, "keys"):
        keys = list(out.keys())
        if key in keys:
            return out[key]
        raise DataError(
            f"--output-key {key!r}: the model's output has keys {', '.join(map(str, keys))}",
        )
    if hasattr(out, key):
        return getattr(out, key)
    raise DataError(f"--output-key {key!r}: the model returned {describe_output(out)}")


def describe_output(out) -> str:
    """A model's output in words, for messages: its type, and its keys or length."""
    if hasattr(out, "keys"):
        return f"a {type(out).__name__} with keys {', '.join(map(str, out.keys()))}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"
