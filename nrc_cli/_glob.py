"""Module-path globs: ``*`` within one dotted segment, ``**`` across segments.

A module path is a dotted name (``encoder.layer.0.attention.output.dense``). As in gitignore
and most path globs, with ``.`` as the separator:

* ``*`` matches any run of characters within one segment (no dot);
* ``?`` matches one character other than a dot; ``[abc]``/``[!abc]`` a character class;
* ``**`` as a whole segment matches any number of whole segments, none included:
  ``encoder.**.dense`` matches ``encoder.dense`` and ``encoder.layer.0.output.dense``;
  ``**.dense`` matches every ``dense``; ``encoder.**`` everything below ``encoder``;
* ``**`` inside a segment matches any characters, dots included (``**downsample**``).

So ``encoder.layer.*.output.dense`` matches ``encoder.layer.0.output.dense`` but not
``encoder.layer.0.attention.output.dense``.
"""

from __future__ import annotations

import re
from functools import cache

__all__ = ["glob_match", "glob_regex"]


def _segment(seg: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            if seg.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            end = seg.find(
                "]", i + 2 if seg.startswith("[!", i) or seg.startswith("[]", i) else i + 1
            )
            if end < 0:
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : end]
                neg = body.startswith("!")
                body = body[1:] if neg else body
                body = body.replace("\\", "\\\\").replace("^", "\\^")
                out.append(f"[{'^' if neg else ''}{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@cache
def glob_regex(pattern: str) -> re.Pattern[str]:
    """The compiled regular expression of a module-path glob (whole-name match)."""
    segs: list[str] = []
    for seg in pattern.split("."):
        if seg == "**" and segs and segs[-1] == "**":
            continue  # a.**.**.b is a.**.b
        segs.append(seg)
    if segs == ["**"]:
        return re.compile(r".*", re.DOTALL)
    regex = ""
    after_segment = False  # the previous piece ended with a segment: a dot comes next
    for i, seg in enumerate(segs):
        if seg == "**":
            if i == 0:
                regex += r"(?:[^.]*\.)*"  # leading: any whole segments, each with its dot
            elif i == len(segs) - 1:
                regex += r"(?:\..*)?"  # trailing: nothing, or a dot and anything
            else:
                regex += r"(?:\.[^.]*)*\."  # between: one dot, or dot-separated segments
            after_segment = False
            continue
        if after_segment:
            regex += r"\."
        regex += _segment(seg)
        after_segment = True
    return re.compile(regex, re.DOTALL)


def glob_match(name: str, pattern: str) -> bool:
    """Whether the module path ``name`` matches the glob ``pattern`` as a whole."""
    return glob_regex(pattern).fullmatch(name) is not None
