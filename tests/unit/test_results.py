"""The results schema: one conversion to JSON / tidy rows, and back (Results.load)."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import analyze_json

from nrc_cli.errors import DataError
from nrc_cli.report.writers import csv_text, json_text, parquet_bytes
from nrc_cli.results import (
    JSON_REPORT,
    LAYER_COLUMNS,
    PROVENANCE_FIELDS,
    SUMMARY_FIELDS,
    TASKS,
    Results,
    cell,
    plain,
    summary_fields,
)


def _results() -> Results:
    rows = []
    for i, name in enumerate(["net.0", "net.2", "10"], start=1):
        row = {n: None for n, _ in LAYER_COLUMNS}
        row.update(
            layer=name,
            index=np.int64(i),
            type="Linear",
            in_dim=8,
            rank=2,
            nrc1_noise=np.float64(0.1 * i),
            nrc2_cka=float("nan"),
            nrc3_alignment=0.5 + i / 7,
            nrc4_ratio=float("inf"),
            stable_rank_h=1.25,
            collapsed=bool(i > 1),
        )
        rows.append(row)
    summary = {n: None for n, _ in SUMMARY_FIELDS}
    summary.update(
        n_samples=np.int64(100),
        target_dim=2,
        rank=2,
        model_mse=np.float32(0.5),
        first_collapsed_layer="net.2",
        first_collapsed_index=2,
        collapse_rule="nrc1_noise<=0.2",
        prediction="output",
        svd="exact",
        passes=1,
        device="cpu",
        dtype="float32",
    )
    return Results("m.safetensors", "d.npz", summary, rows, plan={"passes": 1})


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        (np.float64(2.5), 2.5),
        (np.int64(3), 3),
        (np.bool_(True), True),
        (pd.NA, None),
        ("x", "x"),
    ],
)
def test_plain_is_the_one_json_conversion(value, want):
    got = plain(value)
    assert got == want and type(got) is type(want)


def test_plain_can_keep_infinities_for_tables():
    assert plain(np.float64("inf"), keep_inf=True) == math.inf


def test_cell_reads_table_cells_back_into_their_kind():
    assert cell("3", "int") == 3 and cell(np.float64(3.0), "int") == 3
    assert cell("true", "bool") is True and cell(np.bool_(False), "bool") is False
    assert cell("0.25", "float") == 0.25 and cell(pd.NA, "float") is None
    assert cell(10, "str") == "10"
    with pytest.raises(ValueError):
        cell("2.5", "int")


def test_to_dict_writes_json_values_only():
    doc = _results().to_dict()
    text = json.dumps(doc, allow_nan=False)  # NaN and inf became null
    assert json.loads(text) == doc
    first = doc["layers"][0]
    assert first["nrc2_cka"] is None and first["nrc4_ratio"] is None
    assert type(first["index"]) is int and doc["summary"]["model_mse"] == 0.5


def test_results_load_reads_json_csv_and_parquet_back(tmp_path):
    results = _results()
    want = Results.from_dict(results.to_dict())
    (tmp_path / "r.json").write_text(json_text(results.to_dict()))
    (tmp_path / "r.csv").write_text(csv_text(results.to_frame()))
    (tmp_path / "r.parquet").write_bytes(parquet_bytes(results.to_frame()))
    from_json = Results.load(tmp_path / "r.json")
    assert from_json.to_dict() == results.to_dict()
    for name in ("r.csv", "r.parquet"):
        back = Results.load(tmp_path / name)
        assert back.checkpoint == "m.safetensors" and back.data == "d.npz"
        assert back.layers == want.layers, name
        for key, _ in SUMMARY_FIELDS:
            assert back.summary[key] == want.summary[key], (name, key)
        assert back.layers[2]["layer"] == "10"  # a digit name stays text


def test_from_json_is_the_one_reader_of_a_json_report():
    results = _results()
    back = Results.from_json(json_text(results.to_dict()), "r.json")
    assert back.to_dict() == results.to_dict()
    cases = [
        ("{", "r.json: not valid JSON: Expecting property name enclosed in double quotes at line"),
        ("[" * 100_000, "r.json: not a report: its JSON is nested too deeply"),
        ("[]", f"r.json: expected {JSON_REPORT}, found a JSON list"),
        ('{"layers": []}', f"r.json: expected {JSON_REPORT}, found keys ['layers'] (missing"),
        ('{"summary": {}, "layers": [{"layer": 3}]}', "r.json: layers[0] should be an object"),
    ]
    for text, message in cases:
        with pytest.raises(DataError) as info:
            Results.from_json(text, "r.json", hint="make one")
        assert info.value.message.startswith(message), info.value.message
    with pytest.raises(DataError, match=r"^r\.json: expected a report, found a JSON int$"):
        Results.from_json("3", "r.json", expected="a report")


def test_results_load_refuses_what_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"not a report of nrc analyze"):
        Results.load(tmp_path / "x.json")
    with pytest.raises(DataError, match="no such file"):
        Results.load(tmp_path / "missing.json")
    two = pd.concat([_results().to_frame(), _results().to_frame().assign(checkpoint="other")])
    (tmp_path / "two.csv").write_text(csv_text(two))
    with pytest.raises(DataError, match="holds 2 checkpoints"):
        Results.load(tmp_path / "two.csv")


# ------------------------------------------------------------------------------------------------
# Provenance: the summary fields every task ends with
# ------------------------------------------------------------------------------------------------

REFERENCE_CASES = Path(__file__).resolve().parents[1] / "reference_cases"


def test_every_task_ends_its_summary_with_the_provenance_fields():
    for task in TASKS:
        fields = summary_fields(task)
        assert fields[-len(PROVENANCE_FIELDS) :] == PROVENANCE_FIELDS, task
        names = [n for n, _ in fields]
        assert len(names) == len(set(names)), task


@pytest.mark.parametrize("case", ["mlp_relu", "nc_gauss_mlp"])
def test_provenance_fields_are_the_json_report_provenance_keys(case):
    folder = REFERENCE_CASES / case
    extra = shlex.split((folder / "args").read_text())
    doc = analyze_json(folder / "model.safetensors", folder / "data.npz", *extra)
    summary = doc["summary"]
    keys = list(summary)
    measured = len(summary_fields(summary["task"])) - len(PROVENANCE_FIELDS)
    provenance = [n for n, _ in PROVENANCE_FIELDS]
    assert keys[measured : measured + len(provenance)] == provenance
    kinds = {"str": str, "int": int}
    for name, kind in PROVENANCE_FIELDS:
        value = summary[name]
        assert value is None or isinstance(value, kinds[kind]), (name, value)
    # The numbers among them are settings, not measurements: no logger receives them.
    scalars = Results.from_dict(doc).scalars()
    for name, _ in PROVENANCE_FIELDS:
        assert f"nrc/{name}" not in scalars, name
