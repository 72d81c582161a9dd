"""Every ``docs/...md#anchor`` cited in the code, tests, benchmarks and README names a page and a heading that exist.

Comments cite the documentation for the facts they rely on; a renamed heading or a moved page must not leave a
citation pointing nowhere. Anchors are computed the way MkDocs (Python-Markdown's ``toc``) computes them.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs"
# Where citations live. Generated and vendored trees are not scanned.
SCANNED = ("dragonfly", "ext", "bench", "tests", "scripts", "deploy", ".ci", "README.md", "mkdocs.yml")
SUFFIXES = {".py", ".pyi", ".pyx", ".rs", ".sh", ".md", ".toml", ".yaml", ".yml", ".service", ".tpl", ""}

# ``docs/<page>.md`` with an optional ``#anchor``; a bare ``#anchor`` in backticks right after refers to the same page.
CITATION = re.compile(r"(?<![\w/.])docs/(\w[\w./-]*?\.md)(?:#([\w-]+))?")
BARE_ANCHOR = re.compile(r"``#([\w-]+)``")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def slugify(text: str) -> str:
    """Return the id Python-Markdown's toc extension gives a heading with this text."""
    text = re.sub(r"`([^`]*)`", r"\1", text)  # inline code renders as its text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # so do links
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors_of(page: Path) -> set[str]:
    """Return the heading ids of a Markdown page (explicit ``{#id}`` attributes included)."""
    anchors: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        title = match.group(2)
        explicit = re.search(r"\{\s*#([\w-]+)[^}]*\}\s*$", title)
        if explicit:
            anchors.add(explicit.group(1))
            continue
        slug = base = slugify(title)
        count = 1
        while slug in anchors:  # duplicates get _1, _2, ... as in Python-Markdown
            slug = f"{base}_{count}"
            count += 1
        anchors.add(slug)
    return anchors


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        root = REPO / name
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files.extend(
                p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
            )
    return sorted(files)


def citations() -> list[tuple[str, int, str, str | None]]:
    """Return (file, line, page, anchor) for every citation of a docs page."""
    found: list[tuple[str, int, str, str | None]] = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        page: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            events = [(m.start(), m.group(1), m.group(2)) for m in CITATION.finditer(line)]
            events += [(m.start(), None, m.group(1)) for m in BARE_ANCHOR.finditer(line)]
            for _, cited_page, anchor in sorted(events, key=lambda event: event[0]):
                if cited_page is not None:
                    page = cited_page
                elif page is None:
                    continue  # a bare anchor with no page cited before it is not a citation
                found.append((str(path.relative_to(REPO)), number, page, anchor))
    return found


def test_the_scan_finds_the_citations() -> None:
    """Guard against a scanner that silently matches nothing (the test below would then pass vacuously)."""
    pages = {page for _, _, page, _ in citations()}
    assert {"reference/protocol.md", "reference/scheduler.md", "benchmarks.md"} <= pages


@pytest.mark.parametrize("page", ["reference/protocol.md", "reference/scheduler.md"])
def test_slugs_match_the_headings_mkdocs_renders(page: str) -> None:
    anchors = anchors_of(DOCS / page)
    assert "announcepeer" in anchors or "announcepeer-on-the-scheduler" in anchors
    assert slugify("Pieces from parents") == "pieces-from-parents"
    assert slugify("The `ns=` query") == "the-ns-query"


def test_every_docs_citation_resolves() -> None:
    broken = []
    anchor_cache: dict[str, set[str]] = {}
    for source, line, page, anchor in citations():
        target = DOCS / page
        if not target.is_file():
            broken.append(f"{source}:{line}: docs/{page} does not exist")
            continue
        if anchor is None:
            continue
        if page not in anchor_cache:
            anchor_cache[page] = anchors_of(target)
        if anchor not in anchor_cache[page]:
            broken.append(f"{source}:{line}: docs/{page} has no heading with the anchor #{anchor}")
    assert not broken, "citations that point nowhere:\n" + "\n".join(broken)
