"""The documented commands as a person runs them: in a real pseudo-terminal, narrow and wide.

Every other test pipes stderr, so none of them sees what a terminal shows: progress bars,
colour, the width of the window. These run ``nrc`` with stdin, stdout and stderr on a pty of
80 or 200 columns (the pty is the process's controlling terminal, so Ctrl-C is a real SIGINT
from the line discipline), with and without ``NO_COLOR``, and check the exit code, that no
traceback or internal error appears, and that the numbers shown are the JSON report's.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import SAMPLES_DIR

from nrc_cli.report.table import fmt, table_columns

NRC = [sys.executable, "-m", "nrc_cli"]
# An SGR sequence that sets a foreground colour (bold or dim alone is not colour).
_COLOUR = re.compile(r"\x1b\[(?:[\d;]*;)?(?:3[0-8]|9[0-7])(?:;[\d;]*)?m")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])")


def _controlling_tty() -> None:  # in the child, before exec: the pty becomes its terminal
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Screen:
    """What a command wrote to its terminal, escape sequences removed, and its exit code."""

    def __init__(self, raw: bytes, code: int) -> None:
        self.raw = raw.decode("utf-8", "replace")
        text = _ANSI.sub("", self.raw).replace("\r\n", "\n")
        # A transient progress bar redraws with carriage returns: keep what is left on a line.
        self.text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))
        self.code = code

    def assert_clean(self) -> None:
        assert "Traceback" not in self.text, self.text
        assert "internal error" not in self.text, self.text


def run_in_pty(
    argv: list[str],
    cwd: Path,
    *,
    cols: int,
    no_color: bool = False,
    interrupt_when: str | None = None,
    timeout: float = 240,
) -> Screen:
    """Run ``argv`` on a fresh pty of ``cols`` columns; optionally type Ctrl-C once the
    regular expression ``interrupt_when`` matches the screen."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "CI", "NO_COLOR")}
    env.update(TERM="xterm-256color", PYTHONUNBUFFERED="1")
    if no_color:
        env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=_controlling_tty,
        close_fds=True,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    sent = interrupt_when is None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the pty has closed it
                    break
                if not chunk:
                    break
                out += chunk
            shown = _ANSI.sub("", out.decode("utf-8", "replace"))
            if not sent and re.search(interrupt_when, shown):
                os.write(master, b"\x03")  # the line discipline sends SIGINT
                sent = True
            if proc.poll() is not None and not ready:
                break
        else:
            proc.kill()
            pytest.fail(f"{argv} did not end within {timeout} s:\n{out.decode(errors='replace')}")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return Screen(bytes(out), code)


def _screen_lines(raw: str) -> list[str]:
    """The lines left on a terminal after ``raw``: erase-line and cursor-up honoured."""
    lines: list[str] = [""]
    for token in re.split(r"(\x1b\[[0-?]*[ -/]*[@-~]|\r\n|\r|\n)", raw):
        if token in ("\r\n", "\n"):
            lines.append("")
        elif token == "\r" or not token:
            continue
        elif token.startswith("\x1b["):
            if token.endswith("K"):
                lines[-1] = ""
            elif token.endswith("A"):
                up = int(token[2:-1] or 1)
                del lines[max(1, len(lines) - up) :]
                lines[-1] = ""
        else:
            lines[-1] += _ANSI.sub("", token)
    return lines


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A copy of the samples, as the README's commands expect them, and two JSON reports."""
    root = tmp_path_factory.mktemp("terminal")
    shutil.copytree(SAMPLES_DIR, root / "sample_checkpoints")
    for name in ("mlp_wd", "mlp_nowd"):
        subprocess.run(
            [
                *NRC,
                "analyze",
                f"sample_checkpoints/{name}.safetensors",
                "--data",
                "sample_checkpoints/lowrank.npz",
                "--quiet",
                "--output",
                f"{name}.json",
            ],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=240,
        )
    return root


def assert_rows_shown(screen: Screen, report: dict) -> None:
    """Each layer's every table column is on the screen, as the table formats the JSON value."""
    lines = screen.text.splitlines()
    cols = table_columns(report["summary"].get("task", "regression"))
    for row in report["layers"]:
        tokens = [
            tok for line in lines if line.split()[1:2] == [row["layer"]] for tok in line.split()
        ]
        assert tokens, (row["layer"], screen.text)
        for col in cols:
            assert fmt(row.get(col)) in tokens, (row["layer"], col, fmt(row.get(col)), screen.text)
    assert "…" not in screen.text, screen.text


WIDTHS = [pytest.param(80, False, id="80-color"), pytest.param(200, True, id="200-no-color")]


@pytest.mark.parametrize(("cols", "no_color"), [*WIDTHS, (80, True), (200, False)])
def test_readme_first_command(folder, cols, no_color):
    screen = run_in_pty(
        [
            *NRC,
            "analyze",
            "sample_checkpoints/mlp_wd.safetensors",
            "--data",
            "sample_checkpoints/lowrank.npz",
        ],
        folder,
        cols=cols,
        no_color=no_color,
    )
    screen.assert_clean()
    assert screen.code == 0, screen.text
    assert_rows_shown(screen, json.loads((folder / "mlp_wd.json").read_text()))
    assert "collapsed from layer `net.2`" in screen.text
    assert bool(_COLOUR.search(screen.raw)) is not no_color  # colour only where not refused
    assert max(len(line) for line in screen.text.splitlines()) <= cols


