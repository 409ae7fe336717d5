"""The README and the site's home page (docs/index.md): their opening commands run as written,
their tables are what ``nrc`` prints, their links lead to pages that exist, and no shell block on
them, or on the pages split out of the README, is left unrun."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nrc_cli.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
HOME = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
LANDINGS = {"README.md": README, "docs/index.md": HOME}


def blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_first_block_installs_then_analyzes_the_sample(monkeypatch):
    first = blocks(README)[0].strip().splitlines()
    assert (
        first[0].startswith("pip install torch==2.13.0") and 'pip install -e ".[dev]"' in first[0]
    )
    assert blocks(HOME)[0] == blocks(README)[0]  # the site's home page opens with the same two
    monkeypatch.chdir(ROOT)
    args = shlex.split(first[1])
    assert args[:2] == ["nrc", "analyze"]
    result = CliRunner().invoke(app, args[1:], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.stderr
    assert "collapsed from layer `net.2` (layers 2–6 of 6) under nrc1_noise<=0.2" in result.stdout


@pytest.mark.parametrize("page", sorted(LANDINGS))
def test_the_side_by_side_tables_are_what_nrc_prints(monkeypatch, page):
    text = LANDINGS[page]
    monkeypatch.chdir(ROOT)
    for model in ("mlp_wd", "mlp_nowd"):
        command = f"nrc analyze sample_checkpoints/{model}.safetensors --data sample_checkpoints/lowrank.npz"
        assert f"(`{command}`)" in text
        shown = text[text.index(f"(`{command}`)") :]
        shown = shown[shown.index("```\n") + 4 : shown.index("\n```", shown.index("```\n") + 4)]
        result = CliRunner().invoke(app, shlex.split(command)[1:], env={"COLUMNS": "160"})
        assert result.exit_code == 0
        printed = [" ".join(line.split()) for line in result.stdout.splitlines()]
        for line in shown.splitlines():
            assert " ".join(line.split()) in printed, line


@pytest.mark.parametrize(
    "path",
    [
        "docs/metrics.md",
        "docs/data-spec.md",
        "docs/api.md",
        "docs/reference.md",
        "docs/analyzing.md",
        "docs/python.md",
        "docs/audits.md",
        "docs/classification.md",
        "docs/distributed.md",
        "docs/ci-gates.md",
        "docs/performance.md",
        "docs/development.md",
    ],
)
def test_linked_docs_exist(path):
    assert f"({path})" in README
    assert (ROOT / path).is_file()


def test_every_link_of_the_readme_resolves():
    # GitHub resolves the README's links from the repository root; mkdocs never sees them.
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert len(targets) >= 15
    for target in targets:
        assert not target.startswith(("/", "http")), target
        assert (ROOT / target).exists(), target


def test_the_weight_decay_picture_is_on_both_landing_pages():
    assert "(docs/img/zoo_alignment.png)" in README
    assert "(img/zoo_alignment.png)" in HOME
    assert (ROOT / "docs" / "img" / "zoo_alignment.png").is_file()


def test_the_development_commands_are_those_of_the_development_page():
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    readme = README[README.index("## Development\n") :]
    assert blocks(readme)[0] == blocks(page)[0]
    assert "mkdocs build --strict" in blocks(page)[0]


# The pages whose text was the README's, and the tests that run their shell blocks in order, as
# written, from a directory that holds only what a fresh clone has (the samples; no baselines/
# or other output folders): tests/cli/test_audit.py::test_doc_commands_run_as_written for the
# zoo, tests/cli/test_check.py::test_docs_commands_run_as_written for CI, and
# tests/cli/test_distributed.py::test_doc_* for torchrun and the Slurm script. A bash block
# anywhere else on these pages would run nowhere.
FROM_THE_README = [
    "README.md",
    "docs/index.md",
    "docs/analyzing.md",
    "docs/python.md",
    "docs/integrations/index.md",
    "docs/graphs.md",
    "docs/audits.md",
    "docs/classification.md",
    "docs/distributed.md",
    "docs/ci-gates.md",
    "docs/performance.md",
    "docs/development.md",
]
RUN_BY_A_DOC_TEST = {"docs/audits.md", "docs/ci-gates.md", "docs/distributed.md"}


@pytest.mark.parametrize("page", FROM_THE_README)
def test_every_bash_block_is_run_as_written_by_a_doc_test(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    if page not in RUN_BY_A_DOC_TEST:
        assert "```bash" not in text, f"a bash block in {page} is not run by any test"
    else:
        assert "```bash" in text
