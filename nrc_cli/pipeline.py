"""Files (or in-memory data) in -> plan passes -> feed the monitor -> Results.

The analysis itself is :class:`nrc_cli.monitor.CollapseMonitor`'s. This module opens the inputs
(a checkpoint or an ``nn.Module``; a data file, arrays or batches), checks that they fit, plans
the data passes within the memory budget (:mod:`nrc_cli.planning`), runs the forward passes
feeding one monitor per pass, and joins them into one :class:`~nrc_cli.results.Results`.
Nothing here prints: progress is reported through optional callbacks.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Collection, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from nrc_cli.accumulate.labels import is_label_array
from nrc_cli.capture import WeightLayer, weight_layers
from nrc_cli.distributed import Group, share, steps
from nrc_cli.errors import ConfigError, DataError, NrcError
from nrc_cli.io.checkpoint import Checkpoint, open_checkpoint
from nrc_cli.io.data import Dataset, open_dataset
from nrc_cli.io.memory import BatchesDataset, as_dataset
from nrc_cli.model.build import BuiltModel, build_model
from nrc_cli.monitor import CollapseMonitor
from nrc_cli.options import AnalysisOptions
from nrc_cli.planning import Plan, default_budget, make_plan
from nrc_cli.results import Results
from nrc_cli.spill import FeatureSpill, default_directory, size_text, spill_bytes
from nrc_cli.spill import default_budget as default_spill_budget

Progress = Callable[[int, int], None]
T = TypeVar("T")
_KEYWORD_HINT = (
    "; a model that takes keyword inputs (input_ids, attention_mask, ...) gets them with "
    "--input NAME, once per array"
)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda[:i]`` must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device: expected auto, cpu or cuda[:i], found '{name}'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: CUDA is not available on this machine",
                hint="use --device cpu (or auto)",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)",
            )
        if device.index is None:  # recorded in the summary as the card that ran, cuda:i
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ConfigError(f"--device: expected auto, cpu or cuda[:i], found '{name}'")
    return device


def prepare(
    checkpoint: str, data_path: str, config: AnalysisOptions
) -> tuple[BuiltModel, Dataset, list[WeightLayer]]:
    """Open the inputs, build the model and check that they fit, before anything runs."""
    ckpt = open_checkpoint(checkpoint, state_key=config.state_key)
    data = _open_data(data_path, config)
    try:
        built = _build(ckpt, config)
        if built.spec is not None and data.x_sample_shape[-1] != built.spec.in_features:
            raise DataError(
                f"{data_path}: input '{data.x_info.key}' has {data.x_sample_shape[-1]} features "
                f"(shape {list(data.x_info.shape)}), but the model's first layer "
                f"'{built.spec.blocks[0].linear}' expects {built.in_features}",
                hint="is this the data the model was trained on? pick arrays with --x-key",
            )
        if (
            resolve_task(config.task, data) == "regression"
            and built.out_features is not None
            and data.target_dim != built.out_features
        ):
            raise DataError(
                f"{data_path}: targets '{data.y_info.key}' have {data.target_dim} column(s) "
                f"(shape {list(data.y_info.shape)}), but the model outputs {built.out_features}",
                hint="pick the target array with --y-key",
            )
        layers = weight_layers(built.module, include=config.layers, exclude=config.exclude)
    except BaseException:
        data.close()
        raise
    return built, data, layers


def _open_data(path: str | os.PathLike, config: AnalysisOptions) -> Dataset:
    """The data file ``path``, read as the options say (its arrays, inputs, samples)."""
    return open_dataset(
        path,
        x_key=config.x_key,
        y_key=config.y_key,
        inputs=config.inputs,
        max_samples=config.max_samples,
    )


def _build(ckpt: Checkpoint, config: AnalysisOptions) -> BuiltModel:
    """The model of an open checkpoint, built as the options say (its architecture)."""
    return build_model(
        ckpt, arch=config.arch, arch_kwargs=config.arch_kwargs, activation=config.activation
    )


def resolve_task(task: str, dataset) -> str:
    """``regression`` or ``classification``: as asked for, or, for ``auto``, classification
    when the target array is 1-D and of an integer type (class labels)."""
    if task != "auto":
        return task
    info = getattr(dataset, "y_info", None)
    if info is not None:
        dtype, shape = info.dtype, tuple(info.shape)
    else:
        dtype = getattr(dataset, "y_dtype", np.float64)
        shape = tuple(getattr(dataset, "y_shape", (0, 1)))
    return "classification" if is_label_array(dtype, shape) else "regression"


@contextmanager
def full_float32(device: torch.device):
    """On CUDA, float32 means float32: TF32 off for matrix products and cuDNN convolutions.

    TF32 keeps 10 mantissa bits, so a float32 forward in TF32 shifts conv features by ~1e-3
    relative; the accumulation is float64 and never uses it. The previous settings are restored.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run(
    model: str | os.PathLike | nn.Module,
    data: Any,
    config: AnalysisOptions,
    *,
    progress: Progress | None = None,
    on_plan: Callable[[dict], None] | None = None,
    group: Group | None = None,
) -> Results | None:
    """Analyze one model on one data set.

    Parameters
    ----------
    model : str, os.PathLike or nn.Module
        A checkpoint (built as ``nrc analyze`` builds it), or a module. A module is run in
        eval mode, restored afterwards; when ``config`` asks for another device or dtype than
        its own, a copy runs instead, so the caller's module is never changed.
    data : str, os.PathLike, (x, y) or iterable of (x, y)
        A data file (``.npz`` or ``.toml`` spec), an ``(x, y)`` pair of arrays or tensors
        (``x`` may be a dict of keyword inputs), or an iterable of ``(x, y)`` batches.
    config : AnalysisOptions
    progress : callable(done, total), optional
        Called after each batch with the number of samples seen so far (over all passes) and
        the total to see (0 when unknown).
    on_plan : callable(plan), optional
        Called once before the first data pass with the plan (as recorded in the summary).
    group : nrc_cli.distributed.Group, optional
        A data-parallel run (torchrun) over a data file: this rank streams its share of the
        batches on ``config.device``, each pass's monitor state is summed over the ranks
        (:meth:`CollapseMonitor.all_reduce`; a classifier's nearest-class-mean pass too), and
        rank 0 alone computes the metrics. An error on any rank raises
        :class:`nrc_cli.distributed.RankFailed` on every rank.

    Returns
    -------
    Results
        None on the ranks other than 0 of a distributed run.
    """

    def start():
        if group is not None and not (_is_path(model) and _is_path(data)):
            raise ConfigError("a distributed run analyzes a checkpoint file on a data file")
        device = resolve_device(config.device)
        return device, _open(model, data, config)

    device, (built, dataset, label, metadata) = _together(group, start)
    with dataset, full_float32(device), _analysis_module(built, device, config) as module:
        if group is not None:
            _together(group, lambda: _check_shares(group, dataset.n_samples, data, config))

        def analysis() -> Results | None:
            # Planned inside _together: a bad mask key or rule ends every rank alike.
            return _Passes(module, dataset, config, device, progress, on_plan, group).run()

        results = _together(group, analysis)
    if results is None:
        return None
    results.checkpoint = label
    results.data = str(data) if _is_path(data) else dataset.label
    results.metadata = metadata
    _describe_build(results.summary, built)
    return results


