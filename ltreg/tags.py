"""Source tags: where each value of a method's recipes and each reading of its loss comes from.

A reproduction study is only as trustworthy as the reader's ability to tell a number the paper states from one we
chose. Every recipe value and every reading carries a :class:`Tag`:

* ``[P]`` the paper (name the table, equation or section: ``Tag.paper("Table 2")``);
* ``[C]`` the authors' code or README (name it: ``Tag.code("authors' README, github.com/org/repo")``);
* ``[D]`` ours: a default where the sources are silent, or our reading of an ambiguous passage
  (say why: ``Tag.ours("MoCo-v2 practice")``).

``ltreg info METHOD`` prints them beside the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ltreg.errors import ConfigError

Kind = Literal["P", "C", "D"]
KINDS: tuple[str, ...] = ("P", "C", "D")


@dataclass(frozen=True)
class Tag:
    """One source: ``kind`` P / C / D and ``where`` (the table / equation, the code or README, or our reason)."""

    kind: Kind
    where: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"a source tag's kind must be one of {', '.join(KINDS)} (paper, code, ours), "
                              f"got {self.kind!r}")
        if not self.where.strip():
            raise ConfigError(f"a [{self.kind}] tag must say where: the paper's table / equation, the code or README "
                              f"it comes from, or why we chose it")

    @classmethod
    def paper(cls, where: str) -> Tag:
        """``[P]``: stated in the paper at ``where`` (e.g. ``"Table 2"``, ``"Eq. 4"``, ``"§4.2"``)."""
        return cls("P", where)

    @classmethod
    def code(cls, where: str) -> Tag:
        """``[C]``: from the authors' code or README named in ``where``."""
        return cls("C", where)

    @classmethod
    def ours(cls, why: str) -> Tag:
        """``[D]``: our default or reading, for the reason ``why``."""
        return cls("D", why)

    def __str__(self) -> str:
        return f"[{self.kind}: {self.where}]"


@dataclass(frozen=True)
class Reading:
    """One reading of the paper that the implementation makes, with its source tag."""

    text: str
    tag: Tag

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ConfigError("a reading needs a text saying what the implementation does")
        if not isinstance(self.tag, Tag):
            raise ConfigError(f"reading {self.text!r}: its tag must be a ltreg.Tag, got {type(self.tag).__name__}")

    def __str__(self) -> str:
        return f"{self.text} {self.tag}"


__all__ = ["KINDS", "Reading", "Tag"]
