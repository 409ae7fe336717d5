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

In mixed precision (``--precision mixed``) the states are the same float64 sums, and an exact
layer's temporaries are its raw batch, the batch centred in float32 (b×p) and one float32
product (at most p×p, on a GPU; a 256×256 block on the CPU) before it is added into float64.
A layer at least ``SYRK_MIN_WIDTH`` wide is accumulated on the CPU as in exact precision
(``nrc_cli.accumulate.moments._exact_on_cpu``): for it the plan counts the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nrc_cli._memory import (
    CGROUP_ROOT,
    available_device_memory,
    available_memory,
    cgroup_headroom,
)
from nrc_cli.accumulate.gram import SYRK_MIN_WIDTH
from nrc_cli.errors import ConfigError
from nrc_cli.options import parse_size

__all__ = [
    "Plan",
    "available_device_memory",
    "available_memory",
    "cgroup_headroom",
    "default_budget",
    "layer_need",
    "make_plan",
    "parse_size",
]

_F64 = 8
_F32 = 4
# A single pass allows no power iterations, so the sketch gets more columns than k + oversample:
# at 128 its memory is still O(p) (1 MB per 1000 features) and its cost per batch b·p·128.
MIN_SKETCH = 128
DEFAULT_BUDGET_FRACTION = 0.5


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
    name: str,
    p: int,
    t: int,
    k: int,
    *,
    oversample: int,
    batch: int,
    head: bool,
    precision: str = "exact",
) -> LayerNeed:
    """Bytes of state and per-batch temporaries for one layer of width p (see module doc)."""
    s = min(p, max(min(k, p) + oversample, MIN_SKETCH))
    features = 2 * batch * p
    exact_temp = _F64 * features
    if precision == "mixed":  # the raw batch, the float32 centred batch and float32 product
        mixed_temp = _F64 * batch * p + _F32 * (batch * p + p * p)
        # A wide layer is accumulated as in exact on the CPU: the larger of the two.
        exact_temp = max(exact_temp, mixed_temp) if p >= SYRK_MIN_WIDTH else mixed_temp
    exact_state = p * p + p * t + t * t + 2 * p + 2 * t
    if head:  # the normalised Gram of a possible regression head
        exact_state += p * p
    return LayerNeed(
        name=name,
        p=p,
        exact_state=_F64 * exact_state,
        exact_temp=exact_temp,
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