def _describe_build(summary: dict, source: BuiltModel | nn.Module) -> None:
    """Record how the model was built (route, description, activation, norms), what loading
    filled in or left out (notes) and what may make every number wrong (warnings first)."""
    if isinstance(source, BuiltModel):
        fields, notes, warnings = source.summary_fields(), source.notes(), source.warnings()
    else:  # a module handed over in Python: nothing was rebuilt or loaded
        fields = {"build": "module", "model": type(source).__name__}
        fields.update(activation=None, norm=None)
        notes, warnings = [], []
    rest = summary.pop("warnings", None) or []
    said = summary.pop("notes", None) or []  # the analysis's own notes follow the model's
    summary.update(fields)
    summary["notes"] = [*notes, *said]
    summary["warnings"] = [*warnings, *rest]


def _check_shares(group: Group, n: int, data, config: AnalysisOptions) -> None:
    """Every rank reads the same number of samples, and has at least one batch of them."""
    low, high = group.agree(n, "min"), group.agree(n, "max")
    if low != high:
        raise ConfigError(
            f"the ranks see different data: from {low:,} to {high:,} samples in '{data}'",
            hint="every rank must read the same file (a shared file system)",
        )
    batches = -(-n // config.batch_size)
    if batches < group.world_size:
        raise ConfigError(
            f"{n:,} samples in batches of {config.batch_size} make {batches} batch(es) for "
            f"{group.world_size} ranks; every rank needs at least one",
            hint="lower --batch-size, or start fewer ranks",
        )


def _together(group: Group | None, work: Callable[[], T]) -> T:
    """``work()``; in a distributed run, then meet the other ranks, so that an error on any
    rank (in ``work`` or before) ends every rank together (see ``Group.check``)."""
    if group is None:
        return work()
    try:
        value = work()
    except Exception as exc:
        group.check(exc)
        raise
    group.check()
    return value


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _open(model, data, config: AnalysisOptions):
    """(model to run, data set, checkpoint label, metadata), checked before anything runs."""
    if _is_path(model) and _is_path(data):
        built, opened, _ = prepare(str(model), str(data), config)
        ckpt_meta = built.checkpoint.metadata if built.checkpoint is not None else {}
        return built, opened, str(model), dict(ckpt_meta)
    if _is_path(model):
        ckpt = open_checkpoint(str(model), state_key=config.state_key)
        source: BuiltModel | nn.Module = _build(ckpt, config)
        label, metadata = str(model), dict(ckpt.metadata)
    elif isinstance(model, nn.Module):
        source, label, metadata = model, f"<{type(model).__name__}>", {}
    else:
        raise ConfigError(
            f"expected a checkpoint path or a torch.nn.Module, found {type(model).__name__}"
        )
    dataset: Any = _open_data(data, config) if _is_path(data) else as_dataset(data)
    try:
        module = source.module if isinstance(source, BuiltModel) else source
        weight_layers(module, include=config.layers, exclude=config.exclude)
    except BaseException:
        dataset.close()
        raise
    return source, dataset, label, metadata


@contextmanager
def _analysis_module(source: BuiltModel | nn.Module, device: torch.device, config):
    """The module to run: a built one moved to the device and dtype; a caller's module in eval
    mode (restored on exit), copied when it must move."""
    dtype = config.torch_dtype
    if isinstance(source, BuiltModel):
        yield source.module.to(device=device, dtype=dtype)
        return
    tensors = [*source.parameters(), *source.buffers()]
    moves = any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors)
    module = copy.deepcopy(source).to(device=device, dtype=dtype) if moves else source
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.train(training)


