"""The documentation site: it builds with ``--strict`` and no warning, its equations are MathML, and its
pages name no machine's paths and use no internal wording."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Absolute paths of one machine, and words about how the project was made rather than what it does.
FORBIDDEN = {
    "a machine's absolute path": re.compile(r"(?<![\w.])/(?:work|root|tmp|home|Users|mnt/data)/"),
    "internal wording": re.compile(r"\bround \d\b|\bround\d\b|\b(?:previous|this|last|next) round\b|\bhelpers?\b"
                                   r"|\bsessions?\b", re.IGNORECASE),
}


def doc_files() -> list[Path]:
    return sorted([*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "mkdocs.yml"])


def test_docs_name_no_machine_paths_and_no_internal_wording() -> None:
    found = []
    for path in doc_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                for m in pattern.finditer(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {what} {m.group(0)!r}")
    assert not found, "\n".join(found)


def test_the_forbidden_patterns_catch_what_they_name() -> None:
    text = "run `/work/main/.venv/bin/python x.py --out /tmp/x` after round 2 (a helper session)"
    hits = {what for what, pattern in FORBIDDEN.items() if pattern.search(text)}
    assert hits == set(FORBIDDEN)
    assert not any(p.search("see /usr/share/datasets/fashion-mnist and benchmarks/out/lt100") for p in FORBIDDEN.values())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("the docs extra is not installed (pip install -e .[docs])")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    return out, log


def test_docs_build_strict_without_a_warning(site: tuple[Path, str]) -> None:
    out, log = site
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    assert (out / "benchmarks" / "index.html").is_file()
    assert 'id="latest-long-tail-table"' in (out / "benchmarks" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", sorted(p.stem for p in (DOCS / "methods").glob("*.md")))
def test_method_page_equations_are_mathml(site: tuple[Path, str], page: str) -> None:
    source = (DOCS / "methods" / f"{page}.md").read_text(encoding="utf-8")
    blocks = len(re.findall(r"^\$\$$", source, re.M)) // 2
    assert blocks >= 1, f"{page}.md has no display equation"
    assert "```text" not in source, f"{page}.md still writes an equation as a monospace code block"
    html = (site[0] / "methods" / page / "index.html").read_text(encoding="utf-8")
    maths = re.findall(r'<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">.*?</math>', html, re.S)
    assert len(maths) == blocks
    assert 'class="arithmatex"' not in html  # every formula converted, none left for a script to typeset
    for m in maths:
        assert "<mtable" in m and "<msub" in m  # aligned rows with subscripts, not a line of text
        assert "\\" not in m, f"TeX left in the MathML of {page}: {m[:200]}"
        assert "<merror" not in m and "<mi>&amp;</mi>" not in m
    assert "mathjax" not in html.lower() and "katex" not in html.lower()  # nothing fetched to render math
