"""The README stays short and every relative link in it, in reports/README.md and in the mkdocs nav resolves;
the tracked files cite no document the repository does not hold. (`mkdocs build --strict` in CI checks the
links between docs pages.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text()) if not t.startswith(("http://", "https://", "#", "mailto:"))]


def test_readme_reads_in_ten_minutes() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("doc", ["README.md", "reports/README.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = REPO / doc
    missing = [t for t in _relative_links(path) if not (path.parent / t.split("#")[0]).exists()]
    assert not missing, f"{doc} links to files that do not exist: {missing}"


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    in_nav = {page for entry in config["nav"] for page in entry.values()}
    on_disk = {p.name for p in (REPO / "docs").glob("*.md")}
    assert in_nav == on_disk


def test_tracked_files_cite_no_outside_document() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    pattern = re.compile(r"\bDESIGN\.md|ECOSYSTEM|STYLE habit|[Hh]abit \d|[Cc]losing note|\b[Ii]ssue \d")
    hits = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt"} or name == ".ci/run":
            if path.is_file():
                hits += [f"{name}:{i}" for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                         if pattern.search(line) and "test_docs.py" not in name]
    assert not hits, hits
