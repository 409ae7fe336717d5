"""Every analysis option, typed and declared once: :class:`AnalysisOptions`.

The command line builds one from its strings (:meth:`AnalysisOptions.from_cli`), and the options
of ``nrc analyze``, ``nrc check`` and ``nrc audit`` are generated from the fields declared here
(``nrc_cli/cli/_options.py`` reads each field's :class:`CliSpec`): adding an option means
adding one field. The Python API takes the same fields as keyword arguments
(``nrc_cli.analyze(model, data, rank=2, arch_kwargs={"width": 64})``).

Validation happens here, once, when the options are built: a bad value raises
:class:`~nrc_cli.errors.ConfigError` naming the option as the command line spells it.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

from nrc_cli.errors import ConfigError, OptionError
from nrc_cli.grammar import COMPARE, ExpressionError, parse_term
from nrc_cli.results import layer_columns

# -- value types with their own parsing ----------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
SVD_CHOICES = ("auto", "exact", "randomized")
PRECISIONS = ("exact", "mixed")  # the accumulators' (nrc_cli.accumulate.moments.PRECISIONS)


# Per-layer numeric columns a collapse rule (or a gate) may test: the schema's, per task.
def _numeric_layer_columns(task: str) -> tuple[str, ...]:
    return tuple(name for name, kind in layer_columns(task) if kind in ("int", "float"))


RULE_COLUMNS = _numeric_layer_columns("regression")
DEFAULT_COLLAPSE_RULE = "nrc1_noise<=0.2"
# The same for a classifier (docs/classification.md).
CLASSIFICATION_RULE_COLUMNS = _numeric_layer_columns("classification")
DEFAULT_CLASSIFICATION_RULE = "nc1_trace<=0.2"
TASKS = ("auto", "regression", "classification")
# Per task: the columns a collapse rule may test, and the default rule.
TASK_RULE_COLUMNS = {"regression": RULE_COLUMNS, "classification": CLASSIFICATION_RULE_COLUMNS}
TASK_DEFAULT_RULES = {
    "regression": DEFAULT_COLLAPSE_RULE,
    "classification": DEFAULT_CLASSIFICATION_RULE,
}
# A collapse rule's terms bound a column from one side, inclusively (docs/metrics.md).
RULE_OPERATORS = ("<=", ">=")
_RULE_FIX = (
    "write COLUMN<=NUMBER or COLUMN>=NUMBER terms separated by commas, e.g. "
    "--collapse-rule 'nrc1_noise<=0.2,nrc3_alignment>=0.9'"
)


@dataclass(frozen=True)
class CollapseRule:
    """A conjunction of ``column<=value`` / ``column>=value`` terms over per-layer columns."""

    terms: tuple[tuple[str, str, float], ...]

    @classmethod
    def parse(cls, text: str, task: str | None = "regression") -> CollapseRule:
        """Parse ``--collapse-rule`` text such as ``nrc1_noise<=0.2,nrc3_alignment>=0.9``.

        Each comma-separated term is read by the requirement grammar
        (:func:`nrc_cli.grammar.parse_term`): ``COLUMN OP NUMBER`` without a layer selector, with
        ``OP`` one of :data:`RULE_OPERATORS`. ``task`` names whose per-layer columns the rule may
        test (``regression`` or ``classification``); None accepts the columns of either (before
        the task is known).
        """
        if task is None:
            columns = tuple(dict.fromkeys(RULE_COLUMNS + CLASSIFICATION_RULE_COLUMNS))
        else:
            columns = TASK_RULE_COLUMNS[task]
        if not text or not text.strip():
            raise option_error(
                "--collapse-rule: expected terms like 'nrc1_noise<=0.2', found an empty rule"
            )
        terms = []
        for raw in text.split(","):
            try:
                term = parse_term(
                    raw, columns=columns, operators=RULE_OPERATORS, source="--collapse-rule"
                )
            except ExpressionError as err:
                raise _rule_error(err, text, task, columns) from None
            terms.append((term.column, term.op, term.bound))
        return cls(tuple(terms))

    @property
    def text(self) -> str:
        return ",".join(f"{c}{op}{_num(v)}" for c, op, v in self.terms)

    def holds(self, row: Mapping) -> bool:
        """True when every term holds; a null value never satisfies a term."""
        for col, op, value in self.terms:
            x = row.get(col)
            if x is None or (isinstance(x, float) and math.isnan(x)):
                return False
            if not COMPARE[op](x, value):
                return False
        return True


def _rule_error(
    err: ExpressionError, text: str, task: str | None, columns: tuple[str, ...]
) -> ConfigError:
    """The grammar's error on one term, said of the whole rule (one line and one hint)."""
    term = err.expression
    if err.kind == "column":
        what = f"a {task} report's" if task is not None else "a"
        return option_error(
            f"--collapse-rule: unknown column '{err.token}' in '{text}' (not {what} "
            "per-layer column)",
            hint=f"columns: {', '.join(columns)}",
        )
    if err.kind == "number" and err.token:
        return option_error(
            f"--collapse-rule: '{err.token}' in term '{term}' is not a finite number",
            hint=_RULE_FIX,
        )
    return option_error(
        f"--collapse-rule: cannot parse term '{term}' in '{text}': {err.what}", hint=_RULE_FIX
    )


