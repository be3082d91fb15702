"""What a newcomer reads holds together: README's expectations come from the results documents, every page of
docs/ is reachable from the README, and every extra the README tells a user to install exists."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO

README = (REPO / "README.md").read_text()
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?%?")


def expectation_paragraphs() -> list[str]:
    """README's "What to expect" paragraphs and the "Which preset?" table."""
    paragraphs = [p for p in README.split("\n\n") if "What to expect" in p]
    table = README[README.index("## Which preset?") :].split("\n\n")[2]
    assert len(paragraphs) >= 3 and table.startswith("| preset |")
    return [*paragraphs, table]


def test_every_number_in_what_to_expect_is_in_a_results_document():
    results = (REPO / "docs" / "RESULTS.md").read_text() + (REPO / "docs" / "PERFORMANCE.md").read_text()
    for paragraph in expectation_paragraphs():
        numbers = {n.rstrip(",") for n in NUMBER.findall(paragraph)}
        missing = sorted(n for n in numbers if n not in results)
        assert not missing, f"README figures found in neither RESULTS.md nor PERFORMANCE.md: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    unlinked = [page for page in pages if f"(docs/{page}" not in README]
    assert not unlinked, unlinked


def test_every_extra_the_readme_names_exists():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(re.findall(r"'\.\[(\w+)\]'", README))
    assert named and named <= set(extras), (named, set(extras))
    assert {"test", "viewer", "aot", "cloud", "tpu"} <= set(extras)
