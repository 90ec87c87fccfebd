# python -m pytest -q tests/test_docs.py  — a reader of the README and docs/ALGORITHM.md can follow every reference.
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHM = open(os.path.join(ROOT, "docs", "ALGORITHM.md")).read()


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split() if os.path.exists(os.path.join(ROOT, f))]


SOURCES = tracked("*.py", "*.yaml", "*.md")
SECTIONS = set(re.findall(r"^#+ §(\d+(?:\.\d+)?) ", ALGORITHM, re.M))  # headings '## §5', '### §5.2'
EQUATIONS = {int(n) for n in re.findall(r"\((\d+)\)\s*$", ALGORITHM, re.M)}  # '... (13)' at a line's end


def citations(pattern: str):
    """(file, line number, cited number) of every match of `pattern` in the repository's text files."""
    for f in SOURCES:
        for i, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8"), 1):
            for m in re.finditer(pattern, line):
                yield f, i, m.group(1)


def test_algorithm_document_has_its_sections_and_equations():
    assert {"1", "1.1", "1.4", "2", "3", "4", "5", "5.2", "6", "7", "8", "9", "10"} <= SECTIONS
    assert EQUATIONS == set(range(1, max(EQUATIONS) + 1)), sorted(EQUATIONS)  # numbered 1..n, none skipped


def test_every_cited_section_exists():
    cited = list(citations(r"§(\d+(?:\.\d+)?)"))
    assert len(cited) > 30  # the code does cite the document
    missing = [c for c in cited if c[2] not in SECTIONS]
    assert not missing, f"sections cited but not in docs/ALGORITHM.md: {missing}"


def test_every_cited_equation_exists():
    # "Eq. N" of this repository; the paper's own numbers are written "the paper's Eq. N"
    cited = list(citations(r"(?<!paper's )Eq\. (\d+)"))
    assert cited
    missing = [c for c in cited if int(c[2]) not in EQUATIONS]
    assert not missing, f"equations cited but not in docs/ALGORITHM.md: {missing}"


@pytest.mark.parametrize("path, name", sorted(set(re.findall(r"`((?:dynamo|scripts)/[\w/]+\.py):(\w+)", ALGORITHM))))
def test_every_named_function_exists(path, name):
    """docs/ALGORITHM.md names each equation's `file:function`; the function is defined in that file."""
    source = open(os.path.join(ROOT, path)).read()
    assert re.search(rf"^\s*(def|class) {name}\b", source, re.M), f"{path} defines no {name}"


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"\.\./shared|\bSPEC\b|FIELD_NOTES|BASELINES\.md|DESIGN\.md")
    here = os.path.relpath(__file__, ROOT)
    hits = [(f, i) for f in SOURCES if f != here and not f.startswith("tests/")
            for i, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8"), 1) if pattern.search(line)]
    assert not hits, hits
