"""The README and the pages of `docs/`: every relative link reaches a file of the repository and
every `#anchor` a heading of its page (as GitHub names headings); every page is listed in
`docs/README.md`; nothing points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but `-` and `_` dropped,
    spaces as `-`."""
    text = FENCE.sub("", page.read_text())
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_the_docs_exist() -> None:
    names = {page.name for page in PAGES}
    assert {"user-guide.md", "operations.md", "architecture.md", "benchmarks.md"} <= names
    assert "testing.md" in names and "README.md" in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        reached = file.is_relative_to(ROOT) and file.exists()
        if not reached or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, broken


def test_no_page_points_outside_the_repository() -> None:
    for page in PAGES:
        text = page.read_text()
        assert "/work/" not in text and "../shared/handbook" not in text, page


def test_the_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    listed = {target.partition("#")[0] for target in links(ROOT / "docs" / "README.md")}
    for page in PAGES:
        if page.parent.name == "docs" and page.name != "README.md":
            assert page.name in listed, (page.name, index)


def test_where_each_rule_lives_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md#where-each-rule-lives" in readme
    assert "where-each-rule-lives" in anchors(ROOT / "docs" / "architecture.md")
