"""``nrc compare A.json B.json`` through the command line, on reports of a real analysis."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nrc_cli.cli import app
from nrc_cli.results import METRIC_COLUMNS

RELU = Path(__file__).resolve().parents[1] / "reference_cases" / "mlp_relu"
runner = CliRunner()


def nrc(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, str]:
    """``full``: the reference MLP; ``moved``: the same with layer '6' nrc1_noise + 0.1;
    ``sub``: analyzed without layer '0'."""
    folder = tmp_path_factory.mktemp("compare")
    paths = {name: folder / f"{name}.json" for name in ("full", "moved", "sub")}
    for name, extra in (("full", []), ("sub", ["--exclude", "0"])):
        result = nrc(
            "analyze", RELU / "model.safetensors", "--data", RELU / "data.npz",
            "--format", "json", "--output", paths[name], *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    doc = json.loads(paths["full"].read_text())
    doc["layers"][3]["nrc1_noise"] += 0.1
    doc["layers"][2]["nrc2_cka"] = None
    paths["moved"].write_text(json.dumps(doc))
    return {name: str(path) for name, path in paths.items()}


def test_table_marks_differences_beyond_tolerance(reports):
    result = nrc("compare", reports["full"], reports["moved"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"A = {reports['full']}")
    row = next(line for line in lines if line.split()[:2] == ["6", "nrc1_noise"])
    assert row.split()[-2:] == ["+0.1", "beyond"]
    null_row = next(line for line in lines if line.split()[:2] == ["4", "nrc2_cka"])
    assert null_row.split()[3:] == ["–", "–", "beyond"]
    same = next(line for line in lines if line.split()[:2] == ["2", "nrc1_noise"])
    assert same.split()[-1] == "0"
    assert lines[-1] == f"2 of {4 * len(METRIC_COLUMNS)} differences beyond tolerance 0.02"


def test_tolerance_changes_what_is_highlighted(reports):
    result = nrc(
        "compare", reports["full"], reports["moved"], "--tolerance", "0.5",
        "--tolerance", "nrc1_noise=0.2",
    )  # fmt: skip
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == (
        f"1 of {4 * len(METRIC_COLUMNS)} differences beyond tolerance 0.5, nrc1_noise 0.2"
    )


def test_unmatched_layers_are_listed(reports):
    result = nrc("compare", reports["full"], reports["sub"], "--tolerance", "0")
    assert result.exit_code == 0
    assert "only in A: 0" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1].startswith(f"0 of {3 * len(METRIC_COLUMNS)} differences")
    doc = json.loads(nrc("compare", reports["sub"], reports["full"], "-f", "json").stdout)
    assert (doc["only_in_a"], doc["only_in_b"]) == ([], ["0"])


def test_csv(reports):
    result = nrc("compare", reports["full"], reports["moved"], "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [
        "layer", "index_a", "index_b", "metric", "a", "b", "diff", "tolerance",
        "beyond_tolerance", "status",
    ]  # fmt: skip
    assert len(rows) == 4 * len(METRIC_COLUMNS)
    row = next(r for r in rows if (r["layer"], r["metric"]) == ("6", "nrc1_noise"))
    assert float(row["diff"]) == pytest.approx(0.1)
    assert float(row["b"]) - float(row["a"]) == pytest.approx(float(row["diff"]))
    assert (row["index_a"], row["beyond_tolerance"], row["status"]) == ("4", "True", "both")
    null = next(r for r in rows if (r["layer"], r["metric"]) == ("4", "nrc2_cka"))
    assert (null["b"], null["diff"], null["beyond_tolerance"]) == ("", "", "True")


def test_json_and_output_file(tmp_path, reports):
    out = tmp_path / "cmp.json"
    result = nrc("compare", reports["full"], reports["sub"], "--output", out)
    assert result.exit_code == 0 and result.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["a"]["path"] == reports["full"] and doc["b"]["path"] == reports["sub"]
    assert doc["only_in_a"] == ["0"] and doc["compared"] == 3 * len(METRIC_COLUMNS)
    statuses = {r["status"] for r in doc["rows"]}
    assert statuses == {"both", "only_a"}
    assert [p.name for p in tmp_path.iterdir()] == ["cmp.json"]
    csv_out = tmp_path / "cmp.csv"
    assert nrc("compare", reports["full"], reports["sub"], "-o", csv_out).exit_code == 0
    assert csv_out.read_text().startswith("layer,index_a,index_b,metric,")


def test_identical_reports(reports):
    doc = json.loads(nrc("compare", reports["full"], reports["full"], "-f", "json").stdout)
    assert doc["beyond_tolerance"] == 0
    assert all(r["diff"] == 0 for r in doc["rows"] if r["a"] is not None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/none.json", "{full}"], "error: A '{tmp}/none.json': no such file"),
        (["{full}", "{tmp}/bad.json"], "error: B '{tmp}/bad.json': not valid JSON: "),
        (
            ["{full}", "{tmp}/other.json"],
            "error: B '{tmp}/other.json': expected a JSON object "
            "with 'summary' and 'layers', as written by nrc analyze --format json, found keys "
            "['rows']",
        ),
        (
            ["{full}", "{full}", "--tolerance", "-1"],
            "error: --tolerance '-1': expected a tolerance",
        ),
        (
            ["{full}", "{full}", "--format", "parquet"],
            "error: --format: expected one of table, json, csv, found 'parquet'",
        ),
        (
            ["{full}", "{full}", "--output", "{tmp}/x.parquet"],
            "error: --output '{tmp}/x.parquet': cannot tell the format from the suffix '.parquet'",
        ),
        (["{full}"], "error: Missing argument 'B'."),
    ],
)
def test_bad_inputs_exit_2(tmp_path, reports, args, message):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "other.json").write_text('{"rows": []}')
    fill = {"tmp": str(tmp_path), "full": reports["full"]}
    result = nrc("compare", *(a.format(**fill) for a in args))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message.format(**fill))