class _Passes:
    """The plan, the data passes (one monitor each), and their joined results."""

    def __init__(self, model, dataset, config, device, progress, on_plan, group=None) -> None:
        self.group: Group | None = group
        self.model: nn.Module = model
        self.data = dataset
        self.config = config
        self.device = device
        self.progress = progress
        self.on_plan = on_plan
        self.task = resolve_task(config.task, dataset)
        self.t = dataset.target_dim
        if self.task == "classification":
            # The planner counts per-class state: one row per output of the model's head.
            self.t = _n_outputs(model)
        # Every pass's monitor: the options whole, with the task found and the mask key
        # resolved against the data's inputs; the plan picks what each one sketches.
        self.options = replace(config, task=self.task)
        self.mask_key = self._mask_key()

    def monitor(
        self, active: Collection[str] | None = None, sketch: Mapping[str, int] | None = None
    ) -> CollapseMonitor:
        return CollapseMonitor.from_options(
            self.model, self.options, mask_key=self.mask_key, active=active, sketch=sketch
        )

    def _mask_key(self) -> str | None:
        names = tuple(getattr(self.data, "input_names", ()) or ())
        if self.config.mask_key is not None:
            if self.config.mask_key not in names:
                raise ConfigError(
                    f"--mask-key '{self.config.mask_key}' is not one of the model inputs "
                    f"({', '.join(names) or 'none: pass them with --input'})",
                )
            return self.config.mask_key
        return "attention_mask" if "attention_mask" in names else None

    def _first_batch(self) -> int:
        if isinstance(self.data, BatchesDataset):
            return self.data.first_rows
        n = self.data.n_samples
        if self.config.max_samples is not None:
            n = min(n, self.config.max_samples)
        return min(self.config.batch_size, n)

    def plan(self, monitor: CollapseMonitor) -> Plan:
        budget = self.config.budget_bytes()
        if budget is None:
            budget = default_budget(self.device)
        if self.group is not None:
            # The free memory differs between ranks; one plan for all needs one budget.
            budget = self.group.agree(budget, "min")
        batch = self._first_batch()
        needs = [monitor.family.layer_need(w, self.t, batch) for w in monitor.layers]
        return make_plan(needs, budget)

    def run(self) -> Results | None:
        probe = self.monitor()
        plan = self.plan(probe)
        family = probe.family
        methods = {
            w.name: family.spectrum_method(w, self.t, plan.mode[w.name] == "sketch")
            for w in probe.layers
        }
        plan_doc = plan.to_dict(methods, self.config.budget_label, requested=self.config.svd)
        second = probe.family.second_pass and self.config.ncc
        spill = None
        if second:
            plan_doc["passes"] += 1
            plan_doc["ncc_pass"] = plan_doc["passes"]
            spill = self._spill(probe, plan, plan_doc)
        if self.on_plan is not None:
            self.on_plan(plan_doc)
        try:
            return self._run_passes(probe, plan, plan_doc, second, spill)
        finally:
            if spill is not None:
                spill.close()

    def _spill(self, probe: CollapseMonitor, plan: Plan, plan_doc: dict) -> FeatureSpill | None:
        """A spill file for the nearest-class-mean pass, or None (with the reason in the
        plan) when that pass runs the model again."""
        widths = {w.name: w.in_dim for w in probe.layers}
        n = self.data.n_samples
        if n is not None and self.config.max_samples is not None:
            n = min(n, self.config.max_samples)
        directory = self.config.spill_dir or default_directory()
        if not os.path.isdir(directory):
            raise ConfigError(
                f"--spill-dir: {directory!r} is not a directory",
                hint="give an existing directory, or --spill-budget 0 to run the model again",
            )
        budget = self.config.spill_bytes()
        reason = None
        if budget == 0:
            reason = "--spill-budget 0"
        elif self.group is not None:
            reason = "a distributed run"
        elif len(plan.passes) > 1:
            reason = f"a plan of {len(plan.passes)} passes"
        else:  # of unknown length (batches in memory): as far as the budget goes
            need = spill_bytes(n, widths) if n is not None else 0
            if budget is None:
                budget = default_spill_budget(directory)
            if need > budget:
                reason = (
                    f"the pooled features take {size_text(need)}, more than the spill "
                    f"budget of {size_text(budget)} (--spill-budget, --spill-dir)"
                )
        plan_doc["ncc_source"] = "forward" if reason else "spill"
        if reason:
            plan_doc["ncc_note"] = f"the nearest-class-mean pass runs the model again: {reason}"
            return None
        return FeatureSpill(directory, budget)

    def _run_passes(
        self,
        probe: CollapseMonitor,
        plan: Plan,
        plan_doc: dict,
        second: bool,
        spill: FeatureSpill | None,
    ) -> Results | None:
        n = self.data.n_samples
        if n is not None and self.group is not None:
            start, stop = self._share()
            n = stop - start
        total = n * (len(plan.passes) + second) if n is not None else 0
        joined: CollapseMonitor | None = None
        seen = 0
        for i, group in enumerate(plan.passes):
            monitor = self.monitor(
                active=group,
                sketch={n: plan.sketch_size[n] for n in group if plan.mode[n] == "sketch"},
            )
            if spill is not None:
                monitor.keep_features(spill)
            # The model's prediction is read in the first pass only.
            seen = self._data_pass(monitor, i == 0 and self.config.prediction, seen, total)
            if self.group is not None:
                monitor.all_reduce(self.group)
            joined = monitor if joined is None else joined.join(monitor)
        assert joined is not None
        if joined.n_samples == 0:
            raise DataError("the data set has no samples")
        if second:
            # The nearest-class-mean columns: the same data again, fed the class means (in a
            # distributed run, those of every rank's samples: each rank runs its share, and
            # the counts are summed).
            if spill is not None and spill.complete:
                joined.second_pass_from(spill)
                seen += joined.second_pass_samples
                if self.progress is not None:
                    self.progress(seen, total)
            else:
                if spill is not None:  # it outgrew its budget or the disk after all
                    plan_doc["ncc_source"] = "forward"
                    plan_doc["ncc_note"] = (
                        f"the nearest-class-mean pass runs the model again: {spill.reason}"
                    )
                joined.begin_second_pass()
                seen = self._data_pass(joined, self.config.prediction, seen, total)
            if self.group is not None:
                joined.all_reduce(self.group)
        if self.group is not None:
            self.group.finish()
            if self.group.rank != 0:
                return None
        results = joined.compute()
        if spill is not None and not spill.complete:  # found after the plan was shown
            notes = results.summary.get("notes") or []
            results.summary["notes"] = [*notes, plan_doc["ncc_note"]]
        not_run = [w.name for w in probe.layers if w.name not in joined.order]
        if not_run:
            plan_doc["not_run"] = not_run
        found = {row["layer"]: row for row in results.plan["layers"]}
        for row in plan_doc["layers"]:  # the kind of rows and the samples each layer saw
            seen = found.get(row["layer"], {})
            row["rows"], row["n_samples"] = seen.get("rows", "sample"), seen.get("n_samples", 0)
        results.plan = plan_doc
        return results

    def _share(self) -> tuple[int, int]:
        """The samples this rank streams (a distributed run over a data file)."""
        g = self.group
        assert g is not None and self.data.n_samples is not None
        return share(self.data.n_samples, self.config.batch_size, g.rank, g.world_size)

    def _batches(self):
        if self.group is not None:  # a data file: it applies max_samples itself
            yield from self.data.batches(self.config.batch_size, part=self._share())
            return
        batches = self.data.batches(self.config.batch_size)
        limit = self.config.max_samples
        if limit is None or _is_path_dataset(self.data):
            yield from batches  # a data file applies max_samples itself
            return
        for batch in batches:
            left = limit - batch.start
            if left <= 0:
                return
            if batch.y.shape[0] > left:
                x = batch.x
                x = {k: v[:left] for k, v in x.items()} if isinstance(x, dict) else x[:left]
                batch = type(batch)(batch.start, x, batch.y[:left])
            yield batch

    def _data_pass(self, monitor: CollapseMonitor, prediction: bool, seen: int, total: int):
        def step(batch) -> None:
            nonlocal seen
            x = self._inputs(batch.x)
            try:
                out = self.model(**x) if isinstance(x, dict) else self.model(x)
            except NrcError:
                raise
            except Exception as exc:
                shape = (
                    {k: list(v.shape) for k, v in x.items()}
                    if isinstance(x, dict)
                    else list(x.shape)
                )
                raise DataError(
                    f"the model failed on the batch starting at sample {batch.start} "
                    f"(input shape {shape}): {type(exc).__name__}: {exc}",
                    hint="check that the data matches the model's expected input"
                    + ("" if isinstance(x, dict) else _KEYWORD_HINT),
                ) from exc
            monitor.update(batch.y, out if prediction else None, start=batch.start)
            seen += batch.y.shape[0]
            if self.progress is not None:
                self.progress(seen, total)

        with monitor, torch.inference_mode():
            if self.group is None:
                for batch in self._batches():
                    step(batch)
            else:  # in lockstep: an error on any rank ends every rank after this batch
                g = self.group
                count = steps(self.data.n_samples, self.config.batch_size, g.world_size)
                g.each(self._batches(), count, step)
        return seen

    def _inputs(self, x):
        """Batch arrays -> tensors on the device (floats in the model's dtype)."""

        def tensor(a) -> torch.Tensor:
            v = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            if v.is_floating_point():
                v = v.to(dtype=self.config.torch_dtype)
            return v.to(self.device)

        if isinstance(x, dict):
            return {k: tensor(v) for k, v in x.items()}
        return tensor(x)


