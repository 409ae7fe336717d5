"""Deep NRC (or Deep NC) every few epochs of a PyTorch Lightning run, logged with ``log_dict``.

Needs the ``[lightning]`` extra (``pip install "nrc-cli[lightning]"``).

Example
-------
>>> import lightning as L  # doctest: +SKIP
>>> from nrc_cli.integrations.lightning import CollapseCallback  # doctest: +SKIP
>>> trainer = L.Trainer(max_epochs=10, callbacks=[CollapseCallback(rank=2)])  # doctest: +SKIP
>>> trainer.fit(model, train_loader, val_loader)  # doctest: +SKIP

Each measured epoch logs ``nrc/nrc1_noise/net.2``, ..., ``nrc/first_collapsed_index``
(:meth:`nrc_cli.Results.scalars`) through ``pl_module.log_dict``, so every Lightning logger
receives them, and adds the epoch's :class:`~nrc_cli.Results` to :attr:`CollapseCallback.history`.
The documentation page ``docs/integrations/lightning.md`` says what each configuration costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl  # the [lightning] extra
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.integrations._common import (
    BatchFn,
    Measured,
    Measurer,
    OutputFn,
    check_yields,
    warn_once,
)

__all__ = ["CollapseCallback"]


class CollapseCallback(Measured, pl.Callback):
    """Measure collapse every ``every_n_epochs`` on the validation data and log it.

    ``layers``, ``exclude``, ``task``, ``rank``, ``precision``, ``svd``, ``seed``,
    ``collapse_rule``, ``output_key``, ``mask_key`` and ``memory_budget`` are as for
    :class:`nrc_cli.CollapseMonitor` (and ``nrc analyze``).

    Parameters
    ----------
    every_n_epochs : int
        Measure at the end of epochs ``n-1, 2n-1, ...`` (default every epoch).
    dataloader : DataLoader, optional
        Measure on this instead of the validation dataloader: one explicit pass at the end of
        each measured training epoch. Under DDP each rank takes its share (the batches of a
        ``DistributedSampler``, else every ``world_size``-th batch).
    module : str, optional
        The attribute path of the submodule to measure, when ``validation_step`` calls it
        rather than the LightningModule itself (``module="net"`` for ``self.net(x)``).
    ncc : bool
        Classification: fill the nearest-class-mean columns, at the cost of one more pass over
        the data per measured epoch (default True).
    prediction : bool
        Pass the model's output to the monitor (``model_mse``, ``nrc4_ratio``); False for a
        backbone whose output is not a prediction of the target.
    batch_fn : callable, optional
        ``batch -> (inputs, target)``; default: ``(x, y, ...)`` gives ``(x, y)``, a dict its
        other entries and its ``labels``/``y``/``target``.
    output_fn : callable, optional
        ``output -> predictions``, applied to the module's output (default: the output, with
        ``output_key`` picking a part of a tuple, dict or ModelOutput).
    prefix : str
        Prefix of the logged names (default ``"nrc/"``).
    history_path : str or PathLike, optional
        Write :attr:`history` there (``.parquet`` or ``.csv``) when training ends.

    Attributes
    ----------
    history : History
        Every measured epoch's results.
    results : Results or None
        The latest.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        dataloader: Iterable[Any] | None = None,
        module: str | None = None,
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
    ) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise ConfigError(f"every_n_epochs: expected an integer >= 1, found {every_n_epochs!r}")
        if every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs: expected an integer >= 1, found {every_n_epochs}")
        if module is not None and not isinstance(module, str):
            raise ConfigError(f"module: expected an attribute path, found {module!r}")
        self.every_n_epochs = every_n_epochs
        self.dataloader = dataloader
        self.module_path = module
        self._m = Measurer(
            layers=layers,
            exclude=exclude,
            task=task,
            rank=rank,
            precision=precision,
            svd=svd,
            seed=seed,
            collapse_rule=collapse_rule,
            output_key=output_key,
            mask_key=mask_key,
            memory_budget=memory_budget,
            ncc=ncc,
            prediction=prediction,
            batch_fn=batch_fn,
            output_fn=output_fn,
            prefix=prefix,
            history_path=history_path,
        )
        self._module: nn.Module | None = None
        self._riding = False  # the monitor is fed by Lightning's validation forward passes
        self._output: list[Any] = []
        self._hooks: list[Any] = []
        self._warned: set[str] = set()

    # -- set-up: every bad option fails here, before the first training step -------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module: nn.Module = pl_module
        if self.module_path:
            try:
                module = pl_module.get_submodule(self.module_path)
            except AttributeError as exc:
                raise ConfigError(
                    f"module: {type(pl_module).__name__} has no submodule {self.module_path!r}"
                ) from exc
        self._module = module
        self._m.build(module)
        if self.dataloader is not None:
            check_yields("dataloader", self.dataloader)
            return
        if not is_overridden("validation_step", pl_module):
            raise ConfigError(
                "dataloader: the model has no validation_step, so there is no validation data "
                "to measure on",
                hint="pass CollapseCallback(dataloader=...) or define validation_step",
            )
        total = _validation_batches(trainer)
        if total == 0:
            raise ConfigError(
                "dataloader: the validation dataloader yields no batch",
                hint="give the Trainer validation data, or pass CollapseCallback(dataloader=...)",
            )

    def _measured(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # -- riding on validation ------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dataloader is not None or trainer.sanity_checking or not self._measured(trainer):
            return
        monitor = self._m.monitor
        assert monitor is not None and self._module is not None
        monitor.reset()
        self._warn_padding(trainer)
        self._hooks = [
            self._module.register_forward_pre_hook(self._one_call),
            self._module.register_forward_hook(self._keep_output),
        ]
        self._riding = True

    def _one_call(self, module: nn.Module, args: Any) -> None:
        if self._output:  # a second forward pass in this batch, before its inner layers run
            where = f"module {self.module_path!r}" if self.module_path else "the LightningModule"
            raise DataError(
                f"validation_step ran {where} more than once in one batch; the collapse "
                "measurement needs exactly one forward pass per batch",
                hint="validation_step should call self(x) once; when it calls a submodule "
                "(self.net(x)), pass CollapseCallback(module='net'); or pass dataloader=",
            )

    def _keep_output(self, module: nn.Module, args: Any, output: Any) -> None:
        self._output.append(output)

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._riding:
            return
        monitor = self._m.monitor
        assert monitor is not None
        self._output.clear()
        if dataloader_idx == 0 and not monitor.hooked:
            monitor.__enter__()
        elif dataloader_idx != 0 and monitor.hooked:
            monitor.__exit__(None, None, None)  # only the first validation dataloader counts

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._riding or dataloader_idx != 0:
            return
        if not self._output:
            where = f"module {self.module_path!r}" if self.module_path else "the LightningModule"
            raise DataError(
                f"validation_step did not run {where} in this batch; the collapse measurement "
                "needs exactly one forward pass of it per batch",
                hint="when validation_step calls a submodule (self.net(x)), pass "
                "CollapseCallback(module='net'); or pass dataloader=",
            )
        self._m.update(batch, self._output[0])
        self._output.clear()

    def _stop_riding(self) -> None:
        monitor = self._m.monitor
        if monitor is not None and monitor.hooked:
            monitor.__exit__(None, None, None)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._riding = False
        self._output.clear()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._riding:
            return
        self._stop_riding()
        world = trainer.world_size
        self._m.reduce(world)
        if self._m.needs_second_pass():
            self._second_pass(trainer, _val_loader(trainer), shard=False)
        self._log(trainer, pl_module)

    # -- an explicit dataloader ----------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dataloader is None or not self._measured(trainer):
            return
        monitor = self._m.monitor
        assert monitor is not None and self._module is not None
        monitor.reset()
        shard = not _distributed_sampler(self.dataloader)
        self._feed(trainer, self.dataloader, shard=shard)
        self._m.reduce(trainer.world_size)
        if self._m.needs_second_pass():
            self._second_pass(trainer, self.dataloader, shard=shard)
        self._log(trainer, pl_module)

    def _feed(self, trainer: pl.Trainer, batches: Iterable[Any], *, shard: bool) -> None:
        assert self._module is not None
        self._m.explicit_pass(
            self._module,
            batches,
            transfer=lambda batch: trainer.strategy.batch_to_device(batch),
            rank=trainer.global_rank,
            world=trainer.world_size,
            shard=shard and trainer.world_size > 1,
        )

    def _second_pass(self, trainer: pl.Trainer, batches: Iterable[Any], *, shard: bool) -> None:
        monitor = self._m.monitor
        assert monitor is not None
        monitor.begin_second_pass()
        self._feed(trainer, batches, shard=shard)
        self._m.reduce(trainer.world_size)

    # -- logging -------------------------------------------------------------------------

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._m.finish(step=trainer.global_step, epoch=trainer.current_epoch)
        # float64 tensors, so the loggers receive the float64 numbers (a Python float would
        # become float32). Every rank computed the same numbers from the same reduced state:
        # the 'max' over ranks is that number, exactly, and keeps Lightning's DDP check quiet.
        device = pl_module.device
        values = {
            k: torch.tensor(v, dtype=torch.float64, device=device)
            for k, v in self._m.scalars().items()
        }
        pl_module.log_dict(
            values,
            on_step=False,
            on_epoch=True,
            reduce_fx="max",
            sync_dist=trainer.world_size > 1,
            batch_size=1,
        )

    def _warn_padding(self, trainer: pl.Trainer) -> None:
        loader = _val_loader(trainer)
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            n = len(sampler.dataset)  # type: ignore[arg-type]
            extra = sampler.total_size - n
            if extra > 0 and not sampler.drop_last:
                warn_once(
                    self._warned,
                    "padding",
                    f"CollapseCallback: the DistributedSampler repeats {extra} of the "
                    f"{n} validation samples to give every rank the same count; the collapse "
                    "metrics count them twice (use a validation set whose size the world size "
                    "divides, or pass dataloader=)",
                )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._m.write_history()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_riding()


def _val_loader(trainer: pl.Trainer) -> Any:
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


def _distributed_sampler(loader: Any) -> bool:
    return isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler)


def _validation_batches(trainer: pl.Trainer) -> int | None:
    """How many validation batches the run will see, None where Lightning cannot say yet."""
    val_loop = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None)
    setup = getattr(val_loop, "setup_data", None)
    if setup is None:
        return None
    source = getattr(val_loop, "_data_source", None)
    defined = getattr(source, "is_defined", None)
    if callable(defined) and not defined():
        return 0  # fit(model, train) without validation data: Lightning skips validation
    try:
        setup()
    except Exception:  # Lightning will raise its own error at the first validation
        return None
    counts = trainer.num_val_batches
    if not counts:
        return 0
    return int(sum(c for c in counts if c != float("inf"))) or (
        None if any(c == float("inf") for c in counts) else 0
    )
