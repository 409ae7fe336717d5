"""Tests for :mod:`nrc_cli.gates` (requirements, baselines, comparisons, report and gate files)
and the JUnit and terminal renderings of their results."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.gates import (
    DEFAULT_TOLERANCE,
    GATE_LAYER_COLUMNS,
    GATE_SUMMARY_FIELDS,
    CheckReport,
    Tolerances,
    compare_baseline,
    compare_reports,
    diff_reports,
    evaluate,
    load_gate_file,
    load_report,
    parse_requirement,
    parse_tolerances,
    run_check,
)
from nrc_cli.report.gates import render_check, render_compare
from nrc_cli.report.junit import junit_xml
from nrc_cli.results import METRIC_COLUMNS, Results

NOISE = (0.8, 0.4, 0.1, 0.05)


def make_results(names=("net.0", "net.2", "net.4", "net.6"), noise=NOISE, indices=None, **summary):
    """A small real report: one Linear per name, nrc1_noise from ``noise``, other metrics set."""
    layers = []
    for i, (name, value) in enumerate(zip(names, noise, strict=True)):
        row = {
            "layer": name,
            "index": (indices or range(1, len(names) + 1))[i],
            "type": "Linear",
            "in_dim": 8,
            "rank": 2,
            "collapsed": value is not None and value <= 0.2,
            "note": None,
        }
        for j, column in enumerate(METRIC_COLUMNS):
            row[column] = 0.5 + 0.01 * j + 0.001 * i
        row["nrc1_noise"] = value
        layers.append(row)
    base_summary = {
        "n_samples": 100,
        "target_dim": 2,
        "rank": 2,
        "model_mse": 0.01,
        "first_collapsed_index": 3,
        "first_collapsed_layer": names[2] if len(names) > 2 else None,
        "collapse_rule": "nrc1_noise<=0.2",
        "nrc1_last": 0.3,
    }
    base_summary.update(summary)
    return Results(
        checkpoint="model.safetensors", data="data.npz", summary=base_summary, layers=layers
    )


def selected(expr: str, results: Results) -> list[str]:
    return evaluate(parse_requirement(expr), results).layers


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("expr", "column", "scope", "kind", "op", "bound"),
    [
        ("nrc1_noise<=0.2", "nrc1_noise", "layer", "all", "<=", 0.2),
        ("  nrc1_noise [ -1 ]  <=  5e-2 ", "nrc1_noise", "layer", "index", "<=", 0.05),
        ("nrc3_alignment[2:4]>=.9", "nrc3_alignment", "layer", "slice", ">=", 0.9),
        ("nrc2_cka[layer4.*] > 0.5", "nrc2_cka", "layer", "glob", ">", 0.5),
        ("stable_rank_h[net.6]<3", "stable_rank_h", "layer", "name", "<", 3.0),
        ("collapsed[5:]==1", "collapsed", "layer", "slice", "==", 1.0),
        ("first_collapsed_index<=5", "first_collapsed_index", "summary", "all", "<=", 5.0),
        ("model_mse != -1", "model_mse", "summary", "all", "!=", -1.0),
        ("requested_rank==2", "requested_rank", "summary", "all", "==", 2.0),
        ("rank<=2", "rank", "layer", "all", "<=", 2.0),
    ],
)
def test_parse_valid_forms(expr, column, scope, kind, op, bound):
    req = parse_requirement(expr)
    assert (req.column, req.scope, req.selector.kind, req.op) == (column, scope, kind, op)
    assert req.bound == pytest.approx(bound)
    assert req.expr == expr.strip()


def test_every_schema_number_is_gateable():
    assert "nrc1_noise" in GATE_LAYER_COLUMNS and "collapsed" in GATE_LAYER_COLUMNS
    assert "layer" not in GATE_LAYER_COLUMNS and "note" not in GATE_LAYER_COLUMNS
    assert "first_collapsed_index" in GATE_SUMMARY_FIELDS
    assert "rank" not in GATE_SUMMARY_FIELDS and "requested_rank" in GATE_SUMMARY_FIELDS


# (expression, pattern the message must match, 1-based position of the offending character)
MALFORMED = [
    ("nrc1_noise<<0.2", r"unexpected '<' at position 12: expected a number", 12),
    ("nrc1_noise[<=0.2", r"the '\[' at position 11 is never closed", 11),
    ("foo<=1", r"unknown column 'foo' at position 1; per-layer columns: index, .*nrc1_noise", 1),
    ("nrc1_noise<=abc", r"unexpected 'a' at position 13: expected a number", 13),
    ("nrc1_noise", r"expected an operator, one of <= >= == != < >, found the end", 11),
    ("<=0.2", r"unexpected '<' at position 1: expected a column or summary field name", 1),
    ("nrc1_noise=0.2", r"unexpected '=' at position 11: expected an operator", 11),
    ("nrc1_noise=>0.2", r"unexpected '=' at position 11: expected an operator", 11),
    ("nrc1_noise[]<=0.2", r"empty layer selector", 11),
    ("nrc1_noise[0]<=0.2", r"layer index 0 at position 12: indices are 1-based", 12),
    ("nrc1_noise[3:2]<=0.2", r"empty index range \[3:2\]", 12),
    ("nrc1_noise[1:2:3]<=0.2", r"unexpected ':' at position 15", 15),
    ("nrc1_noise[a:2]<=0.2", r"range bound 'a' at position 12 is not an integer", 12),
    ("nrc1_noise[-1<=0.2]", r"unexpected '<' in the layer selector at position 14", 14),
    ("nrc1_noise]<=0.2", r"unexpected '\]' at position 11", 11),
    ("nrc1_noise<=0.2 0.3", r"unexpected '0' at position 17 after|at position 17", 17),
    ("nrc1_noise<=1e5x", r"unexpected 'x' at position 16", 16),
    ("nrc1_noise<=", r"expected a number, found the end of the expression \(position 13\)", 13),
    ("model_mse[-1]<=0.1", r"'model_mse' is a summary field .* takes no \[LAYERS\]", 10),
    ("layer<=1", r"'layer' at position 1 holds text; requirements compare numbers", 1),
    ("nrc1_nose<=0.1", r"unknown column 'nrc1_nose'", 1),
    ("", r"empty requirement", 1),
]


@pytest.mark.parametrize(("expr", "pattern", "position"), MALFORMED)
def test_malformed_expression_points_at_the_character(expr, pattern, position):
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_requirement(expr)
    err = info.value
    assert err.message.startswith(f"--require '{expr}': ")
    assert f"position {position}" in err.message
    # The hint repeats the expression and puts a caret under the character, once the CLI has
    # prefixed the first line with "hint: ".
    first, caret = err.hint.split("\n")
    assert first == expr
    assert caret.index("^") == len("hint: ") + position - 1


def test_unknown_column_suggests_the_closest():
    with pytest.raises(ConfigError) as info:
        parse_requirement("nrc1_nose<=0.1")
    assert "did you mean 'nrc1_noise'?" in info.value.hint
    assert (
        "summary fields: " in info.value.message and "first_collapsed_index" in info.value.message
    )


def test_source_names_the_gate_file_entry():
    with pytest.raises(ConfigError, match=r"^gates.toml: require\[2\] 'x<<1': "):
        parse_requirement("x<<1", source="gates.toml: require[2]")


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("nrc1_noise<=1", ["net.0", "net.2", "net.4", "net.6"]),
        ("nrc1_noise[-1]<=1", ["net.6"]),
        ("nrc1_noise[-2]<=1", ["net.4"]),
        ("nrc1_noise[2]<=1", ["net.2"]),
        ("nrc1_noise[3:]<=1", ["net.4", "net.6"]),
        ("nrc1_noise[:2]<=1", ["net.0", "net.2"]),
        ("nrc1_noise[2:3]<=1", ["net.2", "net.4"]),
        ("nrc1_noise[2:2]<=1", ["net.2"]),
        ("nrc1_noise[-2:]<=1", ["net.4", "net.6"]),
        ("nrc1_noise[:-2]<=1", ["net.0", "net.2", "net.4"]),
        ("nrc1_noise[-9:]<=1", ["net.0", "net.2", "net.4", "net.6"]),
        ("nrc1_noise[net.6]<=1", ["net.6"]),
        ("nrc1_noise[net.*]<=1", ["net.0", "net.2", "net.4", "net.6"]),
        ("nrc1_noise[net.[02]]<=1", ["net.0", "net.2"]),
        ("nrc1_noise[*.4]<=1", ["net.4"]),
    ],
)
def test_every_selector_form(expr, names):
    assert selected(expr, make_results()) == names


def test_index_selects_by_the_index_column_not_the_position():
    # After --layers the report may hold layers 3 and 4 only.
    res = make_results(names=("net.4", "net.6"), noise=(0.1, 0.05), indices=[3, 4])
    assert selected("nrc1_noise[3]<=1", res) == ["net.4"]
    assert selected("nrc1_noise[4:]<=1", res) == ["net.6"]
    assert selected("nrc1_noise[-1]<=1", res) == ["net.6"]
    with pytest.raises(ConfigError, match=r"index 1 at position 12 matches no layer.*index 3 to 4"):
        selected("nrc1_noise[1]<=1", res)


def test_quoted_name_selects_a_digit_name():
    res = make_results(names=("0", "2", "4", "6"))
    assert selected("nrc1_noise['4']<=1", res) == ["4"]
    assert selected('nrc1_noise["6"]<=1', res) == ["6"]
    assert selected("nrc1_noise[4]<=1", res) == ["6"]  # unquoted digits are an index


@pytest.mark.parametrize(
    ("expr", "pattern"),
    [
        (
            "nrc1_noise[99]<=0.1",
            r"layer index 99 at position 12 matches no layer: the report has "
            r"4 layers, index 1 to 4; its layers \(index 'name'\): 1 'net.0', 2 'net.2'",
        ),
        ("nrc1_noise[-5]<=0.1", r"layer index -5 at position 12 matches no layer"),
        ("nrc1_noise[7:]<=0.1", r"layer index range \[7:\] at position 12 matches no layer"),
        (
            "nrc1_noise[nope]<=0.1",
            r"layer name 'nope' at position 12 matches no layer of the "
            r"report; its layers",
        ),
        ("nrc1_noise[fc.*]<=0.1", r"layer glob 'fc.\*' at position 12 matches no layer"),
    ],
)
def test_selector_matching_no_layer_is_an_error(expr, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        evaluate(parse_requirement(expr), make_results())
    assert info.value.hint.split("\n")[1].index("^") == len("hint: ") + 11


# --------------------------------------------------------------------------- evaluation


def test_every_selected_layer_must_pass_and_the_worst_is_named():
    res = evaluate(parse_requirement("nrc1_noise[2:]<=0.2"), make_results())
    assert not res.passed
    assert (res.observed, res.worst_layer) == (0.4, "net.2")
    assert res.message == "1 of 3 selected layers fails nrc1_noise <= 0.2: 'net.2' 0.4"
    assert [v.passed for v in res.values] == [False, True, True]

    ok = evaluate(parse_requirement("nrc1_noise[3:] <= 0.2"), make_results())
    assert ok.passed and (ok.observed, ok.worst_layer) == (0.1, "net.4")


@pytest.mark.parametrize(
    ("expr", "passed", "observed", "worst"),
    [
        ("nrc1_noise>=0.05", True, 0.05, "net.6"),
        ("nrc1_noise>0.05", False, 0.05, "net.6"),
        ("nrc1_noise<0.8", False, 0.8, "net.0"),
        ("nrc1_noise==0.1", False, 0.8, "net.0"),
        ("nrc1_noise[3]==0.1", True, 0.1, "net.4"),
        ("nrc1_noise!=0.4", False, 0.4, "net.2"),
        ("nrc1_noise!=0.3", True, 0.4, "net.2"),
    ],
)
def test_operators_and_worst_layer(expr, passed, observed, worst):
    res = evaluate(parse_requirement(expr), make_results())
    assert (res.passed, res.observed, res.worst_layer) == (passed, observed, worst)


def test_summary_field_requirement():
    res = evaluate(parse_requirement("first_collapsed_index<=5"), make_results())
    assert res.passed and res.observed == 3 and res.worst_layer is None
    assert res.message == "first_collapsed_index = 3, expected <= 5"
    res = evaluate(parse_requirement("first_collapsed_index<=2"), make_results())
    assert not res.passed
    rank = evaluate(parse_requirement("requested_rank==2"), make_results(rank=2))
    assert rank.passed and rank.observed == 2


def test_null_summary_field_fails_saying_so():
    res = evaluate(
        parse_requirement("first_collapsed_index<=5"),
        make_results(first_collapsed_index=None),
    )
    assert not res.passed and res.observed is None
    assert res.message.startswith("first_collapsed_index is null (the last layer is not collapsed)")
    missing = evaluate(parse_requirement("nrc3_gamma>=0"), make_results())
    assert not missing.passed and "nrc3_gamma is null" in missing.message


@pytest.mark.parametrize("null", [None, math.nan, math.inf])
def test_null_layer_value_fails_whatever_the_operator(null):
    results = make_results(noise=(0.8, null, 0.1, 0.05))
    for expr in ("nrc1_noise<=1", "nrc1_noise>=0", "nrc1_noise!=5"):
        res = evaluate(parse_requirement(expr), results)
        assert not res.passed
        assert (res.observed, res.worst_layer) == (None, "net.2")
        assert "'net.2' null" in res.message
    assert evaluate(parse_requirement("nrc1_noise[3:]<=1"), results).passed


def test_boolean_column_compares_as_one_and_zero():
    res = evaluate(parse_requirement("collapsed[3:]==1"), make_results())
    assert res.passed and res.observed == 1.0
    assert not evaluate(parse_requirement("collapsed==1"), make_results()).passed


def test_text_in_a_number_column_is_a_data_error():
    results = make_results()
    results.layers[1]["nrc1_noise"] = "0.4"
    with pytest.raises(DataError, match=r"layer 'net.2', column 'nrc1_noise': expected a number"):
        evaluate(parse_requirement("nrc1_noise<=1"), results)


def test_message_digits_separate_value_and_bound():
    res = evaluate(
        parse_requirement("nrc1_noise[-1]<=0.05"), make_results(noise=(1, 1, 1, 0.0500001))
    )
    assert "0.0500001" in res.message


# --------------------------------------------------------------------------- tolerances


def test_parse_tolerances():
    tol, has_default = parse_tolerances(None)
    assert (tol.default, tol.per_column, has_default) == (DEFAULT_TOLERANCE, {}, False)
    tol, has_default = parse_tolerances(["0.05", "nrc1_noise = 0.01", "nrc4_ratio=1"])
    assert has_default and tol.default == 0.05
    assert tol.for_column("nrc1_noise") == 0.01 and tol.for_column("nrc2_cka") == 0.05
    assert tol.for_column("nrc4_ratio") == 1.0


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        (["-0.1"], r"--tolerance '-0.1': expected a tolerance, a finite number >= 0, found '-0.1'"),
        (["abc"], r"found 'abc'"),
        (["nan"], r"found 'nan'"),
        (["nrc1_nose=0.1"], r"unknown metric column 'nrc1_nose'; expected one of nrc1_noise"),
        (["layer=0.1"], r"unknown metric column 'layer'"),
        (["0.1", "0.2"], r"--tolerance '0.2': a default tolerance was already given \(0.1\)"),
        (["nrc1_noise="], r"found ''"),
    ],
)
def test_bad_tolerances(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_tolerances(values)


def test_tolerances_merge_file_then_command_line():
    file_tol = Tolerances(0.05, {"nrc1_noise": 0.01, "nrc4_ratio": 1.0})
    cli_tol = Tolerances(DEFAULT_TOLERANCE, {"nrc4_ratio": 2.0})
    merged = file_tol.merged(cli_tol, other_has_default=False)
    assert merged.default == 0.05
    assert merged.per_column == {"nrc1_noise": 0.01, "nrc4_ratio": 2.0}
    assert file_tol.merged(Tolerances(0.3), other_has_default=True).default == 0.3


# --------------------------------------------------------------------------- the diff engine


def test_diff_reports_matches_layers_by_name_and_gives_b_minus_a():
    a = make_results(names=("net.0", "net.2", "net.4", "net.6"))
    b = make_results(names=("net.2", "head", "net.0", "net.4"), noise=(0.5, 0.0, 0.7, 0.1))
    diff = diff_reports(a, b, Tolerances(0.05), names=("a.json", "b.json"))
    assert diff.task == "regression" and diff.columns == tuple(METRIC_COLUMNS)
    assert diff.matched == ["net.0", "net.2", "net.4"]  # in A's order
    assert (diff.only_in_a, diff.only_in_b) == (["net.6"], ["head"])
    # Matched layers first, then A's, then B's; one value per column within a layer.
    n = len(METRIC_COLUMNS)
    assert [v.layer for v in diff.values[::n]] == ["net.0", "net.2", "net.4", "net.6", "head"]
    assert [v.status for v in diff.values[::n]] == ["both"] * 3 + ["only_a", "only_b"]
    assert [v.metric for v in diff.values[:n]] == list(METRIC_COLUMNS)
    noise = {v.layer: v for v in diff.values if v.metric == "nrc1_noise"}
    assert (noise["net.0"].a, noise["net.0"].b) == (0.8, 0.7)
    assert noise["net.0"].diff == 0.7 - 0.8 and noise["net.0"].beyond
    assert (noise["net.2"].index_a, noise["net.2"].index_b) == (2, 1)
    assert not noise["net.4"].beyond and noise["net.4"].diff == 0.0
    # A layer of one report has its value on one side, no difference, and is never beyond.
    assert (noise["net.6"].a, noise["net.6"].b, noise["net.6"].diff) == (0.05, None, None)
    assert (noise["head"].index_a, noise["head"].index_b) == (None, 2)
    assert not noise["net.6"].beyond and not noise["head"].beyond
    # B's layer order on request; the values follow it.
    by_b = diff_reports(a, b, order="b")
    assert by_b.matched == ["net.2", "net.0", "net.4"]
    assert [v.layer for v in by_b.column("nrc2_cka")] == ["net.2", "net.0", "net.4"]


def test_diff_reports_tolerances_and_nulls():
    a = make_results(noise=(0.8, None, None, 0.05))
    b = make_results(noise=(0.81, None, 0.1, 0.3))
    diff = diff_reports(a, b, Tolerances(0.02, {"nrc1_noise": 0.1}))
    noise = {v.layer: v for v in diff.column("nrc1_noise")}
    assert noise["net.0"].tolerance == 0.1 and not noise["net.0"].beyond
    assert not noise["net.2"].beyond and noise["net.2"].diff is None  # null on both sides
    assert noise["net.4"].beyond and noise["net.4"].diff is None  # null on one side
    assert noise["net.6"].beyond and noise["net.6"].diff == pytest.approx(0.25)
    assert {v.tolerance for v in diff.column("nrc2_cka")} == {0.02}
    assert diff_reports(a, a).tolerances == Tolerances()  # the default tolerances
    assert not any(v.beyond for v in diff_reports(a, a, Tolerances(0.0)).values)


def test_diff_reports_refuses_what_it_cannot_match():
    regression = make_results()
    classifier = Results("m", "d", summary={"task": "classification"}, layers=[])
    with pytest.raises(DataError, match=r"a\.json is a regression report and b\.json a classi"):
        diff_reports(regression, classifier, names=("a.json", "b.json"))
    twice = make_results(names=("net.0", "net.0", "a", "b"))
    with pytest.raises(DataError, match=r"^b\.json: layer name 'net\.0' appears twice"):
        diff_reports(regression, twice, names=("a.json", "b.json"))
    bad = make_results()
    bad.layers[3]["nrc2_cka"] = "high"
    with pytest.raises(DataError, match=r"b\.json: layer 'net\.6', column 'nrc2_cka': expected a"):
        diff_reports(regression, bad, names=("a.json", "b.json"))
    with pytest.raises(DataError, match=r"report: baseline layer 'net\.6', column 'nrc2_cka'"):
        diff_reports(bad, regression, cells=("baseline ", ""))


def test_baseline_and_compare_are_views_of_one_diff():
    base = make_results()
    cur = make_results(names=("net.0", "net.2", "net.4", "head"), noise=(0.8, 0.45, 0.1, 0.3))
    tol = Tolerances(0.02)
    diff = diff_reports(base, cur, tol, order="b")
    assert compare_reports(base, cur, tol).rows == diff_reports(base, cur, tol).values
    res = compare_baseline(cur, base, tol)
    assert (res.matched, res.only_in_baseline, res.only_in_current) == (
        diff.matched,
        diff.only_in_a,
        diff.only_in_b,
    )
    for check in res.columns:
        values = diff.column(check.column)
        assert [d.layer for d in check.moved] == [v.layer for v in values if v.beyond]
        assert check.max_abs_diff == max(abs(v.diff) for v in values if v.diff is not None)


# --------------------------------------------------------------------------- baseline


def test_baseline_against_itself_passes():
    res = compare_baseline(make_results(), make_results(), Tolerances(0.0), path="base.json")
    assert res.layers_passed and all(c.passed for c in res.columns)
    assert [c.column for c in res.columns] == list(METRIC_COLUMNS)
    assert res.matched == ["net.0", "net.2", "net.4", "net.6"]


def test_baseline_lists_the_layers_that_moved():
    base = make_results()
    cur = make_results(noise=(0.8, 0.45, 0.1, 0.3))
    res = compare_baseline(cur, base, Tolerances(0.02), path="base.json")
    noise = next(c for c in res.columns if c.column == "nrc1_noise")
    assert not noise.passed
    assert [(d.layer, d.baseline, d.current) for d in noise.moved] == [
        ("net.2", 0.4, 0.45),
        ("net.6", 0.05, 0.3),
    ]
    assert noise.worst_layer == "net.6" and noise.max_abs_diff == pytest.approx(0.25)
    assert "'net.6' 0.05 → 0.3 (Δ +0.25)" in noise.message
    assert all(c.passed for c in res.columns if c.column != "nrc1_noise")
    # A per-column tolerance lets the smaller move through.
    loose = compare_baseline(cur, base, Tolerances(0.02, {"nrc1_noise": 0.1}))
    assert [d.layer for d in loose.columns[0].moved] == ["net.6"]


def test_baseline_layers_added_and_removed_fail():
    base = make_results()
    cur = make_results(names=("net.0", "net.2", "net.4", "head"))
    res = compare_baseline(cur, base, Tolerances())
    assert not res.layers_passed
    assert res.only_in_baseline == ["net.6"] and res.only_in_current == ["head"]
    assert res.layers_message == (
        "removed since the baseline: 'net.6'; added since the baseline: 'head' (3 layers matched)"
    )
    report = CheckReport("m", "d", [], res)
    layers_case = report.cases()[0]
    assert (layers_case.name, layers_case.passed) == ("baseline: layers", False)


def test_baseline_null_on_one_side_fails_and_on_both_passes():
    base = make_results(noise=(0.8, None, None, 0.05))
    cur = make_results(noise=(0.8, None, 0.1, 0.05))
    noise = compare_baseline(cur, base, Tolerances()).columns[0]
    assert not noise.passed
    assert [(d.layer, d.baseline, d.current, d.diff) for d in noise.moved] == [
        ("net.4", None, 0.1, None)
    ]
    assert "'net.4' null → 0.1" in noise.message


def test_duplicate_layer_names_are_refused():
    with pytest.raises(DataError, match=r"layer name 'net.0' appears twice"):
        compare_baseline(
            make_results(names=("net.0", "net.0", "a", "b")), make_results(), Tolerances()
        )


# --------------------------------------------------------------------------- a whole check


def test_run_check_counts_and_document():
    base = make_results()
    cur = make_results(noise=(0.8, 0.4, 0.1, 0.3))
    reqs = [parse_requirement("nrc1_noise[-1]<=0.2"), parse_requirement("first_collapsed_index<=3")]
    report = run_check(cur, reqs, baseline=base, baseline_path="base.json", tolerances=Tolerances())
    cases = report.cases()
    assert len(cases) == 2 + 1 + len(METRIC_COLUMNS)
    assert [c.name for c in cases[:4]] == [
        "nrc1_noise[-1]<=0.2",
        "first_collapsed_index<=3",
        "baseline: layers",
        "baseline: nrc1_noise",
    ]
    assert (report.n_passed, report.n_failed) == (len(cases) - 2, 2)
    assert report.counts_line == f"{len(cases) - 2} passed, 2 failed"
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert doc["passed"] == len(cases) - 2 and doc["failed"] == 2
    first = doc["requirements"][0]
    assert (first["expr"], first["observed"], first["worst_layer"], first["passed"]) == (
        "nrc1_noise[-1]<=0.2",
        0.3,
        "net.6",
        False,
    )
    assert first["layers"] == ["net.6"] and first["bound"] == 0.2
    assert doc["baseline"]["columns"][0]["moved"][0]["layer"] == "net.6"


# --------------------------------------------------------------------------- files


def write_report(path, results: Results) -> str:
    path.write_text(json.dumps(results.to_dict()))
    return str(path)


def test_load_report_round_trip(tmp_path):
    results = make_results(noise=(0.8, math.nan, 0.1, 0.05))
    loaded = load_report(write_report(tmp_path / "r.json", results))
    assert [row["layer"] for row in loaded.layers] == ["net.0", "net.2", "net.4", "net.6"]
    assert loaded.layers[1]["nrc1_noise"] is None
    assert loaded.summary["first_collapsed_index"] == 3


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", r"--report '.*r.json': not valid JSON: .* at line 1, column 2"),
        ("[1, 2]", r"expected a JSON object with 'summary' and 'layers'.*found a JSON list"),
        ('{"layers": []}', r"found keys \['layers'\] \(missing 'summary'\)"),
        ('{"summary": {}}', r"missing 'layers'"),
        ('{"summary": [], "layers": []}', r"'summary' should be an object"),
        ('{"summary": {}, "layers": {}}', r"'layers' should be a list, found dict"),
        ('{"summary": {}, "layers": [{"index": 1}]}', r"layers\[0\] should be an object with a"),
        (
            '{"summary": {}, "layers": [{"layer": "fc", "index": "1"}]}',
            r"layers\[0\] \('fc'\) should have an integer 'index', found '1'",
        ),
    ],
)
def test_load_report_refuses_what_is_not_a_report(tmp_path, content, pattern):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_report(str(path))


def test_load_report_missing_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"--baseline '.*nope.json': no such file") as info:
        load_report(str(tmp_path / "nope.json"), option="--baseline")
    assert "nrc analyze CHECKPOINT --data DATA --format json --output" in info.value.hint
    with pytest.raises(DataError, match=r"is a folder, expected a JSON report file"):
        load_report(str(tmp_path))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match=r"cannot read it"):
        load_report(str(tmp_path / "bin.json"))


GATES_TOML = """
require = ["nrc1_noise[-1] <= 0.05", "first_collapsed_index <= 3"]

