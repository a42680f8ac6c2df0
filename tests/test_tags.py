"""Source tags: every recipe value and every reading of the plugins' methods says where it comes from
([P] paper, [C] authors' code / README, [D] ours), and ``ltreg info`` prints them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ltreg
from ltreg import Reading, Recipe, Tag

PLUGIN_METHODS = ("acl", "cogloat", "ecl", "iccl", "lift", "rebsupcon")


def test_tag_kinds_and_where_are_checked() -> None:
    assert str(Tag.paper("Table 2")) == "[P: Table 2]"
    assert (Tag.code("README").kind, Tag.ours("why").kind) == ("C", "D")
    with pytest.raises(ltreg.ConfigError, match="kind must be one of P, C, D"):
        Tag("R", "a reading")  # type: ignore[arg-type]
    with pytest.raises(ltreg.ConfigError, match="must say where"):
        Tag.paper("  ")
    with pytest.raises(ltreg.ConfigError, match="needs a text"):
        Reading("", Tag.ours("x"))
    with pytest.raises(ltreg.ConfigError, match="must be a ltreg.Tag"):
        Reading("x", "[P]")  # type: ignore[arg-type]


def test_recipe_tags_cover_only_its_values() -> None:
    r = Recipe("r", train={"lr": 0.1, "epochs": 3}, hparams={"temperature": 0.2}, paper={"All": 50.0},
               tags={"lr": Tag.paper("Table 2"), "All": Tag.paper("Table 3")})
    assert r.untagged() == ["epochs", "temperature"]
    assert r.values() == {"lr": 0.1, "epochs": 3, "temperature": 0.2, "All": 50.0}
    with pytest.raises(ltreg.ConfigError, match="tags momentum, which it does not set"):
        Recipe("r", train={"lr": 0.1}, tags={"momentum": Tag.ours("x")})
    with pytest.raises(ltreg.ConfigError, match="lr in more than one"):
        Recipe("r", train={"lr": 0.1}, hparams={"lr": 0.2})
    with pytest.raises(ltreg.ConfigError, match="must be ltreg.Tag"):
        Recipe("r", train={"lr": 0.1}, tags={"lr": "[P]"})  # type: ignore[dict-item]


@pytest.mark.parametrize("name", PLUGIN_METHODS)
def test_every_plugin_recipe_value_and_reading_is_tagged(name: str) -> None:
    spec = ltreg.get_method(name)
    assert spec.recipes, name
    for rname, recipe in spec.recipes.items():
        assert recipe.untagged() == [], f"{name} {rname}"
        assert recipe.values()  # a recipe with nothing to tag would pass vacuously
    assert len(spec.readings) >= 5 and all(isinstance(r, Reading) for r in spec.readings)
    kinds = {t.kind for r in spec.recipes.values() for t in r.tags.values()} | {r.tag.kind for r in spec.readings}
    assert kinds <= {"P", "C", "D"} and "D" in kinds


def test_numbers_from_a_readme_are_marked_code_not_paper() -> None:
    """ECL's ImageNet-LT numbers come from the authors' README, not the paper."""
    tags = ltreg.get_method("ecl").recipe("imagenet-lt").tags
    assert {tags[k].kind for k in ("All", "Many", "Medium", "Few")} == {"C"}
    assert "README" in tags["All"].where


def test_cogloat_tags_the_excluded_own_key() -> None:
    texts = [r for r in ltreg.get_method("cogloat").readings if "own key" in r.text]
    assert len(texts) == 1 and texts[0].tag.kind == "D" and "Eq. 1" in texts[0].tag.where


def test_ltreg_info_prints_the_tags() -> None:
    out = subprocess.run([sys.executable, "-m", "ltreg", "info", "rebsupcon"], capture_output=True, text=True,
                         check=True).stdout
    assert "train.lr = 0.02  [P: Table 2 (CIFAR-100-LT)]" in out
    assert "hparams.queue_size = 1024  [D: " in out
    assert "paper.All = 52.7  [P: Table 3]" in out
    assert "readings:" in out and "[P: §3.3.2 numbering + §4.2 values" in out
    assert "[untagged]" not in out
