"""The one results schema every output format reads (columns, order, dtypes).

Column names are those of docs/metrics.md. Tidy tables (CSV, Parquet, audits) have one row per
(checkpoint, layer): ``checkpoint``, ``data``, the per-layer columns, then the summary fields.
The summary's ``rank`` (the requested k) is called ``requested_rank`` there, since the per-layer
``rank`` (the k actually used) owns that name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nrc_cli._version import __version__

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
SUMMARY_FIELDS: tuple[tuple[str, str], ...] = (
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
    ("prediction", "str"),
    ("svd", "str"),
    ("oversample", "int"),
    ("power_iters", "int"),
    ("seed", "int"),
    ("passes", "int"),
    ("device", "str"),
    ("dtype", "str"),
    ("build", "str"),
    ("model", "str"),
    ("activation", "str"),
    ("norm", "str"),
)
# Summary fields renamed in tidy tables to avoid clashing with per-layer columns.
TIDY_RENAMES = {"rank": "requested_rank"}


def tidy_columns() -> list[tuple[str, str]]:
    """Column names and kinds of a tidy table, in order."""
    cols = [("checkpoint", "str"), ("data", "str"), *LAYER_COLUMNS]
    cols += [(TIDY_RENAMES.get(n, n), k) for n, k in SUMMARY_FIELDS]
    return cols


def clean(value):
    """NaN and infinities become None (null); everything else is returned unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

    def to_dict(self) -> dict:
        """The JSON document (README, "Output"): nrc_version, checkpoint, data, summary, layers."""
        summary = {n: clean(self.summary.get(n)) for n, _ in SUMMARY_FIELDS}
        for k, v in self.summary.items():
            summary.setdefault(k, clean(v))
        if self.plan:
            summary["plan"] = self.plan
        layers = [{n: clean(row.get(n)) for n, _ in LAYER_COLUMNS} for row in self.layers]
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

    def tidy_rows(self) -> list[dict]:
        """One dict per layer with the tidy columns (see :func:`tidy_columns`)."""
        rows = []
        summary = {TIDY_RENAMES.get(n, n): clean(self.summary.get(n)) for n, _ in SUMMARY_FIELDS}
        for layer in self.layers:
            row = {"checkpoint": self.checkpoint, "data": self.data}
            row.update({n: clean(layer.get(n)) for n, _ in LAYER_COLUMNS})
            row.update(summary)
            rows.append(row)
        return rows

    def to_frame(self):
        """A pandas DataFrame of :meth:`tidy_rows` with the schema's dtypes."""
        return frame_from_rows(self.tidy_rows(), tidy_columns())


_PANDAS_DTYPES = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}


def frame_from_rows(rows: list[dict], columns: list[tuple[str, str]]):
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