def _num(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


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


def parse_size(text: str, flag: str = "--memory-budget") -> int:
    """Parse a size such as ``4GB``, ``512MiB`` or ``1e9`` into bytes (``flag`` names the
    option in messages)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text or "")
    if m is None or m.group(2).lower() not in _UNITS:
        raise option_error(
            f"{flag}: expected a size like 4GB, 512MB or 2GiB, found '{text}'",
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise option_error(f"{flag}: expected a positive size, found '{text}'")
    if not value < _MAX_SIZE:  # also inf: 1e400GB overflows a float
        raise option_error(
            f"{flag}: '{text}' is too large; expected a size below 1 EB (1e18 bytes)"
        )
    return int(value)


def parse_arch_kwargs(text: str | None) -> dict:
    """Parse ``--arch-kwargs``: a JSON object, or nothing."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise option_error(
            "--arch-kwargs: expected a JSON object, found one nested too deeply"
        ) from exc
    except ValueError as exc:
        raise option_error(
            f"--arch-kwargs: expected a JSON object, found invalid JSON ({exc})",
            hint="""quote it for the shell, e.g. --arch-kwargs '{"width": 64}'""",
        ) from exc
    if not isinstance(value, dict):
        raise option_error(
            f"--arch-kwargs: expected a JSON object, found {type(value).__name__}",
            hint="""e.g. --arch-kwargs '{"width": 64}'""",
        )
    return value


# -- the declaration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliSpec:
    """How one option appears on the command line.

    Attributes
    ----------
    flag : str
        The option's flag, e.g. ``--batch-size``.
    help : str
        Its help text (the same in every command).
    kind : str
        How the command-line value becomes the field's value: ``"plain"`` (as it is),
        ``"json"`` (a JSON object's text, for a dict), ``"repeat"`` (a repeatable option, for
        a tuple), ``"negated"`` (a ``--no-…`` switch for a field that defaults to True).
    """

    flag: str
    help: str
    kind: str = "plain"

    @property
    def param(self) -> str:
        """The command's parameter name: the flag without dashes, in snake case."""
        return self.flag.lstrip("-").replace("-", "_")


