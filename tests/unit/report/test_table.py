"""The terminal table: folded to fit a narrow window, every number whole; columns picked; Markdown."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from nrc_cli.errors import ConfigError
from nrc_cli.report.table import (
    fmt,
    fold,
    known_columns,
    markdown_table,
    render,
    table_columns,
)
from nrc_cli.results import Results


def _results(task: str = "regression", n: int = 6) -> Results:
    rows = []
    for i in range(n):
        row = {
            "layer": f"encoder.blocks.{i}.mlp.fc",
            "index": i + 1,
            "type": "Linear",
            "in_dim": 1024,
            "rank": 4,
            "nrc1_noise": 0.123456789 / (i + 1),
            "nrc2_cka": 0.98765 - i * 1e-3,
            "nrc2_cka_signal": 1.23e-7 * (i + 1),
            "nrc3_alignment": 0.5 + 0.01 * i,
            "nrc4_probe_mse": 12345.678 * (i + 1),
            "nrc4_ratio": 1.0001,
            "stable_rank_h": 3.14159,
            "stable_rank_w": 2.71828,
            "collapsed": i > 2,
            "note": None,
        }
        rows.append(row)
    summary = {"n_samples": 1000, "collapse_rule": "nrc1_noise<=0.2", "first_collapsed_index": 4}
    summary["first_collapsed_layer"] = rows[3]["layer"]
    return Results(checkpoint="model.safetensors", data="data.npz", layers=rows, summary=summary)


def _render(results: Results, width: int, columns=None) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(render(results, columns))
    return buf.getvalue()


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_every_number_is_shown_whole_at_any_width(width):
    results = _results()
    text = _render(results, width)
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    for row in results.layers:
        for col in table_columns("regression"):
            assert fmt(row[col]) in text, (col, fmt(row[col]))
    folded = re.findall(r"\(part (\d+) of (\d+)\)", text)
    assert bool(folded) == (width < 140)
    if folded:
        assert "folded into" in text and "--columns" in text


def test_each_part_repeats_the_layer_and_index():
    results = _results()
    parts = fold(results, table_columns("regression"), 80)
    assert len(parts) >= 2
    for part in parts:
        assert part[:2] == ("index", "layer")
    shown = [c for part in parts for c in part if c not in ("index", "layer")]
    rest = [c for c in table_columns("regression") if c not in ("index", "layer")]
    assert shown == rest  # each column once, in order


def test_a_wide_window_gets_one_table():
    assert len(fold(_results(), table_columns("regression"), 200)) == 1


def test_columns_are_picked_and_checked_against_the_schema():
    results = _results()
    text = _render(results, 80, ["layer", "nrc1_noise", "nrc3_alignment"])
    header = next(line for line in text.splitlines() if "layer" in line and "nrc1" in line)
    assert header.split() == ["layer", "nrc1", "nrc3"]
    assert "part 1" not in text
    assert table_columns("regression", ["layer", "nrc1_noise"]) == ("layer", "nrc1_noise")
    with pytest.raises(ConfigError, match=r"--columns: .*'nc1'") as err:
        table_columns("regression", ["layer", "nc1"])
    assert "nrc3_alignment" in err.value.hint
    with pytest.raises(ConfigError, match="no column"):
        table_columns("regression", [])


def test_known_columns_is_the_one_check_of_column_names():
    valid = ["layer", "nc1", "nrc1_noise"]
    assert known_columns([" nc1", "layer ", "", "nc1"], valid) == ("nc1", "layer")
    with pytest.raises(ConfigError) as err:
        known_columns(["layer", "nrc9", "x"], valid)
    assert err.value.message == "--columns: expected per-layer columns, found 'nrc9', 'x'"
    assert err.value.hint == "valid columns: layer, nc1, nrc1_noise"
    with pytest.raises(ConfigError) as err:
        known_columns([" "], valid, of=" of a regression report")
    assert err.value.message == (
        "--columns: expected per-layer columns of a regression report, found no column"
    )
    with pytest.raises(ConfigError) as err:
        table_columns("regression", ["nc1"])
    assert err.value.message.endswith("of a regression report, found 'nc1'")


def test_markdown_table_has_full_names_every_value_and_escapes_pipes():
    results = _results()
    results.layers[0]["layer"] = "a|b"
    md = markdown_table(results)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| index"))
    assert "nrc1_noise" in header and "nrc4_probe_mse" in header
    body = [line for line in lines if line.startswith("| ") and line is not header]
    assert len(body) == len(results.layers)
    assert "a\\|b" in body[0]
    # One cell per column in every row, pipes inside cells escaped.
    cols = len(table_columns("regression"))
    for line in body:
        assert len(re.split(r"(?<!\\)\|", line)) == cols + 2
    assert lines[-1].startswith("collapsed from layer")
