"""Registry discovery through real package metadata: throwaway distributions put on sys.path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import ltreg
from ltreg.errors import ConfigError, DuplicateNameError, PluginLoadError, UnknownNameError
from ltreg.method import HParams, MethodSpec, PartRef
from ltreg.registry import refresh, registry


def make_dist(root: Path, dist: str, version: str, module: str, body: str, methods: dict[str, str]) -> None:
    """A real installed-looking distribution: a module plus ``NAME-VERSION.dist-info``."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in methods.items())
    (info / "entry_points.txt").write_text(f"[ltreg.methods]\n{lines}\n")


SPEC = """
from ltreg.method import HParams, MethodSpec, PartRef
METHOD = MethodSpec(name="fakemethod", summary="a method from a throwaway distribution", citation="-",
                    loss=PartRef("ce"), hparams=HParams())
"""


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    refresh()
    yield tmp_path
    monkeypatch.undo()
    refresh()


def test_discovers_method_from_dist_info(plugin_path):
    make_dist(plugin_path, "fakeplug", "1.2.3", "fakeplug_mod", SPEC, {"FakeMethod": "fakeplug_mod:METHOD"})
    refresh()
    rows = {r["name"].lower(): r for r in ltreg.list_methods()}
    assert rows["fakemethod"]["dist"] == "fakeplug"
    assert rows["fakemethod"]["version"] == "1.2.3"
    assert rows["fakemethod"]["error"] == ""
    assert ltreg.get_method("FAKEMETHOD").summary.startswith("a method from")
    assert "ce" in rows and rows["ce"]["dist"] == "ltreg"  # the core uses the same door


def test_same_name_from_two_distributions_names_both(plugin_path):
    make_dist(plugin_path, "fakeplug", "1.0", "fakeplug_a", SPEC, {"fakemethod": "fakeplug_a:METHOD"})
    make_dist(plugin_path, "otherplug", "2.0", "fakeplug_b", SPEC, {"fakemethod": "fakeplug_b:METHOD"})
    refresh()
    with pytest.raises(DuplicateNameError) as err:
        ltreg.get_method("fakemethod")
    assert "fakeplug" in str(err.value) and "otherplug" in str(err.value)


def test_broken_plugin_is_reported_and_others_work(plugin_path):
    make_dist(plugin_path, "brokenplug", "0.1", "brokenplug_mod", "raise ImportError('needs libfoo')",
              {"broken": "brokenplug_mod:METHOD"})
    make_dist(plugin_path, "fakeplug", "1.0", "fakeplug_c", SPEC, {"fakemethod": "fakeplug_c:METHOD"})
    refresh()
    with pytest.raises(PluginLoadError) as err:
        ltreg.get_method("broken")
    assert "brokenplug" in str(err.value) and "needs libfoo" in str(err.value)
    rows = {r["name"]: r for r in ltreg.list_methods()}
    assert "brokenplug" in rows["broken"]["error"]
    assert rows["fakemethod"]["error"] == ""
    assert ltreg.get_method("fakemethod").name == "fakemethod"


def test_unknown_method_lists_close_matches_and_installed():
    with pytest.raises(UnknownNameError) as err:
        ltreg.get_method("balanced-softmx")
    msg = str(err.value)
    assert "balanced-softmax" in msg and "Did you mean" in msg
    assert "ce (ltreg)" in msg


def test_register_method_in_process_and_clash_with_installed():
    spec = MethodSpec(name="notebook-method", summary="s", citation="-", loss=PartRef("ce"), hparams=HParams())
    try:
        ltreg.register_method(spec)
        assert ltreg.get_method("Notebook_Method") is spec
        assert any(r["name"] == "notebook-method" and r["dist"] == "<in-process>" for r in ltreg.list_methods())
    finally:
        registry("methods").unregister("notebook-method")
    clash = MethodSpec(name="ce", summary="s", citation="-", loss=PartRef("ce"), hparams=HParams())
    with pytest.raises(DuplicateNameError, match="ltreg"):
        ltreg.register_method(clash)


def test_hparams_are_typed_and_validated():
    spec = ltreg.get_method("ldam-drw")
    assert spec.hparams.replace(max_margin="0.3").max_margin == 0.3
    with pytest.raises(ConfigError, match="max_margin"):
        spec.hparams.replace(max_margin="-1")
    with pytest.raises(ConfigError, match="unknown hyper-parameter 'max_margn'.*max_margin"):
        spec.hparams.replace(max_margn=1)
    with pytest.raises(ConfigError, match=r"this method \(NoHParams\) has no hyper-parameters, so --hp does not apply"):
        ltreg.get_method("ce").hparams.replace(foo=1)  # no empty "Known:" list
    with pytest.raises(ConfigError, match="float"):
        spec.hparams.replace(scale="many")


def test_unknown_recipe_lists_recipes():
    with pytest.raises(ConfigError, match="cifar100-lt-if100"):
        ltreg.get_method("ce").recipe("cifar100-lt-if1000")
