"""Options shared by the commands, declared once: ``--format`` (each command's own formats, one
help style, one error style), ``--data`` (one help text), ``--debug`` (an option of ``nrc``
itself that every command accepts too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from conftest import make_tiny_case
from helpers import BROKEN_FACTORY, error_line, invoke, make_audit_data, make_audit_zoo

from nrc_cli.cli import app
from nrc_cli.cli._options import choices
from nrc_cli.cli.audit import AUDIT_FORMATS
from nrc_cli.cli.check import CHECK_FORMATS
from nrc_cli.cli.compare import COMPARE_FORMATS
from nrc_cli.report.plot import IMAGE_FORMATS
from nrc_cli.report.writers import ANALYZE_FORMATS, BINARY_FORMATS, FORMATS
from nrc_cli.results.tables import TABLE_FORMATS

# Each command with the formats its --format takes.
ALLOWED = {
    ("analyze",): ANALYZE_FORMATS,
    ("inspect",): FORMATS,
    ("check",): CHECK_FORMATS,
    ("compare",): COMPARE_FORMATS,
    ("audit", "run"): AUDIT_FORMATS,
    ("audit", "merge"): TABLE_FORMATS,
    ("plot",): IMAGE_FORMATS,
}


def _root():
    return typer.main.get_command(app)


def _command(path: tuple[str, ...]):
    command = _root()
    for name in path:
        command = command.commands[name]
    return command


def _leaves(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name), command


def _param(command, flag: str):
    found = [p for p in command.params if flag in getattr(p, "opts", ())]
    assert len(found) == 1, (command.name, flag, found)
    return found[0]


def test_every_command_takes_each_flag_once():
    leaves = dict(_leaves(_root()))
    assert set(leaves) == set(ALLOWED)
    for path, command in leaves.items():
        flags = [f for p in command.params for f in (*p.opts, *p.secondary_opts)]
        assert len(flags) == len(set(flags)), (path, sorted(flags))


def test_format_help_lists_exactly_the_formats_each_command_accepts():
    for path, allowed in ALLOWED.items():
        option = _param(_command(path), "--format")
        assert option.opts == ["--format", "-f"], path
        assert option.help.startswith(f"{choices(allowed)} (default: "), (path, option.help)
        assert option.help.endswith(").")


def test_choices_reads_like_a_sentence():
    assert choices(("png",)) == "png"
    assert choices(("table", "json")) == "table or json"
    assert choices(("table", "json", "csv")) == "table, json or csv"


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A checkpoint, its data, a report of it, an audit zoo: real files in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    case = make_tiny_case(tmp_path / "tiny", dims=(4, 6, 2), n=40)
    done = invoke(["analyze", case.checkpoint, "--data", case.data, "--output", "run.json"])
    assert done.exit_code == 0, done.stderr
    make_audit_zoo(tmp_path / "zoo", n=2)
    make_audit_data(tmp_path / "data.npz")
    return case


def _refused(path: tuple[str, ...], case) -> list[str]:
    """Arguments that run ``path`` as far as its --format check, the format left to add."""
    ckpt, data = str(case.checkpoint), str(case.data)
    return {
        ("analyze",): ["analyze", ckpt, "--data", data],
        ("inspect",): ["inspect", ckpt],
        ("check",): ["check", "--report", "run.json", "--require", "n_samples >= 1"],
        ("compare",): ["compare", "run.json", "run.json"],
        ("audit", "run"): ["audit", "zoo", "--data", "data.npz"],
        ("audit", "merge"): ["audit", "merge", "out.parquet", "zoo.parquet"],
        ("plot",): ["plot", "run.json", "--output", "fig.png"],
    }[path]


@pytest.mark.parametrize("path", list(ALLOWED), ids=" ".join)
def test_a_format_outside_the_allowed_set_is_a_usage_error(inputs, path):
    for flag in ("--format", "-f"):
        line = error_line(invoke([*_refused(path, inputs), flag, "xml"]))
        if path == ("plot",):  # a figure's own words
            assert line == "error: --format: expected png or svg for a figure, found 'xml'"
        elif path == ("audit", "merge"):  # the format of the table OUT
            assert line.startswith("error: 'out.parquet': expected a .parquet or .csv table")
        else:
            allowed = ", ".join(ALLOWED[path])
            assert line == f"error: --format: expected one of {allowed}, found 'xml'"
    assert not Path("fig.png").exists() and not Path("out.parquet").exists()


WRITERS = {"analyze": ANALYZE_FORMATS, "inspect": FORMATS, "check": CHECK_FORMATS}
WRITERS["compare"] = COMPARE_FORMATS


@pytest.mark.parametrize(("command", "fmt"), [(c, f) for c, fs in WRITERS.items() for f in fs])
def test_every_format_a_command_allows_it_writes(inputs, command, fmt):
    args = [*_refused((command,), inputs), "--format", fmt, "--output", "out.bin"]
    done = invoke(args)
    assert done.exit_code == 0, done.stderr
    assert done.stdout == ""
    written = Path("out.bin").read_bytes()
    assert written
    if fmt == "parquet":
        assert written[:4] == b"PAR1"
    elif fmt == "json":
        assert json.loads(written)
    elif fmt == "csv":
        assert written.decode().splitlines()[0].count(",") >= 1


@pytest.mark.parametrize("path", [("analyze",), ("inspect",), ("audit", "run")], ids=" ".join)
def test_a_binary_format_without_output_is_a_usage_error(inputs, path):
    binary = [f for f in ALLOWED[path] if f in BINARY_FORMATS]
    assert binary
    for fmt in binary:
        line = error_line(invoke([*_refused(path, inputs), "--format", fmt]))
        assert line == (
            f"error: --format {fmt} needs --output PATH: {BINARY_FORMATS[fmt]} is binary and "
            "never goes to a terminal"
        )


def test_columns_of_another_task_are_refused_after_the_run_found_the_task(inputs):
    ckpt, data = str(inputs.checkpoint), str(inputs.data)
    done = invoke(["analyze", ckpt, "--data", data, "--columns", "layer,nc1"])
    assert done.exit_code == 2 and done.stdout == ""
    lines = done.stderr.splitlines()  # after the run's warnings
    assert lines[-2] == (
        "error: --columns: expected per-layer columns of a regression report, found 'nc1'"
    )
    assert lines[-1].startswith("hint: valid columns: layer, index, type")


def test_an_audit_to_a_file_takes_the_table_formats_only(inputs):
    line = error_line(
        invoke(["audit", "zoo", "--data", "data.npz", "--output", "a.parquet", "-f", "table"])
    )
    assert line == "error: --format: expected one of csv, parquet, found 'table'"


def test_every_command_with_data_has_the_same_data_option():
    shown = {
        path: _param(_command(path), "--data")
        for path in (("analyze",), ("check",), ("audit", "run"))
    }
    helps = {option.help for option in shown.values()}
    assert helps == {"Data set: .npz with arrays x and y, or a .toml data spec."}
    assert all(option.opts == ["--data", "-d"] for option in shown.values())
    assert shown[("analyze",)].required
    assert not shown[("check",)].required and not shown[("audit", "run")].required


# ------------------------------------------------------------------------------------------------
# --debug
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path):
    """``nrc analyze`` arguments whose run fails with an internal error (a bug's exit 3)."""
    case = make_tiny_case(tmp_path / "in", dims=(4, 6, 2), n=40)
    src = tmp_path / "broken.py"
    src.write_text(BROKEN_FACTORY)
    return ["analyze", str(case.checkpoint), "--data", str(case.data), "--arch", f"{src}:make"]


def _traceback_shown(args: list[str]) -> bool:
    result = invoke(args, env={"NRC_DEBUG": "0"})
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: internal error: RuntimeError: mode switch failed\n")
    return "Traceback (most recent call last)" in result.stderr


def test_debug_before_the_command_shows_the_traceback(broken):
    assert _traceback_shown(["--debug", *broken])


def test_debug_among_the_command_options_shows_the_traceback(broken):
    assert _traceback_shown([*broken, "--debug"])
    assert _traceback_shown([broken[0], "--debug", *broken[1:]])


def test_without_debug_no_traceback_even_after_a_run_with_it(broken):
    assert _traceback_shown(["--debug", *broken])
    assert not _traceback_shown(broken)


def test_debug_is_the_root_option_and_one_of_every_command():
    root = _root()
    (debug,) = [p for p in root.params if p.name == "debug"]
    for path, command in _leaves(root):
        assert [p for p in command.params if p.name == "debug"] == [debug], path
        assert command.params[-1] is debug, path  # last, as in the help
    assert "--debug" in invoke(["--help"], env={"COLUMNS": "120"}).stdout
    for path in ALLOWED:
        result = invoke([*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.stderr
        assert "--debug" in result.stdout and "Show tracebacks of internal errors." in (
            result.stdout
        )
