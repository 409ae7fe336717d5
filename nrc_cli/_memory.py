"""How much memory this machine (or a CUDA card) has free now: for the memory budget and for
refusing a checkpoint that cannot be loaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 reports "no limit" as the largest page-aligned 63-bit number (~9.2e18).
_UNLIMITED = 1 << 60


def available_memory(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """Bytes of memory available now: the host's MemAvailable (physical memory off Linux),
    and no more than this process's cgroup still allows (:func:`cgroup_headroom`)."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if host is None:
        try:
            host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            host = 8 * 1024**3
    headroom = cgroup_headroom(cgroup_root, self_cgroup)
    return host if headroom is None else min(host, headroom)


def cgroup_headroom(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """Bytes this process's memory cgroup may still grow by (limit − usage), or None.

    A container's memory limit is a cgroup limit, invisible in /proc/meminfo: a process that
    plans by MemAvailable alone is killed at the limit. Reads cgroup v2 ``memory.max`` and
    ``memory.current``, or v1 ``memory/memory.limit_in_bytes`` and ``memory.usage_in_bytes``,
    in this process's cgroup (from ``self_cgroup``) and every cgroup above it up to ``root``
    (a parent's limit binds its children too); the smallest headroom wins. None when no
    limit is set or nothing can be read.

    Parameters
    ----------
    root : Path
        Where the cgroup file system is mounted (``/sys/fs/cgroup``).
    self_cgroup : Path
        This process's cgroup membership (``/proc/self/cgroup``).
    """
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    v2, v1 = "/", "/"
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path or "/"
        elif "memory" in controllers.split(","):
            v1 = path or "/"
    found = [
        *_headrooms(root, v2, "memory.max", "memory.current"),
        *_headrooms(root / "memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ]
    return min(found) if found else None


def _headrooms(base: Path, own: str, limit_name: str, usage_name: str) -> list[int]:
    """limit − usage in ``base/own`` and each of its parents up to ``base``, where limited."""
    out = []
    parts = [p for p in own.strip("/").split("/") if p and p not in (".", "..")]
    for depth in range(len(parts), -1, -1):
        folder = base.joinpath(*parts[:depth])
        limit = _read_bytes(folder / limit_name)
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = _read_bytes(folder / usage_name) or 0
        out.append(max(limit - usage, 0))
    return out


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def available_device_memory(device, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Bytes free on ``device`` now: host memory for the CPU (within the cgroup's limit), the
    card's free memory for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_memory(cgroup_root)
