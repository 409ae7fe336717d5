"""docs/classification.md, the part for users above the contract: its table is what ``nrc``
prints, its commands and its training-loop example run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from nrc_cli.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "classification.md"
TEXT = PAGE.read_text(encoding="utf-8")
SECTION = TEXT[
    TEXT.index("# Classifiers: Deep Neural Collapse") : TEXT.index("## The contract: what `nrc`")
]


def _blocks(lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", SECTION, flags=re.S | re.M)


def test_the_classifier_table_is_what_nrc_prints(monkeypatch):
    monkeypatch.chdir(ROOT)
    command = (
        "nrc analyze sample_checkpoints/classifiers/wd1e-2_seed0.safetensors "
        "--data sample_checkpoints/blobs.npz"
    )
    assert f"(`{command}`)" in SECTION
    shown = _blocks()[0]
    result = CliRunner().invoke(app, shlex.split(command)[1:], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.stderr
    printed = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for line in shown.strip().splitlines():
        assert " ".join(line.split()) in printed, line


def test_the_zoo_commands_and_the_check_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints")
    (tmp_path / "docs" / "img").mkdir(parents=True)
    commands = [
        line
        for block in _blocks()
        for line in block.splitlines()
        if line.startswith(("nrc ", "python -c"))
    ]
    assert [c.split()[:2] for c in commands] == [
        ["nrc", "audit"],
        ["python", "-c"],
        ["nrc", "plot"],
        ["nrc", "check"],
    ]
    for command in commands:
        args = shlex.split(command)
        if args[0] == "python":
            namespace: dict = {}
            exec(compile(args[2], str(PAGE), "exec"), namespace)
            continue
        result = CliRunner().invoke(app, args[1:])
        assert result.exit_code == 0, (command, result.stderr)
    assert (tmp_path / "docs" / "img" / "classifiers_nc1.png").is_file()


def test_the_training_loop_example_runs():
    (code,) = _blocks("python")
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    results = namespace["monitor"].compute()
    assert results.summary["task"] == "classification" and results.summary["passes"] == 2
    assert all(row["ncc_accuracy"] is not None for row in results.layers)


def test_the_page_is_linked_and_stands_alone():
    assert "(docs/classification.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in TEXT and "spec/" not in TEXT
    for image in ("img/profile_classifier.png", "img/classifiers_nc1.png"):
        assert f"({image})" in SECTION and (ROOT / "docs" / image).is_file()