@pytest.mark.parametrize(("cols", "no_color"), WIDTHS)
def test_classifier(folder, cols, no_color):
    ckpt = "sample_checkpoints/classifiers/wd1e-2_seed0.safetensors"
    data = "sample_checkpoints/blobs.npz"
    screen = run_in_pty(
        [*NRC, "analyze", ckpt, "--data", data], folder, cols=cols, no_color=no_color
    )
    screen.assert_clean()
    assert screen.code == 0, screen.text
    report = subprocess.run(
        [*NRC, "analyze", ckpt, "--data", data, "--format", "json", "--quiet"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    assert_rows_shown(screen, json.loads(report.stdout))


@pytest.mark.parametrize(("cols", "no_color"), WIDTHS)
def test_check_compare_inspect(folder, cols, no_color):
    ckpt = "sample_checkpoints/classifiers/wd1e-2_seed0.safetensors"
    check = run_in_pty(
        [
            *NRC,
            "check",
            ckpt,
            "--data",
            "sample_checkpoints/blobs.npz",
            "--require",
            "nc1_trace[-1] <= 0.2",
            "--require",
            "model_accuracy >= 0.9",
        ],
        folder,
        cols=cols,
        no_color=no_color,
    )
    check.assert_clean()
    assert check.code == 0, check.text
    assert "PASS" in check.text.upper(), check.text
    compare = run_in_pty(
        [*NRC, "compare", "mlp_wd.json", "mlp_nowd.json", "--tolerance", "0.02"],
        folder,
        cols=cols,
        no_color=no_color,
    )
    compare.assert_clean()
    assert compare.code in (0, 1), compare.text
    wd = json.loads((folder / "mlp_wd.json").read_text())
    assert fmt(wd["layers"][0]["nrc1_noise"]) in compare.text, compare.text
    inspect = run_in_pty(
        [*NRC, "inspect", "sample_checkpoints/mlp_wd.safetensors"],
        folder,
        cols=cols,
        no_color=no_color,
    )
    inspect.assert_clean()
    assert inspect.code == 0, inspect.text
    assert "net.10" in inspect.text


@pytest.mark.parametrize(("cols", "no_color"), WIDTHS)
def test_audit_and_plot(folder, cols, no_color):
    pytest.importorskip("matplotlib")
    out = f"zoo{cols}.parquet"
    audit = run_in_pty(
        [
            *NRC,
            "audit",
            "sample_checkpoints/zoo",
            "--data",
            "sample_checkpoints/lowrank.npz",
            "--max-samples",
            "1000",
            "--output",
            out,
        ],
        folder,
        cols=cols,
        no_color=no_color,
    )
    audit.assert_clean()
    assert audit.code == 0, audit.text
    assert "8 checkpoint(s)" in audit.text, audit.text
    plot = run_in_pty(
        [
            *NRC,
            "plot",
            out,
            "--x",
            "weight_decay",
            "--metric",
            "nrc3_alignment",
            "--output",
            f"zoo{cols}.png",
        ],
        folder,
        cols=cols,
        no_color=no_color,
    )
    plot.assert_clean()
    assert plot.code == 0, plot.text
    assert (folder / f"zoo{cols}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_example(folder):
    nrc = Path(sys.executable).with_name("nrc")
    if not nrc.exists():
        pytest.skip("the nrc script is not installed beside this Python")
    # docs/distributed.md ("Beyond one machine"): torchrun --standalone --nproc-per-node 2 --no-python nrc ...
    screen = run_in_pty(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "--no-python",
            str(nrc),
            "analyze",
            "sample_checkpoints/mlp_wd.safetensors",
            "--data",
            "sample_checkpoints/lowrank.npz",
            "--device",
            "cpu",
        ],
        folder,
        cols=80,
    )
    screen.assert_clean()
    assert screen.code == 0, screen.text
    assert_rows_shown(screen, json.loads((folder / "mlp_wd.json").read_text()))


def test_ctrl_c_during_the_pass_is_one_line_and_exit_130(folder):
    import numpy as np

    big = folder / "big.npz"
    if not big.exists():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((400_000, 20)).astype(np.float32)
        np.savez(big, x=x, y=rng.standard_normal((400_000, 4)).astype(np.float32))
    screen = run_in_pty(
        [
            *NRC,
            "analyze",
            "sample_checkpoints/mlp_wd.safetensors",
            "--data",
            "big.npz",
            "--batch-size",
            "256",
        ],
        folder,
        cols=80,
        interrupt_when=r"[1-9][\d,]*/[\d,]+ samples",  # the pass has begun
    )
    assert screen.code == 130, screen.text
    screen.assert_clean()
    # The transient bar is gone: what remains on the screen is the one line.
    lines = [line for line in _screen_lines(screen.raw) if line.strip()]
    assert lines == ["error: interrupted"], screen.raw
    assert screen.raw.rstrip().endswith("error: interrupted"), screen.raw[-300:]
