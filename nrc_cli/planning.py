"""How the accumulation fits in memory: which layers go in which data pass, exact or sketched.

Every selected layer needs its float64 state for the whole pass: Σzzᵀ (p×p) and Σzyᵀ (p×t) in
exact mode, or Σ_Z·Ω (p×s) with s = max(rank + oversample, 128) in sketch mode (O(p·s)). While
a batch is folded in, one layer at a time also holds that batch's features (b×p, twice: raw and
shifted, the shifted copy of exact layers in one scratch buffer the pass's layers share) and,
when sketched, their product with Ω; exact co-moments are added in place. The plan keeps, for
every pass,

    Σ_layers state  +  max_layers per-batch temporaries  <=  budget

preferring exact accumulation in as few passes as possible; a layer whose exact state alone
exceeds the budget is sketched. The budget bounds the accumulators only: the model, its
activations and the data batches come on top.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nrc_cli.errors import ConfigError

_F64 = 8
# A single pass allows no power iterations, so the sketch gets more columns than k + oversample:
# at 128 its memory is still O(p) (1 MB per 1000 features) and its cost per batch b·p·128.
MIN_SKETCH = 128
DEFAULT_BUDGET_FRACTION = 0.5
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


_MAX_SIZE = 1e18


def parse_size(text: str) -> int:
    """Parse a memory size such as ``4GB``, ``512MiB`` or ``1e9`` into bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text or "")
    if m is None or m.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"--memory-budget: expected a size like 4GB, 512MB or 2GiB, found '{text}'",
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ConfigError(f"--memory-budget: expected a positive size, found '{text}'")
    if not value < _MAX_SIZE:  # also inf: 1e400GB overflows a float
        raise ConfigError(
            f"--memory-budget: '{text}' is too large; expected a size below 1 EB (1e18 bytes)"
        )
    return int(value)


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


def default_budget(device="cpu", *, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The default budget: half of the memory available on ``device`` when the run starts.

    The accumulators live where the features are computed, so on a CUDA device the budget is
    half of the card's free memory, not of the host's. On the CPU, a container's memory limit
    (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``) caps what counts as available.
    """
    return int(DEFAULT_BUDGET_FRACTION * available_device_memory(device, cgroup_root))


@dataclass(frozen=True)
class LayerNeed:
    """Memory a layer needs, in bytes, in each mode."""

    name: str
    p: int
    exact_state: int
    exact_temp: int
    sketch_state: int
    sketch_temp: int
    sketch_size: int


def layer_need(
    name: str, p: int, t: int, k: int, *, oversample: int, batch: int, head: bool
) -> LayerNeed:
    """Bytes of state and per-batch temporaries for one layer of width p (see module doc)."""
    s = min(p, max(min(k, p) + oversample, MIN_SKETCH))
    features = 2 * batch * p
    exact_state = p * p + p * t + t * t + 2 * p + 2 * t
    if head:  # the normalised Gram of a possible regression head
        exact_state += p * p
    return LayerNeed(
        name=name,
        p=p,
        exact_state=_F64 * exact_state,
        exact_temp=_F64 * features,
        sketch_state=_F64 * (2 * p * s + 3 * p + p * t + t * t),
        sketch_temp=_F64 * (p * s + features),
        sketch_size=s,
    )


NARROW_NOTE = (
    "exact, not randomized: a sketch of rank + oversample columns would be at least half as "
    "wide as the layer, so the exact spectrum costs no more and has no error"
)


@dataclass
class Plan:
    """Passes over the data and the accumulation mode of each layer."""

    budget: int
    passes: list[list[str]] = field(default_factory=list)
    mode: dict[str, str] = field(default_factory=dict)  # "exact" or "sketch"
    sketch_size: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)  # state + temporaries

    def peak(self, names: list[str], needs: dict[str, LayerNeed]) -> int:
        state = sum(self._state(needs[n]) for n in names)
        temp = max((self._temp(needs[n]) for n in names), default=0)
        return state + temp

    def _state(self, need: LayerNeed) -> int:
        return need.exact_state if self.mode[need.name] == "exact" else need.sketch_state

    def _temp(self, need: LayerNeed) -> int:
        return need.exact_temp if self.mode[need.name] == "exact" else need.sketch_temp

    def to_dict(self, svd: dict[str, str], budget_label: str, requested: str = "auto") -> dict:
        """The plan as recorded in the summary.

        ``svd`` is each layer's spectrum method, ``requested`` the ``--svd`` asked for: a layer
        that ``--svd randomized`` gets exactly (it is too narrow for a sketch to pay) says so.
        """
        # The budget is recorded as asked for ("auto" = a share of the memory available at the
        # time), so that the same inputs always give the same report.
        layers = []
        for i, group in enumerate(self.passes):
            for name in group:
                row = {
                    "layer": name,
                    "pass": i + 1,
                    "accumulator": self.mode[name],
                    "spectrum": svd.get(name),
                    "sketch_size": self.sketch_size.get(name),
                    "bytes": self.bytes[name],
                }
                if requested == "randomized" and svd.get(name) == "exact":
                    row["spectrum_note"] = NARROW_NOTE
                layers.append(row)
        return {"memory_budget": budget_label, "passes": len(self.passes), "layers": layers}


def make_plan(needs: list[LayerNeed], budget: int) -> Plan:
    """Assign layers to passes and modes so each pass's accumulators fit ``budget`` bytes.

    Raises
    ------
    ConfigError
        When even the sketch of one layer with one batch does not fit.
    """
    plan = Plan(budget)
    by_name = {n.name: n for n in needs}
    for need in needs:
        if need.exact_state + need.exact_temp <= budget:
            plan.mode[need.name] = "exact"
            plan.bytes[need.name] = need.exact_state + need.exact_temp
        elif need.sketch_state + need.sketch_temp <= budget:
            plan.mode[need.name] = "sketch"
            plan.sketch_size[need.name] = need.sketch_size
            plan.bytes[need.name] = need.sketch_state + need.sketch_temp
        else:
            raise ConfigError(
                f"--memory-budget {budget:,} bytes is too small: layer '{need.name}' (width "
                f"{need.p}) needs at least {need.sketch_state + need.sketch_temp:,} bytes for "
                "one batch of its sketch",
                hint="raise --memory-budget or lower --batch-size",
            )
    current: list[str] = []
    for need in needs:
        if current and plan.peak([*current, need.name], by_name) > budget:
            plan.passes.append(current)
            current = []
        current.append(need.name)
    if current:
        plan.passes.append(current)
    return plan
