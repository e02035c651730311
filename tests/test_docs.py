"""The HTML documentation (MkDocs, docs/ + mkdocs.yml) builds in strict mode, and strict mode really fails on a
broken link, a broken anchor and a page missing from the nav."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(project / "mkdocs.yml"), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=300, cwd=project)


def copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    return project


def test_docs_build_strict(tmp_path):
    r = mkdocs_build(ROOT, tmp_path / "site")
    assert r.returncode == 0, r.stderr
    for page in ROOT.joinpath("docs").glob("*.md"):
        assert (tmp_path / "site" / page.with_suffix(".html").name).is_file()
    assert "postgresql+psycopg://" in (tmp_path / "site" / "web-operations.html").read_text()


@pytest.mark.parametrize("breakage, message", [
    ("[the protocol](no-such-page.md)", "no-such-page.md"),
    ("[logs](web-operations.md#no-such-section)", "no-such-section"),
])
def test_strict_build_fails_on_a_broken_link_or_anchor(tmp_path, breakage, message):
    project = copy_project(tmp_path)
    index = project / "docs" / "index.md"
    index.write_text(index.read_text() + f"\nSee {breakage}.\n")
    r = mkdocs_build(project, tmp_path / "site")
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_strict_build_fails_on_a_page_left_out_of_the_nav(tmp_path):
    project = copy_project(tmp_path)
    (project / "docs" / "orphan.md").write_text("# Orphan\n")
    r = mkdocs_build(project, tmp_path / "site")
    assert r.returncode != 0 and "orphan.md" in r.stderr, r.stderr


def test_docs_point_nowhere_outside_the_repository():
    for page in ROOT.joinpath("docs").glob("*.md"):
        assert "../shared" not in page.read_text() and "/work/" not in page.read_text(), page.name


def test_readme_is_short_and_its_links_stay_in_the_repository():
    """Issue 15: the README is a short entry page (about 250 lines at most) whose relative links lead to files of
    the repository (the user guide in docs/), never outside it."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", readme) if not re.match(r"^[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in targets)
    bad = []
    for target in targets:
        path = (ROOT / target.split("#", 1)[0]).resolve()
        if ROOT.resolve() not in path.parents or not path.exists():
            bad.append(target)
    assert not bad, f"README links that leave the repository or lead nowhere: {bad}"
