"""docs/python.md ("From Python"): its analysis, its training loop and its plot run as written."""

from __future__ import annotations

import re
import weakref
from pathlib import Path

from helpers import assert_collected, assert_fed_nothing

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "python.md"
TEXT = PAGE.read_text(encoding="utf-8")


def blocks(lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", TEXT, flags=re.S | re.M)


def test_python_example_runs(monkeypatch):
    (code,) = [b for b in blocks("python") if "from nrc_cli import analyze" in b]
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    frame = namespace["results"].to_frame()
    assert list(frame["layer"]) == ["net.0", "net.2", "net.4", "net.6", "net.8", "net.10"]


def test_training_loop_example_runs_and_draws_its_plot(monkeypatch, tmp_path):
    """The training loop and its plot run as written (the PNG goes to tmp_path)."""
    (train,) = [b for b in blocks("python") if "CollapseMonitor(model)" in b]
    (plot,) = [b for b in blocks("python") if "monitor_epochs.png" in b]
    assert "(img/monitor_epochs.png)" in TEXT and (ROOT / "docs/img/monitor_epochs.png").is_file()
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(train, str(PAGE), "exec"), namespace)
    history = namespace["history"]
    assert len(history) == 8
    last = [next(r["nrc1_noise"] for r in h.layers if r["layer"] == "4") for h in history]
    assert last[-1] < 0.5 * last[0]  # the page's reading of the figure
    # No hook is left on the model: it runs without feeding the monitor, and nothing holds
    # the monitor once the namespace lets it go.
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    assert_fed_nothing(namespace["monitor"], model, x[:16], y[:16])
    ref = weakref.ref(namespace.pop("monitor"))
    assert_collected(ref, "the page's monitor")
    png = tmp_path / "epochs.png"
    exec(
        compile(plot.replace("docs/img/monitor_epochs.png", str(png)), str(PAGE), "exec"),
        namespace,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
