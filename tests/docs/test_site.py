"""The documentation site: ``mkdocs build --strict`` of mkdocs.yml and docs/ succeeds, and fails,
naming the link, on a page that links to a missing page or anchor or is missing from the nav."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def build(folder: Path, site: Path) -> subprocess.CompletedProcess:
    """``python -m mkdocs build --strict`` of ``folder/mkdocs.yml`` into ``site``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_site_builds_strictly(tmp_path):
    before = (ROOT / "site").exists()
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    site = tmp_path / "site"
    for page in DOCS.rglob("*.md"):
        rel = page.relative_to(DOCS).with_suffix("")
        html = site / (rel.parent if rel.name == "index" else rel) / "index.html"
        assert html.is_file(), html
    for image in (DOCS / "img").iterdir():
        assert (site / "img" / image.name).is_file(), image.name
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in (
        "nrc_cli.analyze",
        "nrc_cli.options.AnalysisOptions",
        "nrc_cli.monitor.CollapseMonitor",
        "nrc_cli.results.Results",
        "nrc_cli.results.history.History",
        "nrc_cli.errors.NrcError",
    ):
        assert f'id="{name}"' in reference, name
    assert "merge" in reference and "all_reduce" in reference  # members, from the docstrings
    assert (ROOT / "site").exists() == before  # the build went where it was told


@pytest.fixture
def copy(tmp_path) -> Path:
    """mkdocs.yml and docs/ copied into a folder of their own, with the package beside them."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy2(ROOT / "mkdocs.yml", folder / "mkdocs.yml")
    shutil.copytree(DOCS, folder / "docs")
    (folder / "nrc_cli").symlink_to(ROOT / "nrc_cli", target_is_directory=True)
    return folder


def test_the_copy_builds(copy, tmp_path):
    done = build(copy, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("link", "said"),
    [
        ("[x](no-such-page.md)", "contains a link 'no-such-page.md', but the target is not found"),
        ("[x](metrics.md#no-such-anchor)", "does not contain an anchor '#no-such-anchor'"),
        ("![x](img/no-such-image.png)", "contains a link 'img/no-such-image.png'"),
    ],
)
def test_a_broken_internal_link_fails_the_build(copy, tmp_path, link, said):
    page = copy / "docs" / "audits.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\nSee {link}.\n", encoding="utf-8")
    done = build(copy, tmp_path / "site")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Doc file 'audits.md'" in out and said in out, out
    assert re.search(r"Aborted with 1 warnings? in strict mode", out), out  # that link alone


def test_a_page_missing_from_the_nav_fails_the_build(copy, tmp_path):
    (copy / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    done = build(copy, tmp_path / "site")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert 'not included in the "nav"' in out and "orphan.md" in out, out


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return [p for item in nav for p in _nav_pages(item)]


def test_every_page_of_docs_is_in_the_nav_once():
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"))
    pages = _nav_pages(config["nav"])
    assert len(pages) == len(set(pages))
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk


def test_the_pages_stand_alone():
    # Nothing outside the repository is cited; links are relative, so GitHub and the site agree.
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, page
        assert "](/" not in text, page