def _option(default: Any, flag: str, help: str, kind: str = "plain", factory=None) -> Any:
    meta = {"cli": CliSpec(flag, help, kind)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AnalysisOptions:
    """Every option of one analysis, typed (the command-line flags are in brackets).

    Parameters
    ----------
    x_key : str
        Input array of an ``.npz`` data file [``--x-key``].
    y_key : str
        Target array of an ``.npz`` data file [``--y-key``].
    batch_size : int
        Samples per forward pass [``--batch-size``].
    max_samples : int, optional
        Use only the first N samples [``--max-samples``].
    rank : int, optional
        Analysis rank k; default the target dimension t [``--rank``].
    task : {"auto", "regression", "classification"}
        What the targets are [``--task``]: ``auto`` reads a 1-D integer target array as class
        labels (docs/classification.md) and anything else as regression targets.
    collapse_rule : str, optional
        Comma-separated ``COLUMN<=V`` / ``COLUMN>=V`` terms [``--collapse-rule``]; default
        ``nrc1_noise<=0.2``, or ``nc1_trace<=0.2`` for a classifier.
    arch : str, optional
        ``MODULE:CALLABLE`` or ``file.py:CALLABLE`` building the model [``--arch``].
    state_key : str, optional
        Dotted path of the state dict inside a ``torch.save`` file [``--state-key``].
    arch_kwargs : dict
        Keyword arguments for ``arch`` [``--arch-kwargs``, JSON on the command line].
    activation : str, optional
        Activation of an inferred MLP [``--activation``].
    layers : tuple of str
        Module-path globs selecting weight layers [``--layers``].
    exclude : tuple of str
        Module-path globs skipping weight layers [``--exclude``].
    partial_layers : tuple of str
        Globs of layers that may run for some samples only (an angle layer skipped for
        structures without angles) [``--partial-layers``]: each is measured over the samples
        it saw, targets restricted alike; by default such a layer is refused.
    inputs : tuple of str
        Data arrays passed as forward keyword arguments [``--input``].
    mask_key : str, optional
        The input used as token mask [``--mask-key``].
    output_key : str, optional
        Which part of the model's output is the prediction [``--output-key``].
    prediction : bool
        False: the model has no regression head [``--no-prediction``].
    ncc : bool
        Classification only: False skips the second data pass of the nearest-class-mean
        columns [``--no-ncc``].
    svd : {"auto", "exact", "randomized"}
        Spectrum method [``--svd``].
    oversample : int
        Randomized SVD oversampling [``--oversample``].
    power_iters : int
        Randomized SVD power iterations [``--power-iters``].
    seed : int
        Seed of every randomized step [``--seed``].
    device : str
        ``auto``, ``cpu`` or ``cuda[:i]`` [``--device``].
    dtype : {"float32", "bfloat16", "float16"}
        Forward-pass dtype [``--dtype``].
    precision : {"exact", "mixed"}
        Accumulation: float64 products, or float32 products of centred batches added into
        float64 sums (docs/metrics.md, "Mixed precision") [``--precision``].
    memory_budget : int, str or None
        Bytes, or a size such as ``"4GB"``, for the accumulators; None: half the memory
        available [``--memory-budget``].
    spill_dir : str, optional
        Classification: where the pooled features of the first pass are kept for the
        nearest-class-mean pass, instead of running the model again [``--spill-dir``];
        default the system temporary directory.
    spill_budget : int, str or None
        Bytes, or a size such as ``"20GB"``, that file may take; ``0`` runs the model again
        instead; None: half the free space of ``spill_dir`` [``--spill-budget``].

    Raises
    ------
    ConfigError
        When a value is out of range or of the wrong type (the message names the flag).
    """

    x_key: str = _option("x", "--x-key", "Name of the input array in the data file.")
    y_key: str = _option("y", "--y-key", "Name of the target array in the data file.")
    task: str = _option(
        "auto",
        "--task",
        "auto (a 1-D integer target array is class labels), regression or classification.",
    )
    batch_size: int = _option(1024, "--batch-size", "Samples per forward pass.")
    max_samples: int | None = _option(None, "--max-samples", "Use only the first N samples.")
    rank: int | None = _option(None, "--rank", "Analysis rank k (default: the target dimension t).")
    collapse_rule: str | None = _option(
        None,
        "--collapse-rule",
        f"Comma-separated COLUMN<=V / COLUMN>=V terms (default {DEFAULT_COLLAPSE_RULE}, "
        f"for a classifier {DEFAULT_CLASSIFICATION_RULE}).",
    )
    arch: str | None = _option(
        None, "--arch", "MODULE:CALLABLE or file.py:CALLABLE returning an nn.Module."
    )
    state_key: str | None = _option(
        None,
        "--state-key",
        "Dotted path of the state dict inside a torch.save file that holds several, "
        "e.g. model.state_dict (nrc inspect lists them).",
    )
    arch_kwargs: dict = _option(  # noqa: RUF009 (a field() with a factory)
        None,
        "--arch-kwargs",
        "JSON object of keyword arguments for --arch.",
        kind="json",
        factory=dict,
    )
    activation: str | None = _option(
        None,
        "--activation",
        "Activation of an inferred MLP: relu (default), gelu, tanh, sigmoid, silu, "
        "leaky_relu, elu, identity.",
    )
    layers: tuple[str, ...] = _option(
        (),
        "--layers",
        "Only layers whose module path matches this glob (repeatable): '*' within one dotted "
        "segment, '**' across segments, e.g. 'encoder.layer.*.output.dense', '**.fc'.",
        kind="repeat",
    )
    exclude: tuple[str, ...] = _option(
        (),
        "--exclude",
        "Skip layers whose module path matches this glob (repeatable; '*' within a segment, "
        "'**' across segments).",
        kind="repeat",
    )
    partial_layers: tuple[str, ...] = _option(
        (),
        "--partial-layers",
        "Accept layers matching this glob that run for some samples only (repeatable): each "
        "is measured over the samples it saw (regression).",
        kind="repeat",
    )
    inputs: tuple[str, ...] = _option(
        (),
        "--input",
        "Data array passed as a forward keyword argument of the same name (repeatable), "
        "e.g. --input input_ids --input attention_mask.",
        kind="repeat",
    )
    mask_key: str | None = _option(
        None,
        "--mask-key",
        "Input used as the token mask for masked mean pooling (default: attention_mask "
        "when it is an input).",
    )
    output_key: str | None = _option(
        None,
        "--output-key",
        "Which part of a tuple/dict/ModelOutput result is the prediction (key or index).",
    )
    prediction: bool = _option(
        True,
        "--no-prediction",
        "The model has no regression head: model_mse and nrc4_ratio are null.",
        kind="negated",
    )
    ncc: bool = _option(
        True,
        "--no-ncc",
        "Classification: skip the second data pass; the nearest-class-mean columns "
        "(ncc_accuracy, nc4_ncc_mismatch) are null.",
        kind="negated",
    )
    svd: str = _option("auto", "--svd", "Spectrum method: auto, exact or randomized.")
    oversample: int = _option(10, "--oversample", "Randomized SVD oversampling.")
    power_iters: int = _option(4, "--power-iters", "Randomized SVD power iterations.")
    seed: int = _option(0, "--seed", "Seed for every randomized step.")
    device: str = _option(
        "auto", "--device", "auto (CUDA when available, else CPU), cpu or cuda[:i]."
    )
    dtype: str = _option("float32", "--dtype", "Forward-pass dtype: float32, bfloat16 or float16.")
    precision: str = _option(
        "exact",
        "--precision",
        "Accumulation: exact (float64 products) or mixed (float32 products of centred batches "
        "added into float64 sums: faster where float64 is slow; every metric within "
        "1e-5 + 1e-4·|exact|, see docs/metrics.md).",
    )
    memory_budget: int | str | None = _option(
        None,
        "--memory-budget",
        "Memory for the accumulators, e.g. 4GB (default: half the available memory, "
        "the GPU's on CUDA). "
        "Layers are split over several passes, or sketched, to fit.",
    )
    spill_dir: str | None = _option(
        None,
        "--spill-dir",
        "Classification: where the first pass keeps the pooled features for the "
        "nearest-class-mean pass, so it need not run the model again (default: the system "
        "temporary directory; the file has no name and is gone when nrc ends).",
    )
    spill_budget: int | str | None = _option(
        None,
        "--spill-budget",
        "Disk space that file may take, e.g. 20GB; 0: run the model again instead "
        "(default: half the free space of --spill-dir).",
    )

    def __post_init__(self) -> None:
        for name in ("layers", "exclude", "partial_layers", "inputs"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            try:
                value = tuple(value or ())
            except TypeError:
                raise option_error(
                    f"{_flag(name)}: expected a sequence of strings, found {type(value).__name__}"
                ) from None
            if not all(isinstance(v, str) for v in value):
                raise option_error(f"{_flag(name)}: expected strings, found {list(value)!r}")
            object.__setattr__(self, name, value)
        if self.arch_kwargs is None:
            object.__setattr__(self, "arch_kwargs", {})
        if not isinstance(self.arch_kwargs, Mapping):
            raise option_error(
                "--arch-kwargs: expected a dict of keyword arguments, found "
                f"{type(self.arch_kwargs).__name__}",
                hint="""e.g. arch_kwargs={"width": 64} (on the command line, JSON text)""",
            )
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs))
        self._check_types()
        self._check_values()

    def _check_types(self) -> None:
        hints = typing.get_type_hints(AnalysisOptions)
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = _runtime_types(hints[f.name])
            if (
                int in allowed
                and isinstance(value, numbers.Integral)
                and not isinstance(value, bool)
            ):
                value = int(value)  # a numpy integer is as good as an int
                object.__setattr__(self, f.name, value)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
                raise option_error(
                    f"{_flag(f.name)}: expected {names}, found {type(value).__name__} {value!r}"
                )

    def _check_values(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise option_error(f"--rank: expected an integer >= 1, found {self.rank}")
        if self.batch_size < 1:
            raise option_error(f"--batch-size: expected an integer >= 1, found {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise option_error(f"--max-samples: expected an integer >= 1, found {self.max_samples}")
        if self.oversample < 0:
            raise option_error(f"--oversample: expected an integer >= 0, found {self.oversample}")
        if self.power_iters < 0:
            raise option_error(f"--power-iters: expected an integer >= 0, found {self.power_iters}")
        for flag, value in (
            ("--rank", self.rank),
            ("--batch-size", self.batch_size),
            ("--max-samples", self.max_samples),
            ("--oversample", self.oversample),
            ("--power-iters", self.power_iters),
        ):
            if value is not None and value >= 2**63:
                raise ConfigError(f"{flag}: {value} is too large for a 64-bit integer")
        if not 0 <= self.seed < 2**63:
            raise option_error(
                f"--seed: expected an integer from 0 to 2**63 - 1, found {self.seed}",
                hint="seeds are stored as 64-bit integers (JSON, Parquet)",
            )
        if self.dtype not in DTYPES:
            raise option_error(
                f"--dtype: expected one of {', '.join(DTYPES)}, found '{self.dtype}'"
            )
        if self.precision not in PRECISIONS:
            raise option_error(
                f"--precision: expected one of {', '.join(PRECISIONS)}, found '{self.precision}'"
            )
        if self.output_key is not None and not self.prediction:
            raise option_error("--output-key and --no-prediction exclude each other")
        if self.svd not in SVD_CHOICES:
            raise option_error(
                f"--svd: expected one of {', '.join(SVD_CHOICES)}, found {self.svd!r}",
                hint="use 'auto' (exact up to width 2048, randomized above), "
                "'exact' or 'randomized'",
            )
        if self.task not in TASKS:
            raise option_error(
                f"--task: expected one of {', '.join(TASKS)}, found {self.task!r}",
            )
        self.budget_bytes()  # a bad size is refused now, not after the model is built
        self.spill_bytes()
        if self.collapse_rule is not None:
            CollapseRule.parse(self.collapse_rule, None if self.task == "auto" else self.task)

    # -- derived values ---------------------------------------------------------------------

    def rule(self, task: str = "regression") -> CollapseRule:
        """The parsed collapse rule of ``task`` (its default when none was given)."""
        return CollapseRule.parse(self.collapse_rule or TASK_DEFAULT_RULES[task], task)

    def budget_bytes(self) -> int | None:
        """``memory_budget`` in bytes; None when not given (the run picks the default)."""
        budget = self.memory_budget
        if budget is None:
            return None
        if isinstance(budget, str):
            return parse_size(budget)
        if budget < 1:
            raise option_error(f"--memory-budget: expected a positive size, found '{budget}'")
        if not budget < _MAX_SIZE:
            raise option_error(
                f"--memory-budget: {budget} is too large; expected a size below 1 EB (1e18 bytes)"
            )
        return int(budget)

    def spill_bytes(self) -> int | None:
        """``spill_budget`` in bytes (0: no spill); None when not given (the run picks it)."""
        budget = self.spill_budget
        if budget is None:
            return None
        if isinstance(budget, str):
            return (
                0 if budget.strip() in ("0", "0B", "0b") else parse_size(budget, "--spill-budget")
            )
        if budget < 0 or not budget < _MAX_SIZE:
            raise option_error(
                f"--spill-budget: expected a size from 0 to 1 EB (1e18 bytes), found {budget}"
            )
        return int(budget)

    @property
    def budget_label(self) -> int | str:
        """The budget as recorded in a report: as asked for, or ``"auto"``."""
        return self.memory_budget if self.memory_budget is not None else "auto"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_cli(cls, values: Mapping[str, Any]) -> AnalysisOptions:
        """Options from a command's parameters (keyed by :attr:`CliSpec.param`).

        Repeatable options come as lists or None, ``--arch-kwargs`` as JSON text or None,
        ``--no-prediction`` as a switch; other keys of ``values`` are ignored.
        """
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            spec: CliSpec = f.metadata["cli"]
            value = values[spec.param]
            if spec.kind == "json":
                value = parse_arch_kwargs(value)
            elif spec.kind == "repeat":
                value = tuple(value or ())
            elif spec.kind == "negated":
                value = not value
            kwargs[f.name] = value
        return cls(**kwargs)

    @classmethod
    def cli_specs(cls) -> list[tuple[str, CliSpec, Any]]:
        """``(field name, CliSpec, command-line default)`` for every option, in order."""
        out = []
        for f in fields(cls):
            spec: CliSpec = f.metadata["cli"]
            default = f.default if f.default is not MISSING else None
            if spec.kind in ("json", "repeat"):
                default = None
            elif spec.kind == "negated":
                default = not default
            out.append((f.name, spec, default))
        return out

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option's field name, in declaration order."""
        return tuple(f.name for f in fields(cls))


def option_error(cli_message: str, *, hint: str | None = None) -> OptionError:
    """An :class:`OptionError` from one text written with the command-line flags.

    Its ``cli_message`` is the text; its ``message``, what the Python API raises, names the
    parameters instead (``--rank`` -> ``rank``, ``--no-prediction`` -> ``prediction=False``),
    so the two can never say different things.
    """
    return OptionError(_python_words(cli_message), cli_message=cli_message, hint=hint)


def _python_words(text: str) -> str:
    names = _flag_names()
    return re.sub(r"--[a-z][a-z0-9-]*", lambda m: names.get(m.group(0), m.group(0)), text)


@functools.cache
def _flag_names() -> dict[str, str]:
    """Each analysis flag and the Python parameter it sets."""
    names = {}
    for f in fields(AnalysisOptions):
        spec = f.metadata["cli"]
        names[spec.flag] = f"{f.name}=False" if spec.kind == "negated" else f.name
    return names


def _flag(name: str) -> str:
    for f in fields(AnalysisOptions):
        if f.name == name:
            return f.metadata["cli"].flag
    return name


def _runtime_types(hint: Any) -> tuple[type, ...]:
    """The classes ``isinstance`` checks for a field's annotation (``int | None`` -> (int, None))."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(hint) for t in _runtime_types(a))
    return (origin,) if origin is not None else (hint,)
