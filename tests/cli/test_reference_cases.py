"""The reference cases: ``nrc analyze`` against independent dense float64 reports.

Each folder of ``tests/reference_cases`` holds a checkpoint, its data, extra command-line words
(``args``) and the report a dense computation gives (``expected.json``). Tolerances are those of
``reference_cases/README.md``: 1e-6 absolute + 1e-4 relative; ``nrc3_last`` within 1e-4;
``nrc3_gamma`` (not unique on a flat minimum) is not compared.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from helpers import analyze_json, assert_close

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference_cases"
CASES = sorted(
    p.name
    for p in REFERENCE_DIR.iterdir()
    if (p / "expected.json").is_file()
    # Classifier cases have their own contract and tolerances (test_metrics_classification.py).
    and json.loads((p / "expected.json").read_text())["summary"].get("task") != "classification"
)
NOT_COMPARED = {"nrc3_gamma"}
ABS, REL = 1e-6, 1e-4


def test_the_reference_cases_are_there():
    assert {"mlp_relu", "mlp_layernorm_1d_target"} <= set(CASES)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    folder = REFERENCE_DIR / request.param
    args_file = folder / "args"
    extra = shlex.split(args_file.read_text()) if args_file.is_file() else []
    got = analyze_json(folder / "model.safetensors", folder / "data.npz", *extra)
    expected = json.loads((folder / "expected.json").read_text())
    return request.param, got, expected


def _compare(got: dict, expected: dict, where: str) -> None:
    for key, want in expected.items():
        if key in NOT_COMPARED:
            continue
        assert key in got, f"{where}: '{key}' missing from the output"
        if key == "nrc3_last":
            assert_close(got[key], want, rel=0.0, abs_=1e-4, what=f"{where}.{key}")
        elif isinstance(want, float):
            assert_close(got[key], want, rel=REL, abs_=ABS, what=f"{where}.{key}")
        else:
            assert got[key] == want, f"{where}.{key}: {got[key]!r} != {want!r}"


def test_layers_have_the_reference_names_and_order(case):
    _, got, expected = case
    assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in expected["layers"]]
    assert [r["index"] for r in got["layers"]] == list(range(1, len(expected["layers"]) + 1))


def test_every_layer_column_matches(case):
    name, got, expected = case
    for got_row, want_row in zip(got["layers"], expected["layers"], strict=True):
        _compare(got_row, want_row, f"{name}: layer {want_row['layer']}")


def test_every_summary_field_matches(case):
    name, got, expected = case
    _compare(got["summary"], expected["summary"], f"{name}: summary")
