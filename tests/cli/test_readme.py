"""The README's opening commands and Python example run as written."""

from __future__ import annotations

import re
import shlex
import weakref
from pathlib import Path

import pytest
from helpers import assert_collected, assert_fed_nothing
from typer.testing import CliRunner

from nrc_cli.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def test_first_block_installs_then_analyzes_the_sample(monkeypatch):
    first = blocks()[0].strip().splitlines()
    assert (
        first[0].startswith("pip install torch==2.13.0") and 'pip install -e ".[dev]"' in first[0]
    )
    monkeypatch.chdir(ROOT)
    args = shlex.split(first[1])
    assert args[:2] == ["nrc", "analyze"]
    result = CliRunner().invoke(app, args[1:], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.stderr
    assert "collapsed from layer `net.2` (layers 2–6 of 6) under nrc1_noise<=0.2" in result.stdout


def test_the_side_by_side_tables_are_what_nrc_prints(monkeypatch):
    monkeypatch.chdir(ROOT)
    for model in ("mlp_wd", "mlp_nowd"):
        command = f"nrc analyze sample_checkpoints/{model}.safetensors --data sample_checkpoints/lowrank.npz"
        assert f"(`{command}`)" in README
        shown = README[README.index(f"(`{command}`)") :]
        shown = shown[shown.index("```\n") + 4 : shown.index("\n```", shown.index("```\n") + 4)]
        result = CliRunner().invoke(app, shlex.split(command)[1:], env={"COLUMNS": "160"})
        assert result.exit_code == 0
        printed = [" ".join(line.split()) for line in result.stdout.splitlines()]
        for line in shown.splitlines():
            assert " ".join(line.split()) in printed, line


def test_python_example_runs(monkeypatch):
    (code,) = [b for b in blocks("python") if "from nrc_cli import analyze" in b]
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    frame = namespace["results"].to_frame()
    assert list(frame["layer"]) == ["net.0", "net.2", "net.4", "net.6", "net.8", "net.10"]


def test_training_loop_example_runs_and_draws_its_plot(monkeypatch, tmp_path):
    """The "From Python" training loop and its plot run as written (the PNG goes to tmp_path)."""
    (train,) = [b for b in blocks("python") if "CollapseMonitor(model)" in b]
    (plot,) = [b for b in blocks("python") if "monitor_epochs.png" in b]
    assert "(docs/img/monitor_epochs.png)" in README
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(train, "README.md", "exec"), namespace)
    history = namespace["history"]
    assert len(history) == 8
    last = [next(r["nrc1_noise"] for r in h.layers if r["layer"] == "4") for h in history]
    assert last[-1] < 0.5 * last[0]  # the README's reading of the figure
    # No hook is left on the model: it runs without feeding the monitor, and nothing holds
    # the monitor once the namespace lets it go.
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    assert_fed_nothing(namespace["monitor"], model, x[:16], y[:16])
    ref = weakref.ref(namespace.pop("monitor"))
    assert_collected(ref, "the README's monitor")
    png = tmp_path / "epochs.png"
    exec(
        compile(plot.replace("docs/img/monitor_epochs.png", str(png)), "README.md", "exec"),
        namespace,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("path", ["docs/metrics.md", "docs/data-spec.md", "docs/api.md"])
def test_linked_docs_exist(path):
    assert f"({path})" in README
    assert (ROOT / path).is_file()


def test_every_bash_block_is_run_as_written_by_a_doc_test():
    # The bash blocks of these sections run in README order, as written, from a directory that
    # holds only what a fresh clone has (the samples; no baselines/ or other output folders):
    # tests/cli/test_audit.py::test_doc_commands_run_as_written for the zoo, and
    # tests/cli/test_check.py::test_docs_commands_run_as_written for CI, and
    # tests/cli/test_distributed.py::test_doc_* for torchrun and the Slurm script. A bash block
    # anywhere else would run nowhere.
    tested = {"Auditing a model zoo", "Use in CI", "Beyond one machine"}
    for section in re.split(r"^## ", README, flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        if "```bash" in section:
            assert title in tested, f"a bash block in '{title}' is not run by any test"
