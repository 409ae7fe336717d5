"""Deep NRC (or Deep NC) at every evaluation of a Hugging Face ``Trainer`` run.

Needs the ``[hf]`` extra (``pip install "nrc-cli[hf]"``: ``transformers`` and ``accelerate``).

Example
-------
>>> from transformers import Trainer  # doctest: +SKIP
>>> from nrc_cli.integrations.transformers import CollapseCallback  # doctest: +SKIP
>>> trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)  # doctest: +SKIP
>>> CollapseCallback(rank=1).attach(trainer)  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP

At each evaluation the callback runs the evaluation dataloader through the model once more
(twice for a classifier's nearest-class-mean columns), puts :meth:`nrc_cli.Results.scalars`
into the evaluation's logs (so ``trainer.state.log_history`` and the reporters receive them)
and into the metrics ``evaluate()`` returns; at each save it writes the full report as
``nrc_report.json`` into the checkpoint folder. Token models are pooled with the attention
mask, as ``nrc analyze`` pools them. The documentation page
``docs/integrations/transformers.md`` has a complete example.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback  # the [hf] extra

from nrc_cli._atomic import atomic_write
from nrc_cli.errors import ConfigError
from nrc_cli.integrations._common import (
    BatchFn,
    Measured,
    Measurer,
    OutputFn,
    check_yields,
    distributed_world,
    warn_once,
)
from nrc_cli.results.formats import json_text

__all__ = ["REPORT_NAME", "CollapseCallback"]

#: The report's file name inside each checkpoint folder.
REPORT_NAME = "nrc_report.json"


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class CollapseCallback(Measured, TrainerCallback):
    """Measure collapse at each evaluation of a ``Trainer`` and report it with the metrics.

    ``layers``, ``exclude``, ``task``, ``rank``, ``precision``, ``svd``, ``seed``,
    ``collapse_rule``, ``mask_key`` and ``memory_budget`` are as for
    :class:`nrc_cli.CollapseMonitor` (and ``nrc analyze``).

    Parameters
    ----------
    dataloader : DataLoader, optional
        Measure on this instead of the evaluation dataloader.
    output_key : str
        The prediction inside the model's output (default ``"logits"``, a ModelOutput's).
    ncc : bool
        Classification: fill the nearest-class-mean columns with one more pass (default True).
    prediction : bool
        Pass the model's output to the monitor (False for a model without a prediction head).
    batch_fn : callable, optional
        ``batch -> (inputs, target)``; default: the batch's ``labels`` are the target, its
        other entries the keyword inputs (``input_ids``, ``attention_mask``, ...).
    output_fn : callable, optional
        ``output -> predictions`` (default: ``output_key`` of the output).
    prefix : str
        Prefix of the reported names (default ``"nrc/"``).
    history_path : str or PathLike, optional
        Write :attr:`history` there (``.parquet`` or ``.csv``) when training ends.
    report_name : str
        The report's file name in each checkpoint folder (default ``nrc_report.json``).
    """

    def __init__(
        self,
        *,
        dataloader: Iterable[Any] | None = None,
        layers: Iterable[str] = (),
        exclude: Iterable[str] = (),
        task: str = "auto",
        rank: int | None = None,
        precision: str = "exact",
        svd: str = "auto",
        seed: int = 0,
        collapse_rule: str | None = None,
        output_key: str | None = "logits",
        mask_key: str | None = "attention_mask",
        memory_budget: int | str | None = None,
        ncc: bool = True,
        prediction: bool = True,
        batch_fn: BatchFn | None = None,
        output_fn: OutputFn | None = None,
        prefix: str = "nrc/",
        history_path: str | os.PathLike | None = None,
        report_name: str = REPORT_NAME,
    ) -> None:
        if not isinstance(report_name, str) or not report_name or os.sep in report_name:
            raise ConfigError(f"report_name: expected a file name, found {report_name!r}")
        self.dataloader = dataloader
        self.report_name = report_name
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
        self._evaluated = False  # prediction steps ran since the last log
        self._step: int | None = None  # the global step of self.results
        self._scalars: dict[str, float] = {}
        self._attached = False
        self._warned: set[str] = set()

    def attach(self, trainer: Any) -> CollapseCallback:
        """Add this callback to ``trainer`` ahead of every other callback, so that the
        reporters (TensorBoard, W&B, MLflow, the printer) receive its scalars in the same logs
        as the evaluation's metrics. ``Trainer(callbacks=[...])`` and ``add_callback`` put it
        after them: ``log_history`` and ``evaluate()``'s metrics still have the scalars,
        those reporters do not."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [cb for cb in callbacks if cb is not self]
        callbacks.insert(0, self)
        self._attached = True
        return self

    # -- set-up ----------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if not isinstance(model, nn.Module):
            raise ConfigError("CollapseCallback: the Trainer passed no model to its callbacks")
        self._m.build(model)
        if self.dataloader is not None:
            check_yields("dataloader", self.dataloader)
        elif str(getattr(args, "eval_strategy", "no")) in ("no", "IntervalStrategy.NO"):
            raise ConfigError(
                "dataloader: TrainingArguments(eval_strategy='no') never evaluates, so the "
                "callback would never measure",
                hint="set eval_strategy='epoch' or 'steps' with an eval_dataset, or pass "
                "CollapseCallback(dataloader=...)",
            )

    # -- the evaluation ------------------------------------------------------------------

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._evaluated = True

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        self._evaluated = False  # Trainer.predict: not an evaluation, nothing is logged

    def _measure(self, model: nn.Module, loader: Iterable[Any], state: Any) -> None:
        monitor = self._m.monitor
        if monitor is None:  # evaluate() before train(): built now
            monitor = self._m.build(model)
        monitor.reset()
        device = next(model.parameters()).device
        world = distributed_world()
        self._m.explicit_pass(model, loader, transfer=lambda b: _to_device(b, device))
        self._m.reduce(world)
        if self._m.needs_second_pass():
            monitor.begin_second_pass()
            self._m.explicit_pass(model, loader, transfer=lambda b: _to_device(b, device))
            self._m.reduce(world)
        self._m.finish(step=state.global_step, epoch=state.epoch)
        self._step = int(state.global_step)
        self._scalars = self._m.scalars()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not self._evaluated or logs is None:
            return
        self._evaluated = False
        loader = self.dataloader if self.dataloader is not None else kwargs.get("eval_dataloader")
        model = kwargs.get("model")
        if loader is None or not isinstance(model, nn.Module):
            return
        self._measure(model, loader, state)
        logs.update(self._scalars)
        history = state.log_history
        if history and all(history[-1].get(k) == v for k, v in logs.items() if k in history[-1]):
            history[-1].update(self._scalars)
        if not self._attached:
            warn_once(
                self._warned,
                "attach",
                "CollapseCallback: the callbacks before it (TensorBoard, W&B, MLflow, the "
                "printer) did not receive the nrc/ scalars; add it with "
                "CollapseCallback(...).attach(trainer) instead of callbacks=[...]",
            )

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        if metrics is not None and self._step == state.global_step:
            metrics.update(self._scalars)

    # -- checkpoints -----------------------------------------------------------------------

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        if self._step != state.global_step:
            loader = self.dataloader if self.dataloader is not None else None
            loader = loader or kwargs.get("eval_dataloader")
            model = kwargs.get("model")
            if loader is None or not isinstance(model, nn.Module):
                warn_once(
                    self._warned,
                    "save",
                    f"CollapseCallback: no evaluation data at step {state.global_step}, so "
                    f"{folder.name} has no {self.report_name}",
                )
                return
            self._measure(model, loader, state)
        if state.is_world_process_zero:
            assert self._m.results is not None
            doc = self._m.results.to_dict()
            doc["checkpoint"] = str(folder)
            atomic_write(folder / self.report_name, json_text(doc))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._m.write_history()
