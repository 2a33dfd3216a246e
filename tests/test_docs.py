"""The documentation: the README stays a front door, and every link, image and section that the README, docs/ and
the code's comments point at exists."""
import re

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
SECTION = re.compile(r"(README|docs/[\w.-]+\.md)[,:]? \(?\"([^\"\n]+)\"")  # README "X", docs/x.md, "X", docs/x.md ("X"


def headings(path):
    """The heading texts of a Markdown file, outside code blocks."""
    found, in_code = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#+ ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    assert lines[:3] == ["# small-lm", "", "```"]
    assert lines[3].startswith("make quickstart ") and lines[4].startswith("make test ") and lines[5] == "```"
    for page in DOCS[1:]:
        assert f"(docs/{page.name})" in text, f"the README does not lead to docs/{page.name}"


def test_every_link_and_image_points_at_a_file_and_heading_that_exist():
    broken = []
    for page in DOCS:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto: — outside the repository
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and fragment not in {anchor(h) for h in headings(linked)}:
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_every_section_the_code_and_docs_name_exists():
    """A comment such as (docs/reference.md, "Optimizers") or README "Tests" names a heading of that file (its
    start, so that "The reference experiments in miniature" finds the heading that goes on to name `make minis`)."""
    sources = [*ROOT.glob("*.py"), *(ROOT / "configs").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
               *(ROOT / "lm_eval_tasks").glob("*.*"), ROOT / "Makefile", *ROOT.glob("requirements*.txt"), *DOCS]
    missing = []
    for source in sources:
        if source.name == "test_docs.py":  # its own docstrings show the pattern
            continue
        for name, section in SECTION.findall(source.read_text()):
            page = ROOT / ("README.md" if name == "README" else name)
            if not page.is_file() or not any(h.startswith(section) for h in headings(page)):
                missing.append(f"{source.relative_to(ROOT)}: {name}, \"{section}\"")
    assert missing == []
