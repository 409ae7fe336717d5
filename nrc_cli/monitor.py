"""``CollapseMonitor``: feed it batches, ask it for Deep NRC at any time.

The monitor is the in-memory core of ``nrc``: it owns the forward hooks on a model's weight
layers, one set of streaming float64 accumulators per layer and the analysis options, and turns
the accumulated state into the same :class:`~nrc_cli.results.Results` that ``nrc analyze``
prints. Checkpoints, data files and multi-pass plans are the pipeline's concern
(:mod:`nrc_cli.pipeline`), which feeds monitors. The accumulated state is a
:class:`~nrc_cli.passes.FirstPass` (and a :class:`~nrc_cli.passes.SecondPass` once one
begins): :mod:`nrc_cli.passes`, with how it merges, joins, reduces across ranks and saves.

Multi-pass plans and sketches: a monitor accumulates its ``active`` layers in one stream,
sketching those in ``sketch`` (or, with ``memory_budget``, those it picks at the first batch;
a budget that needs several passes is refused); the pipeline plans the passes and ``join``s.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import EllipsisType
from typing import Any

import numpy as np
import torch
from torch import nn

from nrc_cli._glob import glob_match
from nrc_cli.accumulate.labels import is_label_array
from nrc_cli.capture import HeldFeatures, WeightLayer, weight_layers
from nrc_cli.distributed import Group
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.families import FAMILIES
from nrc_cli.families.batch import as_targets, check_finite, paired_features, record_rows
from nrc_cli.families.calls import update_arguments
from nrc_cli.options import PRECISIONS, AnalysisOptions
from nrc_cli.passes import (
    FirstPass,
    SecondPass,
    check_options,
    load_passes,
    reduce_passes,
    single_pass_sketches,
    sketched_size,
    state_header,
)
from nrc_cli.results import Results
from nrc_cli.segments import declared
from nrc_cli.spill import FeatureSpill

__all__ = ["CollapseMonitor"]

_I64 = torch.int64


class CollapseMonitor:
    """Streaming Deep NRC of a model's weight layers: ``update`` per batch, ``compute`` any time.

    Examples
    --------
    >>> import torch
    >>> from nrc_cli import CollapseMonitor
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> x, y = torch.randn(256, 8), torch.randn(256, 2)
    >>> monitor = CollapseMonitor(model)
    >>> with monitor, torch.no_grad():
    ...     for xb, yb in zip(x.split(64), y.split(64)):
    ...         monitor.update(yb, model(xb))
    >>> [row["layer"] for row in monitor.compute().layers]
    ['0', '2']

    Parameters
    ----------
    model : nn.Module
        The model whose weight layers (Linear, Conv1d/2d/3d) are measured; its features are
        the inputs of those layers, pooled per sample (docs/metrics.md). The monitor never
        changes the model, its mode or its dtype.
    rank : int, optional
        Analysis rank k (default: the target dimension t).
    layers, exclude : sequence of str
        Module-path globs selecting / skipping weight layers (as ``--layers``/``--exclude``).
    partial_layers : sequence of str
        Globs of layers that may run for some samples only (skip a batch, or have no rows of
        parts for some samples): measured over the samples they saw, targets restricted
        alike (regression; such a state does not merge or join).
    svd : {"auto", "exact", "randomized"}
        Spectrum method; ``auto`` is exact up to width 2048. The randomized steps' knobs are
        keyword only: ``oversample`` (default 10), ``power_iters`` (4) and ``seed`` (0).
    collapse_rule : str, optional
        Comma-separated ``COLUMN<=V`` / ``COLUMN>=V`` terms (default: the task's,
        ``nrc1_noise<=0.2`` or ``nc1_trace<=0.2``).
    output_key : str, optional
        Which part of a tuple/dict/ModelOutput output is the prediction.
    mask_key : str or None
        The model's keyword argument that holds the token mask (default ``attention_mask``);
        None: never mask.
    memory_budget : int or str, optional
        Bytes (or ``"4GB"``) for the accumulators: layers whose exact state does not fit are
        sketched (O(p·s) memory). Default: every layer exact.
    precision : {"exact", "mixed"}
        ``"mixed"`` forms each batch's Gram matrices in float32 (on centred features) and adds
        them into the float64 sums: faster where float64 is slow, every metric within
        1e-5 + 1e-4·|exact| (docs/metrics.md, "Mixed precision"); recorded in the summary.
    task : {"auto", "regression", "classification"}
        The metric family (see :mod:`nrc_cli.families`): ``"regression"``, Deep NRC
        (docs/metrics.md); ``"classification"``, Deep Neural Collapse of a classifier with
        ``update(labels, output)`` (docs/classification.md); ``"auto"`` (the default, as for
        ``nrc analyze``), classification when the first batch's targets are a 1-D integer
        tensor or array, else regression; the task found is in the results.
    active : collection of str, optional
        Accumulate only these layers (the others are still hooked, to learn the forward
        order). Default: every selected layer.
    sketch : mapping of str to int, optional
        Layers to sketch, with their sketch sizes (the pipeline's plan); overrides
        ``memory_budget``.

    Notes
    -----
    **Hooks.** ``with monitor:`` registers the hooks and removes them on exit, also when the
    body raises. Each forward pass of ``model`` inside the block captures one batch of features
    per layer; :meth:`update` pairs them with the targets. The monitor accumulates in float64
    on the device of the features, whatever the forward dtype.

    **State.** :meth:`state_dict` is a flat ``{str: Tensor}`` (plain numbers as 0-d tensors):
    it saves with ``torch.save`` or ``safetensors`` and loads into a monitor built on the same
    model with the same options (:meth:`load_state_dict`).

    **Combining.** :meth:`merge`, :meth:`join` and :meth:`all_reduce` check everything first
    and refuse, changing nothing, what would give a wrong number (a layer whose statistics
    would not cover every sample, accumulators that do not add up). :meth:`all_reduce` sums
    the monitors of a data-parallel run, one per rank, exactly as :meth:`merge` would; a
    classifier's second pass is reduced by a second call (see there).
    """

    def __init__(
        self,
        model: nn.Module,
        rank: int | None = None,
        layers: Collection[str] = (),
        exclude: Collection[str] = (),
        svd: str = "auto",
        *,
        partial_layers: Collection[str] = (),
        oversample: int = 10,
        power_iters: int = 4,
        seed: int = 0,
        collapse_rule: str | None = None,
        output_key: str | None = None,
        mask_key: str | None = "attention_mask",
        memory_budget: int | str | None = None,
        precision: str = "exact",
        task: str = "auto",
        active: Collection[str] | None = None,
        sketch: Mapping[str, int] | None = None,
    ) -> None:
        _check_model(model, "CollapseMonitor")
        if task not in (*FAMILIES, "auto"):
            raise ConfigError(
                f"task: expected one of {', '.join(FAMILIES)} or auto, found {task!r}",
            )
        # The same validation, and the same messages, as every other entry point.
        options = AnalysisOptions(
            rank=rank,
            layers=tuple(layers),
            exclude=tuple(exclude),
            partial_layers=tuple(partial_layers),
            svd=svd,
            oversample=oversample,
            power_iters=power_iters,
            seed=seed,
            collapse_rule=collapse_rule,
            output_key=output_key,
            memory_budget=memory_budget,
            precision=precision,
            task=task,
        )
        self._build(model, options, mask_key, active, sketch)

    @classmethod
    def from_options(
        cls,
        model: nn.Module,
        options: AnalysisOptions,
        *,
        mask_key: str | EllipsisType | None = ...,
        active: Collection[str] | None = None,
        sketch: Mapping[str, int] | None = None,
    ) -> CollapseMonitor:
        """A monitor of ``model`` for the analysis ``options``, taken whole (as ``nrc analyze``
        and :func:`nrc_cli.analyze` build them, validated once): the monitor and its family
        read the options they need from it, and ``CollapseMonitor(model, **fields)`` is the
        same monitor as ``from_options(model, AnalysisOptions(**fields))``.

        The options that are not the monitor's (the data's keys, the batch size, the device…)
        are carried and ignored. ``memory_budget`` is the monitor's own: layers that do not
        fit are sketched, in one pass (None: every layer exact).

        Parameters
        ----------
        mask_key : str or None, optional
            The token mask's keyword argument, resolved by the caller (the pipeline, against
            the data's inputs); None: never mask. Default ``options.mask_key``, or
            ``attention_mask`` when it names none.
        active, sketch : optional
            As for the constructor: the layers to accumulate, the layers to sketch.
        """
        if not isinstance(options, AnalysisOptions):
            raise ConfigError(
                "CollapseMonitor.from_options: expected AnalysisOptions, found "
                f"{type(options).__name__}",
                hint="CollapseMonitor(model, rank=..., ...) takes the options as keywords",
            )
        _check_model(model, "CollapseMonitor.from_options")
        if isinstance(mask_key, EllipsisType):
            mask_key = options.mask_key or "attention_mask"
        monitor = cls.__new__(cls)
        monitor._build(model, options, mask_key, active, sketch)
        return monitor

    def _build(
        self,
        model: nn.Module,
        options: AnalysisOptions,
        mask_key: str | None,
        active: Collection[str] | None,
        sketch: Mapping[str, int] | None,
    ) -> None:
        self.model = model
        self._options = options
        self._auto = options.task == "auto"
        self._set_task("regression" if self._auto else options.task)
        self.layers: list[WeightLayer] = weight_layers(
            model, include=options.layers, exclude=options.exclude
        )
        self._by_name = {w.name: w for w in self.layers}
        self._partial = {
            w.name
            for w in self.layers
            if any(glob_match(w.name, p) for p in options.partial_layers)
        }
        names = set(self._by_name)
        self.active: set[str] = set(names if active is None else active)
        unknown = self.active - names
        if unknown:
            raise ConfigError(
                f"active: {', '.join(sorted(unknown))} is not a selected weight layer",
                hint=f"selected: {', '.join(self._by_name)}",
            )
        self._sketch_given = sketch is not None
        self.sketch: dict[str, int] = dict(sketch or {})
        self.memory_budget = options.memory_budget
        self._budget = options.budget_bytes()
        self.mask_key = mask_key
        self._hooks = HeldFeatures(self.layers, model, active=self.active, mask_key=mask_key)
        self._order = self._hooks.order  # the forward order, kept by the hooks
        self.reset()

    @property
    def options(self) -> AnalysisOptions:
        """The analysis options this monitor was built with (its mask key: :attr:`mask_key`)."""
        return self._options

    def _set_task(self, task: str) -> None:
        self.task = task
        self.family = FAMILIES[task](self._options)
        self._first = FirstPass(self.family)

    # -- hooks ------------------------------------------------------------------------------

    def __enter__(self) -> CollapseMonitor:
        self._hooks.mask_key = self.mask_key
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    @property
    def hooked(self) -> bool:
        """Whether the hooks are registered now (inside ``with monitor:``)."""
        return self._hooks.hooked

    # -- state ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every sample (the hooks stay as they are)."""
        self._first = FirstPass(self.family)
        self._second: SecondPass | None = None  # once begun
        self._order.clear()
        self._hooks.pending = {}
        self._rows: dict[str, str] = {}  # the kind of each layer's rows (segments.py)
        self._warnings: list[str] = []
        self._spill: FeatureSpill | None = None  # where first-pass batches are kept, if set
        if not self._sketch_given:
            self.sketch = {}

    @property
    def n_samples(self) -> int:
        """Samples folded in so far."""
        return self._first.n

    @property
    def order(self) -> list[str]:
        """Selected layers in the order they first ran."""
        return list(self._order)

    # -- update -----------------------------------------------------------------------------

    def update(
        self,
        y=None,
        output=None,
        *,
        target=None,
        preds=None,
        mask: torch.Tensor | None = None,
        segments=None,
        start: int | None = None,
    ) -> None:
        """Pair the features captured since the last update with the targets ``y``; the next
        forward pass starts the next batch (whether it runs through ``model(...)`` or not).

        Parameters
        ----------
        y : Tensor or array, shape (b, t) or (b,)
            Targets of the batch the model just ran on; for a classifier its labels (b,)
            (integers, or one-hot rows (b, K)).
        output : optional
            The model's output for that batch: its prediction (selected by ``output_key``)
            gives ``model_mse`` and ``nrc4_ratio``. Give it for every batch or for none.
        target, preds : optional
            ``y`` and ``output`` by torchmetrics' names; a visibly swapped call is refused.
        mask : Tensor, shape (b, T), optional
            Token mask for masked mean pooling, when the model did not receive it as its
            ``mask_key`` keyword argument.
        segments : optional
            For layers whose rows are parts of samples (atoms, edges, points): which sample
            owns each row, to pool them per sample (:mod:`nrc_cli.segments`, docs/graphs.md):
            an owner index tensor, a :class:`~nrc_cli.segments.Segments` (counts, ``sum``),
            a list of them, a mapping from layer globs to them, or a PyTorch Geometric
            ``Batch``. A layer whose row count is neither ``b`` nor declared is refused.
        start : int, optional
            Index of the batch's first sample in the caller's data, for error messages
            (default: the samples seen so far).

        Raises
        ------
        DataError
            No features captured, features whose rows do not match ``y``, non-finite
            features, or a prediction of the wrong shape. The state is then unchanged.
        """
        y, output = update_arguments(y, output, target, preds)
        first = self._first
        if self._auto and first.n == 0 and isinstance(y, (np.ndarray, torch.Tensor)):
            self._set_task("classification" if is_label_array(y.dtype, y.shape) else "regression")
            first = self._first
        if start is None:
            start = self._second.n if self._second is not None else first.n
        y = self.family.prepare_targets(as_targets(y), output, start)
        b = y.shape[0]
        pending, notice = self._hooks.take(mask)
        again = [n for n in self._order if n in self.active] if first.n else []
        paired = paired_features(
            pending, b, mask=mask, ran=self._order, again=again,
            segments=declared(segments), rows_before=self._rows, partial=self._partial,
        )  # fmt: skip
        features = paired.features
        check_finite(features, start)
        self._rows.update(paired.rows)
        said = [*paired.warnings, *([notice] if notice else [])]
        self._warnings.extend(w for w in said if w not in self._warnings)
        if self._second is not None:
            pred = self.family.select_prediction(output, y) if output is not None else None
            self._second.update(features, y, pred, start=start, limit=first.n)
            return
        if first.device is None:
            first.device = next(iter(features.values())).device
        y = y.to(device=first.device)
        first.check(y, output is not None)
        pred = self.family.select_prediction(output, y) if output is not None else None
        # The state is made of normal tensors even when the forward pass ran under
        # inference_mode, so that merge() and load_state_dict() may change it in place later.
        with torch.inference_mode(False), torch.no_grad():
            if first.t is None:
                self._start(y)
            first.update(features, y, pred, keep=paired.keep, partial=self._partial)
        if self._spill is not None and self.family.second_pass:
            self._spill.write(start, features, y, pred)

    # -- the second pass (classification) ---------------------------------------------------

    def begin_second_pass(self) -> None:
        """Classification: freeze the class means found so far; later updates feed the
        nearest-class-mean counters instead of the class moments.

        Run the same data through the model again (inside ``with monitor:``, calling
        :meth:`update` per batch as before); once it has seen as many samples as the first
        pass, :meth:`compute` fills ``ncc_accuracy`` and ``nc4_ncc_mismatch`` (docs/
        classification.md). Without a complete second pass they are null. In a data-parallel
        run, begin it on every rank after :meth:`all_reduce`, feed each rank its share again,
        and call ``all_reduce`` once more.

        Raises
        ------
        ConfigError
            For a task without a second pass, before any sample, or when one was begun.
        """
        if not self.family.second_pass:
            raise ConfigError(f"task {self.task} has no second pass")
        if self._first.n == 0:
            raise ConfigError(
                "begin_second_pass(): no samples yet",
                hint="feed the whole data set once with update(labels, output) first",
            )
        if self._second is not None:
            raise ConfigError("the second pass was already begun")
        self._second = SecondPass(self.family, self._first.accs)
        self._hook_accumulated()

    def keep_features(self, spill: FeatureSpill) -> None:
        """Classification: also write each first-pass batch (features, labels, predicted
        classes) to ``spill``, for :meth:`second_pass_from`; :meth:`reset` forgets it."""
        self._spill = spill

    def second_pass_from(self, spill: FeatureSpill) -> None:
        """Begin the second pass and feed it every batch ``spill`` kept (:meth:`keep_features`),
        without running the model: the same numbers as a second forward pass."""
        self.begin_second_pass()
        assert self._second is not None
        for start, features, y, pred in spill.read(self._first.device):
            self._second.update(features, y, pred, start=start, limit=self._first.n)

    def _hook_accumulated(self) -> None:
        """Every accumulated layer is hooked (a joined plan's monitor watched one pass's)."""
        self.active.update(self._first.accs)  # the hooks' set too

    @property
    def second_pass_samples(self) -> int:
        """Samples the second pass has seen (0 before it begins)."""
        return self._second.n if self._second is not None else 0

    def _start(self, y: torch.Tensor) -> None:
        """First batch: the plan of this stream, fresh accumulators."""
        if self._partial and self.family.second_pass:
            raise ConfigError(
                f"partial_layers: {self.task} measures every layer over every sample",
                hint="exclude the layers that do not run on every batch instead",
            )
        layers = [w for w in self.layers if w.name in self.active]
        if not self._sketch_given and self._budget is not None:
            b, t = y.shape
            self.sketch = single_pass_sketches(
                self.family, layers, t, b, self._budget, self.memory_budget
            )
        self._first.start(layers, y, self.sketch)
        self._first.dtype = str(self.layers[0].module.weight.dtype).removeprefix("torch.")

    # -- results ----------------------------------------------------------------------------

    def compute(self) -> Results:
        """Deep NRC of every accumulated layer and the summary, from the state so far.

        Pure: may be called any number of times, between further updates too.

        Raises
        ------
        ConfigError
            When no sample has been accumulated yet.
        """
        first = self._first
        if first.n == 0 or first.t is None:
            raise ConfigError(
                "CollapseMonitor.compute(): no samples yet",
                hint="run the model inside 'with monitor:' and call update(y, output)",
            )
        outcome = first.compute(self._order, self._by_name, self._second)
        methods = {
            w.name: self.family.spectrum_method(w, first.t, w.name in self.sketch)
            for w in self.layers
        }
        passes = first.passes + (self._second is not None)
        summary = {"n_samples": first.n, **outcome.summary, **first.run_fields(methods, passes)}
        plan = self._plan_doc(methods)
        counts = {n: max(a.n for a in accs.values()) for n, accs in first.accs.items()}
        record_rows(outcome.rows, plan["layers"], self._rows, counts, first.n)
        summary["warnings"] = [*summary.get("warnings", []), *self._warnings]
        return Results(checkpoint="", data="", summary=summary, layers=outcome.rows, plan=plan)

    def _plan_doc(self, methods: dict[str, str]) -> dict:
        """How this monitor accumulated: the pass and accumulator of each layer, its memory."""
        doc: dict[str, Any] = {
            "memory_budget": self.memory_budget if self.memory_budget is not None else "none",
            "passes": self._first.passes,
            "layers": self._first.plan_rows(self._by_name, self.sketch, methods),
        }
        not_run = [w.name for w in self.layers if w.name not in self._order]
        if not_run:
            doc["not_run"] = not_run
        return doc

    # -- combining --------------------------------------------------------------------------

    def merge(self, other: CollapseMonitor) -> CollapseMonitor:
        """Fold another monitor's state (the same model and options, other samples) into
        this one; the result is that of one monitor fed both streams. Returns self. The
        options that only shape ``compute()`` (``rank``, ``svd``, ``collapse_rule``…) are
        this monitor's.

        Raises
        ------
        ConfigError
            Other layers or task, ``precision``, ``mask_key``, or ``output_key`` (for outputs).
        DataError
            A layer only one of the two accumulated (other ``active=``, or forward passes that
            ran other layers), sketched in one only or with another test matrix (``seed``,
            sketch size); other target widths; outputs fed to one only; a second pass. All is
            checked before anything changes: a refused merge leaves this monitor as it was.
        """
        self._check_compatible(other)
        if other.n_samples == 0:
            return self
        if self.n_samples == 0:
            self.load_state_dict(other.state_dict())
            return self
        if self._second is not None or other._second is not None:
            raise DataError(
                "cannot merge a monitor in its second pass: merge monitors before their second "
                "pass, then run the second pass on the merged one",
            )
        self._first.merge(other._first)
        self._rows.update(other._rows)
        for name in other._order:
            if name not in self._order:
                self._order.append(name)
        return self

    def all_reduce(self, group=None) -> CollapseMonitor:
        """Sum the states of the monitors of every rank of a data-parallel run, in place.

        Each rank fed its own monitor (built alike) on its own samples; afterwards every rank
        holds the state of all of them, exactly as :meth:`merge` would combine them (float64,
        about one common shift, per class for a classifier), and ``compute()`` reports
        ``world_size``. Every rank must call it at the same point with a monitor that has seen
        at least one batch.

        Each pass is reduced once, by the call that follows it. A classifier's second pass
        (the nearest-class-mean columns) needs the class means of every rank, so it goes:

        1. every rank feeds its share, then ``all_reduce(group)`` (the first pass);
        2. every rank calls :meth:`begin_second_pass` (the same class means everywhere) and
           feeds its share again;
        3. ``all_reduce(group)`` again sums the second pass's counts; ``compute()`` then fills
           ``ncc_accuracy`` and ``nc4_ncc_mismatch`` on every rank.

        Parameters
        ----------
        group : torch.distributed.ProcessGroup or None
            The process group of the ranks (None: the default group, as torch's own
            collectives take it); initialised by the caller (``init_process_group``).

        Raises
        ------
        ConfigError
            A rank has seen no batch; the pass was reduced already (its samples would count
            twice); a second pass begun before the first was reduced (each rank's class means
            were its own); monitors not built alike (a layer sketched on some ranks only, or
            with another test matrix: ``seed``, sketch size).
        DataError
            The ranks are in different passes, their forward passes ran different layers, or
            some were fed the model's outputs and others not. Every rank raises the same
            error, and nothing is summed.
        """
        if not isinstance(group, Group):  # a torch ProcessGroup, or None for the default one
            group = Group.of(group)
        names = [w.name for w in self.layers]
        reduce_passes(self._first, self._second, names, len(self._order), group)
        return self

    def join(self, other: CollapseMonitor) -> CollapseMonitor:
        """Take over the layers ``other`` accumulated on the same samples (a later pass of a
        multi-pass plan, with other ``active`` layers). Returns self.

        The pipeline runs a plan of several passes as one monitor per pass and joins them:
        the result is that of one monitor holding every layer.

        Raises
        ------
        ConfigError
            As for :meth:`merge`.
        DataError
            A layer in both; other data: other sample counts or target widths, or targets
            (mean and covariance, label counts) or model errors that differ beyond round-off
            (data whose targets agree throughout cannot be told apart); a second pass. A
            refused join changes nothing.
        """
        self._check_compatible(other)
        if self._second is not None or other._second is not None:
            raise DataError("cannot join monitors once their second pass has begun")
        self._first.join(other._first)
        self.sketch.update((n, other.sketch[n]) for n in other._first.accs if n in other.sketch)
        return self

    def _check_compatible(self, other: CollapseMonitor) -> None:
        if not isinstance(other, CollapseMonitor):
            raise TypeError(f"expected a CollapseMonitor, found {type(other).__name__}")
        if [w.name for w in other.layers] != [w.name for w in self.layers]:
            raise ConfigError(
                "the two monitors watch different layers: "
                f"{[w.name for w in self.layers]} and {[w.name for w in other.layers]}"
            )
        if other.task != self.task:
            raise ConfigError(
                f"the two monitors measure different tasks ({self.task}, {other.task})"
            )
        check_options(
            self._options, other._options, (self.mask_key, other.mask_key),
            other_outputs=bool(other._first.has_prediction),
        )  # fmt: skip

    # -- state dicts ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The accumulated state as a flat ``{str: Tensor}`` (safetensors- and torch.save-ready).

        Keys: ``n``, ``target_dim``, ``batch``, ``passes``, ``prediction`` (-1 unknown, 0, 1),
        ``order`` (indices into the selected layers), ``task`` and ``precision`` (indices into
        ``FAMILIES`` and ``("exact", "mixed")``), ``sse.*``, and per accumulated layer
        ``pass/<layer>``, ``omega/<layer>`` (sketched layers) and
        ``layer/<layer>/<kind>/<state>``; ``world_size`` once :meth:`all_reduce` summed
        several processes; in a second pass ``second_n``, ``second/<layer>/<state>`` (and
        ``second_world_size``).
        """
        names = [w.name for w in self.layers]
        out = self._first.state_dict()
        out["order"] = torch.tensor([names.index(n) for n in self._order], dtype=_I64)
        out["task"] = torch.tensor(list(FAMILIES).index(self.task), dtype=_I64)
        out["precision"] = torch.tensor(PRECISIONS.index(self.family.precision), dtype=_I64)
        if self._second is not None:
            out.update(self._second.state_dict())
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace this monitor's state by one from :meth:`state_dict` (same model and options).

        Raises
        ------
        ConfigError
            Not a state of this monitor: of other layers or feature widths, another task or
            precision, or malformed. The state is checked in full before anything changes: a
            refused load leaves the monitor as it was.
        """
        names = [w.name for w in self.layers]
        order, task = state_header(state, names, list(FAMILIES))
        task, family = task or self.task, self.family
        if task != self.task:
            if not self._auto:
                raise ConfigError(f"a state of task {task}, for a monitor of task {self.task}")
            family = FAMILIES[task](self._options)
        first, second = load_passes(family, state, self._by_name)
        # Nothing can fail from here on.
        self.task, self.family = task, family
        self._first, self._second = first, second
        self._order[:] = order
        self._hooks.pending = {}
        first.dtype = str(self.layers[0].module.weight.dtype).removeprefix("torch.")
        if not self._sketch_given:
            self.sketch = {}
        for name, accs in first.accs.items():
            size = sketched_size(accs)
            if size is not None:
                self.sketch[name] = size
        if second is not None:
            self._hook_accumulated()

    def to(self, device: torch.device | str) -> CollapseMonitor:
        """Move the accumulated state to ``device``; later features must come from there."""
        device = torch.device(device)
        self._first.to(device)
        if self._second is not None:
            self._second.to(device)
        return self


def _check_model(model: object, where: str) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: expected a torch.nn.Module, found {type(model).__name__}")
