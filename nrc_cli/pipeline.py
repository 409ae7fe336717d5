"""``run(config) -> Results``: checkpoint and data in, every Deep NRC number out.

One forward pass over the data feeds float64 accumulators for all selected layers at once; the
metrics are then computed from the accumulated moments alone. Nothing here prints: progress is
reported through an optional callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram, SquaredError
from nrc_cli.capture import Capture, WeightLayer, weight_layers
from nrc_cli.errors import ConfigError, DataError, NrcError
from nrc_cli.io.checkpoint import open_checkpoint
from nrc_cli.io.data import NpzDataset
from nrc_cli.metrics.layer import Spectrum, layer_metrics
from nrc_cli.metrics.summary import (
    DEFAULT_COLLAPSE_RULE,
    CollapseRule,
    first_collapsed,
    last_layer_fields,
    target_fields,
)
from nrc_cli.model.build import BuiltModel, build_model, parse_arch_kwargs
from nrc_cli.results import Results

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AnalyzeConfig:
    """Everything one analysis needs; built by the CLI or by :func:`nrc_cli.analyze`."""

    checkpoint: str
    data: str
    x_key: str = "x"
    y_key: str = "y"
    batch_size: int = 1024
    max_samples: int | None = None
    rank: int | None = None
    collapse_rule: str = DEFAULT_COLLAPSE_RULE
    arch: str | None = None
    arch_kwargs: str | None = None
    activation: str | None = None
    svd: str = "auto"
    oversample: int = 10
    power_iters: int = 4
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    layers: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> CollapseRule:
        """Check option values; return the parsed collapse rule."""
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"--rank: expected an integer >= 1, found {self.rank}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected an integer >= 1, found {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"--max-samples: expected an integer >= 1, found {self.max_samples}")
        if self.oversample < 0:
            raise ConfigError(f"--oversample: expected an integer >= 0, found {self.oversample}")
        if self.power_iters < 0:
            raise ConfigError(f"--power-iters: expected an integer >= 0, found {self.power_iters}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, found '{self.dtype}'")
        return CollapseRule.parse(self.collapse_rule)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda[:i]`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    elif device.type != "cpu":
        raise ConfigError(f"--device: expected auto, cpu or cuda[:i], found '{name}'")
    return device


def prepare(config: AnalyzeConfig) -> tuple[BuiltModel, NpzDataset, list[WeightLayer]]:
    """Open the inputs, build the model and check that they fit, before anything runs."""
    config.validate()
    ckpt = open_checkpoint(config.checkpoint)
    data = NpzDataset(
        config.data, x_key=config.x_key, y_key=config.y_key, max_samples=config.max_samples
    )
    try:
        built = build_model(
            ckpt,
            arch=config.arch,
            arch_kwargs=parse_arch_kwargs(config.arch_kwargs),
            activation=config.activation,
        )
        if built.in_features is not None and data.x_sample_shape[-1] != built.in_features:
            raise DataError(
                f"{config.data}: array '{config.x_key}' has {data.x_sample_shape[-1]} features "
                f"(shape {list(data.x_info.shape)}), but the model's first layer "
                f"'{built.spec.blocks[0].linear}' expects {built.in_features}",
                hint="is this the data the model was trained on? pick arrays with --x-key",
            )
        if built.out_features is not None and data.target_dim != built.out_features:
            raise DataError(
                f"{config.data}: array '{config.y_key}' has {data.target_dim} target column(s) "
                f"(shape {list(data.y_info.shape)}), but the model outputs {built.out_features}",
                hint="pick the target array with --y-key",
            )
        layers = weight_layers(built.module, include=config.layers, exclude=config.exclude)
    except BaseException:
        data.close()
        raise
    return built, data, layers


def run(config: AnalyzeConfig, *, progress: Progress | None = None) -> Results:
    """Analyze one checkpoint on one data set.

    Parameters
    ----------
    config : AnalyzeConfig
    progress : callable(done, total), optional
        Called after each batch with the number of samples seen and the total.
    """
    rule = config.validate()
    device = resolve_device(config.device)
    built, data, layers = prepare(config)
    with data:
        return _run(config, rule, device, built, data, layers, progress)


def _run(config, rule, device, built, data, layers, progress) -> Results:
    model: nn.Module = built.module.to(device=device, dtype=DTYPES[config.dtype])
    t = data.target_dim
    k = config.rank or t
    moments = {w.name: CrossMoments(device) for w in layers}
    # The head is known only after the first forward pass; the normalised Gram is cheap, so keep
    # it for every Linear that could be a head (t outputs).
    grams = {
        w.name: NormalizedGram(device)
        for w in layers
        if isinstance(w.module, nn.Linear) and w.module.out_features == t
    }
    sse = SquaredError()
    state: dict = {}

    def on_features(name: str, z: torch.Tensor) -> None:
        bad = ~torch.isfinite(z).all(dim=1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise DataError(
                f"layer '{name}': non-finite features (nan or inf) at sample {state['start'] + row}",
                hint="the model overflows on this input; check the input scale or use --dtype float32",
            )
        moments[name].update(z, state["y"])
        if name in grams:
            grams[name].update(z)

    done = 0
    with Capture(layers, on_features) as cap, torch.inference_mode():
        for batch in data.batches(config.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch.x))
            if x.is_floating_point():
                x = x.to(dtype=DTYPES[config.dtype])
            x = x.to(device)
            y = torch.from_numpy(batch.y).to(device=device, dtype=torch.float64)
            state["start"], state["y"] = batch.start, y
            cap.next_batch()
            try:
                out = model(x)
            except NrcError:
                raise
            except Exception as exc:
                raise DataError(
                    f"the model failed on batch starting at sample {batch.start} "
                    f"(input shape {list(x.shape)}): {type(exc).__name__}: {exc}",
                    hint="check that the data matches the model's expected input",
                ) from exc
            pred = _prediction(out, y, config)
            sse.update(pred, y)
            done += y.shape[0]
            if progress is not None:
                progress(done, data.n_samples)
        order = list(cap.order)

    by_name = {w.name: w for w in layers}
    model_mse = sse.compute()
    rows: list[dict] = []
    spectra = {}
    any_moments = None
    for i, name in enumerate(order, start=1):
        m = moments[name].compute()
        any_moments = m
        spectrum = Spectrum.exact(m.cov_z)
        spectra[name] = (spectrum, m)
        w = by_name[name]
        row = {"layer": name, "index": i, "type": w.type}
        row.update(layer_metrics(m, spectrum, w.module, k, model_mse))
        row["collapsed"] = rule.holds(row)
        rows.append(row)
    if any_moments is None:
        raise ConfigError("none of the selected weight layers ran during the forward pass")

    first = first_collapsed([r["collapsed"] for r in rows])
    summary = {
        "n_samples": done,
        "target_dim": t,
        "rank": k,
        "model_mse": model_mse,
        **target_fields(any_moments.cov_y),
        "first_collapsed_layer": rows[first - 1]["layer"] if first else None,
        "first_collapsed_index": first,
        "collapse_rule": rule.text,
        "nrc1_last": None,
        "nrc2_last": None,
        "nrc3_last": None,
        "nrc3_gamma": None,
        "prediction": "model output",
        "svd": "exact",
        "oversample": config.oversample,
        "power_iters": config.power_iters,
        "seed": config.seed,
        "passes": 1,
        "device": str(device),
        "dtype": config.dtype,
    }
    head = order[-1]
    if head in grams:
        spectrum, m = spectra[head]
        summary.update(
            last_layer_fields(
                by_name[head].module.weight, spectrum, grams[head].compute(), m.cov_y, k
            )
        )
    not_run = [w.name for w in layers if w.name not in order]
    plan = {"not_run": not_run} if not_run else {}
    return Results(
        checkpoint=str(config.checkpoint),
        data=str(config.data),
        summary=summary,
        layers=rows,
        metadata=dict(built.checkpoint.metadata),
        plan=plan,
    )


def _prediction(out, y: torch.Tensor, config: AnalyzeConfig) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise DataError(
            f"the model returned {type(out).__name__}, expected a tensor of predictions",
        )
    b, t = y.shape
    if out.ndim == 0 or out.shape[0] != b or math.prod(out.shape[1:]) != t:
        raise DataError(
            f"the model's output has shape {list(out.shape)}, but the targets "
            f"'{config.y_key}' need ({b}, {t}) per batch",
            hint="pick the target array with --y-key",
        )
    return out.reshape(b, t)
