"""The ``nrc`` command itself: ``--version``, shell completion, help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import invoke

from nrc_cli import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_version_and_exits_0():
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"nrc {__version__}\n"
    assert result.stderr == ""


def test_help_offers_shell_completion():
    result = invoke(["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in result.stdout


def _complete(words: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "_NRC_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        # the word being completed: the last, or a new one after a trailing space
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    return subprocess.run(
        [sys.executable, "-m", "nrc_cli"], env=env, capture_output=True, text=True, timeout=120
    )


def test_bash_completion_completes_commands_and_options():
    # What the script --install-completion installs asks nrc itself, through this variable.
    done = _complete("nrc an")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["analyze"]
    done = _complete("nrc analyze --sv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--svd"]


def test_bash_completion_of_the_audit_group():
    # 'nrc audit <TAB>' offers the commands; arguments of the default command complete as run's.
    done = _complete("nrc audit ")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["run", "merge"]
    for words, expected in [
        ("nrc audit zoo --sh", ["--shard"]),
        ("nrc audit run --fr", ["--fresh"]),
        ("nrc audit merge --fo", ["--format"]),
    ]:
        done = _complete(words)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected, words