[baseline]
path = "baselines/base.json"
tolerance = 0.05

[baseline.tolerances]
nrc4_ratio = 0.5
"""


def test_gate_file(tmp_path):
    path = tmp_path / "gates.toml"
    path.write_text(GATES_TOML)
    gates = load_gate_file(str(path))
    assert [r.expr for r in gates.requirements] == [
        "nrc1_noise[-1] <= 0.05",
        "first_collapsed_index <= 3",
    ]
    assert gates.requirements[1].source == f"{path}: require[1]"
    assert gates.baseline == str(tmp_path / "baselines" / "base.json")
    assert gates.has_default_tolerance
    assert gates.tolerances == Tolerances(0.05, {"nrc4_ratio": 0.5})
    only = tmp_path / "only.toml"
    only.write_text('require = ["nrc1_noise <= 1"]\n')
    assert load_gate_file(str(only)).baseline is None


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("require = [,]", r"not valid TOML: .*\(at line 1, column 12\)"),
        ('requires = ["a<=1"]', r"unknown key\(s\) 'requires'; expected baseline, require"),
        ('require = "nrc1_noise<=1"', r"'require' should be a list of strings"),
        ('require = ["nrc1_noise<<1"]', r"g.toml: require\[0\] 'nrc1_noise<<1': unexpected '<'"),
        ("[baseline]\npath = 3", r"\[baseline\] path should be a file name, found 3"),
        ("[baseline]\ntol = 3", r"\[baseline\]: unknown key\(s\) 'tol'"),
        ("[baseline]\ntolerance = -1", r"\[baseline\] tolerance: expected a tolerance"),
        ("[baseline.tolerances]\nfoo = 1", r"unknown metric column 'foo'"),
        ("[baseline.tolerances]\nnrc1_noise = true", r"nrc1_noise: expected a tolerance"),
    ],
)
def test_bad_gate_files(tmp_path, content, pattern):
    path = tmp_path / "g.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=pattern):
        load_gate_file(str(path))


def test_missing_gate_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--require-file '.*none.toml': no such file"):
        load_gate_file(str(tmp_path / "none.toml"))


# --------------------------------------------------------------------------- compare


def test_compare_reports():
    a = make_results(names=("net.0", "net.2", "net.4", "net.6"))
    b = make_results(names=("net.0", "net.2", "net.4", "head"), noise=(0.8, 0.5, 0.1, 0.0))
    cmp = compare_reports(a, b, Tolerances(0.05), a_path="a.json", b_path="b.json")
    assert cmp.only_in_a == ["net.6"] and cmp.only_in_b == ["head"]
    both = [r for r in cmp.rows if r.status == "both"]
    assert len(both) == 3 * len(METRIC_COLUMNS) == cmp.n_compared
    row = next(r for r in both if (r.layer, r.metric) == ("net.2", "nrc1_noise"))
    assert (row.a, row.b, row.diff, row.beyond) == (0.4, 0.5, pytest.approx(0.1), True)
    assert cmp.n_beyond == 1
    assert [r.status for r in cmp.rows[-2 * len(METRIC_COLUMNS) :]] == (
        ["only_a"] * len(METRIC_COLUMNS) + ["only_b"] * len(METRIC_COLUMNS)
    )
    doc = json.loads(json.dumps(cmp.to_dict(), allow_nan=False))
    assert doc["a"]["path"] == "a.json" and doc["beyond_tolerance"] == 1


def test_compare_null_on_one_side_is_beyond_tolerance():
    cmp = compare_reports(make_results(noise=(0.8, None, None, 0.05)), make_results())
    rows = {(r.layer, r.metric): r for r in cmp.rows}
    assert rows[("net.2", "nrc1_noise")].beyond and rows[("net.2", "nrc1_noise")].diff is None
    assert not rows[("net.0", "nrc1_noise")].beyond


# --------------------------------------------------------------------------- renderings


def text_of(renderable, width=80) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(renderable)
    return buf.getvalue()


def failing_report() -> CheckReport:
    return run_check(
        make_results(noise=(0.8, 0.4, 0.1, 0.3)),
        [parse_requirement("nrc1_noise[-1] <= 0.2"), parse_requirement("first_collapsed_index<=5")],
        baseline=make_results(),
        baseline_path="base.json",
    )


def test_check_table_fits_80_columns_and_ends_with_the_counts():
    out = text_of(render_check(failing_report()))
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[-1] == "9 passed, 2 failed"
    row = next(line for line in lines if line.startswith("nrc1_noise[-1] <= 0.2"))
    assert row.split()[-4:] == ["net.6", "<=", "0.2", "FAIL"] and "0.3" in row
    assert any(line.startswith("first_collapsed_index<=5") and "PASS" in line for line in lines)
    assert "moved beyond tolerance since the baseline base.json" in out
    assert any(line.split()[:2] == ["nrc1_noise", "net.6"] and "+0.25" in line for line in lines)
    assert "FAIL nrc1_noise[-1] <= 0.2: 1 of 1 selected layer fails" in out


def test_compare_table():
    a, b = make_results(), make_results(noise=(0.8, 0.5, 0.1, 0.05))
    out = text_of(render_compare(compare_reports(a, b, a_path="a.json", b_path="b.json")))
    row = next(line for line in out.splitlines() if line.split()[:2] == ["net.2", "nrc1_noise"])
    assert row.split()[2:] == ["0.4", "0.5", "+0.1", "beyond"]
    assert out.splitlines()[-1] == (
        f"1 of {4 * len(METRIC_COLUMNS)} differences beyond tolerance 0.02"
    )


# --------------------------------------------------------------------------- JUnit

# Elements and attributes of the common JUnit schema (Jenkins' junit-10.xsd, which GitLab and the
# GitHub JUnit actions also read).
SCHEMA = {
    "testsuites": {"name", "tests", "failures", "errors", "skipped", "disabled", "time"},
    "testsuite": {
        "name",
        "tests",
        "failures",
        "errors",
        "skipped",
        "disabled",
        "time",
        "timestamp",
        "hostname",
        "id",
        "package",
    },
    "properties": set(),
    "property": {"name", "value"},
    "testcase": {"name", "classname", "time", "assertions", "status"},
    "failure": {"message", "type"},
    "system-out": set(),
    "system-err": set(),
}
CHILDREN = {
    "testsuites": ["testsuite"],
    "testsuite": ["properties", "testcase", "system-out", "system-err"],
    "properties": ["property"],
    "testcase": ["skipped", "error", "failure", "system-out", "system-err"],
}


def validate_junit(root: ET.Element) -> None:
    """Structure of junit-10.xsd: known elements and attributes, children in schema order."""
    assert root.tag == "testsuites"
    for element in root.iter():
        assert element.tag in SCHEMA, element.tag
        assert set(element.attrib) <= SCHEMA[element.tag], (element.tag, element.attrib)
        order = CHILDREN.get(element.tag, [])
        positions = [order.index(child.tag) for child in element]
        assert positions == sorted(positions), element.tag
    for suite in root.iter("testsuite"):
        assert {"name", "tests"} <= set(suite.attrib)
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases)
        assert int(suite.get("errors")) == 0 and int(suite.get("skipped")) == 0
        float(suite.get("time"))
        for case in cases:
            assert case.get("name") and case.get("classname")
            float(case.get("time"))


def test_junit_structure_counts_and_failures():
    text = junit_xml(
        failing_report(), duration=1.25, timestamp="2025-01-31T12:00:00", hostname="ci"
    )
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text.encode("utf-8"))
    validate_junit(root)
    suite = root.find("testsuite")
    assert suite.get("name") == "nrc check" and suite.get("time") == "1.250"
    assert (suite.get("tests"), suite.get("failures")) == ("11", "2")
    assert suite.get("timestamp") == "2025-01-31T12:00:00" and suite.get("hostname") == "ci"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["checkpoint"] == "model.safetensors" and props["baseline"] == "base.json"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    failure = cases["nrc1_noise[-1] <= 0.2"].find("failure")
    assert failure.get("type") == "RequirementFailed"
    assert failure.get("message") == "1 of 1 selected layer fails nrc1_noise <= 0.2: 'net.6' 0.3"
    assert "4 net.6: 0.3 FAIL" in failure.text
    drift = cases["baseline: nrc1_noise"].find("failure")
    assert drift.get("type") == "BaselineDrift" and "net.6: baseline 0.05 current 0.3" in drift.text
    assert len(cases["first_collapsed_index<=5"]) == 0
    assert suite.find("system-out").text.strip() == "9 passed, 2 failed"


def test_junit_drops_characters_xml_cannot_hold():
    results = make_results(names=("net.0", "bad\x01name", "net.4", "net.6"))
    report = run_check(results, [parse_requirement("nrc1_noise>=0.9")])
    root = ET.fromstring(junit_xml(report).encode("utf-8"))
    validate_junit(root)
    assert "badname" in root.find("testsuite/testcase/failure").text
