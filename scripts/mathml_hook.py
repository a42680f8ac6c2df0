"""MkDocs hook: the math that ``pymdownx.arithmatex`` marks (``$...$``, ``$$...$$``) rendered as MathML at build time.

Arithmatex (``generic: true``) keeps the TeX away from Markdown and wraps it in
``<span class="arithmatex">\\(...\\)</span>`` / ``<div class="arithmatex">\\[...\\]</div>``; this hook replaces
each with the MathML ``latex2mathml`` writes, so every page shows its equations without JavaScript or a
network (offline, GitHub Pages). TeX that the converter cannot read is a warning, which fails
``mkdocs build --strict``.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>',
    re.DOTALL,
)


def to_mathml(tex: str, display: str) -> str:
    """MathML of one TeX formula (``display``: "inline" or "block")."""
    return convert(tex.strip(), display=display)


def on_page_content(content: str, page: Any, **_: Any) -> str:
    def replace(m: re.Match[str]) -> str:
        block = m.group("block") is not None
        tex = html.unescape(m.group("block") if block else m.group("inline"))
        try:
            mathml = to_mathml(tex, "block" if block else "inline")
        except Exception as exc:  # noqa: BLE001 - any converter failure names the page and the formula
            log.warning("%s: cannot convert the formula %r to MathML (%s: %s)", page.file.src_path, tex,
                        type(exc).__name__, exc)
            return m.group(0)
        return f'<div class="math">{mathml}</div>' if block else mathml

    return _MATH.sub(replace, content)
