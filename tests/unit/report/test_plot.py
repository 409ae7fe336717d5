"""``nrc plot`` and :mod:`nrc_cli.report.plot`: real figures from real reports and audits.

The figures must be valid PNG/SVG, the plotted series (returned by the plotting functions and
read back from the drawn matplotlib lines) must equal the report's values, and the collapse
marker must sit at ``first_collapsed_index``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import Wrapped, error_line, invoke, mlp, save_model, save_npz

from nrc_cli.audit import read_table, run_audit
from nrc_cli.errors import ConfigError
from nrc_cli.options import AnalysisOptions
from nrc_cli.report.plot import (
    PROFILE_PANELS,
    metric_series,
    plot_metric,
    plot_profile,
    results_from_table,
)
from nrc_cli.results import Results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IN, OUT = 6, 2


def make_data(path: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, IN)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0]), np.sin(x[:, 1])], axis=1).astype(np.float32)
    return save_npz(path, x=x, y=y)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Built once: six tiny MLPs (6 -> 16 -> 16 -> 16 -> 2) for weight decay 0/1e-4/1e-3 x
    seeds 0/1 in ``zoo/``, their data, their audit ``audit.parquet`` and one report
    ``run.json`` (``nrc analyze`` of ``zoo/wd0.001_s0.safetensors``)."""
    folder = tmp_path_factory.mktemp("plot")
    (folder / "zoo").mkdir()
    for i, wd in enumerate((0.0, 1e-4, 1e-3)):
        for seed in (0, 1):
            meta = {"weight_decay": repr(wd), "seed": str(seed), "optimizer": ("sgd", "adam")[seed]}
            model = Wrapped(mlp((IN, 16, 16, 16, OUT), seed=10 * i + seed), "net")
            save_model(folder / "zoo" / f"wd{wd:g}_s{seed}.safetensors", model, meta)
    make_data(folder / "data.npz")
    cwd = os.getcwd()
    os.chdir(folder)  # checkpoint paths in the audit are relative, as a user types them
    try:
        found = sorted(p.as_posix() for p in Path("zoo").glob("*.safetensors"))
        run_audit(found, "data.npz", AnalysisOptions(), output="audit.parquet")
        result = invoke(
            ["analyze", "zoo/wd0.001_s0.safetensors", "-d", "data.npz", "-o", "run.json"]
        )
        assert result.exit_code == 0, result.stderr
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def zoo(shared, tmp_path, monkeypatch):
    """A fresh working folder holding the shared zoo, data, audit and report."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo").symlink_to(shared / "zoo")
    for name in ("data.npz", "audit.parquet", "run.json"):
        shutil.copy(shared / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def audit_frame(zoo):
    return read_table("audit.parquet")


def report(zoo, *extra) -> dict:
    """The report of ``zoo/wd0.001_s0.safetensors`` as ``run.json``, parsed; ``extra`` options
    to ``nrc analyze`` make a new one."""
    if extra:
        args = ["analyze", "zoo/wd0.001_s0.safetensors", "-d", "data.npz", "-o", "run.json"]
        result = invoke([*args, *extra])
        assert result.exit_code == 0, result.stderr
    return json.loads(Path("run.json").read_text())


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def assert_svg(path: Path) -> None:
    root = ET.fromstring(path.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.findall(".//{http://www.w3.org/2000/svg}path")


def same(a, b) -> bool:
    """Equal value lists, NaN equal to NaN (null in the report)."""
    return len(a) == len(b) and all(
        (x is None or math.isnan(x))
        if (y is None or (isinstance(y, float) and math.isnan(y)))
        else x == y
        for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------------------------------
# The layer profile of one report
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_profile_from_a_json_report(zoo, suffix):
    doc = report(zoo, "--collapse-rule", "nrc1_noise<=0.4")
    result = invoke(["plot", "run.json", "--output", f"fig.{suffix}"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "wrote fig" in result.stderr
    (assert_png if suffix == "png" else assert_svg)(Path(f"fig.{suffix}"))
    # The same figure through the library: what it plots is the report.
    shown = plot_profile(Results.from_dict(doc), f"again.{suffix}")
    for panel in PROFILE_PANELS:
        xs, ys = shown.series[panel]
        assert xs == [row["index"] for row in doc["layers"]]
        assert same(ys, [row[panel] for row in doc["layers"]])
    assert shown.marker == doc["summary"]["first_collapsed_index"]
    assert shown.marker is not None and shown.marker > 1
    assert shown.model_mse == doc["summary"]["model_mse"]
    assert Path(f"again.{suffix}").read_bytes() == Path(f"fig.{suffix}").read_bytes()


def test_profile_draws_the_series_and_the_marker(zoo):
    doc = report(zoo, "--collapse-rule", "nrc1_noise<=0.4")
    shown = plot_profile(Results.from_dict(doc), "fig.png")
    axes = shown.figure.axes
    assert [ax.get_title().split(":")[0] for ax in axes] == ["NRC1", "NRC2", "NRC3", "NRC4"]
    for ax, panel in zip(axes, PROFILE_PANELS, strict=True):
        line = ax.get_lines()[0]
        assert list(line.get_xdata()) == shown.series[panel][0]
        assert same(list(line.get_ydata()), shown.series[panel][1])
        markers = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        vertical = [ln for ln in markers if len(set(ln.get_xdata())) == 1]
        assert [ln.get_xdata()[0] for ln in vertical] == [doc["summary"]["first_collapsed_index"]]
    probe = axes[3]
    assert probe.get_yscale() == "log"
    horizontal = [ln for ln in probe.get_lines() if len(set(ln.get_ydata())) == 1]
    assert horizontal[0].get_ydata()[0] == doc["summary"]["model_mse"]


def test_profile_without_collapse_has_no_marker(zoo):
    doc = report(zoo, "--collapse-rule", "nrc1_noise<=0")
    assert doc["summary"]["first_collapsed_index"] is None
    shown = plot_profile(Results.from_dict(doc), "fig.svg")
    assert shown.marker is None
    for ax in shown.figure.axes:
        assert not [ln for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1]


def test_profile_from_a_tidy_table_equals_the_json_one(zoo, audit_frame):
    doc = report(zoo)
    from_json = plot_profile(Results.from_dict(doc), "a.png")
    picked = results_from_table(audit_frame, "zoo/wd0.001_s0.safetensors")
    from_table = plot_profile(picked, "b.png")
    assert from_table.marker == from_json.marker
    for panel in PROFILE_PANELS:
        assert from_table.series[panel][0] == from_json.series[panel][0]
        assert np.allclose(
            from_table.series[panel][1], from_json.series[panel][1], rtol=1e-12, equal_nan=True
        )
    result = invoke(
        ["plot", "audit.parquet", "--checkpoint", "zoo/wd0.001_s0.safetensors", "-o", "c.png"]
    )
    assert result.exit_code == 0, result.stderr
    assert_png(Path("c.png"))


def test_profile_from_an_analyze_csv(zoo):
    out = invoke(["analyze", "zoo/wd0_s1.safetensors", "-d", "data.npz", "-o", "run.csv"])
    assert out.exit_code == 0, out.stderr
    result = invoke(["plot", "run.csv", "-o", "fig.svg", "--title", "one run"])
    assert result.exit_code == 0, result.stderr
    assert_svg(Path("fig.svg"))
    assert result.stderr == "wrote fig.svg: layer profile of 4 layers\n"
    shown = plot_profile(results_from_table(read_table("run.csv")), "b.svg", title="one run")
    assert shown.figure.texts[0].get_text().startswith("one run — ")
    assert Path("b.svg").read_bytes() == Path("fig.svg").read_bytes()


# ------------------------------------------------------------------------------------------------
# A metric across an audit
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_metric_against_weight_decay_one_line_per_layer(audit_frame, suffix):
    args = ["plot", "audit.parquet", "--x", "weight_decay", "--metric", "nrc3_alignment"]
    result = invoke([*args, "--output", f"fig.{suffix}"])
    assert result.exit_code == 0, result.stderr
    (assert_png if suffix == "png" else assert_svg)(Path(f"fig.{suffix}"))
    assert "nrc3_alignment against meta.weight_decay, 4 line(s)" in result.stderr
    shown = plot_metric(audit_frame, "fig2.png", x="meta.weight_decay", metric="nrc3_alignment")
    expected = audit_frame.groupby(["index", "meta.weight_decay"])["nrc3_alignment"].mean()
    assert len(shown.series) == 4
    for (label, (xs, ys)), index in zip(shown.series.items(), (1, 2, 3, 4), strict=True):
        assert label.startswith(f"layer {index} (")
        assert xs == [0.0, 1e-4, 1e-3]
        assert ys == [expected[(index, wd)] for wd in xs]
        px, py = shown.points[label]
        assert len(px) == len(py) == 6
    drawn = [ln for ln in shown.figure.axes[0].get_lines()]
    assert [list(ln.get_ydata()) for ln in drawn] == [ys for _, ys in shown.series.values()]
    assert shown.figure.axes[0].get_xscale() == "symlog"  # 0 and a factor 10 of positives


def test_metric_with_hue_and_one_layer(audit_frame):
    shown = metric_series(
        audit_frame, x="meta.weight_decay", metric="nrc1_noise", hue="meta.seed", layer="-1"
    )
    last = audit_frame[audit_frame["index"] == 4]
    assert list(shown.series) == ["seed=0", "seed=1"]
    for seed, (xs, ys) in zip((0, 1), shown.series.values(), strict=True):
        rows = last[last["meta.seed"] == seed].sort_values("meta.weight_decay")
        assert xs == list(rows["meta.weight_decay"])
        assert ys == list(rows["nrc1_noise"])
    by_name = metric_series(
        audit_frame, x="meta.weight_decay", metric="nrc1_noise", layer=str(last["layer"].iloc[0])
    )
    by_index = metric_series(audit_frame, x="meta.weight_decay", metric="nrc1_noise", layer="4")
    assert by_name.series == by_index.series
    assert list(by_name.series) == ["nrc1_noise"]


def test_a_summary_metric_is_one_line_per_checkpoint_not_per_layer(audit_frame):
    shown = metric_series(audit_frame, x="meta.weight_decay", metric="model_mse")
    per_ckpt = audit_frame.drop_duplicates("checkpoint")
    assert list(shown.series) == ["model_mse"]
    _, ys = shown.series["model_mse"]
    assert ys == list(per_ckpt.groupby("meta.weight_decay")["model_mse"].mean())
    assert len(shown.points["model_mse"][0]) == 6


def test_text_x_gives_categories(audit_frame):
    shown = plot_metric(audit_frame, "fig.png", x="meta.optimizer", metric="nrc2_cka", layer="1")
    xs, _ = shown.series["nrc2_cka"]
    assert xs == ["adam", "sgd"]
    ax = shown.figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["adam", "sgd"]


def test_figures_are_byte_for_byte_reproducible(audit_frame):
    for suffix in ("png", "svg"):
        plot_metric(audit_frame, f"a.{suffix}", x="meta.weight_decay", metric="nrc3_alignment")
        plot_metric(audit_frame, f"b.{suffix}", x="meta.weight_decay", metric="nrc3_alignment")
        assert Path(f"a.{suffix}").read_bytes() == Path(f"b.{suffix}").read_bytes()


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run.json"], "expected --output FIGURE.png or FIGURE.svg"),
        (["run.json", "-o", "fig.pdf"], "cannot tell the image format from the suffix '.pdf'"),
        (["run.json", "-o", "fig.png", "-f", "jpg"], "expected png or svg"),
        (["run.json", "-o", "fig.png", "--x", "weight_decay"], "a single report has one"),
        (["audit.parquet", "-o", "fig.png"], "the table holds 6 checkpoints"),
        (["audit.parquet", "-o", "f.png", "--x", "lr"], "--x 'lr': no such column"),
        (["audit.parquet", "-o", "f.png", "--x", "seed", "--metric", "nope"], "--metric 'nope'"),
        (["audit.parquet", "-o", "f.png", "--x", "seed", "--layer", "9"], "--layer '9'"),
        (["audit.parquet", "-o", "f.png", "--x", "seed", "--metric", "layer"], "expected a num"),
        (["audit.parquet", "-o", "f.png", "--hue", "seed"], "--hue and --layer go with --x"),
        (["audit.parquet", "-o", "f.png", "--checkpoint", "x"], "--checkpoint 'x': not in"),
        (["missing.json", "-o", "fig.png"], "'missing.json': report not found"),
        (["bad.json", "-o", "fig.png"], "expected a report with 'summary' and 'layers'"),
        (["data.npz", "-o", "fig.png"], "expected a report (.json) or a table"),
        (["run.json", "-o", "f.png", "--x", "s", "--xscale", "x"], "a single report"),
        (["audit.parquet", "-o", "f.png", "--x", "seed", "--xscale", "ln"], "--xscale"),
    ],
)
def test_usage_errors(zoo, audit_frame, args, message):
    report(zoo)
    Path("bad.json").write_text('{"rows": []}')
    line = error_line(invoke(["plot", *args]))
    assert message in line
    assert not Path("fig.png").exists() and not Path("f.png").exists()


def test_without_matplotlib_a_clear_error(zoo, monkeypatch):
    report(zoo)
    # A None entry in sys.modules makes `import matplotlib` raise ImportError, as when the
    # optional extra is not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="plotting needs matplotlib") as info:
        plot_profile(Results.from_dict(json.loads(Path("run.json").read_text())), "fig.png")
    assert info.value.hint == (
        'install matplotlib: pip install matplotlib (in a clone of nrc: pip install ".[plot]")'
    )
    result = invoke(["plot", "run.json", "-o", "fig.png"])
    assert error_line(result) == "error: plotting needs matplotlib, which is not installed"
    assert "pip install matplotlib" in result.stderr
