"""The layer profile of a classification report: NC1, NC2, NC3 and NCC accuracy by layer."""

from __future__ import annotations

import json
import math
from pathlib import Path

from nrc_cli.report.plot import CLASSIFICATION_PANELS, plot_profile, profile_panels
from nrc_cli.results import Results

REFERENCE = Path(__file__).resolve().parents[2] / "reference_cases" / "nc_gauss_mlp"


def _report() -> Results:
    doc = json.loads((REFERENCE / "expected.json").read_text())
    return Results("model.safetensors", "data.npz", doc["summary"], doc["layers"])


def test_a_classification_report_gets_the_neural_collapse_panels(tmp_path):
    results = _report()
    assert profile_panels(results) == CLASSIFICATION_PANELS
    shown = plot_profile(results, tmp_path / "profile.png")
    assert (tmp_path / "profile.png").read_bytes().startswith(b"\x89PNG")
    axes = shown.figure.axes
    assert [ax.get_title().split(":")[0] for ax in axes] == ["NC1", "NC2", "NC3", "NCC accuracy"]
    for ax, panel in zip(axes, CLASSIFICATION_PANELS, strict=True):
        xs, ys = shown.series[panel]
        assert xs == [row["index"] for row in results.layers]
        assert ys == [row[panel] for row in results.layers]
        line = ax.get_lines()[0]
        assert list(line.get_ydata()) == ys
        vertical = [ln for ln in ax.get_lines()[1:] if len(set(ln.get_xdata())) == 1]
        assert [ln.get_xdata()[0] for ln in vertical] == [2]  # first_collapsed_index
    assert axes[0].get_yscale() == "log"  # NC1 spans orders of magnitude
    assert [ax.get_yscale() for ax in axes[1:]] == ["linear"] * 3
    assert math.isnan(shown.model_mse)  # no regression reference line


def test_a_null_column_is_a_gap_not_an_error(tmp_path):
    results = _report()
    for row in results.layers:
        row["ncc_accuracy"] = row["nc4_ncc_mismatch"] = None  # as with --no-ncc
    shown = plot_profile(results, tmp_path / "profile.svg")
    assert all(math.isnan(y) for y in shown.series["ncc_accuracy"][1])
