"""The documentation's links resolve: every relative Markdown link in the README, docs/ and the suites'
and reports' own pages names an existing file, and every `#anchor` a heading of its target (GitHub's
slugs). The README links every page of docs/, keeps the setup and test commands CI runs, and keeps
the blocks the report generators rewrite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted({REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "parity_tests" / "README.md",
                REPO / "benchmarks" / "README.md", *(REPO / "reports").glob("*/README.md")})

LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, CODE_SPAN.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links reduced to their text, no markup), lower case,
    punctuation other than '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    in_fence = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match and not in_fence:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(page.read_text()):
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
        found += [(number, m.group(1)) for m in IMAGE.finditer(line)]
    return found


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def broken(page: Path, target: str) -> str | None:
    """Why the link `target` in `page` does not resolve, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not checked here
        return None
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"no such file: {shown(file)}"
    if anchor:
        if file.is_dir() or file.suffix != ".md":
            return f"#{anchor} on a target that is not a Markdown page"
        if anchor not in anchors(file):
            return f"no heading with anchor #{anchor} in {shown(file)}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    problems = [f"{page.relative_to(REPO)}:{number}: {target}: {why}"
                for number, target in links(page) if (why := broken(page, target))]
    assert not problems, "\n".join(problems)


def test_the_slugs_are_githubs():
    assert slug("Flax API: `--api`") == "flax-api---api"
    assert slug("Parity: do the two frameworks compute the same thing?") == "parity-do-the-two-frameworks-compute-the-same-thing"
    assert slug("GELU: Flax's default tanh approximation against torch's exact GELU") == \
        "gelu-flaxs-default-tanh-approximation-against-torchs-exact-gelu"
    assert slug("`mlp`: two-layer perceptron (source 003)") == "mlp-two-layer-perceptron-source-003"
    assert slug("tensorflow-datasets (TFDS)") == "tensorflow-datasets-tfds"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad anchor](#nowhere) `[code](skipped.md)`\n"
                    "```\n[fenced](skipped.md)\n```\n")
    assert [(target, broken(page, target) is None) for _, target in links(page)] == [
        ("#title", True), ("missing.md", False), ("#nowhere", False)]


def test_the_readme_links_every_docs_page():
    linked = {(REPO / target.partition("#")[0]).resolve() for _, target in links(REPO / "README.md")}
    missing = [page.name for page in sorted((REPO / "docs").glob("*.md")) if page.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_keeps_the_commands_ci_runs_and_the_generated_blocks():
    readme = (REPO / "README.md").read_text()
    assert 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" -c constraints.txt' in readme
    assert "\n```bash\npytest\n```\n" in readme
    for name in ("parity-report", "benchmark-goals", "equivalence-report", "equivalence-report-second"):
        assert readme.count(f"<!-- {name}:begin -->") == 1 and readme.count(f"<!-- {name}:end -->") == 1, name