def _is_path_dataset(dataset) -> bool:
    return not hasattr(dataset, "label")


def _n_outputs(model: nn.Module) -> int:
    """Outputs of the model's last Linear (the classes of a classifier's head), at least 2."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return max(heads[-1].out_features, 2) if heads else 2


def run_forward(
    model: nn.Module,
    batches: Any,
    forward: Callable[[nn.Module, Any], tuple],
    config: AnalysisOptions,
    *,
    progress: Progress | None = None,
) -> Results:
    """Analyze ``model`` on ``batches`` of any kind, each run by ``forward(model, batch)``.

    ``forward`` returns ``(preds, target)`` or ``(preds, target, segments)`` (``preds`` may be
    None); it runs the model however the model's own API does (a graph network's
    ``predict``, a call of ``forward`` itself): batch boundaries are the calls of
    ``forward``, not of ``model(...)``. The model runs where it is (``forward`` moves each
    batch to it), in eval mode under ``torch.no_grad``, and is restored afterwards. A
    classifier's nearest-class-mean pass reads the features the first pass kept on disk
    (``spill_dir``, ``spill_budget``); where they did not fit, it runs ``batches`` a second
    time when they can be iterated again (a list, a DataLoader), and otherwise (a generator)
    those columns are null with a note.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"forward: needs the model as a torch.nn.Module, found {type(model).__name__}",
            hint="load the model in Python, or drop forward= to analyze a checkpoint file",
        )
    if not callable(forward):
        raise ConfigError(f"forward: expected a function (model, batch), found {forward!r}")
    if config.max_samples is not None:
        raise ConfigError(
            "max_samples: cannot cut the opaque batches of forward= at a sample",
            hint="limit the batches you pass instead",
        )
    monitor = CollapseMonitor.from_options(model, config)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    seen = [0]

    def one_pass(items) -> None:
        with monitor, torch.no_grad():
            for i, batch in enumerate(items):
                got = forward(model, batch)
                if not isinstance(got, tuple) or len(got) not in (2, 3):
                    raise DataError(
                        f"forward(model, batch) returned {type(got).__name__} for batch {i}; "
                        "expected a tuple (preds, target) or (preds, target, segments)"
                    )
                preds, target, *rest = got
                if not config.prediction:
                    preds = None
                monitor.update(target, preds, segments=rest[0] if rest else None)
                seen[0] = monitor.n_samples + monitor.second_pass_samples
                if progress is not None:
                    progress(seen[0], 0)

    spill = None
    if config.ncc and config.spill_bytes() != 0 and config.task != "regression":
        spill = FeatureSpill(config.spill_dir, config.spill_bytes())
        monitor.keep_features(spill)  # kept by a classifier only
    try:
        one_pass(batches)
        if monitor.n_samples == 0:
            raise DataError("the batches hold no samples")
        note = None
        if monitor.family.second_pass and config.ncc:
            if spill is not None and spill.complete:
                monitor.second_pass_from(spill)
            elif iter(batches) is batches:
                note = (
                    "the batches could be read once only (a generator) and their features "
                    f"were not kept ({spill.reason if spill else '--spill-budget 0'}), so the "
                    "nearest-class-mean columns are null; pass a list or a DataLoader"
                )
            else:
                monitor.begin_second_pass()
                one_pass(batches)
    finally:
        if spill is not None:
            spill.close()
        for m, training in modes.items():
            m.train(training)
    results = monitor.compute()
    if note is not None:
        results.summary["notes"] = [*(results.summary.get("notes") or []), note]
    results.checkpoint = type(model).__name__
    results.data = f"{type(batches).__name__} (forward=)"
    _describe_build(results.summary, model)
    return results
