"""The documentation's links hold: every relative link of README.md and docs/*.md names a file that exists and,
with ``#anchor``, a heading of that file; every console command the pages name is one setup.py installs."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line) for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def test_slug_is_githubs():
    assert slug("## Real low-bit execution (INT8/FP8 kernels)") == "real-low-bit-execution-int8fp8-kernels"
    assert slug("### Measured: where the accuracy goes, and what gets it back") == \
        "measured-where-the-accuracy-goes-and-what-gets-it-back"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_named_console_commands_are_installed():
    installed = set(re.findall(r'"(fairseq-quant-[a-z-]+)\s*=', (REPO / "setup.py").read_text()))
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"\bfairseq-quant-[a-z]+(?:-[a-z]+)*\b", page.read_text()))
    assert named - installed == set(), f"named but not installed: {sorted(named - installed)}"
