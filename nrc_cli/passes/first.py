"""The first pass over the data, whatever the family: :class:`FirstPass`, the state of a
monitor's stream, and how its accumulators are made.

* :func:`first_accumulators` (with :func:`single_pass_sketches` under a memory budget): each
  layer's accumulators, made at the first batch, when the target width is known; and
  :func:`plan_row`, how a layer was accumulated;
* :class:`FirstPass`: every layer's accumulators, the prediction's, the samples; it merges,
  joins and reduces across ranks, each once :mod:`nrc_cli.passes.combining` has checked,
  before anything changes, that the result is right.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from nrc_cli._threads import single_threaded
from nrc_cli.accumulate.base import Accumulator
from nrc_cli.accumulate.moments import Workspace
from nrc_cli.capture import WeightLayer
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families.batch import PARTIAL_HINT
from nrc_cli.passes.combining import check_alike, check_join, check_merge, covers
from nrc_cli.passes.states import check_accumulator, layer_state, load_layer_states
from nrc_cli.planning import NARROW_NOTE, make_plan

if TYPE_CHECKING:
    from nrc_cli.distributed import Group
    from nrc_cli.families.regression import LayerOutcome, RegressionFamily
    from nrc_cli.passes.second import SecondPass

__all__ = [
    "FirstPass",
    "first_accumulators",
    "plan_row",
    "single_pass_sketches",
    "sketched_size",
]

_I64 = torch.int64

# -- the accumulators of a pass --------------------------------------------------------------


def first_accumulators(
    family: RegressionFamily,
    layers: Sequence[WeightLayer],
    t: int,
    b: int,
    device: torch.device,
    sketch: Mapping[str, int],
) -> dict[str, dict[str, Accumulator]]:
    """Fresh accumulators of ``layers`` (``sketch``: those sketched, with their sizes), made at
    the first batch of a stream: ``t`` target columns, ``b`` rows."""
    # One scratch buffer for every exact layer's per-batch temporaries, allocated before
    # their states so that the two never interleave on the heap.
    workspace = Workspace()
    widths = [w.in_dim for w in layers if w.name not in sketch]
    if widths:
        workspace.reserve_batches(b, max(widths), device, family.precision)
    return {
        w.name: family.layer_accumulators(
            w, t, sketch_size=sketch.get(w.name), device=device, workspace=workspace
        )
        for w in layers
    }


def single_pass_sketches(
    family: RegressionFamily,
    layers: Sequence[WeightLayer],
    t: int,
    b: int,
    budget: int,
    label: object,
) -> dict[str, int]:
    """The layers to sketch, with their sizes, for ``layers`` to fit ``budget`` bytes in one
    pass (``label``: the budget as the caller gave it, for messages)."""
    plan = make_plan([family.layer_need(w, t, b) for w in layers], budget)
    if len(plan.passes) > 1:
        raise ConfigError(
            f"memory_budget {label}: the {len(layers)} layers' states need "
            f"{len(plan.passes)} passes over the data, and a monitor sees each batch once",
            hint="raise memory_budget, monitor fewer layers (layers=...), or analyze a "
            "saved checkpoint with nrc_cli.analyze, which makes several passes",
        )
    return dict(plan.sketch_size)


def plan_row(
    family: RegressionFamily,
    layer: WeightLayer,
    t: int,
    batch: int,
    *,
    pass_index: int,
    sketch_size: int | None,
    spectrum: str | None,
) -> dict:
    """How one layer was accumulated, for ``Results.plan``: its pass, its accumulator (a
    sketch of ``sketch_size``, or exact), its spectrum method and the bytes it needs."""
    need = family.layer_need(layer, t, batch)
    sketched = sketch_size is not None
    row = {
        "layer": layer.name,
        "pass": pass_index,
        "accumulator": "sketch" if sketched else "exact",
        "spectrum": spectrum,
        "sketch_size": sketch_size,
        "bytes": need.sketch_state + need.sketch_temp
        if sketched
        else need.exact_state + need.exact_temp,
    }
    if family.svd == "randomized" and spectrum == "exact":
        row["spectrum_note"] = NARROW_NOTE
    return row


def sketched_size(accs: Mapping[str, Accumulator]) -> int | None:
    """The sketch size of a layer whose accumulators include a sketch; None for an exact one."""
    for acc in accs.values():
        if acc.omega is not None:
            return int(acc.omega.shape[1])
    return None


# -- the first pass --------------------------------------------------------------------------


class FirstPass:
    """The first pass over the data, whatever the family: each layer's accumulators and the
    prediction's, and what the stream has seen.

    A monitor holds one. A plan of several passes over the same samples feeds one monitor
    per pass and joins their first passes (:meth:`join`); each layer keeps the pass it came
    from.

    Attributes
    ----------
    n : int
        Samples folded in.
    t : int or None
        Target columns (None before the first batch).
    batch : int
        Rows of the first batch (for the memory accounting of the plan).
    passes : int
        Passes over the data joined into this one.
    pass_of : dict of str to int
        The pass of each accumulated layer.
    has_prediction : bool or None
        Whether the batches carried the model's prediction (None before the first).
    predictions : Accumulator
        What the model's predictions are summed into (``family.prediction_accumulator``).
    accs : dict of str to dict of str to Accumulator
        Each accumulated layer's accumulators, by kind.
    device : torch.device or None
        Where the state lives: the device of the first batch's features.
    dtype : str or None
        The model's weight dtype when the pass began.
    world_size : int
        Processes whose samples are in the state (:meth:`reduce`).
    """

    def __init__(self, family: RegressionFamily) -> None:
        self.family = family
        self.n = 0
        self.t: int | None = None
        self.batch = 0
        self.passes = 1
        self.pass_of: dict[str, int] = {}
        self.has_prediction: bool | None = None
        self.predictions = family.prediction_accumulator()
        self.accs: dict[str, dict[str, Accumulator]] = {}
        self.device: torch.device | None = None
        self.dtype: str | None = None
        self.world_size = 1

    def start(
        self, layers: Sequence[WeightLayer], y: torch.Tensor, sketch: Mapping[str, int]
    ) -> None:
        """At the first batch (targets ``y``, on :attr:`device`): fresh accumulators for
        ``layers`` (``sketch``: those sketched, with their sizes)."""
        assert self.device is not None
        self.batch, self.t = y.shape
        self.accs.update(
            first_accumulators(self.family, layers, self.t, self.batch, self.device, sketch)
        )
        self.pass_of.update((w.name, 1) for w in layers)

    def check(self, y: torch.Tensor, has_prediction: bool) -> None:
        """Refuse a batch whose targets ``y`` are not as wide as the earlier ones', or that
        carries the model's prediction when the earlier ones did not (or the reverse)."""
        if self.t is not None and y.shape[1] != self.t:
            raise DataError(f"y has {y.shape[1]} target column(s), earlier batches had {self.t}")
        if self.has_prediction is not None and self.n and has_prediction != self.has_prediction:
            raise DataError(
                "update() got a model output for some batches and none for others",
                hint="pass the output for every batch, or for none (then model_mse is null)",
            )

    def update(
        self,
        features: Mapping[str, torch.Tensor],
        y: torch.Tensor,
        pred: torch.Tensor | None,
        *,
        keep: Mapping[str, torch.Tensor] | None = None,
        partial: Collection[str] = (),
    ) -> None:
        """Fold one batch in: each layer's ``features``, the targets ``y`` (b, t), the model's
        prediction (or None).

        Raises
        ------
        DataError
            A layer that ran in this batch but not in earlier ones (its statistics would miss
            their samples); nothing is changed then.
        """
        late = [
            name
            for name in features
            if name not in partial
            and any(acc.n != self.n for acc in self.accs.get(name, {}).values())
        ]
        if late:
            raise DataError(
                f"layer(s) {', '.join(late)} ran in this batch but not in earlier ones; "
                "their statistics would cover fewer samples than the others'",
                hint=PARTIAL_HINT,
            )
        keep = keep or {}
        self.family.check_batch(self.accs, y)
        for name, accs in self.accs.items():
            if name in keep:  # a partial layer: the samples that have its rows, targets alike
                rows = keep[name].to(y.device)
                if bool(rows.any()):
                    self.family.update_layer(accs, features[name][rows], y[rows])
            elif name in features:
                self.family.update_layer(accs, features[name], y)
        if pred is not None:
            self.family.update_prediction(self.predictions, pred, y)
        self.has_prediction = pred is not None
        self.n += y.shape[0]

    def incomplete(self) -> list[str]:
        """Layers whose statistics cover some of the pass's samples but not all (a state that
        no stream makes: a state dict put together by hand)."""
        return [name for name, accs in self.accs.items() if not covers(accs, self.n)]

    def merge(self, other: FirstPass) -> None:
        """Fold in ``other``, the same layers' pass over other samples (both non-empty).

        Raises
        ------
        DataError
            Before anything changes, when the result would not be one pass over both streams:
            other target widths; model outputs in one pass only; a layer accumulated in one
            pass only (or that covers some of its pass's samples only); a layer sketched in one
            pass and exact in the other, or with another width or test matrix.
        """
        check_merge(self, other)
        for name, theirs in other.accs.items():
            for kind, acc in theirs.items():
                self.accs[name][kind].merge(acc)
        self.predictions.merge(other.predictions)
        self.n += other.n

    def join(self, other: FirstPass) -> None:
        """Take over the layers of ``other``, a later pass over the same samples.

        Raises
        ------
        DataError
            Before anything changes: a layer in both passes; passes over other data (other
            sample counts or target widths, or targets whose mean and covariance, or label
            counts, or the model's errors on them, differ beyond round-off); a layer that
            covers some of its pass's samples only.
        """
        check_join(self, other)
        for name, accs in other.accs.items():
            self.accs[name] = accs
            self.pass_of[name] = self.passes + other.pass_of.get(name, 1)
        self.passes += other.passes

    def reduce(self, group: Group, names: Sequence[str]) -> None:
        """Sum the passes of every rank of a data-parallel run in place (``group``: a
        :class:`nrc_cli.distributed.Group`); ``names``, every watched layer, in the same
        order on every rank. Afterwards :attr:`world_size` is the group's.

        Raises
        ------
        ValueError
            On every rank, before anything is summed: ranks whose monitors are not alike
            (other target widths; a layer sketched on some ranks only, or with another width,
            sketch size or test matrix).
        DataError
            On every rank, before anything is summed: model outputs fed on some ranks only; a
            layer that ran on the samples of some ranks only.
        """
        check_alike(self, group, names)
        for name in names:
            for kind in sorted(self.accs.get(name, {})):
                group.reduce(self.accs[name][kind])
        group.reduce(self.predictions)
        self.n = group.agree(self.n, "sum")
        self.world_size = group.world_size

    def compute(
        self,
        order: Sequence[str],
        layers: Mapping[str, WeightLayer],
        second: SecondPass | None,
    ) -> LayerOutcome:
        """The family's rows and summary fields (``family.compute``) from this pass, not empty:
        its layers that hold samples, in the forward ``order`` (``layers``: every watched
        layer, by name), with the counts of ``second`` once it has seen every sample. A layer
        that ran only in batches that ``update`` refused has no samples, and no row."""
        assert self.t is not None
        ran = [n for n in order if any(a.n for a in self.accs.get(n, {}).values())]
        accumulated = [(layers[n], self.accs[n]) for n in ran]
        counts = second.accs if second is not None and second.n == self.n else None
        predictions = self.predictions if self.has_prediction else None
        with single_threaded():
            return self.family.compute(accumulated, self.t, predictions, counts)

    def run_fields(self, methods: Mapping[str, str], passes: int) -> dict:
        """The run's summary fields this pass knows: what the prediction was, how the spectra
        were found (``methods``: by layer), the randomized knobs, in how many ``passes`` and
        where the state was accumulated, and in which precision."""
        used = sorted(set(methods.values()))
        return {
            "prediction": self.family.prediction_label(bool(self.has_prediction)),
            "svd": used[0] if len(used) == 1 else "mixed",
            **self.family.randomized,  # oversample, power_iters, seed
            "passes": passes,
            "device": str(self.device),
            "world_size": self.world_size,
            "dtype": self.dtype,
            "precision": self.family.precision,
        }

    def plan_rows(
        self,
        layers: Mapping[str, WeightLayer],
        sketch: Mapping[str, int],
        methods: Mapping[str, str],
    ) -> list[dict]:
        """How each accumulated layer was accumulated (:func:`plan_row`), by pass and then in
        the order of ``layers`` (every watched layer, by name); ``sketch``: the sketch sizes,
        ``methods``: the spectrum methods, by layer."""
        names = list(layers)
        ordered = sorted(self.accs, key=lambda n: (self.pass_of.get(n, 1), names.index(n)))
        return [
            plan_row(
                self.family, layers[name], self.t or 1, self.batch,
                pass_index=self.pass_of.get(name, 1), sketch_size=sketch.get(name),
                spectrum=methods.get(name),
            )
            for name in ordered
        ]  # fmt: skip

    def to(self, device: torch.device) -> None:
        """Move the accumulated state to ``device``."""
        for accs in self.accs.values():
            for acc in accs.values():
                acc.to(device)
        if self.accs:
            self.device = device

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``n``, ``target_dim``, ``batch``, ``passes``, ``prediction`` (-1 unknown, 0, 1),
        ``sse.*`` (the predictions'), ``world_size`` once reduced over several processes, and
        per layer ``pass/<layer>`` and :func:`layer_state`."""
        pred = -1 if self.has_prediction is None else int(self.has_prediction)
        out = {
            key: torch.tensor(value, dtype=_I64)
            for key, value in (
                ("n", self.n),
                ("target_dim", self.t or 0),
                ("batch", self.batch),
                ("passes", self.passes),
                ("prediction", pred),
            )
        }
        if self.world_size > 1:
            out["world_size"] = torch.tensor(self.world_size, dtype=_I64)
        for key, value in self.predictions.state_dict().items():
            out[f"sse.{key}"] = value
        for name, accs in self.accs.items():
            out[f"pass/{name}"] = torch.tensor(self.pass_of.get(name, 1), dtype=_I64)
            out.update(layer_state(name, accs))
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], names: Collection[str]) -> None:
        """Load what :meth:`state_dict` wrote into this empty pass (``names``: the layers
        that may be in it)."""
        self.n, t = int(state["n"]), int(state["target_dim"])
        self.t = t or None
        self.batch = int(state.get("batch", torch.tensor(0)))
        self.passes = int(state.get("passes", torch.tensor(1)))
        self.world_size = int(state.get("world_size", torch.tensor(1)))
        pred = int(state.get("prediction", torch.tensor(-1)))
        self.has_prediction = None if pred < 0 else bool(pred)
        sse = {k.removeprefix("sse."): v for k, v in state.items() if k.startswith("sse.")}
        check_accumulator(self.predictions, sse, "sse.", p=None, t=t)
        self.predictions.load_state_dict(sse)
        for name, accs in load_layer_states(self.family, state, names).items():
            self.accs[name] = accs
            self.pass_of[name] = int(state.get(f"pass/{name}", torch.tensor(1)))
        # The device of the first layer's state (the CPU for a state without any).
        first = next((v for k, v in state.items() if k.startswith("layer/")), None)
        self.device = first.device if first is not None else torch.device("cpu")
