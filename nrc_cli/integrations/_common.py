"""What the trainer callbacks share: options checked when the callback is built, the monitor
built when training starts, explicit passes over a dataloader, the reduction over ranks, the
history."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nrc_cli.errors import ConfigError, DataError, NrcError
from nrc_cli.monitor import CollapseMonitor
from nrc_cli.options import AnalysisOptions
from nrc_cli.results import Results
from nrc_cli.results.history import History

__all__ = ["Measured", "Measurer", "default_batch_fn", "distributed_world"]

#: The keys a dict batch's target is looked up under, in this order.
TARGET_KEYS = ("labels", "label", "y", "target", "targets")

BatchFn = Callable[[Any], tuple[Any, Any]]
OutputFn = Callable[[Any], Any]


def default_batch_fn(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch: ``(x, y, ...)`` gives ``(x, y)``; a dict gives the
    other entries as keyword inputs and its ``labels`` (or ``label``, ``y``, ``target``,
    ``targets``) as the target."""
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
        raise DataError(
            f"a dict batch with keys {', '.join(map(repr, batch))} has no target "
            f"({', '.join(TARGET_KEYS)})",
            hint="pass batch_fn=lambda batch: (inputs, target)",
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(
        f"cannot tell the inputs from the target in a batch of type {type(batch).__name__}",
        hint="pass batch_fn=lambda batch: (inputs, target)",
    )


def distributed_world() -> int:
    """The size of the default process group, 1 outside a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def _callable(name: str, fn: object) -> None:
    if fn is not None and not callable(fn):
        raise ConfigError(f"{name}: expected a function, found {type(fn).__name__}")


class Measurer:
    """The options of a callback and the measurement they describe.

    The options are validated when the callback is built (as ``AnalysisOptions`` validates
    them: ``rank: expected an integer >= 1, found 0``); those that need the model (a layer glob
    that matches nothing, a model with no weight layer) when :meth:`build` sees it, which the
    callbacks call when training starts.
    """

    def __init__(
        self,
        *,
        layers: Iterable[str] = (),
        exclude: Iterable[str] = (),
        task: str = "auto",
        rank: int | None = None,
        precision: str = "exact",
        svd: str = "auto",
        seed: int = 0,
        collapse_rule: str | None = None,
        output_key: str | None = None,
        mask_key: str | None = "attention_mask",
        memory_budget: int | str | None = None,
        ncc: bool = True,
        prediction: bool = True,
        batch_fn: BatchFn | None = None,
        output_fn: OutputFn | None = None,
        prefix: str = "nrc/",
        history_path: str | os.PathLike | None = None,
        name: str = "run",
    ) -> None:
        if isinstance(layers, str) or isinstance(exclude, str):
            raise ConfigError(
                "layers/exclude: expected a list of globs, found a string",
                hint="layers=['net.*'], not layers='net.*'",
            )
        self.options: dict[str, Any] = {
            "layers": tuple(layers),
            "exclude": tuple(exclude),
            "task": task,
            "rank": rank,
            "precision": precision,
            "svd": svd,
            "seed": seed,
            "collapse_rule": collapse_rule,
            "output_key": output_key,
            "memory_budget": memory_budget,
        }
        AnalysisOptions(**self.options)  # the same checks and messages as everywhere
        if mask_key is not None and not isinstance(mask_key, str):
            raise ConfigError(f"mask_key: expected a string or None, found {mask_key!r}")
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix: expected a string, found {type(prefix).__name__}")
        _callable("batch_fn", batch_fn)
        _callable("output_fn", output_fn)
        if history_path is not None:
            from nrc_cli.results.tables import table_format

            table_format(history_path)  # a suffix that is not .parquet/.csv is refused now
        self.mask_key = mask_key
        self.ncc = bool(ncc)
        self.prediction = bool(prediction)
        self.batch_fn: BatchFn = batch_fn or default_batch_fn
        self.output_fn = output_fn
        self.prefix = prefix
        self.history_path = history_path
        self.history = History(name)
        self.monitor: CollapseMonitor | None = None
        self.results: Results | None = None

    # -- the monitor ------------------------------------------------------------------------

    def build(self, module: nn.Module) -> CollapseMonitor:
        """The monitor of ``module``: a bad layer glob or a model without weight layers is
        refused here, as an ``NrcError`` naming the option."""
        options = {k: v for k, v in self.options.items() if k not in ("layers", "exclude")}
        try:
            self.monitor = CollapseMonitor(
                module,
                layers=self.options["layers"],
                exclude=self.options["exclude"],
                mask_key=self.mask_key,
                **options,
            )
        except NrcError as exc:
            if "selected" in str(exc) and not str(exc).startswith(("layers", "exclude")):
                raise ConfigError(f"layers/exclude: {exc}", hint=exc.hint) from exc
            raise
        return self.monitor

    def prediction_of(self, output: Any) -> Any:
        """What ``update`` receives as the model's output (None without a prediction)."""
        if not self.prediction:
            return None
        return self.output_fn(output) if self.output_fn is not None else output

    def update(self, batch: Any, output: Any) -> None:
        """Pair the features of the forward pass that just ran on ``batch`` with its target."""
        assert self.monitor is not None
        _, target = self.batch_fn(batch)
        self.monitor.update(target, self.prediction_of(output))

    # -- explicit passes --------------------------------------------------------------------

    def explicit_pass(
        self,
        module: nn.Module,
        batches: Iterable[Any],
        *,
        transfer: Callable[[Any], Any] | None = None,
        rank: int = 0,
        world: int = 1,
        shard: bool = False,
    ) -> int:
        """One pass of ``batches`` through ``module`` into the monitor (``shard``: this rank
        takes batches ``rank, rank + world, ...``). Returns the batches fed."""
        monitor = self.monitor
        assert monitor is not None
        was_training = module.training
        module.eval()
        fed = 0
        try:
            with monitor, torch.no_grad():
                for i, batch in enumerate(batches):
                    if shard and i % world != rank:
                        continue
                    if transfer is not None:
                        batch = transfer(batch)
                    inputs, target = self.batch_fn(batch)
                    output = module(**inputs) if isinstance(inputs, Mapping) else module(inputs)
                    monitor.update(target, self.prediction_of(output))
                    fed += 1
        finally:
            module.train(was_training)
        return fed

    def needs_second_pass(self) -> bool:
        monitor = self.monitor
        assert monitor is not None
        return self.ncc and monitor.family.second_pass and monitor.n_samples > 0

    def reduce(self, world: int) -> None:
        """Sum the ranks' monitors (the default process group) when there are several."""
        assert self.monitor is not None
        if world > 1:
            self.monitor.all_reduce(None)

    def finish(self, *, step: int, epoch: float | int | None) -> Results:
        """The results of the pass(es) so far, recorded in the history."""
        assert self.monitor is not None
        if self.monitor.n_samples == 0:
            raise DataError(
                "the collapse measurement saw no sample",
                hint="the dataloader it ran on yielded no batch",
            )
        self.results = self.monitor.compute()
        self.history.add(self.results, step=step, epoch=epoch)
        return self.results

    def scalars(self) -> dict[str, float]:
        assert self.results is not None
        return self.results.scalars(self.prefix)

    def write_history(self) -> None:
        if self.history_path is not None and len(self.history):
            self.history.write(self.history_path)


class Measured:
    """What a callback shows of its :class:`Measurer` (``self._m``): the history and the
    latest results."""

    _m: Measurer

    @property
    def history(self) -> History:
        """Every measurement's results so far."""
        return self._m.history

    @property
    def results(self) -> Results | None:
        """The latest results (None before the first measurement)."""
        return self._m.results


def check_yields(name: str, batches: Iterable[Any]) -> None:
    """Refuse, naming the option, a dataloader that yields no batch."""
    try:
        iterator = iter(batches)
    except TypeError as exc:
        raise ConfigError(
            f"{name}: expected an iterable of batches (a DataLoader), found "
            f"{type(batches).__name__}"
        ) from exc
    try:
        next(iterator)
    except StopIteration:
        raise ConfigError(f"{name}: the dataloader yields no batch") from None
    finally:
        del iterator


def warn_once(seen: set[str], key: str, message: str) -> None:
    if key not in seen:
        seen.add(key)
        warnings.warn(message, stacklevel=3)
