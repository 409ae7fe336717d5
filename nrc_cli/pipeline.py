"""``run(config) -> Results``: checkpoint and data in, every Deep NRC number out.

One forward pass over the data feeds float64 accumulators for all selected layers at once; the
metrics are then computed from the accumulated moments alone. Nothing here prints: progress is
reported through an optional callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram, SquaredError, Workspace
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.capture import Capture, WeightLayer, weight_layers
from nrc_cli.errors import ConfigError, DataError, NrcError
from nrc_cli.io.checkpoint import open_checkpoint
from nrc_cli.io.data import Dataset, open_dataset
from nrc_cli.linalg import gaussian_test_matrix, resolve_svd_method, single_threaded
from nrc_cli.metrics.layer import (
    Spectrum,
    layer_metrics,
    probe_mse_regularized,
    weight_input_basis,
)
from nrc_cli.metrics.summary import (
    first_collapsed,
    last_layer_fields,
    target_fields,
)
from nrc_cli.model.build import BuiltModel, build_model
from nrc_cli.options import AnalysisOptions
from nrc_cli.planning import Plan, default_budget, layer_need, make_plan
from nrc_cli.results import Results

Progress = Callable[[int, int], None]


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
    ckpt = open_checkpoint(checkpoint)
    data = open_dataset(
        data_path,
        x_key=config.x_key,
        y_key=config.y_key,
        inputs=config.inputs,
        max_samples=config.max_samples,
    )
    try:
        built = build_model(
            ckpt,
            arch=config.arch,
            arch_kwargs=config.arch_kwargs,
            activation=config.activation,
        )
        if built.in_features is not None and data.x_sample_shape[-1] != built.in_features:
            raise DataError(
                f"{data_path}: input '{data.x_info.key}' has {data.x_sample_shape[-1]} features "
                f"(shape {list(data.x_info.shape)}), but the model's first layer "
                f"'{built.spec.blocks[0].linear}' expects {built.in_features}",
                hint="is this the data the model was trained on? pick arrays with --x-key",
            )
        if built.out_features is not None and data.target_dim != built.out_features:
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


def run(
    checkpoint: str,
    data: str,
    config: AnalysisOptions,
    *,
    progress: Progress | None = None,
    on_plan: Callable[[dict], None] | None = None,
) -> Results:
    """Analyze one checkpoint on one data set.

    Parameters
    ----------
    checkpoint, data : str
        Paths of the checkpoint and of the data set.
    config : AnalysisOptions
    progress : callable(done, total), optional
        Called after each batch with the number of samples seen so far (over all passes) and
        the total to see.
    on_plan : callable(plan), optional
        Called once before the first data pass with the plan (as recorded in the summary).
    """
    rule = config.rule()
    device = resolve_device(config.device)
    built, dataset, layers = prepare(checkpoint, data, config)
    with dataset, full_float32(device):
        results = _Analysis(config, rule, device, built, dataset, layers, progress, on_plan).run()
    results.checkpoint, results.data = str(checkpoint), str(data)
    return results


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


class _Analysis:
    """One analysis: plan, data passes, then metrics from the accumulated state."""

    def __init__(self, config, rule, device, built, data, layers, progress, on_plan) -> None:
        self.on_plan = on_plan
        self.config = config
        self.rule = rule
        self.device = device
        self.built = built
        self.data = data
        self.layers = layers
        self.progress = progress
        self.model: nn.Module = built.module.to(device=device, dtype=config.torch_dtype)
        self.t = data.target_dim
        self.k = config.rank or self.t
        # The head is known only after the first forward pass, so the normalised Gram of the
        # last-layer NRC is kept for every Linear that could be one (t outputs): in practice
        # only the head itself has that width.
        self.heads = {
            w.name
            for w in layers
            if isinstance(w.module, nn.Linear) and w.module.out_features == self.t
        }
        self.mask_key = self._mask_key()

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

    # -- planning ---------------------------------------------------------------------------

    def plan(self) -> Plan:
        budget = self.config.budget_bytes()
        if budget is None:
            budget = default_budget(self.device)
        needs = [
            layer_need(
                w.name,
                w.in_dim,
                self.t,
                self.k,
                oversample=self.config.oversample,
                batch=min(self.config.batch_size, self.data.n_samples),
                head=w.name in self.heads,
            )
            for w in self.layers
        ]
        return make_plan(needs, budget)

    def spectrum_method(self, name: str, p: int, plan: Plan) -> str:
        if plan.mode[name] == "sketch":
            return "nystrom"
        return resolve_svd_method(self.config.svd, p, min(self.k, p))

    # -- data passes ------------------------------------------------------------------------

    def run(self) -> Results:
        plan = self.plan()
        methods = {w.name: self.spectrum_method(w.name, w.in_dim, plan) for w in self.layers}
        if self.on_plan is not None:
            self.on_plan(plan.to_dict(methods, self.config.budget_label))
        accs: dict[str, CrossMoments | CovarianceSketch] = {}
        grams: dict[str, NormalizedGram] = {}
        sse = SquaredError() if self.config.prediction else None
        order: list[str] = []
        total = self.data.n_samples * len(plan.passes)
        seen = 0
        for i, group in enumerate(plan.passes):
            # One scratch buffer for every exact layer's per-batch temporaries, allocated
            # before their states so that the two never interleave on the heap.
            workspace = Workspace()
            widths = [
                w.in_dim
                for w in self.layers
                if plan.mode.get(w.name) == "exact" and w.name in group
            ]
            if widths:
                batch = min(self.config.batch_size, self.data.n_samples)
                workspace.reserve(batch * max(widths), self.device)
            for name in group:
                if plan.mode[name] == "exact":
                    accs[name] = CrossMoments(self.device, workspace)
                    if name in self.heads:
                        grams[name] = NormalizedGram(self.device, workspace)
                else:
                    p = next(w.in_dim for w in self.layers if w.name == name)
                    omega = gaussian_test_matrix(
                        p, plan.sketch_size[name], seed=self.config.seed, device=self.device
                    )
                    accs[name] = CovarianceSketch(omega)
            # The first pass hooks every selected layer, to learn the forward order; the
            # layers of later passes are the only ones hooked then.
            hooked = self.layers if i == 0 else [w for w in self.layers if w.name in group]
            pass_order, seen = self._data_pass(
                hooked, set(group), accs, grams, sse if i == 0 else None, seen, total
            )
            if i == 0:
                order = pass_order
        with single_threaded():
            return self._results(plan, methods, order, accs, grams, sse)

    def _data_pass(self, hooked, active, accs, grams, sse, seen, total):
        config = self.config
        state: dict = {"pending": []}
        # One reduction per layer finds any nan/inf (they propagate into the sum; a float32 sum
        # that merely overflows is taken again in float64). On the CPU it is read at once; on a
        # GPU reading it would stall the stream once per layer, so the sums of a batch are read
        # together after its forward pass.
        deferred = self.device.type != "cpu"

        def check(name: str, z: torch.Tensor, total: torch.Tensor) -> None:
            if bool(torch.isfinite(total)):
                return
            if z.dtype != torch.float64 and bool(torch.isfinite(z.sum(dtype=torch.float64))):
                return  # finite features whose float32 sum overflowed: float64 holds them
            bad = ~torch.isfinite(z).all(dim=1)
            row = int(bad.nonzero()[0]) if bool(bad.any()) else None
            if row is None:
                raise DataError(
                    f"layer '{name}': features too large to sum in float64 in the batch "
                    f"starting at sample {state['start']}",
                    hint="check the input scale",
                )
            raise DataError(
                f"layer '{name}': non-finite features (nan or inf) at sample "
                f"{state['start'] + row}",
                hint="the model overflows on this input; check the input scale, "
                "or use --dtype float32",
            )

        def on_features(name: str, z: torch.Tensor) -> None:
            with single_threaded(z.device):
                total = z.sum()
            if deferred:
                state["pending"].append((name, z, total))
            else:
                check(name, z, total)
            accs[name].update(z, state["y"])
            if name in grams:
                grams[name].update(z)

        def check_pending() -> None:
            pending, state["pending"] = state["pending"], []
            if pending and not bool(torch.isfinite(torch.stack([t for _, _, t in pending])).all()):
                for name, z, t in pending:
                    check(name, z, t)

        with Capture(hooked, on_features, active=active) as cap, torch.inference_mode():
            for batch in self.data.batches(config.batch_size):
                x, mask = self._inputs(batch.x)
                y = torch.from_numpy(batch.y).to(device=self.device, dtype=torch.float64)
                state["start"], state["y"] = batch.start, y
                cap.next_batch(mask)
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
                        hint="check that the data matches the model's expected input",
                    ) from exc
                check_pending()
                if sse is not None:
                    sse.update(select_prediction(out, y, config), y)
                seen += y.shape[0]
                if self.progress is not None:
                    self.progress(seen, total)
            return list(cap.order), seen

    def _inputs(self, x):
        """Batch arrays -> tensors on the device (floats in the model's dtype), and the mask."""

        def tensor(a: np.ndarray) -> torch.Tensor:
            v = torch.from_numpy(np.ascontiguousarray(a))
            if v.is_floating_point():
                v = v.to(dtype=self.config.torch_dtype)
            return v.to(self.device)

        if isinstance(x, dict):
            xs = {k: tensor(v) for k, v in x.items()}
            return xs, xs.get(self.mask_key) if self.mask_key else None
        return tensor(x), None

    # -- metrics ----------------------------------------------------------------------------

    def _results(self, plan, methods, order, accs, grams, sse) -> Results:
        config = self.config
        by_name = {w.name: w for w in self.layers}
        model_mse = sse.compute() if sse is not None else None
        randomized = {
            "oversample": config.oversample,
            "power_iters": config.power_iters,
            "seed": config.seed,
        }
        rows: list[dict] = []
        cov_y = None
        for i, name in enumerate(order, start=1):
            w = by_name[name]
            p = w.in_dim
            method = methods[name]
            probe = None
            # Each state is let go once read, so the metrics phase does not hold them all.
            acc = accs.pop(name)
            if method == "nystrom":
                r = acc.compute()
                m = r.moments
                spectrum = Spectrum.from_sketch(r.sketch, r.omega, r.trace)
            else:
                m = acc.compute()
                if method == "exact":
                    spectrum = Spectrum.exact(m.cov_z)
                else:
                    spectrum = Spectrum.randomized(m.cov_z, min(self.k, p), **randomized)
                    probe = probe_mse_regularized(m, spectrum.top)
            weight = (
                weight_input_basis(w.module)
                if method == "exact"
                else weight_input_basis(w.module, min(self.k, p), **randomized)
            )
            cov_y = m.cov_y
            last = (spectrum, m)  # the head's, once the loop is done
            row = {"layer": name, "index": i, "type": w.type}
            row.update(
                layer_metrics(
                    m, spectrum, w.module, self.k, model_mse, probe_mse=probe, weight=weight
                )
            )
            row["collapsed"] = self.rule.holds(row)
            rows.append(row)
        if cov_y is None:
            raise ConfigError("none of the selected weight layers ran during the forward pass")

        first = first_collapsed([r["collapsed"] for r in rows])
        used = sorted(set(methods.values()))
        summary = {
            "n_samples": self.data.n_samples,
            "target_dim": self.t,
            "rank": self.k,
            "model_mse": model_mse,
            **target_fields(cov_y),
            "first_collapsed_layer": rows[first - 1]["layer"] if first else None,
            "first_collapsed_index": first,
            "collapse_rule": self.rule.text,
            "nrc1_last": None,
            "nrc2_last": None,
            "nrc3_last": None,
            "nrc3_gamma": None,
            "prediction": prediction_label(config),
            "svd": used[0] if len(used) == 1 else "mixed",
            "oversample": config.oversample,
            "power_iters": config.power_iters,
            "seed": config.seed,
            "passes": len(plan.passes),
            "device": str(self.device),
            "dtype": config.dtype,
        }
        head = order[-1]
        if sse is not None and not math.isfinite(model_mse):
            summary["warnings"] = [
                "model_mse is null: the model's predictions are not finite (nan or inf), "
                "so nrc4_ratio is null too; check the model's output"
            ]
        if head in grams:
            spectrum, m = last
            summary.update(
                last_layer_fields(
                    by_name[head].module.weight, spectrum, grams[head].compute(), m.cov_y, self.k
                )
            )
        plan_doc = plan.to_dict(methods, config.budget_label)
        not_run = [w.name for w in self.layers if w.name not in order]
        if not_run:
            plan_doc["not_run"] = not_run
        return Results(
            checkpoint="",
            data="",
            summary=summary,
            layers=rows,
            metadata=dict(self.built.checkpoint.metadata),
            plan=plan_doc,
        )


def prediction_label(config: AnalysisOptions) -> str:
    """What ``model_mse`` compares with the targets, as recorded in the summary."""
    if not config.prediction:
        return "none"
    if config.output_key is not None:
        return f"output[{config.output_key}]"
    return "output"


def select_prediction(out, y: torch.Tensor, config: AnalysisOptions) -> torch.Tensor:
    """The prediction tensor (b, t) inside a model's output (tensor, tuple, dict, ModelOutput)."""
    key = config.output_key
    if key is not None:
        out = _pick(out, key)
    elif not isinstance(out, torch.Tensor):
        raise DataError(
            f"the model returned {_describe(out)}, not a tensor of predictions",
            hint="pick the prediction with --output-key, or pass --no-prediction "
            "to measure the features against the targets without one",
        )
    if not isinstance(out, torch.Tensor):
        raise DataError(f"--output-key {key!r} selects {_describe(out)}, not a tensor")
    b, t = y.shape
    if out.ndim == 0 or out.shape[0] != b or math.prod(out.shape[1:]) != t:
        raise DataError(
            f"the model's prediction has shape {list(out.shape)}, but the targets "
            f"'{config.y_key}' need ({b}, {t}) per batch",
            hint="pick the target array with --y-key, the prediction with --output-key, "
            "or pass --no-prediction",
        )
    return out.reshape(b, t)


def _pick(out, key: str):
    if isinstance(out, (tuple, list)) and not hasattr(out, "keys"):
        try:
            return out[int(key)]
        except (ValueError, IndexError):
            raise DataError(
                f"--output-key {key!r}: the model returned a {type(out).__name__} of "
                f"{len(out)} items; use an index 0..{len(out) - 1}",
            ) from None
    if hasattr(out, "keys"):
        keys = list(out.keys())
        if key in keys:
            return out[key]
        raise DataError(
            f"--output-key {key!r}: the model's output has keys {', '.join(map(str, keys))}",
        )
    if hasattr(out, key):
        return getattr(out, key)
    raise DataError(f"--output-key {key!r}: the model returned {_describe(out)}")


def _describe(out) -> str:
    if hasattr(out, "keys"):
        return f"a {type(out).__name__} with keys {', '.join(map(str, out.keys()))}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"
