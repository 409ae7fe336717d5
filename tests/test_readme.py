"""The README's opening commands and Python example run as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nrc_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.parametrize("path", ["docs/metrics.md", "docs/data-spec.md"])
def test_linked_docs_exist(path):
    assert f"({path})" in README
    assert (ROOT / path).is_file()


def _steps() -> list[tuple[str, str]]:
    """The README's runnable steps in order: ("bash", commands), ("file", a ```toml block that
    names its file in its first line), ("text", the output shown right after a bash block)."""
    found = re.findall(r"^```(\w*)\n(.*?)^```\n?", README, flags=re.S | re.M)
    steps: list[tuple[str, str]] = []
    for lang, body in found:
        if lang == "bash":
            steps.append(("bash", body))
        elif lang == "toml" and re.match(r"# [\w.-]+\.toml\n", body):
            steps.append(("file", body))
        elif lang == "text" and steps and steps[-1][0] == "bash":
            steps.append(("text", body))
    return steps


def _commands(block: str) -> list[str]:
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_bash_block_runs_as_written_in_a_fresh_clone(tmp_path, monkeypatch):
    # What a new user has after cloning: the tracked samples and docs, nothing else (no
    # baselines/ folder, no outputs of earlier commands). The blocks run in README order, as
    # later ones use what earlier ones wrote; a TOML file shown with its name is written as
    # the README tells the reader to; the output shown after a block is what it printed.
    clone = tmp_path / "clone"
    clone.mkdir()
    for folder in ("sample_checkpoints", "docs"):
        shutil.copytree(ROOT / folder, clone / folder)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    monkeypatch.chdir(clone)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    printed = ""
    for kind, body in _steps():
        if kind == "file":
            name = body.splitlines()[0].removeprefix("# ").strip()
            (clone / name).write_text(body)
            continue
        if kind == "text":
            for line in body.splitlines():
                if line.strip() and "…" not in line:
                    assert _flat(line) in printed, f"shown but not printed: {line}"
            continue
        printed = ""
        for command in _commands(body):
            if command.startswith("nrc "):
                result = CliRunner().invoke(app, shlex.split(command)[1:], env={"COLUMNS": "80"})
                out, err, code = result.stdout, result.stderr, result.exit_code
                # nrc check exits 1 when a check ran and failed, as the README says it does.
                ok = (0, 1) if command.startswith("nrc check") else (0,)
            else:
                command = command.replace("python -c", f"{sys.executable} -c", 1)
                done = subprocess.run(
                    ["bash", "-e", "-c", command], env=env, capture_output=True, text=True
                )
                out, err, code, ok = done.stdout, done.stderr, done.returncode, (0,)
            assert code in ok, f"{command}\n{out}\n{err}"
            printed += _flat(out + "\n" + err) + " "
