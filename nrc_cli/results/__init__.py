"""The one results schema every output format reads (columns, order, kinds), and the one
conversion of values to and from it.

Column names are those of docs/metrics.md for regression and of docs/classification.md for
classifiers; the summary's ``task`` says which. Tidy tables (CSV, Parquet, audits) have one row
per (checkpoint, layer): ``checkpoint``, ``data``, the per-layer columns, then the summary
fields.
The summary's ``rank`` (the requested k) is called ``requested_rank`` there, since the per-layer
``rank`` (the k actually used) owns that name.

Rows and summary stay dicts keyed by the schema (other modules, and other tools, read them as
such); what is typed is the schema: every column has a kind (``str``, ``int``, ``float``,
``bool``), :func:`plain` is the one place where NaN, infinities, pandas' NA and numpy scalars
become JSON values, and :func:`cell` turns a table cell back into its column's kind.
:meth:`Results.to_dict` / :meth:`Results.tidy_rows` write the schema; :meth:`Results.from_dict`,
:meth:`Results.from_tidy` and :meth:`Results.load` read it back, and :meth:`Results.from_json` is
the one reader of a JSON report's text.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nrc_cli._version import __version__
from nrc_cli.errors import DataError

# (name, kind) with kind one of "str", "int", "float", "bool".
LAYER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("layer", "str"),
    ("index", "int"),
    ("type", "str"),
    ("in_dim", "int"),
    ("rank", "int"),
    ("nrc1_noise", "float"),
    ("nrc2_cka", "float"),
    ("nrc2_cka_signal", "float"),
    ("nrc3_alignment", "float"),
    ("nrc4_probe_mse", "float"),
    ("nrc4_ratio", "float"),
    ("stable_rank_h", "float"),
    ("stable_rank_w", "float"),
    ("collapsed", "bool"),
    ("note", "str"),
)
METRIC_COLUMNS: tuple[str, ...] = tuple(name for name, kind in LAYER_COLUMNS if kind == "float")
# How a report was computed (settings, device, the model as built), the last summary fields
# of every task, in this order.
PROVENANCE_FIELDS: tuple[tuple[str, str], ...] = (
    ("prediction", "str"),
    ("svd", "str"),
    ("oversample", "int"),
    ("power_iters", "int"),
    ("seed", "int"),
    ("passes", "int"),
    ("device", "str"),
    ("world_size", "int"),
    ("dtype", "str"),
    ("build", "str"),
    ("model", "str"),
    ("activation", "str"),
    ("norm", "str"),
    ("precision", "str"),
)
SUMMARY_FIELDS: tuple[tuple[str, str], ...] = (
    ("task", "str"),
    ("n_samples", "int"),
    ("target_dim", "int"),
    ("rank", "int"),
    ("model_mse", "float"),
    ("stable_rank_y", "float"),
    ("target_effective_rank", "int"),
    ("first_collapsed_layer", "str"),
    ("first_collapsed_index", "int"),
    ("collapse_rule", "str"),
    ("nrc1_last", "float"),
    ("nrc2_last", "float"),
    ("nrc3_last", "float"),
    ("nrc3_gamma", "float"),
    *PROVENANCE_FIELDS,
)
# The same for a classifier (docs/classification.md).
CLASSIFICATION_LAYER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("layer", "str"),
    ("index", "int"),
    ("type", "str"),
    ("in_dim", "int"),
    ("rank", "int"),
    ("nc1", "float"),
    ("nc1_trace", "float"),
    ("nc2_equinorm", "float"),
    ("nc2_etf", "float"),
    ("nc3_alignment", "float"),
    ("ncc_accuracy", "float"),
    ("nc4_ncc_mismatch", "float"),
    ("stable_rank_h", "float"),
    ("stable_rank_w", "float"),
    ("collapsed", "bool"),
    ("note", "str"),
)
CLASSIFICATION_METRIC_COLUMNS: tuple[str, ...] = tuple(
    name for name, kind in CLASSIFICATION_LAYER_COLUMNS if kind == "float"
)
CLASSIFICATION_SUMMARY_FIELDS: tuple[tuple[str, str], ...] = (
    ("task", "str"),
    ("n_samples", "int"),
    ("n_classes", "int"),
    ("model_accuracy", "float"),
    ("first_collapsed_layer", "str"),
    ("first_collapsed_index", "int"),
    ("collapse_rule", "str"),
    ("nc3_duality_last", "float"),
    *PROVENANCE_FIELDS,
)
TASKS: tuple[str, ...] = ("regression", "classification")
_LAYER_COLUMNS = {"regression": LAYER_COLUMNS, "classification": CLASSIFICATION_LAYER_COLUMNS}
_SUMMARY_FIELDS = {"regression": SUMMARY_FIELDS, "classification": CLASSIFICATION_SUMMARY_FIELDS}
_METRIC_COLUMNS = {"regression": METRIC_COLUMNS, "classification": CLASSIFICATION_METRIC_COLUMNS}
# Summary fields renamed in tidy tables to avoid clashing with per-layer columns.
TIDY_RENAMES = {"rank": "requested_rank"}
# What a JSON report is, for the messages about a file that is not one.
JSON_REPORT = "a JSON object with 'summary' and 'layers', as written by nrc analyze --format json"


def _task(task: str) -> str:
    if task not in _LAYER_COLUMNS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def layer_columns(task: str = "regression") -> tuple[tuple[str, str], ...]:
    """Per-layer column names and kinds of a report of ``task``, in order."""
    return _LAYER_COLUMNS[_task(task)]


def summary_fields(task: str = "regression") -> tuple[tuple[str, str], ...]:
    """Summary field names and kinds of a report of ``task``, in order."""
    return _SUMMARY_FIELDS[_task(task)]


def metric_columns(task: str = "regression") -> tuple[str, ...]:
    """The numeric metric columns of ``task`` (what baselines and comparisons track)."""
    return _METRIC_COLUMNS[_task(task)]


def _union(groups) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for group in groups:
        for name, kind in group:
            seen.setdefault(name, kind)
    return list(seen.items())


def tidy_columns(tasks=("regression",)) -> list[tuple[str, str]]:
    """Column names and kinds of a tidy table holding reports of ``tasks``, in order.

    A table of one task has that task's per-layer columns and summary fields; a table mixing
    tasks has every column of each (in the order of ``tasks``), null where a row's task does
    not define it, and its ``task`` column tells the rows apart.
    """
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = [t for t in TASKS if t in tasks] or ["regression"]
    cols = [("checkpoint", "str"), ("data", "str")]
    cols += _union(layer_columns(t) for t in tasks)
    cols += _union([(TIDY_RENAMES.get(n, n), k) for n, k in summary_fields(t)] for t in tasks)
    return cols


def plain(value: Any, *, keep_inf: bool = False) -> Any:
    """A value as JSON holds it: None for a missing value, Python scalars for numpy's.

    Missing values are None, NaN, pandas' NA and NaT, and (unless ``keep_inf``) the
    infinities, which JSON cannot hold. Numpy scalars become the Python scalar of their kind;
    everything else is returned unchanged.
    """
    if value is None:
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or (not keep_inf and math.isinf(value))):
        return None
    return value


def clean(value: Any) -> Any:
    """NaN and infinities become None (null); numpy scalars Python ones (see :func:`plain`)."""
    return plain(value)


def cell(value: Any, kind: str) -> Any:
    """A table cell (CSV text, a Parquet or pandas value) as the Python value of ``kind``.

    Raises ``ValueError`` when the cell does not fit the kind (``"abc"`` for an int).
    """
    value = plain(value, keep_inf=True)
    if value is None:
        return None
    if kind == "str":
        return str(value)
    if kind == "bool":
        if isinstance(value, str):
            try:
                return {"true": True, "false": False}[value.lower()]
            except KeyError:
                raise ValueError(f"expected true or false, found {value!r}") from None
        return bool(value)
    if kind == "int":
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                value = float(value)  # "3.0", as a CSV writer may print an integer column
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, found {value!r}")
        return int(value)
    return float(value)


@dataclass
class Results:
    """The outcome of one analysis.

    Attributes
    ----------
    checkpoint, data : str
        The inputs as the user named them.
    summary : dict
        The summary fields of docs/metrics.md (keys of ``SUMMARY_FIELDS``; extra keys allowed).
    layers : list of dict
        One dict per weight layer, keys of ``LAYER_COLUMNS``, in forward order.
    metadata : dict
        The checkpoint's metadata (strings).
    plan : dict
        How the work was done (passes, exact or sketch per layer, memory); informational.
    """

    checkpoint: str
    data: str
    summary: dict
    layers: list[dict]
    metadata: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    nrc_version: str = __version__

    @property
    def task(self) -> str:
        """``regression`` or ``classification``, as the summary records it."""
        task = self.summary.get("task")
        return task if task in _LAYER_COLUMNS else "regression"

    def to_dict(self) -> dict:
        """The JSON document (docs/analyzing.md, "Output"): nrc_version, checkpoint, data, summary, layers."""
        task = self.task
        summary = {n: clean(self.summary.get(n)) for n, _ in summary_fields(task)}
        summary["task"] = task
        for k, v in self.summary.items():
            summary.setdefault(k, clean(v))
        if self.plan:
            summary["plan"] = self.plan
        columns = layer_columns(task)
        layers = [{n: clean(row.get(n)) for n, _ in columns} for row in self.layers]
        return {
            "nrc_version": self.nrc_version,
            "checkpoint": self.checkpoint,
            "data": self.data,
            "summary": summary,
            "layers": layers,
        }

    @classmethod
    def from_dict(cls, doc: dict) -> Results:
        """Rebuild results from a JSON document written by :meth:`to_dict`."""
        summary = dict(doc["summary"])
        plan = summary.pop("plan", None) or {}
        return cls(
            checkpoint=doc.get("checkpoint", ""),
            data=doc.get("data", ""),
            summary=summary,
            layers=[dict(r) for r in doc["layers"]],
            plan=plan,
            nrc_version=doc.get("nrc_version", __version__),
        )

    @classmethod
    def from_json(
        cls,
        text: str,
        where: str,
        *,
        hint: str | None = None,
        expected: str = JSON_REPORT,
    ) -> Results:
        """Read the JSON document of :meth:`to_dict`, checked enough to name what is wrong.

        The one reader of JSON reports: ``nrc check``, ``nrc compare``, ``nrc plot`` and
        :meth:`load` read theirs with it.

        Parameters
        ----------
        text : str
            The file's text.
        where : str
            How messages name the file (``--report 'run.json'``).
        hint : str, optional
            How to make a report, for the messages about a file that is not one.
        expected : str
            What the file should have been, for the message when it is not.

        Raises
        ------
        DataError
            When the text is not JSON, or not a report: no ``summary`` object, or no ``layers``
            list of objects with a ``layer`` name and an integer ``index``.
        """
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                hint=hint,
            ) from exc
        except RecursionError as exc:
            raise DataError(
                f"{where}: not a report: its JSON is nested too deeply", hint=hint
            ) from exc
        if not isinstance(doc, dict):
            raise DataError(f"{where}: expected {expected}, found a JSON {type(doc).__name__}")
        missing = [k for k in ("summary", "layers") if k not in doc]
        if missing:
            raise DataError(
                f"{where}: expected {expected}, found keys {sorted(doc)} (missing "
                f"{', '.join(repr(k) for k in missing)})",
                hint=hint,
            )
        if not isinstance(doc["summary"], dict):
            raise DataError(f"{where}: 'summary' should be an object, found {type(doc['summary'])}")
        layers = doc["layers"]
        if not isinstance(layers, list):
            raise DataError(f"{where}: 'layers' should be a list, found {type(layers).__name__}")
        for i, row in enumerate(layers):
            if not isinstance(row, dict) or not isinstance(row.get("layer"), str):
                raise DataError(f"{where}: layers[{i}] should be an object with a 'layer' name")
            if not isinstance(row.get("index"), int) or isinstance(row.get("index"), bool):
                raise DataError(
                    f"{where}: layers[{i}] ('{row['layer']}') should have an integer 'index', "
                    f"found {row.get('index')!r}"
                )
        return cls.from_dict(doc)

    @classmethod
    def from_tidy(cls, records: Sequence[Mapping[str, Any]]) -> Results:
        """Rebuild results from the rows of a tidy table of one checkpoint (any order).

        Columns missing from the table are left out of the rows and the summary; values are
        converted to their schema kinds with :func:`cell`.
        """
        if not records:
            raise ValueError("no rows")
        records = sorted(records, key=lambda r: cell(r.get("index"), "int") or 0)
        first = records[0]
        task = cell(first.get("task"), "str") or "regression"
        task = task if task in _LAYER_COLUMNS else "regression"
        columns = layer_columns(task)
        layers = [{n: cell(r[n], kind) for n, kind in columns if n in r} for r in records]
        summary = {}
        for n, kind in summary_fields(task):
            col = TIDY_RENAMES.get(n, n)
            if col in first:
                summary[n] = cell(first[col], kind)
        return cls(
            checkpoint=str(plain(first.get("checkpoint")) or ""),
            data=str(plain(first.get("data")) or ""),
            summary=summary,
            layers=layers,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read results written by ``nrc analyze``: ``.json``, or a ``.csv``/``.parquet`` table
        (of one checkpoint).

        Raises
        ------
        DataError
            A missing or unreadable file, or one that holds no report.
        """
        p = Path(path)
        suffix = p.suffix.lower()
        if not p.is_file():
            raise DataError(f"'{p}': no such file")
        make = "write one with: nrc analyze CHECKPOINT --data DATA --output run.json"
        try:
            if suffix == ".json":
                text = p.read_text(encoding="utf-8")
                return cls.from_json(text, f"'{p}': not a report of nrc analyze", hint=make)
            import pandas as pd

            if suffix == ".parquet":
                frame = pd.read_parquet(p)
            elif suffix == ".csv":
                frame = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
            else:
                raise ValueError("expected a .json, .csv or .parquet file")
            records = frame.to_dict("records")
            names = {str(r.get("checkpoint")) for r in records}
            if len(names) > 1:
                raise ValueError(f"the table holds {len(names)} checkpoints, expected one")
            return cls.from_tidy(records)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"'{p}': not a report of nrc analyze: {exc}", hint=make) from exc

    def scalars(self, prefix: str = "nrc/") -> dict[str, float]:
        """The numbers of this report as one flat ``{name: float}``, what every logger takes.

        Per-layer metrics are ``{prefix}{column}/{layer}`` (``nrc/nrc1_noise/net.2``), the
        ``collapsed`` flag 1.0 or 0.0; numeric summary fields are ``{prefix}{field}``
        (``nrc/first_collapsed_index``, ``nrc/n_samples``); the settings the numbers were
        computed with (``oversample``, ``power_iters``, ``seed``, ``passes``, ``world_size``)
        are not measurements and are left out. Values that are None or not finite
        (a null ``model_mse`` without a prediction, ``first_collapsed_index`` when nothing
        collapses, the NCC columns without a second pass) are left out, never logged as NaN;
        text fields (layer type, collapse rule) are not numbers and are left out too. The
        names are stable: the schema's column names and the layers' module paths.
        """
        task = self.task
        out: dict[str, float] = {}
        for row in self.layers:
            layer = str(row.get("layer"))
            for name in (*metric_columns(task), "collapsed"):
                value = _number(row.get(name))
                if value is not None:
                    out[f"{prefix}{name}/{layer}"] = value
        for name, kind in summary_fields(task):
            if kind in ("int", "float") and name not in _SETTINGS:
                value = _number(self.summary.get(name))
                if value is not None:
                    out[f"{prefix}{name}"] = value
        return out

    def tidy_rows(self) -> list[dict]:
        """One dict per layer with the tidy columns (see :func:`tidy_columns`)."""
        rows = []
        task = self.task
        summary = {
            TIDY_RENAMES.get(n, n): clean(self.summary.get(n)) for n, _ in summary_fields(task)
        }
        summary["task"] = task
        for layer in self.layers:
            row = {"checkpoint": self.checkpoint, "data": self.data}
            row.update({n: clean(layer.get(n)) for n, _ in layer_columns(task)})
            row.update(summary)
            rows.append(row)
        return rows

    def to_frame(self):
        """A pandas DataFrame of :meth:`tidy_rows` with the schema's dtypes."""
        return frame_from_rows(self.tidy_rows(), tidy_columns(self.task))


#: Numeric summary fields that record how a report was computed, not what it measured: the
#: numbers among the provenance fields.
_SETTINGS = frozenset(name for name, kind in PROVENANCE_FIELDS if kind != "str")


def _number(value: Any) -> float | None:
    """A finite float of an int, float or bool value (numpy's too); None otherwise."""
    value = plain(value)
    if isinstance(value, (bool, int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


_PANDAS_DTYPES = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}


def frame_from_rows(rows: list[dict], columns: Sequence[tuple[str, str]]):
    """A DataFrame with exactly ``columns`` (nullable dtypes), extra keys of ``rows`` appended."""
    import pandas as pd

    names = [n for n, _ in columns]
    extra = [k for r in rows for k in r if k not in names]
    extra = list(dict.fromkeys(extra))
    data = {n: [r.get(n) for r in rows] for n in names + extra}
    frame = pd.DataFrame(data, columns=names + extra)
    for n, kind in columns:
        if kind == "float":
            frame[n] = pd.to_numeric(frame[n], errors="coerce").astype("float64")
        else:
            frame[n] = frame[n].astype(_PANDAS_DTYPES[kind])
    return frame
