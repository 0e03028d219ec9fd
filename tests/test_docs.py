"""The documentation links only to files in the repository, and the docs cite nothing a reader cannot open.

Checks every relative Markdown link of README.md and docs/*.md: the target file exists and, for a link into a
Markdown file with a `#fragment`, the target has a heading with that GitHub anchor. Links inside fenced code blocks
and links with a scheme (https:, mailto:) are not checked.
"""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED_FILES = [ROOT / "README.md", *DOCS]

# The docs written to replace citations of notes outside the repository; they must not cite those notes themselves.
SELF_CONTAINED_DOCS = ["docs/method.md", "docs/architecture.md", "docs/zoo_dataset_format.md"]
# Notes outside the repository, spelled here in pieces (joined below) so that this file, which the repository-wide
# check reads too, does not itself name them.
OUTSIDE_DOCUMENTS = tuple(
    "".join(pieces)
    for pieces in (
        ("SANE_", "METHOD"),
        ("CALI", "BRATION"),
        ("STYLE_", "ANCHORS"),
        ("BASE", "LINE.md"),
        ("DES", "IGN.md"),
        ("ENVIRON", "MENT.md"),
        ("PAPER_", "RESULTS"),
        ("../", "shared"),
        ("shared/", "docs"),
    )
)

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _outside_code(text: str) -> list[str]:
    """The lines of `text` that are not inside fenced code blocks."""
    lines, in_code = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but `-` and `_`), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in _outside_code(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            anchors.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
        anchors.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return anchors


def _links(path: Path) -> list[str]:
    links = []
    for line in _outside_code(path.read_text(encoding="utf-8")):
        # Inline code spans are not links.
        line = re.sub(r"`[^`]*`", "", line)
        for match in _LINK.finditer(line):
            links.append(match.group(1) or match.group(2))
    return links


def _relative(link: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", link)


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for link in _links(path):
        if not _relative(link):
            continue
        target, _, fragment = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            broken.append(f"{link} (no file {resolved})")
            continue
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{link} (outside the repository)")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{link} (no heading with anchor #{fragment} in {resolved.name})")
    assert not broken, f"{path.relative_to(ROOT)} has broken links: {broken}"


def test_docs_exist_and_readme_links_them():
    readme_links = set(_links(ROOT / "README.md"))
    for name in [*SELF_CONTAINED_DOCS, "docs/quality_study.md"]:
        assert (ROOT / name).is_file(), name
        assert name in readme_links, f"README.md does not link {name}"


@pytest.mark.parametrize("name", SELF_CONTAINED_DOCS)
def test_docs_cite_nothing_outside_the_repository(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    cited = [doc for doc in OUTSIDE_DOCUMENTS if doc in text]
    assert not cited, f"{name} cites documents outside the repository: {cited}"


# Everything a reader of the repository gets: code, scripts, configs, benchmarks, cards, docs and tests.
REPOSITORY_TEXT = ("sane_hf", "scripts", "benchmarks", "model_cards", "docs", "tests", ".ci")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".j2", ""}


def test_nothing_in_the_repository_cites_notes_outside_it():
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "pyproject.toml"]
    for folder in REPOSITORY_TEXT:
        files += [
            path
            for path in (ROOT / folder).rglob("*")
            if path.is_file()
            and path.suffix in TEXT_SUFFIXES
            and not {"results", "official", "venv-off", "__pycache__"} & set(path.parts)
        ]
    citing = {
        f"{path.relative_to(ROOT)}: {doc}"
        for path in files
        for doc in OUTSIDE_DOCUMENTS
        if doc in path.read_text(encoding="utf-8", errors="replace")
    }
    assert len(files) > 100 and not citing, f"files citing notes outside the repository: {sorted(citing)}"


def test_slug_matches_github():
    assert _slug("SANE as implemented in `sane_hf`") == "sane-as-implemented-in-sane_hf"
    assert _slug("The zoo folder written by `make_zoo`") == "the-zoo-folder-written-by-make_zoo"
    assert _slug("`meta/info.json`") == "metainfojson"
    assert _slug("Windows and halos") == "windows-and-halos"
